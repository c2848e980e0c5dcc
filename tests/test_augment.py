"""augment_batch: shapes, binary masks, image/mask alignment, determinism, eager == tf.data."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from pipeline import augment

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
NO_GEOMETRY = dict(rotation_degrees=0.0, scale_range=(1.0, 1.0), dihedral=False)


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
        target[:, 3:12, 4:7] = 1.0   # vertical bar
        target[:, 9:12, 7:13] = 1.0  # foot to the right, off-centre
    return images, masks


def test_shapes_dtypes_ranges_and_binary_masks():
    images, masks = _batch()
    out_images, out_masks = augment.augment_batch(images, masks, tf.constant([1, 2]))
    assert out_images.shape == images.shape and out_images.dtype == tf.float32
    assert out_masks.shape == masks.shape and out_masks.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out_images)) and float(tf.reduce_max(out_images)) <= 1.0
    assert set(np.unique(out_masks.numpy())) <= {0.0, 1.0}
    assert not np.allclose(out_images.numpy(), images)  # something happened


def test_marker_stays_aligned_between_image_and_mask():
    images, masks = _marker_batch()
    out_images, out_masks = augment.augment_batch(images, masks, tf.constant([3, 4]),
                                                  rotation_degrees=30.0, scale_range=(0.8, 1.2))
    out_images, out_masks = out_images.numpy(), out_masks.numpy()[..., 0]
    assert out_masks.sum() > 0.8 * masks.sum()  # the marker stays mostly in view
    assert set(np.unique(out_masks)) == {0.0, 1.0}
    moved = 0
    for image, mask, original in zip(out_images, out_masks, masks[..., 0]):
        # Colour jitter keeps grey grey; brightness/contrast keep marker > 0.6 > background.
        marker = image.mean(axis=-1) > 0.6
        iou = (marker & (mask == 1)).sum() / (marker | (mask == 1)).sum()
        assert iou > 0.75, iou  # bilinear image vs nearest mask differ on the border only
        ys, xs = np.nonzero(mask)
        my, mx = np.nonzero(marker)
        assert abs(ys.mean() - my.mean()) < 0.6 and abs(xs.mean() - mx.mean()) < 0.6
        moved += not np.array_equal(mask, original)
    assert moved >= len(images) - 2


def test_without_colour_jitter_thresholded_image_equals_mask_on_whole_pixels():
    # Dihedral transforms only: whole-pixel moves, so the marker and the mask match exactly.
    images, masks = _marker_batch()
    out_images, out_masks = augment.augment_batch(
        images, masks, tf.constant([5, 6]), rotation_degrees=0.0, scale_range=(1.0, 1.0),
        **NO_COLOUR)
    np.testing.assert_array_equal(out_images.numpy()[..., :1] > 0.6, out_masks.numpy() == 1)


def test_dihedral_transforms_are_exact_and_all_eight_occur():
    images, masks = _batch()
    outputs = [augment.augment_batch(images, masks, tf.constant([7, k]), rotation_degrees=0.0,
                                     scale_range=(1.0, 1.0), **NO_COLOUR) for k in range(8)]
    seen = set()
    for image, mask, out_image, out_mask in zip(
            np.concatenate([images] * 8), np.concatenate([masks] * 8),
            np.concatenate([o[0].numpy() for o in outputs]),
            np.concatenate([o[1].numpy() for o in outputs])):
        for k, flip in itertools.product(range(4), (False, True)):
            def transform(x):
                return np.rot90(x[:, ::-1] if flip else x, k)
            if np.array_equal(transform(image), out_image):
                np.testing.assert_array_equal(transform(mask), out_mask)
                seen.add((k, flip))
                break
        else:
            pytest.fail("output is not a dihedral transform of its input")
    assert len(seen) == 8


def test_warp_matches_image_projective_transform_v3():
    images, masks = _batch()
    inverse = augment._draw_parameters(N, tf.constant([9, 9]), SIZE, 20.0, (0.7, 1.3), True,
                                       0.0, 0.0, 0.0, 0.0)[0]
    base, wx, wy = augment._sample_points(inverse, SIZE)
    pixels, out_masks, _ = augment._resample(images, masks, base, wx, wy)
    transforms = tf.concat([tf.reshape(inverse, [N, 6]), tf.zeros([N, 2])], axis=1)

    def reference(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=[SIZE, SIZE], fill_value=0.0,
            interpolation=interpolation, fill_mode="REFLECT")

    np.testing.assert_allclose(tf.reshape(pixels, images.shape), reference(images, "BILINEAR"),
                               atol=1e-5)
    # Rounding ties may differ on a pixel or two; random angles make them rare.
    mismatch = tf.reshape(out_masks, masks.shape).numpy() != reference(masks, "NEAREST").numpy()
    assert mismatch.mean() < 1e-3


def test_eager_and_tf_data_map_give_identical_results():
    images, masks = _batch()
    seed = tf.constant([11, 12], tf.int64)
    eager = augment.augment_batch(images, masks, seed)
    ds = tf.data.Dataset.from_tensors((images, masks)).map(
        lambda i, m: augment.augment_batch(i, m, seed))
    in_data = next(iter(ds))
    np.testing.assert_array_equal(eager[0].numpy(), in_data[0].numpy())
    np.testing.assert_array_equal(eager[1].numpy(), in_data[1].numpy())


def test_same_seed_same_result_other_seed_other_result():
    images, masks = _batch()
    first = augment.augment_batch(images, masks, tf.constant([1, 1]))
    again = augment.augment_batch(images, masks, tf.constant([1, 1]))
    other = augment.augment_batch(images, masks, tf.constant([1, 2]))
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_uint8_input_matches_float_input():
    images, masks = _batch()
    images8 = np.round(images * 255).astype(np.uint8)
    from_uint8 = augment.augment_batch(images8, masks.astype(np.uint8), tf.constant([2, 3]))
    from_float = augment.augment_batch(images8 / np.float32(255), masks, tf.constant([2, 3]))
    np.testing.assert_allclose(from_uint8[0], from_float[0], atol=1e-5)
    np.testing.assert_array_equal(from_uint8[1], from_float[1])


def test_colour_jitter_leaves_mask_and_grey_hue_alone():
    images, masks = _batch()
    grey = np.repeat(images[..., :1], 3, axis=-1)
    out_images, out_masks = augment.augment_batch(grey, masks, tf.constant([4, 4]), **NO_GEOMETRY)
    np.testing.assert_array_equal(out_masks, masks)
    out = out_images.numpy()
    assert not np.allclose(out, grey)
    # Saturation and hue act on chroma only: grey stays grey (up to float rounding).
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-5)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)


@pytest.mark.parametrize("options", [dict(scale_range=(0.3, 1.0)), dict(scale_range=(1.2, 1.1)),
                                     dict(brightness=-0.1), dict(contrast=1.5)])
def test_bad_strengths_raise(options):
    images, masks = _batch()
    with pytest.raises(ValueError):
        augment.augment_batch(images, masks, tf.constant([0, 0]), **options)


def test_strength_zero_keeps_only_exact_dihedral_transforms_and_two_doubles():
    zero, double = augment.scaled_strengths(0.0), augment.scaled_strengths(2.0)
    assert double["rotation_degrees"] == 30.0 and double["scale_range"] == (0.8, 1.2)
    assert double["hue"] == pytest.approx(0.04) and augment.scaled_strengths(20.0)["contrast"] == 1.0
    assert augment.scaled_strengths(20.0)["scale_range"][0] == 0.5
    images, masks = _batch()
    out_images, out_masks = augment.augment_batch(images, masks, tf.constant([5, 6]), **zero)
    for i in range(N):  # every output is one of the 8 flips / 90-degree rotations, exactly
        candidates = [np.rot90(np.flip(images[i], 1) if f else images[i], k)
                      for f in (0, 1) for k in range(4)]
        match = [k for k, c in enumerate(candidates) if np.allclose(out_images[i], c, atol=1e-6)]
        assert len(match) >= 1
        mask = np.flip(masks[i], 1) if match[0] >= 4 else masks[i]
        np.testing.assert_array_equal(out_masks[i], np.rot90(mask, match[0] % 4))
    with pytest.raises(ValueError, match="strength"):
        augment.scaled_strengths(-1.0)
