"""Tiny image/mask folders and build helpers shared by the preprocessing tests."""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from core import names
from preprocessing import build
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing import schema
from preprocessing.config import BuildConfig

S = 16

# ----------------------------------------------------------------------------- helpers


def write_pair(root, case_id, image, mask, ext=".png", **save_kw):
    """Writes root/images/<case_id><ext> and root/masks/<case_id>_segmentation.png."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    image_path = os.path.join(root, "images", case_id + ext)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(image_path, **save_kw)
    mask_path = os.path.join(root, "masks", names.mask_name(case_id))
    (mask if isinstance(mask, Image.Image) else Image.fromarray(mask)).save(mask_path)
    return image_path, mask_path


def random_dataset(root, n, seed=0, h=30, w=40, prefix="ID"):
    """n random JPEG pairs of h x w with a random 0/255 rectangle mask each."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h // 2, x : x + w // 2] = 255
        write_pair(root, f"{prefix}_{i:03d}", image, mask, ext=".jpg", quality=90)
    return os.path.join(root, "images"), os.path.join(root, "masks")


CONFIG = BuildConfig(image_size=S, num_workers=1)


def build_dir(root, out, **kw):
    """Builds root/images + root/masks (or several roots) into out with CONFIG + kw."""
    roots = [root] if isinstance(root, str) else root
    inputs = [pairs_lib.dataset_dirs(r) for r in roots]
    return build.build_records(inputs, out, dataclasses.replace(CONFIG, **kw), progress=False)


def read_records(out, manifest):
    """{case_id: parsed record as numpy} over all splits, with the split added."""
    records = {}
    for split in manifest_lib.SPLITS:
        paths = manifest_lib.shard_paths(out, manifest, split)
        if not paths:
            continue
        for batch in tf.data.TFRecordDataset(paths).batch(64):
            parsed = schema.parse_batch(batch, manifest["image_size"])
            for i, case_id in enumerate(parsed["case_id"].numpy()):
                records[case_id.decode()] = {
                    "split": split,
                    "image": parsed["image"][i].numpy(),
                    "mask": parsed["mask"][i, ..., 0].numpy(),
                    "original_size": tuple(parsed["original_size"][i].numpy().tolist()),
                    "source_image": parsed["source_image"][i].numpy().decode(),
                    "source_mask": parsed["source_mask"][i].numpy().decode(),
                    "source": parsed["source"][i].numpy().decode(),
                }
    return records


def shard_bytes(out):
    return {
        n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".tfrecord")
    }


def own_files(out):
    return sorted(n for n in os.listdir(out) if not n.startswith("."))
