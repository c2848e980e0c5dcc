"""Post-processing (fill holes, largest region) and test-time augmentation, on tiny
hand-made masks and maps whose answers are known."""

import collections

import numpy as np
import pytest

from launch.inference import postprocess
from launch.inference import tta


def _mask(rows: list[str]) -> np.ndarray:
    """bool [H, W] from strings: '#' foreground, '.' background."""
    return np.array([[c == "#" for c in row] for row in rows], bool)


def _reference_labels(mask: np.ndarray, diagonal: bool) -> list[set]:
    """Connected components of the True pixels by breadth-first search (slow, obvious)."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if diagonal:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen, components = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, component = True, collections.deque([start]), set()
        while queue:
            y, x = queue.popleft()
            component.add((y, x))
            for dy, dx in steps:
                n = (y + dy, x + dx)
                if 0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1] and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        components.append(component)
    return components


def test_two_blobs_keep_the_largest():
    mask = _mask(["##....", "##..##", "....##", "....##"])
    assert (
        postprocess.largest_component(mask).tolist()
        == _mask(["......", "....##", "....##", "....##"]).tolist()
    )


def test_diagonal_neighbours_are_one_region_and_ties_keep_the_first():
    # A diagonal chain of 3 pixels (8-connected: one region) beats a 2-pixel bar.
    chain = _mask(["#.....", ".#..##", "..#..."])
    assert postprocess.largest_component(chain).tolist() == _mask(["#.....", ".#....", "..#..."]).tolist()
    # Two regions of 2 pixels: the first in raster order is kept.
    tie = _mask(["...##", "##..."])
    assert postprocess.largest_component(tie).tolist() == _mask(["...##", "....."]).tolist()


def test_ring_is_filled_and_border_background_is_not():
    ring = _mask([".....", ".###.", ".#.#.", ".###.", "....."])
    assert (
        postprocess.fill_holes(ring).tolist() == _mask([".....", ".###.", ".###.", ".###.", "....."]).tolist()
    )
    # A "C" open to the border encloses nothing; a hole touching the border is no hole.
    open_ring = _mask(["###", "#..", "###"])
    assert postprocess.fill_holes(open_ring).tolist() == open_ring.tolist()
    # Closed only through diagonal steps: background is 4-connected, so this is a hole.
    diamond = _mask([".#.", "#.#", ".#."])
    assert postprocess.fill_holes(diamond).tolist() == _mask([".#.", "###", ".#."]).tolist()


def test_empty_and_full_masks_stay_as_they_are():
    for mask in (np.zeros((4, 5), bool), np.ones((4, 5), bool), np.zeros((0, 3), bool)):
        for fill in (False, True):
            for largest in (False, True):
                out = postprocess.apply(mask, fill, largest)
                assert out.dtype == bool and out.tolist() == mask.tolist()


def test_holes_are_filled_before_the_largest_region_is_chosen():
    # The ring has 8 pixels and the bar 9; filled, the ring has 9 too, and of equal
    # regions the first in raster order is kept.
    mask = _mask(["###......", "#.#......", "###......", ".........", "#########"])
    assert (
        postprocess.apply(mask, fill=True, largest=True).tolist()
        == _mask(["###......", "###......", "###......", ".........", "........."]).tolist()
    )
    assert (
        postprocess.apply(mask, fill=False, largest=True).tolist()
        == _mask([".........", ".........", ".........", ".........", "#########"]).tolist()
    )


@pytest.mark.parametrize("seed", range(6))
def test_components_match_a_breadth_first_search(seed):
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(23, 31)) < (0.35 + 0.05 * seed)
    components = _reference_labels(mask, diagonal=True)
    largest = max(components, key=lambda c: (len(c), -min(c)[0] * 100 - min(c)[1]))
    expected = np.zeros_like(mask)
    expected[tuple(np.array(sorted(largest)).T)] = True
    assert postprocess.largest_component(mask).tolist() == expected.tolist()
    # Holes: the background components (4-connected) that do not touch the border.
    filled = mask.copy()
    for component in _reference_labels(~mask, diagonal=False):
        if not any(y in (0, 22) or x in (0, 30) for y, x in component):
            filled[tuple(np.array(sorted(component)).T)] = True
    assert postprocess.fill_holes(mask).tolist() == filled.tolist()


def test_long_winding_region_is_one_component():
    # A serpentine of 20 rows: every row joins the next only at alternate ends, the
    # worst case for label propagation.
    mask = np.zeros((39, 40), bool)
    mask[::2] = True
    mask[1::4, -1] = True
    mask[3::4, 0] = True
    assert postprocess.largest_component(mask).tolist() == mask.tolist()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="bool mask"):
        postprocess.fill_holes(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="bool mask"):
        postprocess.largest_component(np.zeros((2, 4, 4), bool))


# ----------------------------------------------------------------------------- TTA


def test_the_eight_transforms_are_distinct_and_invert_exactly():
    x = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
    seen = set()
    for k, flip in tta.TRANSFORMS:
        y = tta.transform(x, k, flip)
        assert y.shape == x.shape and y.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(tta.inverse(y, k, flip), x)
        seen.add(y.tobytes())
    assert len(tta.TRANSFORMS) == 8 and len(seen) == 8  # the dihedral group of the square
    # One quarter turn is counter-clockwise in (row, column) = (y, x) coordinates.
    np.testing.assert_array_equal(tta.transform(np.array([[[1, 2], [3, 4]]]), 1, False), [[[2, 4], [1, 3]]])


def test_an_equivariant_model_gives_the_same_probabilities_with_tta():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)

    def pointwise(x):  # a per-pixel function commutes with every flip and rotation
        return x[..., 0] * 0.5 + x[..., 2] ** 2 * 0.25

    np.testing.assert_allclose(tta.average(pointwise, images), pointwise(images), rtol=0, atol=1e-6)


def test_tta_averages_an_asymmetric_model_over_the_turned_images():
    # A model that only looks at the top row (p = 1 there) predicts, for the 8 views turned
    # back, each side of the square twice: the mean is 1/4 on the border and 1/2 at the
    # corners (two sides meet), 0 inside.
    def top_row(x):
        p = np.zeros(x.shape[:3], np.float32)
        p[:, 0, :] = 1.0
        return p

    out = tta.average(top_row, np.zeros((1, 4, 4, 3), np.float32))[0]
    expected = np.array(
        [[0.5, 0.25, 0.25, 0.5], [0.25, 0.0, 0.0, 0.25], [0.25, 0.0, 0.0, 0.25], [0.5, 0.25, 0.25, 0.5]],
        np.float32,
    )
    np.testing.assert_array_equal(out, expected)
