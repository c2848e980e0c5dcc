"""The per-image confidence (launch/inference/confidence.py) on hand-made maps, eagerly and
inside a tf.function, and the measures of how well it predicts failures
(launch/inference/risk_coverage.py) on hand-made scores."""

import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from launch.inference import confidence
from launch.inference import risk_coverage
from launch.inference import tta
from launch.inference.config import CONFIDENCE_SIGNALS
from launch.inference.config import EvaluateConfig
from launch.inference.config import PredictConfig

S, K = 12, 4  # map size; side of the hand-made square lesion at rows/cols 4..7


def _square(inside: float, outside: float = 0.0) -> np.ndarray:
    """float32 [1, S, S]: `inside` on the K x K square, `outside` elsewhere."""
    p = np.full((1, S, S), outside, np.float32)
    p[0, 4 : 4 + K, 4 : 4 + K] = inside
    return p


def _signals(p, passes=None) -> dict:
    return {k: float(v.numpy()[0]) for k, v in confidence.signals(p, 0.5, passes).items()}


def test_a_sure_map_is_fully_confident_and_an_empty_one_not_at_all():
    sure = _signals(_square(1.0), np.stack([_square(1.0)] * 8))
    assert sure == {name: 1.0 for name in CONFIDENCE_SIGNALS}
    empty = _signals(_square(0.4, 0.2), np.stack([_square(0.6)] * 8))  # no pixel > 0.5
    assert empty == {name: 0.0 for name in CONFIDENCE_SIGNALS}


def test_each_signal_equals_its_hand_computation():
    got = _signals(_square(0.7))
    # expected_jaccard: sum(p * m) / sum(p + m - p m) = 0.7 K^2 / K^2.
    assert got["expected_jaccard"] == pytest.approx(0.7, abs=1e-6)
    # The outline: the square's inner ring (4K - 4 pixels, |2p - 1| = 0.4) and the ring of
    # 4-neighbours outside it (4K pixels, p = 0: margin 1).
    ring_in, ring_out = 4 * K - 4, 4 * K
    assert got["boundary_margin"] == pytest.approx(
        (0.4 * ring_in + ring_out) / (ring_in + ring_out), abs=1e-6
    )
    assert got["certain_share"] == 0.0  # every lesion pixel is unsure (0.1 < 0.7 < 0.9)
    half = _square(0.95, 0.0)
    half[0, 4:6, 4 : 4 + K] = 0.6  # half the lesion sure, half unsure
    assert _signals(half)["certain_share"] == pytest.approx(0.5)
    # A lesion touching the image border: the border is not an outline.
    edge = np.zeros((1, S, S), np.float32)
    edge[0, :, :6] = 0.8
    assert _signals(edge)["boundary_margin"] == pytest.approx((0.6 * S + S) / (2 * S), abs=1e-6)


def test_tta_agreement_is_the_mean_jaccard_of_the_passes_with_the_mask():
    p = _square(0.9)
    shifted = np.roll(_square(0.9), 2, axis=2)  # overlaps the square on half its columns
    passes = np.stack([p] * 6 + [shifted] * 2)  # [8, 1, S, S]
    half = (K * K / 2) / (K * K * 1.5)  # Jaccard of the square with its shifted copy
    assert _signals(p, passes)["tta_agreement"] == pytest.approx((6 + 2 * half) / 8, abs=1e-6)
    assert "tta_agreement" not in _signals(p)
    with pytest.raises(ValueError, match="needs the TTA passes"):
        confidence.confidence(p, 0.5, "tta_agreement")


def test_the_graph_gives_the_numbers_of_the_eager_call():
    rng = np.random.default_rng(0)
    passes = rng.uniform(size=(8, 3, S, S)).astype(np.float32) ** 2
    p = tta.mean(passes)
    graph = tf.function(lambda a, b: confidence.signals(a, 0.5, b), autograph=False)
    eager = confidence.signals(p, 0.5, passes)
    for name, value in graph(tf.constant(p), tf.constant(passes)).items():
        np.testing.assert_array_equal(value.numpy(), eager[name].numpy())
        assert np.all((value.numpy() >= 0) & (value.numpy() <= 1))


def test_a_tta_signal_without_tta_is_refused():
    with pytest.raises(UserError, match="needs --tta"):
        PredictConfig(tta=False, confidence="tta_agreement")
    with pytest.raises(UserError, match="--check_below must be <= 1"):
        EvaluateConfig(check_below=2.0)
    assert PredictConfig().confidence == EvaluateConfig().confidence


def test_auroc_counts_the_pairs_a_failure_ranks_below():
    jaccard = [0.5, 0.9, 0.6, 0.9]  # failures: images 0 and 2
    # successes above failures: 0.2 > 0.1, 0.4 > 0.1, 0.4 > 0.3 (not 0.2 > 0.3): 3 of 4 pairs
    assert risk_coverage.auroc([0.1, 0.2, 0.3, 0.4], risk_coverage.failed(jaccard)) == 0.75
    assert risk_coverage.auroc([0.3] * 4, risk_coverage.failed(jaccard)) == 0.5  # ties count half
    assert risk_coverage.auroc([0.1, 0.2], risk_coverage.failed([0.9, 0.9])) is None


def test_risk_coverage_table_beside_random_and_oracle():
    confidence_ = [0.9, 0.8, 0.7, 0.6, 0.5]
    jaccard = [0.9, 0.5, 0.8, 0.7, 0.6]
    rows = risk_coverage.table(confidence_, jaccard, coverages=(1.0, 0.6))
    mean_all = (0.9 + 0 + 0.8 + 0.7 + 0) / 5  # thresholded: 0.5 and 0.6 count 0
    assert rows[0]["confidence"] == rows[0]["random"] == rows[0]["oracle"]
    assert rows[0]["confidence"]["thresholded_jaccard"] == pytest.approx(mean_all)
    assert rows[1]["images"] == 3
    assert rows[1]["confidence"] == {
        "thresholded_jaccard": pytest.approx(1.7 / 3),
        "failure_rate": pytest.approx(1 / 3),
    }
    assert rows[1]["random"]["thresholded_jaccard"] == pytest.approx(mean_all)
    assert rows[1]["oracle"] == {"thresholded_jaccard": pytest.approx(0.8), "failure_rate": 0.0}
    curve = risk_coverage.curve(confidence_, jaccard)
    assert curve["confidence"][-1] == pytest.approx(mean_all) and curve["oracle"][0] == pytest.approx(0.9)
