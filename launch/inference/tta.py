"""Test-time augmentation over the 8 symmetries of the square (numpy only).

A dermoscopy image has no preferred orientation, so the model's probabilities for each
flip and 90-degree rotation of an image, turned back, are 8 estimates of the same map;
their mean is smoother and usually better than any one of them.

The 8 transforms (the dihedral group D4) are k quarter turns (k = 0..3), each without or
followed by a left-right flip. All act on axes 1 and 2 of [B, S, S, ...] arrays, so the
same functions turn images [B, S, S, 3] and probabilities [B, S, S].
"""

import numpy as np

TRANSFORMS = tuple((quarter_turns, flip) for flip in (False, True) for quarter_turns in range(4))


def transform(x: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """[B, S, S, ...] turned counter-clockwise by `quarter_turns` * 90 degrees, then
    mirrored left-right if `flip` (a contiguous copy)."""
    y = np.rot90(x, quarter_turns, axes=(1, 2))
    return np.ascontiguousarray(y[:, :, ::-1] if flip else y)


def inverse(y: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """Undoes `transform(., quarter_turns, flip)` on [B, S, S, ...]."""
    x = y[:, :, ::-1] if flip else y
    return np.ascontiguousarray(np.rot90(x, -quarter_turns, axes=(1, 2)))


def passes(predict_fn, images: np.ndarray) -> np.ndarray:
    """The 8 passes, each turned back: float32 [T, B, S, S] in the order of TRANSFORMS.

    Args:
      predict_fn: float32 [B, S, S, 3] -> float32 [B, S, S] probabilities.
      images: float32 [B, S, S, 3] (square: rotations keep the shape).
    """
    return np.stack(
        [
            inverse(predict_fn(transform(images, quarter_turns, flip)), quarter_turns, flip).astype(
                np.float32
            )
            for quarter_turns, flip in TRANSFORMS
        ]
    )


def mean(stacked: np.ndarray) -> np.ndarray:
    """float32 [T, B, S, S] -> [B, S, S]: summed in the fixed order of the passes, then
    divided (deterministic, and the order the serving graph sums in)."""
    total = stacked[0].copy()
    for p in stacked[1:]:
        total += p
    return total / np.float32(len(stacked))


def average(predict_fn, images: np.ndarray) -> np.ndarray:
    """Mean over TRANSFORMS of inverse(predict_fn(transform(images))).

    Args:
      predict_fn: float32 [B, S, S, 3] -> float32 [B, S, S] probabilities.
      images: float32 [B, S, S, 3] (square: rotations keep the shape).
    Returns:
      float32 [B, S, S], summed in the fixed order of TRANSFORMS (deterministic).
    """
    return mean(passes(predict_fn, images))
