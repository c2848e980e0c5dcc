"""The evaluation figure: the best, median and worst images by Jaccard.

One row per case: the image, and the image with the true outline (green) and the
predicted outline (magenta). At training size the records' S x S image and masks are
drawn; at full resolution the source image and mask at their original size, shrunk for
display by striding (only the picture is shrunk; the scores come from full-size masks).
The predicted mask is recomputed through launch/inference/segment.py with the
evaluation's config, so it is the one that was scored (TTA and post-processing included).
"""

import os

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

from core import files
from launch.inference import images
from launch.inference import models
from launch.inference import segment
from model import metrics
from pipeline import dataset as dataset_lib
from pipeline import pixels
from pipeline import records as records_lib
from preprocessing import decode

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


def record_panels(model, records: records_lib.Records, cases, config, folders=None) -> list[tuple]:
    """The panels of `cases` (from `pick_cases`) scored from the records of config.split.

    Args:
      records: the dataset (pipeline.records_lib.Records).
      folders: as in scoring.score_records: None at the records' size, else source name ->
        (images_dir, masks_dir) for full resolution.
    Returns:
      [(label, row, image uint8 [h, w, 3], truth bool [h, w], prediction bool [h, w])].
    """
    found = _find(records, config.split, {row["id"] for _, row in cases})
    images = np.stack([found[row["id"]]["image"] for _, row in cases])  # [<=3, S, S, 3]
    probabilities = segment.probabilities(model, images, config, max(config.batch_size, len(cases)))
    panels = []
    for (label, row), p in zip(cases, probabilities):
        record = found[row["id"]]
        if folders is None:
            image = np.round(record["image"] * 255.0).astype(np.uint8)
            truth, pred = record["mask"][..., 0] > 0.5, segment.to_mask(p, config)
        else:
            size = tuple(int(v) for v in record["original_size"])
            images_dir, masks_dir = folders(record.get("source", b"").decode())
            image = decode.load_full_image(os.path.join(images_dir, record["source_image"].decode()))
            truth = _truth(os.path.join(masks_dir, record["source_mask"].decode()), size)
            pred = segment.to_mask(p, config, size)
        panels.append((label, row, image, truth, pred))
    return panels


def pair_panels(model, pairs_by_id: dict, cases, config, colour_constancy) -> list[tuple]:
    """The panels of `cases` scored from image/mask pairs at full resolution (as
    `record_panels`); `pairs_by_id`: case ID -> preprocessing.pairs.Pair."""
    size = models.model_image_size(model)
    pairs = [pairs_by_id[row["id"]] for _, row in cases]
    images = np.stack([decode.load_image(pair.image_path, size, colour_constancy)[0] for pair in pairs])
    probabilities = segment.probabilities(
        model, pixels.to_unit_range(images), config, max(config.batch_size, len(cases))
    )
    panels = []
    for (label, row), pair, p in zip(cases, pairs, probabilities):
        original = (row["height"], row["width"])
        panels.append(
            (
                label,
                row,
                decode.load_full_image(pair.image_path),
                _truth(pair.mask_path, original),
                segment.to_mask(p, config, original),
            )
        )
    return panels


def _truth(path: str, size: tuple[int, int]) -> np.ndarray:
    return metrics.binarize_uint8_mask(images.read_mask(path, size)).numpy()


def _find(records, split: str, ids: set) -> dict:
    """Finds the records of `ids` in the split: id -> dict of numpy values of one example."""
    found = {}
    with dataset_lib.reading(records):  # a corrupt shard: a RecordsError naming it
        for batch in dataset_lib.read_examples(records, split, 32).as_numpy_iterator():
            for i, case_id in enumerate(batch["case_id"]):
                if case_id.decode() in ids:
                    found[case_id.decode()] = {k: v[i] for k, v in batch.items()}
            if len(found) == len(ids):
                break
    return found


def _outline(ax, mask: np.ndarray, color: str) -> None:
    # contour() of a constant mask has no level to draw (and warns): nothing to outline.
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=color, linewidths=1.2)


def draw(path: str, panels: list[tuple]) -> str:
    """Draws `panels` (from `record_panels` or `pair_panels`) into a PNG at `path`
    (written atomically); returns `path`."""
    fig = Figure(figsize=(7, 3.3 * len(panels)), dpi=100)
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (label, row, image, truth, pred), (ax_image, ax_outline) in zip(panels, axes):
        stride = max(1, -(-max(image.shape[:2]) // _DISPLAY_PIXELS))
        image, truth, pred = image[::stride, ::stride], truth[::stride, ::stride], pred[::stride, ::stride]
        ax_image.imshow(image)
        ax_image.set_title(f"{label}: {row['id']}", fontsize=9)
        ax_outline.imshow(image)
        _outline(ax_outline, truth, "lime")
        _outline(ax_outline, pred, "magenta")
        ax_outline.set_title(
            f"truth (green) / prediction (magenta)\nJaccard {row['jaccard']:.3f}, Dice {row['dice']:.3f}",
            fontsize=9,
        )
        for ax in (ax_image, ax_outline):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path
