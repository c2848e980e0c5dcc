"""ISIC 2018 Task 1 metrics: exact values on hand-made masks, edge cases, summary."""

import numpy as np
import pytest
import tensorflow as tf

from model import metrics


def _scores(truth, pred, dtype=tf.float64):
    """bool [H, W] truth/prediction of one image -> dict name -> Python float."""
    counts = metrics.confusion_per_image(np.asarray(truth, bool)[None], np.asarray(pred, bool)[None], dtype)
    return {k: float(v.numpy()[0]) for k, v in metrics.isic_scores(*counts).items()}


def _masks_with(tp, fp, fn, tn, width=8):
    """Flat truth/prediction with exactly these counts, reshaped to [rows, width]."""
    truth = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn, bool)
    pred = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn, bool)
    return truth.reshape(-1, width), pred.reshape(-1, width)


def test_binarize_probabilities_half_is_background():
    p = np.array([0.0, 0.49, 0.5, 0.5000001, 1.0], np.float32)
    np.testing.assert_array_equal(metrics.binarize_probabilities(p).numpy(), [0, 0, 0, 1, 1])
    half16 = tf.constant([0.5, 0.5009765625], tf.float16)  # 0.5 and the next float16
    np.testing.assert_array_equal(metrics.binarize_probabilities(half16).numpy(), [0, 1])
    # 0/1 masks of integer dtype binarise the same way.
    np.testing.assert_array_equal(metrics.binarize_probabilities(np.array([0, 1], np.uint8)).numpy(), [0, 1])


def test_binarize_uint8_mask_128_is_background_129_foreground():
    m = np.array([0, 1, 127, 128, 129, 255], np.uint8)
    np.testing.assert_array_equal(metrics.binarize_uint8_mask(m).numpy(), [0, 0, 0, 0, 1, 1])
    with pytest.raises(TypeError, match="expects a uint8 mask.*got int64"):
        metrics.binarize_uint8_mask(np.array([0, 255]))


def test_8bit_masks_at_the_threshold_end_to_end():
    pred = metrics.binarize_uint8_mask(np.zeros([1, 4, 4], np.uint8))
    at_128 = metrics.binarize_uint8_mask(np.full([1, 4, 4], 128, np.uint8))
    at_129 = metrics.binarize_uint8_mask(np.full([1, 4, 4], 129, np.uint8))
    s128 = metrics.isic_scores(*metrics.confusion_per_image(at_128, pred))
    s129 = metrics.isic_scores(*metrics.confusion_per_image(at_129, pred))
    assert float(s128["jaccard"][0]) == 1.0 and float(s128["dice"][0]) == 1.0  # both empty
    assert float(s129["jaccard"][0]) == 0.0 and float(s129["sensitivity"][0]) == 0.0


