"""Training augmentation for segmentation, vectorised per batch and stateless.

`augment_batch(images, masks, seed, config)` draws, per example and from `seed` only, with
the strengths of `config` (a `pipeline.config.AugmentConfig`; see `strengths`):
  1. one of the 8 dihedral transforms (flips and 90-degree rotations), a rotation, a zoom
     and a shift of the sampled window, composed into ONE affine map per example and
     applied to image and mask together: bilinear for the image, nearest-neighbour for
     the mask (so it stays exactly binary and aligned with the image). Outside the source
     image (zoomed out, rotated corners, shifted window) the image is filled with its own
     border colour (the mean of its outermost ring of pixels: skin) and the mask with 0,
     so the padding holds no copy of the lesion, unlike reflected borders;
  2. colour jitter on the image only (brightness, contrast, saturation, hue), composed into
     one 3x3 colour matrix plus offset per example, then clipped to [0, 1];
  3. optionally, on the image only: gamma, Gaussian blur (half of the images), additive
     near-Gaussian noise (see `augment_xla._unit_noise`), then clipped to [0, 1] again.

Why not `tf.raw_ops.ImageProjectiveTransformV3`: its CPU kernel recomputes the source
coordinates for every output channel, below the pipeline's 1,000 images/s/core target
(docs/pipeline.md). The warp below computes coordinates once per pixel, gathers whole RGB
pixels (from uint8 when given uint8: 4x less memory traffic) and is compiled with XLA; it
gives the same values as that op with BILINEAR (image) / NEAREST (mask) interpolation and
CONSTANT fill (tested, with a fill colour shared by the batch).

Layout of the work, each part chosen by measurement (docs/pipeline.md):
  * per-example parameters: a few ordinary TF ops on [B, ...] tensors, so the XLA programs
    do not depend on the option values (one compilation per batch shape and dtype; the
    optional program also per set of ops turned on and blur kernel width), in a cached
    tf.function so that rebuilding the input pipeline every epoch does not retrace them;
  * per-pixel work: small XLA programs (sample points -> resample -> colour -> optional
    gamma/blur/noise). As one program XLA fused everything into per-channel loops that
    recomputed the coordinates and gathers; materialising them in between was cheaper.

Everything is a function of (inputs, seed, config): the same call gives the same bits
eagerly and inside `tf.data.Dataset.map`, which is what makes resumed runs exact. Each
transform draws from its own random column, so turning one on or off leaves the draws of
the others, and the mask, unchanged.
"""

import itertools
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from pipeline import augment_xla
from pipeline.config import ZOOM_FLOOR
from pipeline.config import AugmentConfig


def _dihedral_matrices() -> np.ndarray:
    """float32 [8, 2, 2]: R(k * 90 deg) @ diag(flip, 1), entries exactly 0 or +-1, so that a
    pure dihedral transform samples whole pixels and is lossless even through bilinear."""
    rotations = [np.array([[c, -s], [s, c]]) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))]
    flips = [np.diag([f, 1]) for f in (1, -1)]
    return np.array([r @ f for r, f in itertools.product(rotations, flips)], np.float32)


def _colour_basis() -> np.ndarray:
    """float32 [3, 3, 3] B with B[0] + a * B[1] + b * B[2] = YIQ^-1 @ [[1, 0, 0], [0, a, -b],
    [0, b, a]] @ YIQ: the RGB map that scales the chroma plane (I, Q) by sqrt(a^2 + b^2)
    (saturation) and rotates it by atan2(b, a) (hue), keeping the luma Y (grey) fixed."""
    rgb_to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq_to_rgb = np.linalg.inv(rgb_to_yiq)
    luma = np.outer(yiq_to_rgb[:, 0], rgb_to_yiq[0])
    scale = np.outer(yiq_to_rgb[:, 1], rgb_to_yiq[1]) + np.outer(yiq_to_rgb[:, 2], rgb_to_yiq[2])
    rotate = np.outer(yiq_to_rgb[:, 2], rgb_to_yiq[1]) - np.outer(yiq_to_rgb[:, 1], rgb_to_yiq[2])
    return np.array([luma, scale, rotate], np.float32)


_DIHEDRAL = _dihedral_matrices()
_COLOUR_BASIS = _colour_basis()


