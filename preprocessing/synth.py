"""Synthetic dermoscopy-like image/mask pairs, for the demo and the tests.

`make_pair(seed, index)` draws one image of roughly 600x450 to 1024x768 pixels:
  - skin: a skin tone with blotchy low-frequency colour texture and pixel noise;
  - one irregular lesion: a star-shaped outline (random Fourier harmonics, random
    elongation and rotation), darker towards its centre, with blotches of a second
    colour (blue-grey, dark brown or reddish), dark dots, and a soft border whose
    width varies from sharp to fuzzy; about one lesion in six has low contrast;
  - nuisances that are not lesion: dark hairs crossing the image (and the lesion),
    vignetting, a lighting gradient, and in a quarter of the images the black corners
    of a round dermoscope field of view.
The mask is exact: a pixel is lesion when its centre lies inside the outline (where the
soft border is 50% blended) and inside the field of view. Hairs over the lesion stay
lesion, as in ISIC annotations.

Every pair depends only on (seed, index), through numpy's SeedSequence, so a dataset can
be generated in any order and the same seed gives the same bytes (JPEG and PNG encoding
are deterministic for a given Pillow build).

`write_dataset` (what isic-synth runs) writes D/images/SYNTH_<7 digits>.jpg (quality 90)
and D/masks/SYNTH_<7 digits>_segmentation.png, each under a temporary name then renamed,
and D/synth.json last. Re-run with the same arguments on a complete set, it returns at
once without touching any file (a later isic-preprocess then sees unchanged inputs).
"""

import io
import json
import math
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from core import files
from core import names as names_lib
from core.errors import UserError
from preprocessing import parallel

# Bump when the drawing changes: `write_dataset` records it so a re-run knows whether the
# files on disk are what this code would write.
GENERATOR_VERSION = 1

_SKIN_TONES = np.array(
    [[236, 190, 165], [226, 172, 142], [208, 150, 122], [192, 136, 112], [240, 204, 190], [218, 160, 150]],
    np.float32,
)
_LESION_CORES = np.array(
    [[72, 42, 32], [98, 60, 44], [122, 80, 60], [62, 46, 52], [138, 90, 70], [88, 50, 46]], np.float32
)
_SECOND_COLOURS = np.array([[105, 110, 135], [45, 28, 22], [150, 72, 62]], np.float32)


class ForeignFilesError(UserError, FileExistsError):
    """The output folder holds files isic-synth did not write (it never mixes them)."""


def case_id(index: int) -> str:
    """Returns the ID of the `index`-th synthetic pair, e.g. 'SYNTH_0000007'."""
    return f"SYNTH_{index:07d}"


def make_pair(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws pair `index` of the dataset with this `seed`.

    Returns:
      image: uint8 [H, W, 3] RGB, W in [600, 1024], H in [450, 768].
      mask: uint8 [H, W], values exactly 0 (skin) or 255 (lesion).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    w = int(rng.integers(600, 1025))
    h = int(np.clip(round(w * rng.uniform(0.68, 0.8)), 450, 768))
    image = _skin(rng, h, w)  # float32 [H, W, 3]
    mask = np.zeros((h, w), bool)

    # The lesion is drawn inside its bounding window only (it covers 3-55% of the image).
    outline = _random_outline(rng, h, w)
    softness = rng.uniform(1.5, 2.0 + 0.12 * outline["r0"])
    rows, cols = _window(outline, h, w, margin=2 * softness + 2)
    signed_dist = _signed_distance(outline, rows, cols)  # float32 [h', w'], px
    patch = image[rows, cols]  # view [h', w', 3]
    lesion = _lesion_colour(rng, patch, signed_dist, outline["r0"])
    # Soft border: blend weight 0.5 exactly on the outline, where the mask flips.
    t = np.clip(0.5 + signed_dist / (2.0 * softness), 0.0, 1.0)
    alpha = (t * t * (3.0 - 2.0 * t))[..., None]  # [h', w', 1]
    patch[...] = patch * (1.0 - alpha) + lesion * alpha
    patch[...] = _draw_dots(rng, patch, signed_dist, outline["r0"])
    mask[rows, cols] = signed_dist > 0.0

    image = _draw_hairs(rng, image)
    image, field_of_view = _lighting(rng, image)
    mask &= field_of_view
    image += 2.5 * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


def encode_pair(image: np.ndarray, mask: np.ndarray) -> tuple[bytes, bytes]:
    """Encodes a pair as (JPEG quality 90 bytes, 8-bit grayscale PNG bytes)."""
    jpg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image, "RGB").save(jpg, format="JPEG", quality=90)
    Image.fromarray(mask, "L").save(png, format="PNG")
    return jpg.getvalue(), png.getvalue()


