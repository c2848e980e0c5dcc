"""The per-pixel work of `augment.augment_batch`: small XLA programs on whole batches.

sample points -> resample (image bilinear, mask nearest, outside filled with the border
colour and 0) -> colour -> optional gamma, blur and noise. The parameters they apply are
drawn in pipeline/augment.py; these programs do not depend on the option values, so XLA
compiles them once per batch shape and dtype (see augment.py's docstring for why they are
several programs rather than one).
"""

import math

import numpy as np
import tensorflow as tf


@tf.function(jit_compile=True)
def sample_points(inverse, size: int):
    """Where each output pixel samples the input.

    Outside the source image the image is to be its fill colour and the mask 0, as if the
    image lay on an infinite plane of that colour. Per axis the bilinear interpolant on
    that plane is `inside * (interpolant at the coordinate clamped into the image) +
    (1 - inside) * fill`, `inside` being the weight on pixels of the image; the product of
    the two axes' `inside` gives the same in 2-D. So no padding is needed.

    Args:
      inverse: float32 [B, 2, 3] from `_draw_parameters`; size: S.
    Returns:
      base: int32 [B, S*S], row of the top-left neighbour (clamped coordinate) in the
        batch flattened to [B*S*S, C]; the other three neighbours are base + 1, base + S
        and base + S + 1 (in the image: corners are clamped to [0, S - 2]);
      wx, wy: float32 [B, S*S] in [0, 1], weights of the right and bottom neighbours;
      inside: float32 [B, S*S] in [0, 1]: 1 in the image, 0 at a pixel or more outside;
      in_mask: bool [B, S*S], whether the nearest pixel, floor(x + 0.5), is in the image.
    """
    rows, cols = np.mgrid[0:size, 0:size].reshape(2, -1).astype(np.float32)
    grid = tf.constant(np.stack([cols, rows, np.ones_like(cols)]))  # [3, S*S]: x, y, 1
    points = tf.einsum("bij,jp->bip", inverse, grid)  # [B, 2, S*S]
    in_image = tf.clip_by_value(tf.minimum(points + 1.0, size - points), 0.0, 1.0)
    in_mask = tf.reduce_all((points >= -0.5) & (points < size - 0.5), axis=1)
    points = tf.clip_by_value(points, 0.0, size - 1.0)
    corner = tf.minimum(tf.floor(points), size - 2.0)  # in [0, S - 2]
    weights = points - corner  # in [0, 1]
    corner = tf.cast(corner, tf.int32)
    first_row = (tf.range(tf.shape(inverse)[0]) * size * size)[:, None]  # [B, 1]
    return (
        first_row + corner[:, 1] * size + corner[:, 0],
        weights[:, 0],
        weights[:, 1],
        in_image[:, 0] * in_image[:, 1],
        in_mask,
    )


@tf.function(jit_compile=True)
def resample(images, masks, fill, points):
    """Samples images bilinearly and masks by nearest neighbour at `sample_points`.

    Args:
      images: [B, S, S, 3] uint8 or float32; masks: [B, S, S, 1] uint8 or float32;
      fill: float32 [B, 3], the colour outside the image (units of `images`);
      points: (base, wx, wy, inside, in_mask) from `sample_points`.
    Returns:
      pixels float32 [B, S*S, 3] in the units of `images`, masks [B, S*S, 1] (same
      dtype), and the mean colour float32 [B, 3] of `images` (on a 4x-strided grid: the
      contrast centre need not be exact, and a full reduction costs as much as the warp).
    """
    base, wx, wy, inside, in_mask = points
    size = images.shape[2]
    flat_images, flat_masks = tf.reshape(images, [-1, 3]), tf.reshape(masks, [-1])

    def neighbour(offset):  # float32 [B, S*S, 3]: one gather moves a whole RGB pixel
        return tf.cast(tf.gather(flat_images, base + offset), tf.float32)

    wx3, wy3, inside3 = wx[..., None], wy[..., None], inside[..., None]
    pixels = (neighbour(0) * (1.0 - wx3) + neighbour(1) * wx3) * (1.0 - wy3) + (
        neighbour(size) * (1.0 - wx3) + neighbour(size + 1) * wx3
    ) * wy3
    pixels = pixels * inside3 + (1.0 - inside3) * fill[:, None, :]
    # Nearest neighbour, rounding half up like floor(x + 0.5): masks stay exactly 0/1.
    nearest = base + tf.cast(wx >= 0.5, tf.int32) + tf.cast(wy >= 0.5, tf.int32) * size
    nearest = tf.where(in_mask, tf.gather(flat_masks, nearest), tf.zeros([], masks.dtype))
    mean = tf.reduce_mean(tf.cast(images[:, ::4, ::4, :], tf.float32), axis=[1, 2])
    return pixels, nearest[..., None], mean


@tf.function(jit_compile=True)
def border_colour(images):
    """float32 [B, 3]: mean of each image's outermost ring of 4 * (S - 1) pixels.

    Its own XLA program: inside `resample`, XLA fused it into the per-pixel loop and
    recomputed it for every pixel; as plain TF ops, graph rewrites inside tf.data changed
    its last bit.
    """

    def total(edge):  # [B, n, 3] -> [B, 3]
        return tf.reduce_sum(tf.cast(edge, tf.float32), axis=1)

    ring = total(images[:, 0]) + total(images[:, -1]) + total(images[:, 1:-1, 0]) + total(images[:, 1:-1, -1])
    return ring / (4.0 * (images.shape[1] - 1))