class Strengths(NamedTuple):
    """The strengths `augment_batch` applies: AugmentConfig's, times augment_strength.

    A NamedTuple of Python floats, so that the cached tf.function below traces once per
    distinct set of values.
    """

    rotation_degrees: float
    zoom_min: float
    zoom_max: float
    translate: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    gamma: float
    blur: float
    noise: float


def strengths(config: AugmentConfig) -> Strengths:
    """Every strength of `config` multiplied by `config.augment_strength`.

    Zoom scales the distance from 1: [1 - (1 - zoom_min) * k, 1 + (zoom_max - 1) * k] for
    strength k, floored at ZOOM_FLOOR; contrast and saturation are capped at 1 (their
    factors stay >= 0). So 0 keeps only the 8 flips / 90-degree rotations, 1 is `config`
    as written, and 2 doubles every range.
    """
    k = float(config.augment_strength)
    return Strengths(
        rotation_degrees=config.rotation_degrees * k,
        zoom_min=max(ZOOM_FLOOR, (1.0 - k) + k * config.zoom_min),  # exact at k = 0 and 1
        zoom_max=max(ZOOM_FLOOR, (1.0 - k) + k * config.zoom_max),
        translate=config.translate * k,
        brightness=config.brightness * k,
        contrast=min(1.0, config.contrast * k),
        saturation=min(1.0, config.saturation * k),
        hue=config.hue * k,
        gamma=config.gamma * k,
        blur=config.blur * k,
        noise=config.noise * k,
    )


def augment_batch(images, masks, seed, config: AugmentConfig):
    """Randomly transforms a batch of image/mask pairs; a pure function of `seed`.

    Args:
      images: float32 [B, S, S, 3] in [0, 1], or uint8 [B, S, S, 3] (faster: the
        input pipeline passes the parsed uint8 pixels).
      masks: float32 or uint8 [B, S, S, 1] with values 0/1.
      seed: int32/int64 [2], e.g. from `tf.random.experimental.stateless_fold_in`.
      config: the strengths (`pipeline.config.AugmentConfig` or a subclass such as
        TrainConfig); `config.augment` False returns the inputs unchanged, as float32.
    Returns:
      (images float32 [B, S, S, 3] in [0, 1], masks float32 [B, S, S, 1] in {0, 1}).
    """
    images, masks = tf.convert_to_tensor(images), tf.convert_to_tensor(masks)
    size = images.shape[1]
    if (
        images.shape.rank != 4
        or size is None
        or images.shape[2] != size
        or images.shape[3] != 3
        or masks.shape[1:] != [size, size, 1]
    ):
        raise ValueError(
            f"augment_batch needs images [B, S, S, 3] and masks [B, S, S, 1] "
            f"with a static S, got {images.shape} and {masks.shape}"
        )
    unit = 1.0 / 255.0 if images.dtype == tf.uint8 else 1.0  # stored value -> [0, 1]
    if not config.augment:
        return tf.cast(images, tf.float32) * unit, tf.cast(masks, tf.float32)
    options = strengths(config)
    seed = tf.convert_to_tensor(seed)
    inverse, colour, contrast_factor, delta, extra = _draw_parameters(
        tf.shape(images)[0], seed, size, options
    )
    pixels, masks, mean = augment_xla.resample(
        images, masks, augment_xla.border_colour(images), augment_xla.sample_points(inverse, size)
    )
    images, masks = augment_xla.apply_colour(pixels, masks, mean, colour * unit, contrast_factor, delta)
    if options.gamma or options.blur or options.noise:
        noise = (extra["noise_std"], extra["noise_key"]) if options.noise else None
        images = augment_xla.photometric(
            images,
            extra["gamma"] if options.gamma else None,
            extra["blur_kernel"] if options.blur else None,
            noise,
        )
    return images, masks


def inverse_transforms(batch_size: int, seed, size: int, config: AugmentConfig):
    """The geometry `augment_batch(images, masks, seed, config)` applies to a batch of
    `batch_size` S x S pairs (`size` = S), for checks and visualisation.

    Returns:
      float32 [B, 2, 3] A with (x_in, y_in) = A @ (x_out, y_out, 1), x = column, y = row:
      output pixel (x_out, y_out) samples the input at (x_in, y_in).
    """
    return _draw_parameters(batch_size, tf.convert_to_tensor(seed), size, strengths(config))[0]


def _blur_radius(sigma_max: float) -> int:
    """Half-width of the blur kernel: 3 sigma covers 99.7% of the Gaussian's weight."""
    return max(1, math.ceil(3.0 * sigma_max))


