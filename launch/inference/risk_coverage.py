"""How well a per-image confidence predicts failures (numpy only).

  auroc       the chance that a random failure (Jaccard < 0.65) has a lower confidence
              than a random success (ties count half); 0.5 is chance, 1 perfect
  table       thresholded Jaccard and failure rate of the most confident 100/90/80% of
              the images, beside a random and an oracle ordering
  curve       the same at every coverage k/n, for the review page's plot
  summarize   the "confidence" block of metrics.json

The random ordering is its exact expectation, not a draw: any k images taken at random
have, on average, the mean of all n, so its column is the overall mean at every
coverage. The oracle keeps the k images of highest Jaccard (the best any confidence
could do). The most confident k: sorted by confidence, highest first; ties keep the
rows' order (stable sort), so the table is deterministic.
"""

import math

import numpy as np

from model import metrics

COVERAGES = (1.0, 0.9, 0.8)


def failed(jaccard) -> np.ndarray:
    """bool [N]: Jaccard < 0.65 (metrics.JACCARD_THRESHOLD), the failures of ISIC 2018."""
    return np.asarray(jaccard, np.float64) < metrics.JACCARD_THRESHOLD


def auroc(confidence, is_failure) -> float | None:
    """AUROC of `-confidence` for `is_failure` (bool [N]); None when the images are all
    failures or all successes (it is undefined). Mann-Whitney U from average ranks."""
    c = np.asarray(confidence, np.float64)
    bad = np.asarray(is_failure, bool)
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    if n_bad == 0 or n_good == 0:
        return None
    order = np.argsort(c, kind="stable")
    ranks = np.empty(len(c), np.float64)
    ranks[order] = np.arange(1, len(c) + 1)
    for value in np.unique(c):  # ties share their average rank
        same = c == value
        ranks[same] = ranks[same].mean()
    # U of the successes: pairs (success, failure) where the success ranks higher.
    u_good = ranks[~bad].sum() - n_good * (n_good + 1) / 2.0
    return float(u_good / (n_good * n_bad))


def _kept(order: np.ndarray, coverage: float) -> np.ndarray:
    """The first ceil(coverage * n) indices of `order` (at least one)."""
    return order[: max(1, math.ceil(round(coverage * len(order), 9)))]


def _scores(jaccard: np.ndarray, kept: np.ndarray) -> dict:
    j = jaccard[kept]
    thresholded = np.where(j >= metrics.JACCARD_THRESHOLD, j, 0.0)
    return {"thresholded_jaccard": float(thresholded.mean()), "failure_rate": float(failed(j).mean())}


def table(confidence, jaccard, coverages=COVERAGES) -> list[dict]:
    """[{"coverage", "images", "confidence": {...}, "random": {...}, "oracle": {...}}],
    each {...} = {"thresholded_jaccard", "failure_rate"} of the kept images."""
    c = np.asarray(confidence, np.float64)
    j = np.asarray(jaccard, np.float64)
    by_confidence = np.argsort(-c, kind="stable")
    by_jaccard = np.argsort(-j, kind="stable")
    everything = np.arange(len(j))
    rows = []
    for coverage in coverages:
        kept = _kept(by_confidence, coverage)
        rows.append(
            {
                "coverage": coverage,
                "images": len(kept),
                "confidence": _scores(j, kept),
                "random": _scores(j, everything),
                "oracle": _scores(j, _kept(by_jaccard, coverage)),
            }
        )
    return rows


def curve(confidence, jaccard) -> dict:
    """{"coverage": [k/n], "confidence": [...], "oracle": [...]}: the mean thresholded
    Jaccard of the k most confident (and the k best) images, k = 1..n."""
    c = np.asarray(confidence, np.float64)
    j = np.asarray(jaccard, np.float64)
    thresholded = np.where(j >= metrics.JACCARD_THRESHOLD, j, 0.0)
    k = np.arange(1, len(j) + 1)

    def running(order):
        return (np.cumsum(thresholded[order]) / k).tolist()

    return {
        "coverage": (k / len(j)).tolist(),
        "confidence": running(np.argsort(-c, kind="stable")),
        "oracle": running(np.argsort(-thresholded, kind="stable")),
    }


def summarize(confidences: dict, jaccard, signal: str, check_below: float) -> dict:
    """The "confidence" block of metrics.json.

    Args:
      confidences: {signal name: float [N]}, every signal measured (one per image).
      jaccard: float [N], the images' Jaccard in the same order.
      signal: the one written as `confidence` (InferenceConfig.confidence).
      check_below: images below it are marked "check".
    """
    bad = failed(jaccard)
    chosen = np.asarray(confidences[signal], np.float64)
    return {
        "signal": signal,
        "auroc_jaccard_below_0.65": auroc(chosen, bad),
        "risk_coverage": table(chosen, jaccard),
        "check_below": check_below,
        "checked": int((chosen < check_below).sum()),
        "candidates": {
            name: {"auroc_jaccard_below_0.65": auroc(values, bad), "risk_coverage": table(values, jaccard)}
            for name, values in confidences.items()
        },
    }
