"""Tiny synthetic datasets for tests: small images with known masks.

`make_pair` draws a filled disc (the "lesion") on a textured background so that
masks are exact and models can learn them in a few steps. `write_records` turns
such pairs into a TFRecord dataset (shards + manifest) through the same schema
and manifest modules the builder uses, so pipeline and trainer tests do not
depend on the image builder.
"""

import hashlib
import os

import numpy as np
import tensorflow as tf

from preprocessing import manifest as manifest_lib
from preprocessing import schema


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


def write_records(out_dir: str, counts: dict, size: int = 32, shards_per_split: int = 2,
                  seed: int = 0) -> dict:
    """Writes a complete tiny dataset; returns its manifest.

    Args:
      out_dir: destination directory (created).
      counts: records per split, e.g. {"train": 16, "val": 4, "test": 4}.
      size: image size S.
      shards_per_split: records are dealt round-robin into this many shards.
      seed: numpy seed for the pairs.
    """
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION, "image_size": size, "seed": seed,
        "fractions": {}, "counts": {}, "shards": {}, "splits": {}, "skipped": [],
        "ignored_files": 0, "source": {"images_dir": "", "masks_dir": ""}, "build": {},
    }
    for split in manifest_lib.SPLITS:
        n = counts.get(split, 0)
        manifest["counts"][split] = n
        manifest["shards"][split] = []
        if n == 0:
            continue
        num_shards = min(shards_per_split, n)
        records = [[] for _ in range(num_shards)]
        for i in range(n):
            case_id = f"{split.upper()}_{i:05d}"
            image, mask = make_pair(rng, size)
            records[i % num_shards].append(schema.encode_example(
                case_id, image, mask, (size * 3, size * 4), case_id + ".jpg",
                case_id + "_segmentation.png"))
            manifest["splits"][case_id] = split
        for k, recs in enumerate(records):
            name = manifest_lib.shard_name(split, k, num_shards)
            with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as w:
                for r in recs:
                    w.write(r)
            with open(os.path.join(out_dir, name), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            manifest["shards"][split].append({"file": name, "records": len(recs), "sha256": digest})
    manifest_lib.write_manifest(out_dir, manifest)
    return manifest
