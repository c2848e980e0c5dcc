"""The evaluation figure: the best, median and worst images of a split by Jaccard.

One row per case: the image, and the image with the true outline (green) and the
predicted outline (magenta). At training size the records' S x S image and masks are
drawn; at full resolution the source image and mask at their original size, shrunk for
display by striding (only the picture is shrunk; the scores come from full-size masks).
"""

import os

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

from launch.inference import models as inference
from model import metrics
from pipeline import dataset as dataset_lib

_DISPLAY_PIXELS = 400  # longest side drawn per panel


def pick_cases(rows: list[dict]) -> list[tuple[str, dict]]:
    """[(label, row)] for the best, median and worst Jaccard (ties broken by ID), without
    repeating an image when the split has fewer than 3."""
    ranked = sorted(rows, key=lambda r: (r["jaccard"], r["id"]))
    picks = [("best", ranked[-1]), ("median", ranked[(len(ranked) - 1) // 2]), ("worst", ranked[0])]
    seen, unique = set(), []
    for label, row in picks:
        if row["id"] not in seen:
            seen.add(row["id"])
            unique.append((label, row))
    return unique


def _records(data_dir: str, split: str, ids: set) -> dict:
    """Finds the records of `ids` in the split: id -> dict of numpy values of one example."""
    found = {}
    for batch in dataset_lib.read_examples(data_dir, split, 32).as_numpy_iterator():
        for i, case_id in enumerate(batch["case_id"]):
            if case_id.decode() in ids:
                found[case_id.decode()] = {k: v[i] for k, v in batch.items()}
        if len(found) == len(ids):
            break
    return found


def _panels(record: dict, probabilities: np.ndarray, threshold: float, images_dir, masks_dir):
    """(image uint8 [h, w, 3], truth bool [h, w], prediction bool [h, w]) of one case,
    from its record and its probabilities [S, S]."""
    if masks_dir is None:
        image = np.round(record["image"] * 255.0).astype(np.uint8)
        truth = record["mask"][..., 0] > 0.5
        pred = metrics.binarize_probabilities(probabilities, threshold).numpy()
        return image, truth, pred
    size = tuple(int(v) for v in record["original_size"])
    image = inference.load_full_image(os.path.join(images_dir, record["source_image"].decode()))
    truth = metrics.binarize_uint8_mask(
        inference.read_mask(os.path.join(masks_dir, record["source_mask"].decode()), size)).numpy()
    pred = metrics.binarize_probabilities(inference.to_original_size(probabilities, size), threshold).numpy()
    return image, truth, pred


def _outline(ax, mask: np.ndarray, color: str) -> None:
    # contour() of a constant mask has no level to draw (and warns): nothing to outline.
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=1.2)


def draw(path: str, model, data_dir: str, split: str, cases: list[tuple[str, dict]], *,
         threshold: float = 0.5, images_dir: str | None = None, masks_dir: str | None = None,
         batch_size: int | None = None) -> str:
    """Draws `cases` (from `pick_cases`) into a PNG at `path`; returns `path`.

    With `masks_dir` (full resolution), images and masks are read from the source folders.
    `batch_size`: pad the prediction batch to it (the evaluation's batch shape, no retrace).
    """
    records = _records(data_dir, split, {row["id"] for _, row in cases})
    images = np.stack([records[row["id"]]["image"] for _, row in cases])  # [<=3, S, S, 3]
    probabilities = inference.predict(model, images, max(batch_size or 0, len(cases)))
    fig = Figure(figsize=(7, 3.3 * len(cases)), dpi=100)
    axes = fig.subplots(len(cases), 2, squeeze=False)
    for (label, row), p, (ax_image, ax_outline) in zip(cases, probabilities, axes):
        image, truth, pred = _panels(records[row["id"]], p, threshold, images_dir, masks_dir)
        stride = max(1, -(-max(image.shape[:2]) // _DISPLAY_PIXELS))
        image, truth, pred = image[::stride, ::stride], truth[::stride, ::stride], pred[::stride, ::stride]
        ax_image.imshow(image)
        ax_image.set_title(f"{label}: {row['id']}", fontsize=9)
        ax_outline.imshow(image)
        _outline(ax_outline, truth, "lime")
        _outline(ax_outline, pred, "magenta")
        ax_outline.set_title(f"truth (green) / prediction (magenta)\nJaccard {row['jaccard']:.3f}, "
                             f"Dice {row['dice']:.3f}", fontsize=9)
        for ax in (ax_image, ax_outline):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    tmp = path[:-len(".png")] + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
