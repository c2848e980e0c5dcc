"""launch/inference/postprocess.py as TensorFlow graph ops, for the serving graph.

The same method and the same connectivity (foreground 8-connected, background
4-connected), step for step, so that the two give identical masks: a mask [H, W] is cut
into row runs; runs of adjacent rows that touch are joined (found with tf.searchsorted);
components of the run graph come from min-label propagation with pointer jumping in a
tf.while_loop. A full-size mask costs a few vectorised passes per round, with rounds
growing with the logarithm of a component's extent, not with its pixel count as pixel-wise
label propagation would (thousands of rounds at 4000 x 3000).

  fill_holes         bool [H, W] -> bool [H, W]
  largest_component  bool [H, W] -> bool [H, W]
  apply              both, in postprocess.apply's order
"""

import tensorflow as tf


def _runs(mask: tf.Tensor):
    """The runs of True in mask [H, W], raster order: row, start, end (exclusive), int64 [R]."""
    width = tf.shape(mask, tf.int64)[1]
    padded = tf.pad(mask, [[0, 0], [1, 1]])  # [H, W + 2], False outside
    # change[y, x] (x in 0..W): pixel x - 1 differs from pixel x: [H, W + 1].
    change = tf.not_equal(padded[:, 1:], padded[:, :-1])
    flat = tf.where(tf.reshape(change, [-1]))[:, 0]  # alternating start, end
    rows = flat[0::2] // (width + 1)
    starts = flat[0::2] - rows * (width + 1)
    return rows, starts, flat[1::2] - rows * (width + 1)


def _connect(n, a, b):
    """int64 [n]: each node's smallest node index in its component of the graph with
    edges (a, b) (postprocess._connect)."""

    def jump(parent):
        def body(p, _):
            return tf.gather(p, p), p

        parent, _ = tf.while_loop(
            lambda p, previous: tf.reduce_any(tf.not_equal(p, previous)),
            body,
            (tf.gather(parent, parent), parent),
        )
        return parent

    def differ(parent):
        return tf.not_equal(tf.gather(parent, a), tf.gather(parent, b))

    def hook(parent):
        root_a, root_b = tf.gather(parent, a), tf.gather(parent, b)
        keep = tf.not_equal(root_a, root_b)
        # Hook the larger root under the smaller: parents only decrease, so no cycles.
        high = tf.boolean_mask(tf.maximum(root_a, root_b), keep)
        low = tf.boolean_mask(tf.minimum(root_a, root_b), keep)
        return jump(tf.tensor_scatter_nd_min(parent, high[:, None], low))

    return tf.while_loop(lambda parent: tf.reduce_any(differ(parent)), hook, (tf.range(n),))[0]


def _components(rows, starts, ends, diagonal: bool):
    """Component label of each run, int64 [R] (postprocess._components)."""
    reach = 1 if diagonal else 0
    stride = tf.reduce_max(ends) + 2
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    j = tf.where(rows > 0)[:, 0]
    previous_row = (tf.gather(rows, j) - 1) * stride
    lo = tf.searchsorted(
        end_keys, previous_row + tf.gather(starts, j) - reach, side="right", out_type=tf.int64
    )
    hi = tf.searchsorted(
        start_keys, previous_row + tf.gather(ends, j) + reach, side="left", out_type=tf.int64
    )
    counts = tf.maximum(hi - lo, 0)
    first = tf.repeat(j, counts)
    offsets = tf.range(tf.reduce_sum(counts)) - tf.repeat(tf.cumsum(counts) - counts, counts)
    second = tf.repeat(lo, counts) + offsets
    return _connect(tf.size(rows, tf.int64), first, second)


def _paint(shape, rows, starts, ends):
    """bool [H, W], True on the given runs (postprocess._paint)."""
    height, width = tf.cast(shape[0], tf.int64), tf.cast(shape[1], tf.int64)
    size = height * (width + 1)
    step = tf.zeros([size], tf.int32)
    step = tf.tensor_scatter_nd_add(
        step, (rows * (width + 1) + starts)[:, None], tf.ones_like(starts, tf.int32)
    )
    step = tf.tensor_scatter_nd_add(step, (rows * (width + 1) + ends)[:, None], -tf.ones_like(ends, tf.int32))
    painted = tf.reshape(tf.cumsum(step) > 0, tf.stack([height, width + 1]))
    return painted[:, :-1]


def fill_holes(mask: tf.Tensor) -> tf.Tensor:
    """bool [H, W]: background regions (4-connected) that do not reach the border become
    foreground (postprocess.fill_holes)."""
    rows, starts, ends = _runs(~mask)

    def fill():
        labels = _components(rows, starts, ends, diagonal=False)
        height, width = tf.shape(mask, tf.int64)[0], tf.shape(mask, tf.int64)[1]
        on_border = (rows == 0) | (rows == height - 1) | (starts == 0) | (ends == width)
        border_labels = tf.boolean_mask(labels, on_border)
        reaches = (
            tf.scatter_nd(
                border_labels[:, None], tf.ones_like(border_labels, tf.int32), tf.shape(labels, tf.int64)
            )
            > 0
        )  # [R] per label index
        hole = ~tf.gather(reaches, labels)
        # Painting costs passes over all H x W pixels: only when there is a hole.
        return tf.cond(
            tf.reduce_any(hole),
            lambda: (
                mask
                | _paint(
                    tf.shape(mask),
                    tf.boolean_mask(rows, hole),
                    tf.boolean_mask(starts, hole),
                    tf.boolean_mask(ends, hole),
                )
            ),
            lambda: mask,
        )

    return tf.cond(tf.size(rows) > 0, fill, lambda: mask)


def largest_component(mask: tf.Tensor) -> tf.Tensor:
    """bool [H, W]: only the largest 8-connected foreground region (the first in raster
    order among equals), as postprocess.largest_component."""
    rows, starts, ends = _runs(mask)

    def keep_largest():
        labels = _components(rows, starts, ends, diagonal=True)
        areas = tf.math.unsorted_segment_sum(ends - starts, labels, tf.size(labels, tf.int64))
        # np.argmax's tie rule, the lowest label: tf.argmax does not promise one.
        best = tf.reduce_min(
            tf.where(
                areas == tf.reduce_max(areas), tf.range(tf.size(areas, tf.int64)), tf.size(areas, tf.int64)
            )
        )
        keep = tf.equal(labels, best)
        return tf.cond(
            tf.reduce_all(keep),
            lambda: mask,
            lambda: _paint(
                tf.shape(mask),
                tf.boolean_mask(rows, keep),
                tf.boolean_mask(starts, keep),
                tf.boolean_mask(ends, keep),
            ),
        )

    return tf.cond(tf.size(rows) > 0, keep_largest, lambda: mask)


def apply(mask: tf.Tensor, fill: bool, largest: bool) -> tf.Tensor:
    """bool [H, W]: holes filled (if `fill`), then the largest region kept (if `largest`);
    the choice is made when the graph is built (postprocess.apply)."""
    if fill:
        mask = fill_holes(mask)
    if largest:
        mask = largest_component(mask)
    return mask