@tf.function(jit_compile=True)
def apply_colour(pixels, masks, mean, colour, contrast_factor, delta):
    """Colour jitter, clip, and reshape to images.

    rgb' = c * (M rgb - M m) + M m + delta per example, with M = `colour` (already scaled
    from stored units to [0, 1]), m = `mean`, c = `contrast_factor`.

    Args:
      pixels: float32 [B, S*S, 3]; masks: [B, S*S, 1]; mean: float32 [B, 3].
      colour: float32 [B, 3, 3]; contrast_factor, delta: float32 [B].
    Returns:
      images float32 [B, S, S, 3] in [0, 1], masks float32 [B, S, S, 1].
    """
    batch, size = tf.shape(pixels)[0], math.isqrt(pixels.shape[1])
    c = contrast_factor[:, None]
    offset = (1.0 - c) * tf.einsum("bij,bj->bi", colour, mean) + delta[:, None]  # [B, 3]
    columns = (colour * c[..., None])[:, None]  # [B, 1, 3 out, 3 in]: 3 FMAs beat a dot here
    pixels = (
        pixels[..., 0:1] * columns[..., 0]
        + pixels[..., 1:2] * columns[..., 1]
        + pixels[..., 2:3] * columns[..., 2]
        + offset[:, None, :]
    )
    images = tf.reshape(tf.clip_by_value(pixels, 0.0, 1.0), [batch, size, size, 3])
    return images, tf.reshape(tf.cast(masks, tf.float32), [batch, size, size, 1])


@tf.function(jit_compile=True)
def photometric(images, gamma, blur_kernel, noise):
    """Gamma, then blur, then noise (each skipped when None), then clip to [0, 1].

    Args:
      images: float32 [B, S, S, 3] in [0, 1]; gamma: float32 [B] or None;
      blur_kernel: float32 [B, 2r + 1] or None;
      noise: (std float32 [B], key uint32 [2]) or None.
    """
    if gamma is not None:  # x ** g as exp(g log x): 0 stays 0, and cheaper than pow
        images = tf.exp(tf.math.log(images) * gamma[:, None, None, None])
    if blur_kernel is not None:  # separable: vertical, then horizontal
        images = _blur_axis(_blur_axis(images, blur_kernel, 1), blur_kernel, 2)
    if noise is not None:
        std, key = noise
        images += _unit_noise(tf.shape(images), key) * std[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 1.0)


def _mix(x):
    """A bijective avalanche mix of uint32 values (Wellons' "lowbias32" hash)."""
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, np.uint32(shift)))
        x *= np.uint32(factor)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, np.uint32(16)))


def _unit_noise(shape, key):
    """float32 `shape` (int32 [4]): near-Gaussian noise, mean 0, std 1, within +-3.45.

    Each value is a keyed hash of its element index, mix(mix(i ^ k0) ^ k1), whose 4 bytes
    are summed (Irwin-Hall with n = 4: excess kurtosis -0.3, no tails past 3.45 std). Not
    tf.random.stateless_normal: inside XLA its CPU code is orders of magnitude slower,
    and outside it still costs more than the whole warp; integer hashing vectorises.
    """
    index = tf.bitcast(tf.reshape(tf.range(tf.reduce_prod(shape)), shape), tf.uint32)
    bits = _mix(tf.bitwise.bitwise_xor(_mix(tf.bitwise.bitwise_xor(index, key[0])), key[1]))
    total = 0.0
    for byte in range(4):
        total += tf.cast(
            tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, np.uint32(8 * byte)), np.uint32(255)),
            tf.float32,
        )
    # Each byte is uniform on 0..255: mean 127.5, variance (256^2 - 1) / 12.
    return (total - 510.0) / math.sqrt((256.0**2 - 1.0) / 3.0)


def _blur_axis(images, kernel, axis: int):
    """Per-image 1-D convolution along `axis` (1: vertical, 2: horizontal), normalised by
    the taps that fall inside the image, so the border is neither darkened nor reflected.

    images: float32 [B, S, S, 3]; kernel: float32 [B, K] with K = 2r + 1 odd.
    """
    size, taps = images.shape[axis], kernel.shape[1]
    radius = taps // 2
    padding = [[0, 0]] * 4
    padding[axis] = [radius, radius]
    padded = tf.pad(images, padding)
    shape = [-1, 1, 1, 1]
    total = 0.0
    for k in range(taps):  # K shifted multiply-adds, fused by XLA into one loop
        window = padded[:, k : k + size] if axis == 1 else padded[:, :, k : k + size]
        total += window * tf.reshape(kernel[:, k], shape)
    offsets = np.arange(size)[:, None] + np.arange(taps)[None, :] - radius  # [S, K]
    valid = tf.constant((offsets >= 0) & (offsets < size), tf.float32)
    norm = tf.einsum("bk,ik->bi", kernel, valid)  # [B, S]: weight inside the image
    norm = norm[:, :, None, None] if axis == 1 else norm[:, None, :, None]
    return total / norm