# Written last by write_dataset: the dataset is complete exactly when it exists.
STAMP_NAME = "synth.json"


def write_dataset(
    output_dir: str, num_images: int, seed: int, num_workers: int | None = None, progress: bool = True
) -> bool:
    """Writes pairs 0..num_images-1 of `seed` in the input layout under output_dir.

    Args:
      num_workers: drawing processes (None: all CPUs; 1: in this process). The bytes
        written do not depend on it.
      progress: show a progress bar (imports keras) and print a summary.
    Returns:
      False when the same set was already complete (nothing written), else True.
    Raises:
      ForeignFilesError: images/ or masks/ hold files that isic-synth did not write.
    """
    images_dir, masks_dir = os.path.join(output_dir, "images"), os.path.join(output_dir, "masks")
    stamp = {"num_images": num_images, "seed": seed, "generator_version": GENERATOR_VERSION}
    names = [(case_id(i) + ".jpg", names_lib.mask_name(case_id(i))) for i in range(num_images)]
    if _read_stamp(output_dir) == stamp and all(
        os.path.isfile(os.path.join(images_dir, a)) and os.path.isfile(os.path.join(masks_dir, b))
        for a, b in names
    ):
        if progress:
            print(f"{output_dir}: already generated ({num_images} pairs, seed {seed})")
        return False
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    _remove_stale(output_dir, images_dir, masks_dir, {a for a, _ in names}, {b for _, b in names})

    bar = None
    if progress:
        # keras (for its progress bar) is imported here: it loads TensorFlow, which the
        # drawing workers, started with 'spawn', must not import.
        import keras

        bar = keras.utils.Progbar(num_images, unit_name="pair")
    workers = min(num_workers or parallel.available_cpus(), num_images)
    tasks = ((seed, i) for i in range(num_images))
    with parallel.ordered_map(_draw, tasks, workers) as encoded:
        for i, ((image_name, mask_name), (jpg, png)) in enumerate(zip(names, encoded)):
            files.write_atomic(os.path.join(images_dir, image_name), jpg)
            files.write_atomic(os.path.join(masks_dir, mask_name), png)
            if bar:
                bar.update(i + 1)
    files.write_atomic(os.path.join(output_dir, STAMP_NAME), json.dumps(stamp, sort_keys=True).encode())
    if progress:
        print(f"Wrote {num_images} pairs to {images_dir} and {masks_dir}")
    return True


def _draw(task: tuple[int, int]) -> tuple[bytes, bytes]:
    """(JPEG, PNG) bytes of pair (seed, index); runs in the worker processes."""
    return encode_pair(*make_pair(*task))


