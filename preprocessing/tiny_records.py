"""Tiny synthetic record sets in a second, for the tests and the chaos benchmark.

`make_pair` draws a filled disc (the "lesion") on a textured background so that
masks are exact and models can learn them in a few steps. `write_records` turns
such pairs into a TFRecord dataset with the builder's own code (schema.encode_example,
shards.write_shard, writer.make_manifest, manifest.write_manifest), so pipeline and
trainer tests (and benchmarks/chaos.py) read what isic-preprocess writes, without
decoding image files. A library module, not a test helper, because nothing outside
tests/ may import tests/ (tests/test_layers.py); like the builder it needs no TensorFlow.
"""

import numpy as np

from core import files
from core import names
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing import plan as plan_lib
from preprocessing import schema
from preprocessing import shards
from preprocessing import writer
from preprocessing.config import BuildConfig

SOURCE = "factory"  # the one input folder's name (it has no files: no full-resolution originals)


def make_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image uint8 [size, size, 3], mask uint8 [size, size] in {0, 1})."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3, 0.7, size=2) * size
    r = rng.uniform(0.15, 0.3) * size
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    skin = np.array([220, 170, 140], np.float32)
    lesion = np.array([90, 50, 30], np.float32)
    noise = rng.normal(0, 12, size=(size, size, 3))
    image = np.where(mask[..., None] == 1, lesion, skin) + noise
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_records(
    out_dir: str, counts: dict, size: int = 32, shards_per_split: int = 2, seed: int = 0, legacy: bool = False
) -> dict:
    """Writes a complete tiny dataset as the builder does; returns its manifest.

    Args:
      out_dir: destination directory (created).
      counts: records per split, e.g. {"train": 16, "val": 4, "test": 4}; the IDs are
        "<SPLIT>_<i:05d>" (e.g. "VAL_00003"), in that order in their split.
      size: image size S (the "original" size recorded is 3S x 4S).
      shards_per_split: shards per split (capped at its records), filled as the builder
        fills them (contiguous runs of IDs, the larger shards first).
      seed: numpy seed for the pairs.
      legacy: the manifest as builders wrote it before the "sources" and "preprocessing"
        fields existed (for the tests of that fallback); records carry an empty source.
    """
    files.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    total = sum(counts.values())
    config = BuildConfig(
        image_size=size,
        seed=seed,
        num_shards=shards_per_split,
        splits=",".join(repr(counts.get(s, 0) / total) for s in manifest_lib.SPLITS),
    )
    by_split = {
        split: [f"{split.upper()}_{i:05d}" for i in range(counts.get(split, 0))]
        for split in manifest_lib.SPLITS
    }
    source = "" if legacy else SOURCE
    records = {}
    for case_id in (i for split in manifest_lib.SPLITS for i in by_split[split]):
        image, mask = make_pair(rng, size)
        records[case_id] = schema.encode_example(
            case_id, image, mask, (size * 3, size * 4), case_id + ".jpg", names.mask_name(case_id), source
        )
    entries = {split: [] for split in manifest_lib.SPLITS}
    for split, index, count, ids in writer.shard_plan(by_split, shards_per_split):
        entries[split].append(shards.write_shard(out_dir, split, index, count, (records[i] for i in ids)))
    sources = [pairs_lib.Source(SOURCE, images_dir="", masks_dir="")]
    listing = pairs_lib.Listing(
        pairs=[pairs_lib.Pair(i, i + ".jpg", names.mask_name(i), SOURCE) for i in records],
        problems=[],
        ignored=[],
        fingerprint="",
        num_files=0,
    )
    plan = plan_lib.Plan(sources, listing, plan_lib.build_options(sources, listing, config))
    manifest = writer.make_manifest(plan, config, by_split, entries, problems=[])
    if legacy:
        for key in ("sources", "preprocessing"):
            del manifest[key]
    manifest_lib.write_manifest(out_dir, manifest)
    return manifest