@tf.function
def _draw_parameters(batch, seed, size, options: Strengths):
    """Per-example transforms drawn from `seed` (a cached trace per option set).

    Returns:
      inverse: float32 [B, 2, 3] A with (x_in, y_in) = A @ (x_out, y_out, 1), x = column,
        y = row, about the image centre, plus the window shift. A = D @ R(theta) / s: D,
        theta and s come from symmetric sets, so drawing the inverse directly gives the
        same distribution.
      colour: float32 [B, 3, 3] saturation and hue map on RGB (identity when both are 0).
      contrast_factor, delta: float32 [B].
      extra: {"gamma": [B], "noise_std": [B], "blur_kernel": [B, 2r + 1] unnormalised
        Gaussian taps (exactly [.., 0, 1, 0, ..] for an image left sharp), "noise_key":
        uint32 [2] for `augment_xla._unit_noise`}.
    """
    # u's columns are fixed (the same options give the same bits as before v existed);
    # transforms added later draw from v, a second stream.
    u = tf.random.stateless_uniform([batch, 7], seed=seed)
    v = tf.random.stateless_uniform([batch, 6], seed=tf.random.experimental.stateless_fold_in(seed, 1))

    def symmetric(column, strength, source=u):  # [B] uniform in [-strength, strength]
        return (2.0 * source[:, column] - 1.0) * strength

    theta = symmetric(0, math.radians(options.rotation_degrees))
    scale = options.zoom_min + u[:, 1] * (options.zoom_max - options.zoom_min)
    cos_t, sin_t = tf.cos(theta) / scale, tf.sin(theta) / scale
    linear = tf.reshape(tf.stack([cos_t, -sin_t, sin_t, cos_t], axis=-1), [-1, 2, 2])
    which = tf.minimum(tf.cast(u[:, 2] * 8.0, tf.int32), 7)
    linear = tf.matmul(tf.gather(tf.constant(_DIHEDRAL), which), linear)
    centre = (size - 1) / 2.0
    shift = centre - tf.reduce_sum(linear, axis=-1) * centre  # keeps the centre fixed
    if options.translate:  # then moves the window by up to translate * S per axis
        shift += tf.stack(
            [symmetric(0, options.translate * size, v), symmetric(1, options.translate * size, v)], axis=-1
        )
    inverse = tf.concat([linear, shift[..., None]], axis=-1)
    if options.saturation or options.hue:
        chroma = 1.0 + symmetric(3, options.saturation)
        angle = symmetric(4, options.hue * 2.0 * math.pi)
        weights = tf.stack([tf.ones_like(angle), chroma * tf.cos(angle), chroma * tf.sin(angle)], axis=-1)
        colour = tf.einsum("bk,kij->bij", weights, tf.constant(_COLOUR_BASIS))
    else:  # exactly the identity, so that geometry-only augmentation is lossless
        colour = tf.eye(3, batch_shape=[batch])
    contrast_factor = 1.0 + symmetric(5, options.contrast)
    return inverse, colour, contrast_factor, symmetric(6, options.brightness), _draw_extra(v, seed, options)


def _draw_extra(v, seed, options: Strengths) -> dict:
    """The gamma, blur and noise parameters of `_draw_parameters` from columns 2-5 of v."""
    # Log-uniform gamma in [1 / (1 + g), 1 + g]: brightening and darkening equally likely.
    gamma = tf.exp((2.0 * v[:, 2] - 1.0) * math.log1p(options.gamma))
    sigma = tf.where(v[:, 3] < 0.5, v[:, 4] * options.blur, 0.0)  # half the images sharp
    sigma = tf.maximum(sigma, 1e-3)[:, None]  # sigma 1e-3: every tap but the centre is 0.0
    radius = _blur_radius(options.blur)
    taps = tf.constant(np.arange(-radius, radius + 1) ** 2 / 2.0, tf.float32)
    noise_key = tf.random.stateless_uniform(
        [2], seed=tf.random.experimental.stateless_fold_in(seed, 2), dtype=tf.uint32, minval=None, maxval=None
    )
    return {
        "gamma": gamma,
        "blur_kernel": tf.exp(-taps / (sigma * sigma)),
        "noise_std": v[:, 5] * options.noise,
        "noise_key": noise_key,
    }
