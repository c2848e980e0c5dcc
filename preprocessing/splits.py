"""Deterministic train/val/test splits from case IDs and a seed.

Rule: every ID gets a rank key sha256(f"{seed}/{id}"); IDs sorted by that key are cut
into consecutive runs of exactly `split_counts(n, fractions)` IDs: train, then val, then
test. The order in which files were listed, the worker count and the machine play no
part; the same ID set and seed always give the same splits.

Counts (largest-remainder rounding): each split first gets floor(n * fraction); the IDs
left over (fewer than 3) go one each to the splits with the largest fractional parts,
ties broken in the order train, val, test. The counts always sum to n, and a split with
fraction 0 gets no ID. Examples: n=456 at 0.8/0.1/0.1 -> 365/46/45; n=10 -> 8/1/1;
n=5 -> 4/1/0.

Stability: adding or removing k IDs shifts each cut point in the ranking by at most about
k, so apart from the changed IDs at most about 2(k + 1) IDs change split; all others
keep theirs (tested: adding one ID to 200 moves at most 4).

Within a split, records keep the rank order, which is random with respect to the ID;
shards are consecutive runs of it, so every shard is a random sample of its split.
"""

import fractions as fractions_lib
import hashlib
import math

SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parses 'train,val,test' fractions such as '0.8,0.1,0.1' or '0,0,1'.

    Raises:
      ValueError: not three numbers, a negative or non-finite value, or a sum other than 1.
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"splits {text!r} must be three fractions train,val,test, e.g. 0.8,0.1,0.1")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"splits {text!r} must be numbers, e.g. 0.8,0.1,0.1") from None
    check_fractions(values)
    return values


def check_fractions(values) -> None:
    """Raises ValueError unless `values` are three finite fractions >= 0 summing to 1."""
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"split fractions {tuple(values)} must be three numbers >= 0")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {tuple(values)} sum to {sum(values):g}; they must sum to 1")


def split_counts(n: int, fractions) -> dict[str, int]:
    """Exact per-split counts for n IDs (largest-remainder rounding, see module doc)."""
    check_fractions(fractions)
    # Exact rational arithmetic: '0.1' is 1/10 here, so ties stay ties.
    exact = [fractions_lib.Fraction(repr(float(f))) for f in fractions]
    total = sum(exact)
    quotas = [n * f / total for f in exact]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


def rank_key(case_id: str, seed: int) -> bytes:
    """The sort key that places an ID in the seeded random order."""
    return hashlib.sha256(f"{seed}/{case_id}".encode()).digest()


def assign_splits(case_ids, fractions, seed: int) -> dict[str, list[str]]:
    """Assigns IDs to splits.

    Args:
      case_ids: unique IDs (any order).
      fractions: (train, val, test), >= 0, summing to 1.
      seed: any int.
    Returns:
      {"train": [...], "val": [...], "test": [...]}, each list in rank order (the order
      records are written in).
    """
    case_ids = list(case_ids)
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case IDs must be unique")
    ranked = sorted(ids, key=lambda i: (rank_key(i, seed), i))
    counts = split_counts(len(ranked), fractions)
    out, start = {}, 0
    for split in SPLITS:
        out[split] = ranked[start : start + counts[split]]
        start += counts[split]
    return out
