"""augment_batch: shapes, binary masks, image/mask alignment, zoom-out padding, photometric
ops, determinism, eager == tf.data, and AugmentConfig validation."""

import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from pipeline import augment
from pipeline.config import AugmentConfig

DEFAULT = AugmentConfig()
NO_COLOUR = dataclasses.replace(DEFAULT, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
# Only the 8 flips / 90-degree rotations (the strengths at augment_strength 0).
DIHEDRAL_ONLY = dataclasses.replace(NO_COLOUR, rotation_degrees=0.0, zoom_min=1.0, zoom_max=1.0)
PHOTOMETRIC = {"gamma": 0.5, "blur": 1.5, "noise": 0.1}

# Tests share one batch shape: XLA compiles the warp once per shape and dtype (~2 s).
N, SIZE = 8, 16


def _batch(n=N, size=SIZE, seed=0):
    """Random images float32 [n, size, size, 3] and masks with a random disc each."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(0.3, 0.7, size=(n, 2)) * size
    masks = np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 4) ** 2) for cy, cx in centres])
    return images, masks[..., None].astype(np.float32)


def _marker_batch(n=N, size=SIZE):
    """Grey images with a bright asymmetric L marker, and the same L as the mask."""
    images = np.full((n, size, size, 3), 0.2, np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    for target in (images, masks):
        target[:, 3:12, 4:7] = 1.0  # vertical bar
        target[:, 9:12, 7:13] = 1.0  # foot to the right, off-centre
    return images, masks


def _border_lesion_batch(n=N, size=SIZE, seed=0):
    """Textured skin with a dark lesion over the left quarter (touching the border), and
    that lesion as the mask."""
    rng = np.random.default_rng(seed)
    images = np.array([0.8, 0.6, 0.5]) + rng.uniform(-0.1, 0.1, (n, size, size, 3))
    masks = np.zeros((n, size, size, 1), np.float32)
    images[:, 4:12, : size // 4] = 0.1
    masks[:, 4:12, : size // 4] = 1.0
    return images.astype(np.float32), masks


def _ring_mean(images):
    """[B, 3] mean of the outermost ring of pixels."""
    ring = np.ones(images.shape[1:3], bool)
    ring[1:-1, 1:-1] = False
    return images[:, ring].mean(axis=1)


def _dihedral_index(image, out_image):
    """The (k, flip) with out_image == rot90(flip(image), k) exactly, or None."""
    for k, flip in itertools.product(range(4), (False, True)):
        if np.array_equal(np.rot90(image[:, ::-1] if flip else image, k), out_image):
            return k, flip
    return None


def _assert_exact_dihedral(images, masks, out_images, out_masks):
    """Every output pair is the same one of the 8 flips / 90-degree rotations of its input."""
    seen = set()
    for image, mask, out_image, out_mask in zip(images, masks, np.asarray(out_images), np.asarray(out_masks)):
        found = _dihedral_index(image, out_image)
        assert found is not None, "output is not a dihedral transform of its input"
        k, flip = found
        np.testing.assert_array_equal(np.rot90(mask[:, ::-1] if flip else mask, k), out_mask)
        seen.add(found)
    return seen


def _in_tf_data(images, masks, seed, config):
    """augment_batch run inside tf.data.Dataset.map."""
    ds = tf.data.Dataset.from_tensors((images, masks)).map(
        lambda i, m: augment.augment_batch(i, m, seed, config)
    )
    return next(iter(ds))


def test_shapes_dtypes_ranges_and_binary_masks():
    images, masks = _batch()
    wide = dataclasses.replace(DEFAULT, zoom_min=0.3, zoom_max=2.0, translate=0.2, **PHOTOMETRIC)
    for config in (DEFAULT, wide):
        out_images, out_masks = augment.augment_batch(images, masks, tf.constant([1, 2]), config)
        assert out_images.shape == images.shape and out_images.dtype == tf.float32
        assert out_masks.shape == masks.shape and out_masks.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out_images)) and float(tf.reduce_max(out_images)) <= 1.0
        assert set(np.unique(out_masks.numpy())) == {0.0, 1.0}
        assert not np.allclose(out_images.numpy(), images)  # something happened


def test_augment_off_returns_the_inputs():
    images, masks = _batch()
    off = dataclasses.replace(DEFAULT, augment=False)
    out_images, out_masks = augment.augment_batch(images, masks, tf.constant([1, 2]), off)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize("zoom", [(0.8, 1.2), (0.5, 0.7), (1.3, 1.6)])
def test_marker_stays_aligned_between_image_and_mask(zoom):
    images, masks = _marker_batch()
    config = dataclasses.replace(
        DEFAULT, rotation_degrees=30.0, zoom_min=zoom[0], zoom_max=zoom[1], translate=0.05
    )
    for out_images, out_masks in (
        augment.augment_batch(images, masks, tf.constant([3, 4]), config),
        _in_tf_data(images, masks, tf.constant([3, 4]), config),
    ):
        out_images, out_masks = out_images.numpy(), out_masks.numpy()[..., 0]
        assert set(np.unique(out_masks)) == {0.0, 1.0}
        moved = 0
        for image, mask, original in zip(out_images, out_masks, masks[..., 0]):
            # Colour jitter keeps grey grey; brightness/contrast keep marker > 0.6 > skin.
            marker = image.mean(axis=-1) > 0.6
            iou = (marker & (mask == 1)).sum() / (marker | (mask == 1)).sum()
            assert iou > 0.6, iou  # bilinear image vs nearest mask differ on the border only
            ys, xs = np.nonzero(mask)
            my, mx = np.nonzero(marker)
            assert abs(ys.mean() - my.mean()) < 0.6 and abs(xs.mean() - mx.mean()) < 0.6
            moved += not np.array_equal(mask, original)
        assert moved >= len(images) - 2


def test_zoom_out_pads_with_the_border_colour_and_an_empty_mask():
    # Zoom 0.5 about the centre of a 16x16 image: output pixels 4..11 sample the source
    # (at input 0.5, 2.5, ..., 14.5), pixels 0..3 and 12..15 lie a pixel or more outside.
    images, masks = _border_lesion_batch()
    half = dataclasses.replace(DIHEDRAL_ONLY, zoom_min=0.5, zoom_max=0.5)
    source = np.zeros((SIZE, SIZE), bool)
    source[4:12, 4:12] = True
    fill = _ring_mean(images)
    for out_images, out_masks in (
        augment.augment_batch(images, masks, tf.constant([1, 5]), half),
        _in_tf_data(images, masks, tf.constant([1, 5]), half),
    ):
        out_images, out_masks = out_images.numpy(), out_masks.numpy()[..., 0]
        # No lesion pixels in the padding, though the lesion touches the image border...
        assert not out_masks[:, ~source].any()
        # ...and no mirrored copy of it either: the padding is one colour, the border mean.
        np.testing.assert_allclose(
            out_images[:, ~source], np.broadcast_to(fill[:, None], out_images[:, ~source].shape), atol=1e-6
        )
        # The lesion is still there, at half its size, aligned with the dark pixels.
        for image, mask in zip(out_images, out_masks):
            assert mask.sum() == (8 // 2) * (SIZE // 4 // 2)
            np.testing.assert_array_equal(mask == 1, image.mean(axis=-1) < 0.2)


def test_zoom_in_with_translate_gives_random_crops_inside_the_image():
    # A linear ramp image: bilinear sampling is exact on it, so the output's centre pixel
    # tells where the sampled window's centre landed (the dihedral maps keep the centre).
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)
    images = np.zeros((N, SIZE, SIZE, 3), np.float32)
    images[..., 0], images[..., 1] = ramp[None, :], ramp[:, None]
    images[..., 2] = 0.5
    masks = np.zeros((N, SIZE, SIZE, 1), np.float32)
    zoom_in = dataclasses.replace(DIHEDRAL_ONLY, zoom_min=2.0, zoom_max=2.0)
    centres = []
    for translate in (0.0, 0.25):
        config = dataclasses.replace(zoom_in, translate=translate)
        seed = tf.constant([2, 9])
        out = augment.augment_batch(images, masks, seed, config)[0].numpy()
        np.testing.assert_array_equal(out, _in_tf_data(images, masks, seed, config)[0])
        # Mean of the 4 central pixels = the window centre's (x, y) on the ramp, in pixels.
        centre = out[:, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1, :2]
        centres.append(centre.mean(axis=(1, 2)) * (SIZE - 1))
        assert np.all(np.abs(out[..., 2] - 0.5) < 1e-6)  # no padding: the crop is inside
    np.testing.assert_allclose(centres[0], (SIZE - 1) / 2.0, atol=1e-4)  # centre crops
    offsets = centres[1] - (SIZE - 1) / 2.0
    assert np.all(np.abs(offsets) <= 0.25 * SIZE + 1e-4)
    assert len(np.unique(np.round(offsets, 3))) > N  # random per image and axis


def test_dihedral_transforms_are_exact_and_all_eight_occur():
    images, masks = _batch()
    outputs = [augment.augment_batch(images, masks, tf.constant([7, k]), DIHEDRAL_ONLY) for k in range(8)]
    seen = _assert_exact_dihedral(
        np.concatenate([images] * 8),
        np.concatenate([masks] * 8),
        np.concatenate([o[0] for o in outputs]),
        np.concatenate([o[1] for o in outputs]),
    )
    assert len(seen) == 8


def test_strength_zero_keeps_only_exact_dihedral_transforms():
    images, masks = _batch()
    zero = dataclasses.replace(
        DEFAULT, augment_strength=0.0, zoom_min=0.3, zoom_max=2.0, translate=0.2, **PHOTOMETRIC
    )
    assert augment.strengths(zero) == augment.strengths(DIHEDRAL_ONLY)
    _assert_exact_dihedral(images, masks, *augment.augment_batch(images, masks, tf.constant([5, 6]), zero))


def test_strength_scales_every_range():
    double = augment.strengths(dataclasses.replace(DEFAULT, augment_strength=2.0, blur=1.0))
    assert double.rotation_degrees == 30.0 and double.blur == 2.0
    assert (double.zoom_min, double.zoom_max) == pytest.approx((0.8, 1.2))
    assert double.hue == pytest.approx(0.04) and double.gamma == 0.0
    huge = augment.strengths(dataclasses.replace(DEFAULT, augment_strength=20.0))
    assert huge.contrast == huge.saturation == 1.0 and huge.zoom_min == 0.1
    assert augment.strengths(DEFAULT) == (15.0, 0.9, 1.1, 0.0, 0.1, 0.1, 0.1, 0.02, 0.0, 0.0, 0.0)


def test_warp_matches_image_projective_transform_v3_with_constant_fill():
    images, masks = _batch()
    images[:, [0, -1]] = 0.25  # the same border colour in every image: V3's fill_value
    images[:, :, [0, -1]] = 0.25
    config = dataclasses.replace(NO_COLOUR, rotation_degrees=20.0, zoom_min=0.5, zoom_max=1.3, translate=0.1)
    inverse = augment.inverse_transforms(N, tf.constant([9, 9]), SIZE, config)
    transforms = tf.concat([tf.reshape(inverse, [N, 6]), tf.zeros([N, 2])], axis=1)
    out_images, out_masks = augment.augment_batch(images, masks, tf.constant([9, 9]), config)

    def reference(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=transforms,
            output_shape=[SIZE, SIZE],
            fill_value=0.25,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )

    np.testing.assert_allclose(out_images, reference(images, "BILINEAR"), atol=1e-5)
    # Rounding ties may differ on a pixel or two; random angles make them rare. V3 fills
    # the mask with 0.25 too: compare against 0 there.
    expected = reference(masks, "NEAREST").numpy() == 1.0
    assert np.mean(out_masks.numpy().astype(bool) != expected) < 1e-3


@pytest.mark.parametrize("op", sorted(PHOTOMETRIC))
def test_photometric_op_changes_the_image_only_and_is_off_at_zero(op):
    images, masks = _batch()
    seed = tf.constant([4, 4])
    geometry = dataclasses.replace(DEFAULT, zoom_min=0.6, zoom_max=1.4, translate=0.1)
    plain = augment.augment_batch(images, masks, seed, geometry)
    with_op = dataclasses.replace(geometry, **{op: PHOTOMETRIC[op]})
    eager = augment.augment_batch(images, masks, seed, with_op)
    in_data = _in_tf_data(images, masks, seed, with_op)
    for out_images, out_masks in (eager, in_data):
        np.testing.assert_array_equal(out_masks, plain[1])  # the same geometry draws
        assert not np.allclose(out_images, plain[0])
        assert 0.0 <= float(tf.reduce_min(out_images)) and float(tf.reduce_max(out_images)) <= 1.0
    np.testing.assert_array_equal(eager[0], in_data[0])
    # At 0, nothing but the dihedral transform happens, eagerly and in tf.data.
    off = dataclasses.replace(DIHEDRAL_ONLY, **{op: 0.0})
    _assert_exact_dihedral(images, masks, *augment.augment_batch(images, masks, seed, off))
    _assert_exact_dihedral(images, masks, *_in_tf_data(images, masks, seed, off))


def test_gamma_is_log_uniform_within_its_range():
    grey = np.full((N, SIZE, SIZE, 3), 0.5, np.float32)
    masks = np.zeros((N, SIZE, SIZE, 1), np.float32)
    config = dataclasses.replace(DIHEDRAL_ONLY, gamma=1.0)  # gamma in [0.5, 2]
    out = augment.augment_batch(grey, masks, tf.constant([1, 3]), config)[0].numpy()
    gammas = np.log(out[:, 0, 0, 0]) / np.log(0.5)
    np.testing.assert_allclose(out, out[:, :1, :1, :1] * np.ones_like(out), atol=1e-6)
    assert np.all((gammas >= 0.5 - 1e-4) & (gammas <= 2.0 + 1e-4))
    assert (gammas < 1).any() and (gammas > 1).any()


def test_blur_smooths_about_half_the_images_and_keeps_flat_images_flat():
    images, masks = _batch()
    config = dataclasses.replace(DIHEDRAL_ONLY, blur=2.0)
    out = augment.augment_batch(images, masks, tf.constant([6, 1]), config)[0].numpy()
    sharp = [_dihedral_index(i, o) is not None for i, o in zip(images, out)]
    assert 0 < sum(sharp) < N  # some left sharp (exactly), some blurred
    ratios = [o.std() / i.std() for i, o, left in zip(images, out, sharp) if not left]
    assert max(ratios) < 1.0 and min(ratios) < 0.6  # sigma is uniform in [0, 2] pixels
    flat = np.full_like(images, 0.3)  # normalised at the border: no dark or reflected edge
    out = augment.augment_batch(flat, masks, tf.constant([6, 1]), config)[0].numpy()
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_noise_std_is_drawn_per_image_and_noise_is_near_gaussian_and_uncorrelated():
    grey = np.full((N, SIZE, SIZE, 3), 0.5, np.float32)
    masks = np.zeros((N, SIZE, SIZE, 1), np.float32)
    config = dataclasses.replace(DIHEDRAL_ONLY, noise=0.1)
    out = augment.augment_batch(grey, masks, tf.constant([8, 2]), config)[0].numpy() - 0.5
    stds = out.std(axis=(1, 2, 3))
    assert np.all(stds < 0.11) and len(np.unique(stds)) == N and stds.min() < 0.05
    z = out / stds[:, None, None, None]  # each image's noise, standardised
    assert np.abs(z.mean(axis=(1, 2, 3))).max() < 0.1 and np.abs(z).max() <= 3.5
    assert abs(np.mean(z**4) - 3.0) < 0.5  # kurtosis: 3 for a Gaussian, 2.7 here
    flat = z.reshape(N, -1)
    for a, b in ((flat[:, :-1], flat[:, 1:]), (flat[:-1], flat[1:])):  # neighbours, images
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.05
    other = augment.augment_batch(grey, masks, tf.constant([8, 3]), config)[0].numpy() - 0.5
    assert abs(np.corrcoef(out.ravel(), other.ravel())[0, 1]) < 0.05  # another seed


def test_eager_and_tf_data_map_give_identical_results():
    images, masks = _batch()
    seed = tf.constant([11, 12], tf.int64)
    config = dataclasses.replace(DEFAULT, zoom_min=0.4, zoom_max=1.8, translate=0.1, **PHOTOMETRIC)
    eager = augment.augment_batch(images, masks, seed, config)
    in_data = _in_tf_data(images, masks, seed, config)
    np.testing.assert_array_equal(eager[0].numpy(), in_data[0].numpy())
    np.testing.assert_array_equal(eager[1].numpy(), in_data[1].numpy())


@pytest.mark.parametrize("config", [DEFAULT, dataclasses.replace(DEFAULT, **PHOTOMETRIC)])
def test_same_seed_same_result_other_seed_other_result(config):
    images, masks = _batch()
    first = augment.augment_batch(images, masks, tf.constant([1, 1]), config)
    again = augment.augment_batch(images, masks, tf.constant([1, 1]), config)
    other = augment.augment_batch(images, masks, tf.constant([1, 2]), config)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_uint8_input_matches_float_input():
    images, masks = _batch()
    images8 = np.round(images * 255).astype(np.uint8)
    config = dataclasses.replace(DEFAULT, zoom_min=0.5, zoom_max=1.0)  # with padding
    seed = tf.constant([2, 3])
    from_uint8 = augment.augment_batch(images8, masks.astype(np.uint8), seed, config)
    from_float = augment.augment_batch(images8 / np.float32(255), masks, seed, config)
    np.testing.assert_allclose(from_uint8[0], from_float[0], atol=1e-5)
    np.testing.assert_array_equal(from_uint8[1], from_float[1])


def test_colour_jitter_leaves_mask_and_grey_hue_alone():
    images, masks = _batch()
    grey = np.repeat(images[..., :1], 3, axis=-1)
    jitter_only = dataclasses.replace(DEFAULT, rotation_degrees=0.0, zoom_min=1.0, zoom_max=1.0)
    out_images, out_masks = augment.augment_batch(grey, masks, tf.constant([4, 4]), jitter_only)
    plain = augment.augment_batch(grey, masks, tf.constant([4, 4]), DIHEDRAL_ONLY)
    np.testing.assert_array_equal(out_masks, plain[1])
    out = out_images.numpy()
    assert not np.allclose(out, plain[0])
    # Saturation and hue act on chroma only: grey stays grey (up to float rounding).
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-5)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(zoom_min=1.2, zoom_max=1.1), "zoom_min must be <= --zoom_max"),
        (dict(zoom_min=0.05), "zoom_min must be >= 0.1"),
        (dict(brightness=-0.1), "brightness must be >= 0"),
        (dict(translate=-0.1), "translate must be >= 0"),
        (dict(gamma=-1.0), "gamma must be >= 0"),
        (dict(blur=-1.0), "blur must be >= 0"),
        (dict(noise=-0.01), "noise must be >= 0"),
        (dict(augment_strength=-1.0), "augment_strength must be >= 0"),
        (dict(contrast=1.5), "contrast must be <= 1"),
        (dict(saturation=1.5), "saturation must be <= 1"),
    ],
)
def test_bad_options_raise_user_error(options, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(DEFAULT, **options)


def test_wide_zoom_range_is_accepted():
    config = dataclasses.replace(DEFAULT, zoom_min=0.3, zoom_max=2.0)
    assert (augment.strengths(config).zoom_min, augment.strengths(config).zoom_max) == (0.3, 2.0)