def test_confusion_counts_and_hand_values():
    truth = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    pred = [[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    counts = metrics.confusion_per_image(np.array(truth, bool)[None], np.array(pred, bool)[None])
    assert [float(c.numpy()[0]) for c in counts] == [3, 2, 1, 10]
    assert all(c.dtype == tf.float64 for c in counts)
    s = _scores(truth, pred)
    assert s == {
        "accuracy": 13 / 16,
        "sensitivity": 3 / 4,
        "specificity": 10 / 12,
        "jaccard": 3 / 6,
        "thresholded_jaccard": 0.0,
        "dice": 6 / 9,
    }


def test_channel_axis_and_batch_are_per_image():
    truth = np.zeros([2, 3, 3, 1], bool)
    truth[0, 0, 0, 0] = True
    pred = truth.copy()
    pred[1] = True
    tp, fp, fn, tn = metrics.confusion_per_image(truth, pred)
    np.testing.assert_array_equal(tp, [1, 0])
    np.testing.assert_array_equal(fp, [0, 9])
    np.testing.assert_array_equal(fn, [0, 0])
    np.testing.assert_array_equal(tn, [8, 0])


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_jaccard_exactly_065_is_kept_and_just_below_is_zero(dtype):
    at = _scores(*_masks_with(tp=13, fp=4, fn=3, tn=44), dtype=dtype)  # 13 / 20
    assert at["jaccard"] == pytest.approx(0.65) and at["thresholded_jaccard"] == at["jaccard"]
    big = metrics.isic_scores(*(tf.constant([c], dtype) for c in (1_300_000, 400_000, 300_000, 0)))
    assert float(big["thresholded_jaccard"][0]) == float(big["jaccard"][0])  # 1.3M / 2M
    below = _scores(*_masks_with(tp=13, fp=4, fn=4, tn=43), dtype=dtype)  # 13 / 21
    assert below["jaccard"] == pytest.approx(13 / 21) and below["thresholded_jaccard"] == 0.0


def test_just_below_065_is_zero_even_when_float32_rounds_it_to_065():
    # 13 * 16,000,017 - 20 * 10,400,011 = 1, so tp / union = 0.65 - 1 / (20 * union): below
    # 0.65, yet the float32 quotient rounds to float32(0.65). The threshold must not pass.
    tp, union = 10_400_011, 16_000_017
    scores = metrics.isic_scores(*(tf.constant([c], tf.float32) for c in (tp, union - tp, 0, 0)))
    assert scores["jaccard"].numpy()[0] == np.float32(0.65)  # the trap is real
    assert scores["thresholded_jaccard"].numpy()[0] == 0.0


def test_both_empty_scores_one():
    s = _scores(np.zeros([3, 5]), np.zeros([3, 5]))
    assert s == {
        "accuracy": 1.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
        "jaccard": 1.0,
        "thresholded_jaccard": 1.0,
        "dice": 1.0,
    }


def test_empty_truth_with_false_positives():
    pred = np.zeros([2, 5])
    pred[0, :2] = 1
    s = _scores(np.zeros([2, 5]), pred)
    assert s == {
        "accuracy": 0.8,
        "sensitivity": 1.0,
        "specificity": 0.8,
        "jaccard": 0.0,
        "thresholded_jaccard": 0.0,
        "dice": 0.0,
    }


def test_truth_without_background_has_specificity_one():
    pred = np.zeros([2, 2])
    pred[0, 0] = 1
    s = _scores(np.ones([2, 2]), pred)
    assert s["specificity"] == 1.0 and s["sensitivity"] == 0.25 and s["jaccard"] == 0.25
    assert _scores(np.ones([2, 2]), np.zeros([2, 2]))["specificity"] == 1.0


def test_batch_scores_of_the_training_loop_match_the_isic_definitions():
    rng = np.random.default_rng(3)
    truth = (rng.uniform(size=[6, 8, 8, 1]) > 0.6).astype(np.uint8)
    probs = rng.uniform(size=[6, 8, 8, 1]).astype(np.float32)
    truth[0], probs[0] = 0, 0.5  # both empty (exactly 0.5 is background): Dice = Jaccard = 1
    truth[1], probs[1] = 0, 0.0
    probs[1, 0, 0] = 0.7  # empty truth, one false positive: 0 and 0
    truth[2], probs[2] = 1, 0.2  # full truth, empty prediction
    probs[3] = truth[3] * 0.9  # perfect
    graph = tf.function(metrics.batch_scores)(truth, probs)
    assert graph.dtype == tf.float32 and graph.shape == (6, len(metrics.TRAINING_SCORES))
    reference = metrics.isic_scores(
        *metrics.confusion_per_image(
            metrics.binarize_probabilities(truth), metrics.binarize_probabilities(probs)
        )
    )
    for column, name in enumerate(metrics.TRAINING_SCORES):
        np.testing.assert_allclose(graph[:, column].numpy(), reference[name].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(graph[:4, 1].numpy(), [1.0, 0.0, 0.0, 1.0])  # Dice
    np.testing.assert_array_equal(graph[:4, 2].numpy(), [1.0, 0.0, 0.0, 1.0])  # Jaccard
    assert graph[1, 0].numpy() == np.float32(63 / 64)  # accuracy with one wrong pixel


def test_float32_counts_refused_beyond_exact_range_float64_exact():
    n = 2**24 + 1
    big = np.ones([1, 1, n], bool)
    with pytest.raises(ValueError, match=r"dtype=tf.float64 \(got 16777217 pixels per image\)"):
        metrics.confusion_per_image(big, big, tf.float32)
    tp, fp, fn, tn = metrics.confusion_per_image(big, big)
    assert tp.numpy()[0] == n and float(np.float32(n)) != n  # float32 would have rounded
    # Unknown static size inside a tf.function: checked at run time instead.
    fn_graph = tf.function(
        lambda t, p: metrics.confusion_per_image(t, p, tf.float32),
        input_signature=[tf.TensorSpec([None, None, None], tf.bool)] * 2,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="dtype=tf.float64"):
        fn_graph(big, big)
    assert fn_graph(big[:, :, :10], big[:, :, :10])[0].numpy()[0] == 10


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="needs bool masks"):
        metrics.confusion_per_image(np.zeros([1, 2, 2]), np.zeros([1, 2, 2]))
    with pytest.raises(ValueError, match=r"got \(1, 2, 2\) and \(1, 2, 3\)"):
        metrics.confusion_per_image(np.zeros([1, 2, 2], bool), np.zeros([1, 2, 3], bool))
    with pytest.raises(ValueError, match="one shape"):
        metrics.confusion_per_image(np.zeros([2, 2], bool), np.zeros([2, 2], bool))


def test_summarize_is_unweighted_over_images_of_different_sizes():
    small_t = np.ones([2, 2], bool)  # 4 pixels, perfect
    large_t = np.zeros([10, 10], bool)  # 100 pixels, 50 foreground, nothing predicted
    large_t[:5] = True
    per_image = {name: [] for name in metrics.METRIC_NAMES}
    for truth, pred in [(small_t, small_t), (large_t, np.zeros_like(large_t))]:
        for name, value in _scores(truth, pred).items():
            per_image[name].append(value)
    summary = metrics.summarize(per_image)
    assert summary["num_images"] == 2
    assert summary["mean"]["jaccard"] == 0.5  # pixel-pooled would be 4 / 54
    assert summary["mean"]["accuracy"] == 0.75  # pooled: 54 / 104
    assert summary["median"]["dice"] == 0.5
    assert summary["headline"] == {"thresholded_jaccard": 0.5, "dice": 0.5}
    assert summary["fraction_jaccard_below_0.65"] == 0.5


def test_summarize_fraction_below_agrees_with_exact_threshold():
    # jaccard 13/20 from float32 counts is 0.64999998 < 0.65 as a float, yet not "below".
    s = _scores(*_masks_with(tp=13, fp=4, fn=3, tn=44), dtype=tf.float32)
    summary = metrics.summarize({k: [v, 0.0 if k != "specificity" else 1.0] for k, v in s.items()})
    assert summary["fraction_jaccard_below_0.65"] == 0.5


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match=r"needs per-image \['thresholded_jaccard'\]"):
        metrics.summarize({"jaccard": [1.0], "dice": [1.0]})
    with pytest.raises(ValueError, match="non-empty and of one length"):
        metrics.summarize({"jaccard": [1.0], "dice": [1.0, 0.5], "thresholded_jaccard": [1.0]})
    with pytest.raises(ValueError, match="non-empty"):
        metrics.summarize({"jaccard": [], "dice": [], "thresholded_jaccard": []})
    with pytest.raises(ValueError, match=r"accuracy has NaN at images \[1\]"):
        metrics.summarize(
            {
                "jaccard": [1, 1],
                "dice": [1, 1],
                "thresholded_jaccard": [1, 1],
                "accuracy": [1.0, float("nan")],
            }
        )
