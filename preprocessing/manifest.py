"""`manifest.json`: the index of a TFRecord dataset, written last and atomically.

A dataset directory is complete exactly when its manifest exists: the builder writes
shards first and the manifest last (temporary file, fsync, rename: core/files.py),
so a build killed at any moment leaves no manifest and readers refuse the directory.

Layout (JSON object):
  schema_version  int     preprocessing.schema.SCHEMA_VERSION at build time
  image_size      int     S: records hold S x S images
  seed            int     the split seed
  fractions       {"train": f, "val": f, "test": f}
  counts          {"train": n, "val": n, "test": n}
  shards          {"train": [{"file": "train-00000-of-00004.tfrecord",
                              "records": n, "sha256": hex}, ...], "val": [...], "test": [...]}
  splits          {case_id: "train" | "val" | "test"}
  skipped         [{"id": str, "file": str, "reason": str}, ...]
  ignored_files   int     files in the input folders that are not part of any pair
  sources         {name: {"images_dir": abs path, "masks_dir": abs path,
                          "counts": {"train": n, "val": n, "test": n}}}: the input
                  folders; each record's `source` feature is one of the names
  source          {"images_dir": abs path, "masks_dir": abs path}: only when the build
                  has one input folder (as before `sources` existed)
  preprocessing   {"image_size": S, "colour_constancy": "none" | "shades_of_gray",
                   "colour_constancy_p": p}: what was done to the pixels, for whoever
                  must prepare new images the same way (evaluation, prediction)
  build           {option: value} the options that determine the output bytes

No TensorFlow here (schema.py's constants load without it): a re-run of isic-preprocess
reads the manifest before it knows whether TensorFlow is needed.
"""

import json
import os

from core import files
from core.errors import InputError
from core.errors import MissingInputError
from preprocessing import schema
from preprocessing.splits import SPLITS

MANIFEST_NAME = "manifest.json"


def shard_name(split: str, index: int, num_shards: int) -> str:
    """Returns the canonical shard file name, e.g. 'train-00003-of-00016.tfrecord'."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def write_manifest(data_dir: str, manifest: dict) -> str:
    """Atomically writes `data_dir/manifest.json` (fsynced before the rename); returns its path."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    # fsync before the rename: a manifest must never be visible before its bytes are on
    # disk, or a power cut could publish an empty index.
    with files.atomic_open(path, "w", fsync=True) as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def read_manifest(data_dir: str) -> dict:
    """Reads and checks a dataset's manifest, raising a clear error if it is unusable."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not files.isfile(path):
        raise MissingInputError(
            f"{path} not found: {data_dir!r} is not a finished TFRecord dataset. "
            f"Build it with `isic-preprocess --data_dir <images and masks> --output_dir {data_dir}`."
        )
    try:
        with files.open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); rebuild with isic-preprocess --overwrite") from e
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise InputError(
            f"{path} has schema version {version}, this code reads version {schema.SCHEMA_VERSION}; "
            "rebuild the records with isic-preprocess --overwrite"
        )
    for key in ("image_size", "counts", "shards", "splits"):
        if key not in manifest:
            raise InputError(f"{path} lacks the {key!r} field; rebuild with isic-preprocess --overwrite")
    return manifest


def shard_paths(data_dir: str, manifest: dict, split: str) -> list[str]:
    """Returns the absolute, sorted shard paths of `split`, checking that each file exists."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    paths = [os.path.join(data_dir, s["file"]) for s in manifest["shards"].get(split, [])]
    missing = [p for p in paths if not files.isfile(p)]
    if missing:
        raise MissingInputError(f"shard(s) listed in the manifest are missing: {missing[:3]}")
    return sorted(paths)