def _read_stamp(output_dir: str) -> dict | None:
    try:
        with open(os.path.join(output_dir, STAMP_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _remove_stale(output_dir, images_dir, masks_dir, keep_images, keep_masks) -> None:
    """Deletes the stamp, then SYNTH_* and temporary files that this run will not
    rewrite; refuses to mix synthetic pairs with anything else."""
    for folder in (images_dir, masks_dir):
        foreign = [n for n in os.listdir(folder) if not n.startswith("SYNTH_")]
        if foreign:
            raise ForeignFilesError(
                f"{os.path.join(folder, foreign[0])} was not written by isic-synth; use an "
                "empty or new --output_dir"
            )
    # Without a stamp the set counts as incomplete, whatever happens next.
    if os.path.exists(os.path.join(output_dir, STAMP_NAME)):
        os.remove(os.path.join(output_dir, STAMP_NAME))
    for folder, keep in ((images_dir, keep_images), (masks_dir, keep_masks)):
        for name in os.listdir(folder):
            if name not in keep:
                os.remove(os.path.join(folder, name))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth random field float32 [H, W], about unit variance, blobs ~h/cells px wide."""
    gh = max(2, int(round(cells)))
    gw = max(2, int(round(cells * w / h)))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))
    return field / max(float(field.std()), 1e-3)


def _skin(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Skin tone with blotchy redness and mottled brightness, float32 [H, W, 3].

    Everything here is smooth, so it is drawn at quarter resolution and upsampled.
    """
    hs, ws = (h + 3) // 4, (w + 3) // 4
    a, b = rng.choice(len(_SKIN_TONES), size=2)
    mix = rng.uniform()
    base = _SKIN_TONES[a] * (1 - mix) + _SKIN_TONES[b] * mix
    base = base + rng.normal(0, 6, size=3).astype(np.float32)
    bright = (
        1.0
        + 0.05 * _smooth_noise(rng, hs, ws, rng.uniform(3, 7))
        + 0.025 * _smooth_noise(rng, hs, ws, rng.uniform(25, 45))
    )
    redness = np.clip(_smooth_noise(rng, hs, ws, rng.uniform(4, 9)), 0, None) * rng.uniform(0, 12)
    small = base[None, None, :] * bright[..., None]  # [H/4, W/4, 3]
    small += redness[..., None] * np.array([1.0, -0.6, -0.5], np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(small[..., c]), "F").resize((w, h), Image.BICUBIC))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def _random_outline(rng: np.random.Generator, h: int, w: int) -> dict:
    """Random lesion outline parameters: centre, mean radius r0 (px), shape harmonics."""
    area_fraction = np.exp(rng.uniform(np.log(0.03), np.log(0.55)))
    # Outline radius r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k)); low harmonics
    # give lobes, high ones a ragged edge. Sum of amplitudes <= 0.5 keeps r > 0.
    ks = np.arange(2, 19)
    amps = rng.uniform(0, 1, size=ks.size) / ks**1.2 * rng.uniform(0.1, 0.6)
    amps *= min(1.0, 0.5 / amps.sum())
    return {
        "cy": h * (0.5 + rng.uniform(-0.15, 0.15)),
        "cx": w * (0.5 + rng.uniform(-0.15, 0.15)),
        "r0": float(np.sqrt(area_fraction * h * w / np.pi)),
        "stretch": rng.uniform(0.75, 1.3),  # area-preserving elongation
        "angle": rng.uniform(0, np.pi),
        "ks": ks,
        "amps": amps,
        "phases": rng.uniform(0, 2 * np.pi, size=ks.size),
    }


def _window(outline: dict, h: int, w: int, margin: float) -> tuple[slice, slice]:
    """Rows and columns of the image that the lesion and its soft border can touch."""
    stretch = outline["stretch"]
    reach = outline["r0"] * (1 + outline["amps"].sum()) * max(stretch, 1 / stretch) + margin
    y0, y1 = int(max(0, outline["cy"] - reach)), int(min(h, outline["cy"] + reach + 1))
    x0, x1 = int(max(0, outline["cx"] - reach)), int(min(w, outline["cx"] + reach + 1))
    return slice(y0, y1), slice(x0, x1)


def _signed_distance(outline: dict, rows: slice, cols: slice) -> np.ndarray:
    """Radial signed distance to the outline float32 [rows, cols], > 0 inside (px)."""
    yy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 0.5 - outline["cy"]
    xx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + 0.5 - outline["cx"]
    cos, sin = math.cos(outline["angle"]), math.sin(outline["angle"])  # floats keep float32
    u = (xx * cos + yy * sin) / outline["stretch"]
    v = (yy * cos - xx * sin) * outline["stretch"]
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    # Tabulate r(theta) once and interpolate: 17 cosines per pixel would dominate the cost.
    ks, amps, phases = outline["ks"], outline["amps"], outline["phases"]
    table_theta = np.linspace(-np.pi, np.pi, 4097)
    table = outline["r0"] * (1 + (amps[:, None] * np.cos(ks[:, None] * table_theta + phases[:, None])).sum(0))
    return (np.interp(theta, table_theta, table) - rho).astype(np.float32)


def _lesion_colour(
    rng: np.random.Generator, skin: np.ndarray, signed_dist: np.ndarray, r0: float
) -> np.ndarray:
    """Lesion colour float32 [h', w', 3] over its window: dark core, lighter rim, blotches."""
    h, w = signed_dist.shape
    skin_mean = skin.reshape(-1, 3).mean(axis=0)
    if rng.uniform() < 0.17:
        # Low contrast: a light brown only 15-28% darker than the surrounding skin.
        core = skin_mean * rng.uniform(0.72, 0.85) * np.array([0.97, 0.9, 0.88], np.float32)
        rim = core * 0.4 + skin_mean * 0.6 * 0.9
    else:
        core = _LESION_CORES[rng.integers(len(_LESION_CORES))] * rng.uniform(0.85, 1.2)
        rim = core + (skin_mean * 0.85 - core) * rng.uniform(0.2, 0.6)
    depth = np.clip(signed_dist / (rng.uniform(0.3, 0.9) * r0), 0, 1)[..., None]  # [h', w', 1]
    colour = rim + (core - rim) * depth
    # Blotches of a second colour and a fine reticular darkening.
    second = _SECOND_COLOURS[rng.integers(len(_SECOND_COLOURS))]
    blotch = np.clip(_smooth_noise(rng, h, w, max(3.0, h / (0.5 * r0))) - rng.uniform(0.2, 1.2), 0, 1)
    colour += (second - colour) * (blotch * rng.uniform(0.3, 0.8))[..., None]
    reticule = 1.0 + 0.08 * _smooth_noise(rng, h, w, max(8.0, h / (0.08 * r0)))
    return (colour * reticule[..., None]).astype(np.float32)


def _draw_dots(rng: np.random.Generator, image: np.ndarray, signed_dist: np.ndarray, r0: float) -> np.ndarray:
    """Adds a few dark dots/globules inside the lesion (not crossing the outline)."""
    inside = np.argwhere(signed_dist > max(4.0, 0.1 * r0))
    if len(inside) == 0:
        return image
    canvas = Image.new("L", (image.shape[1], image.shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for y, x in inside[rng.integers(len(inside), size=int(rng.integers(0, 30)))]:
        r = rng.uniform(1.5, max(2.0, 0.04 * r0))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(80, 200)))
    weight = np.asarray(canvas, np.float32)[..., None] / 255.0  # [H, W, 1]
    return image * (1.0 - 0.6 * weight)


def _draw_hairs(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Draws 0-15 dark curved hairs anywhere (also across the lesion)."""
    if rng.uniform() < 0.35:
        return image
    h, w = image.shape[:2]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    diag = float(np.hypot(h, w))
    for _ in range(int(rng.integers(1, 16))):
        start = rng.uniform([0, 0], [w, h])
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.2, 0.8) * diag
        end = start + length * np.array([np.cos(direction), np.sin(direction)])
        bend = rng.uniform(-0.2, 0.2) * length
        ctrl = (start + end) / 2 + bend * np.array([-np.sin(direction), np.cos(direction)])
        t = np.linspace(0, 1, 24)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end  # [24, 2]
        draw.line(
            [tuple(p) for p in points],
            fill=int(rng.integers(150, 256)),
            width=int(rng.integers(1, 5)),
            joint="curve",
        )
    weight = np.asarray(canvas, np.float32)[..., None] / 255.0  # [H, W, 1]
    hair = np.array([35, 25, 20], np.float32) * rng.uniform(0.6, 1.6)
    return image * (1.0 - weight) + hair * weight


def _lighting(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vignetting, a lighting gradient and sometimes dark field-of-view corners.

    Returns (image float32 [H, W, 3], field_of_view bool [H, W]: pixels not blacked out).
    """
    h, w = image.shape[:2]
    yy = np.arange(h, dtype=np.float32)[:, None] + 0.5  # [H, 1]
    xx = np.arange(w, dtype=np.float32)[None, :] + 0.5  # [1, W]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    dist = np.hypot(yy - cy, xx - cx) / math.hypot(h / 2, w / 2)  # [H, W], ~1 at corners
    gain = 1.0 - rng.uniform(0.0, 0.35) * dist**2
    gain += rng.uniform(-0.08, 0.08) * (yy / h - 0.5) + rng.uniform(-0.08, 0.08) * (xx / w - 0.5)
    image = image * gain[..., None]
    field_of_view = np.ones((h, w), bool)
    if rng.uniform() < 0.25:
        radius = rng.uniform(0.8, 0.97)  # in units of the half-diagonal
        edge = rng.uniform(0.005, 0.03)
        t = np.clip((dist - radius) / edge + 0.5, 0, 1)[..., None]
        black = np.array([14, 11, 11], np.float32)
        image = image * (1 - t) + black * t
        field_of_view = dist < radius
    return image.astype(np.float32), field_of_view
