"""Where the builder's time goes (stage 1), phase by phase, beside the naive loop's.

The builder gains 2.1-2.4x end to end over a plain PIL loop on the AMD EPYC kind but
only 1.28x on the 2-core Intel Xeon (AMX) kind (issue 28, item 5). These figures say
which phase is slow on a given kind:

  start_up_s      a fresh interpreter importing isic-preprocess's command module minus
                  one importing only what the naive loop needs (numpy, Pillow): wall
                  seconds, once per build
  jpeg_ms         the image's Image.open + draft (the builder's DCT-domain downscaling) + load
  png_ms          the mask's Image.open + load: the whole mask inflated (zlib)
  rest_ms         the rest of `load.load_pair`: EXIF, mode conversion, the checks, the box
                  resizes of image and mask (its total minus the two decodes above)
  encode_ms       `schema.encode_example` + `tfrecord.frame`: the Example protobuf and its
                  CRC32C framing (the file write itself is not timed: page cache)
  naive_ms        the naive loop's work for one pair (full decode, default resize of both)

The per-pair figures are CPU milliseconds (time.process_time) in this process, the mean
over the pairs; every figure is the best of `repeats` passes.
"""

import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Phases:
    """The builder's time per phase, and the naive loop's, on the same pairs (module doc)."""

    pairs: int
    start_up_s: float
    jpeg_ms: float
    png_ms: float
    rest_ms: float
    encode_ms: float
    naive_ms: float

    @property
    def builder_ms(self) -> float:
        """The builder's CPU milliseconds per pair, start-up excluded."""
        return self.jpeg_ms + self.png_ms + self.rest_ms + self.encode_ms


def decode_jpeg_draft(path: str, size: int) -> None:
    """The image's decoding as the builder does it: DCT-domain downscaling to >= size."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image.load()


def decode_png(path: str) -> None:
    """The mask's decoding: every row inflated (PNG has no reduced decode)."""
    with Image.open(path) as mask:
        mask.load()


def naive_pair(pair, size: int) -> None:
    """The original script's work for one pair: full decode and default resize of both."""
    image = np.asarray(Image.open(pair.image_path).convert("RGB").resize((size, size)))
    mask = np.asarray(Image.open(pair.mask_path).resize((size, size)))
    assert image.shape == (size, size, 3) and mask.shape == (size, size)


def measure_phases(pairs, image_size: int, repeats: int = 2) -> Phases:
    """`Phases` of `pairs` (preprocessing.pairs.Pair) at `image_size`."""
    from preprocessing import load
    from preprocessing import schema
    from preprocessing import tfrecord

    def jpeg(pair):
        decode_jpeg_draft(pair.image_path, image_size)

    def png(pair):
        decode_png(pair.mask_path)

    def load_pair(pair):
        return load.load_pair(pair, image_size)

    def naive(pair):
        naive_pair(pair, image_size)

    loaded = [load.load_pair(pair, image_size) for pair in pairs]

    def encode(index):
        pair, (image, mask, size) = pairs[index], loaded[index]
        tfrecord.frame(
            schema.encode_example(pair.case_id, image, mask, size, pair.image_file, pair.mask_file)
        )

    ms = {
        name: _best_ms_per_item(fn, items, repeats)
        for name, fn, items in (
            ("jpeg", jpeg, pairs),
            ("png", png, pairs),
            ("load_pair", load_pair, pairs),
            ("encode", encode, range(len(pairs))),
            ("naive", naive, pairs),
        )
    }
    return Phases(
        pairs=len(pairs),
        start_up_s=round(_start_up_seconds(repeats), 3),
        jpeg_ms=round(ms["jpeg"], 2),
        png_ms=round(ms["png"], 2),
        rest_ms=round(max(ms["load_pair"] - ms["jpeg"] - ms["png"], 0.0), 2),
        encode_ms=round(ms["encode"], 2),
        naive_ms=round(ms["naive"], 2),
    )


def _best_ms_per_item(fn, items, repeats: int) -> float:
    """CPU milliseconds of fn(item) per item, the fastest of `repeats` passes."""
    items = list(items)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - start)
    return 1000.0 * best / max(len(items), 1)


def _start_up_seconds(repeats: int) -> float:
    """Wall seconds a fresh interpreter needs to import the builder, beyond numpy and Pillow."""

    def best(code: str) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
            times.append(time.perf_counter() - start)
        return min(times)

    return max(best("import launch.commands.preprocess") - best("import numpy, PIL.Image"), 0.0)
