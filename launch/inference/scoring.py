"""Per-image scores of a model against ground truth, as ISIC 2018 Task 1 computes them.

  score_records   every record of a split: at the records' S x S, or at full resolution
                  against the original masks of the folders the records came from
  score_pairs     every image/mask pair of a folder, at full resolution (no records)
  summarize       the rows -> metrics.summarize, with "per_source" when the rows come
                  from several input folders

A row is {"id", "height", "width", <metrics.METRIC_NAMES>, "tp", "fp", "fn", "tn",
"confidence", "confidence_<signal>" for every signal measured} and "source" (the input
folder's name) when the records carry one; with config.report also "picture" (the review
page's thumbnails, launch/inference/review_pictures.py). Masks are predicted by
launch/inference/segment.py (threshold, TTA, post-processing from the config), the same
path isic-predict writes its files with. Counts are float64, exact for any image size.
"""

import os

import numpy as np
import tensorflow as tf

from core import progress as progress_lib
from core.errors import InputError
from launch.inference import images
from launch.inference import models
from launch.inference import review_pictures
from launch.inference import segment
from launch.inference.config import EvaluateConfig
from model import metrics
from pipeline import dataset as dataset_lib
from pipeline import pixels
from pipeline import records as records_lib
from preprocessing import decode
from preprocessing import load

COUNT_NAMES = ("tp", "fp", "fn", "tn")


def score_records(
    model,
    records: records_lib.Records,
    config: EvaluateConfig,
    count: int,
    *,
    folders=None,
    progress: bool = True,
) -> list[dict]:
    """Scores the `count` records of `config.split`, one row per image.

    Args:
      records: the dataset, opened once by the caller.
      folders: None to score at the records' size; else a function source name ->
        (images_dir, masks_dir) of the original files, to score at full resolution.
    Raises:
      ValueError: the split holds another number of records than `count`, or a mask
        does not have the recorded original size.
      RecordsError: a shard cannot be read (corrupt, or not what the manifest says).
    """
    rows = []
    bar = progress_lib.Progress(count, unit="image", show=progress)
    with dataset_lib.reading(records):  # a corrupt shard: a RecordsError naming it
        for batch in dataset_lib.read_examples(records, config.split, config.batch_size).as_numpy_iterator():
            p, signals = segment.predict(model, batch["image"], config, config.batch_size)  # [B, S, S]
            sizes = [tuple(int(v) for v in s) for s in batch["original_size"]]
            sources = [s.decode() for s in batch.get("source", [b""] * len(sizes))]
            small = np.round(batch["image"] * 255.0).astype(np.uint8)  # [B, S, S, 3], the model's input
            if folders is None:
                truth = batch["mask"][..., 0] > 0.5  # [B, S, S]
                pred = np.stack([segment.to_mask(q, config) for q in p])
                counts = [c.numpy() for c in metrics.confusion_per_image(truth, pred, tf.float64)]
                pictures = [_picture(config, *a) for a in zip(small, pred, truth)]
            else:
                masks = [
                    os.path.join(folders(source)[1], name.decode())
                    for source, name in zip(sources, batch["source_mask"])
                ]
                counts, pictures = _full_size_counts(p, masks, sizes, config, small)
            ids = [c.decode() for c in batch["case_id"]]
            rows += _rows(ids, sizes, sources, counts, _per_image(signals, config, pictures))
            bar.advance(len(rows))
    if len(rows) != count:
        raise InputError(
            f"read {len(rows)} records of split {config.split!r} but "
            f"{records.data_dir}'s manifest counts {count}; the dataset is damaged: "
            "rebuild it with isic-preprocess --overwrite"
        )
    return rows


def score_pairs(
    model,
    pairs: list,
    config: EvaluateConfig,
    colour_constancy: decode.ColourConstancy,
    *,
    progress: bool = True,
) -> tuple[list[dict], list]:
    """Scores image/mask pairs (preprocessing.pairs.Pair) at full resolution.

    Each pair is read as the builder would (`load.load_pair`: the same checks, the same
    model input), then its original mask is read again at full size for the counts.
    Returns:
      (rows, problems): a pair the builder would refuse is not scored; its
      preprocessing.pairs.Problem says why.
    """
    size = models.model_image_size(model)
    rows, problems = [], []
    bar = progress_lib.Progress(len(pairs), unit="image", show=progress)
    for first in range(0, len(pairs), config.batch_size):
        ok, images, sizes = [], [], []
        for pair in pairs[first : first + config.batch_size]:
            try:
                image, _, original = load.load_pair(pair, size, colour_constancy)
            except load.BadPairError as e:
                problems.append(e.problem)
                continue
            ok.append(pair)
            images.append(image)
            sizes.append(original)
        if ok:
            p, signals = segment.predict(
                model, pixels.to_unit_range(np.stack(images)), config, config.batch_size
            )
            masks = [pair.mask_path for pair in ok]
            counts, pictures = _full_size_counts(p, masks, sizes, config, np.stack(images))
            extra = _per_image(signals, config, pictures)
            rows += _rows([pair.case_id for pair in ok], sizes, [""] * len(ok), counts, extra)
        bar.advance(min(first + config.batch_size, len(pairs)))
    return rows, problems


def _full_size_counts(probabilities, mask_paths, sizes, config, small) -> tuple[list[np.ndarray], list]:
    """Confusion counts at the original sizes (4 float64 arrays [B]) and the review page's
    pictures (drawn here, while the full-size masks exist; `small`: uint8 [B, S, S, 3])."""
    counts, pictures = [], []
    for p, path, size, image in zip(probabilities, mask_paths, sizes, small):
        truth = metrics.binarize_uint8_mask(images.read_mask(path, size)).numpy()  # [H, W]
        pred = segment.to_mask(p, config, size)  # [H, W]
        counts.append([c.numpy() for c in metrics.confusion_per_image(truth[None], pred[None], tf.float64)])
        pictures.append(_picture(config, image, pred, truth))
    return [np.concatenate(c) for c in zip(*counts)], pictures


def _picture(config, image, pred, truth):
    """The review page's thumbnails of one image, or None without config.report."""
    return review_pictures.make(image, pred, truth) if config.report else None


def _per_image(signals: dict, config, pictures: list) -> list[dict]:
    """The columns a row gets beside its scores: "confidence" (config.confidence),
    "confidence_<signal>" for every signal measured, and "picture" with config.report."""
    extra = []
    for i, picture in enumerate(pictures):
        row = {"confidence": float(signals[config.confidence][i])}
        row.update({f"confidence_{name}": float(v[i]) for name, v in signals.items()})
        if picture is not None:
            row["picture"] = picture
        extra.append(row)
    return extra


def _rows(ids, sizes, sources, counts, extra) -> list[dict]:
    scores = {k: v.numpy() for k, v in metrics.isic_scores(*counts).items()}
    rows = []
    for i, (case_id, (height, width), source) in enumerate(zip(ids, sizes, sources)):
        row = {"id": case_id, "height": height, "width": width}
        if source:
            row["source"] = source
        row.update({name: float(scores[name][i]) for name in metrics.METRIC_NAMES})
        row.update({k: int(c[i]) for k, c in zip(COUNT_NAMES, counts)})
        row.update(extra[i])
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """`metrics.summarize` of the rows; with rows from several sources, also
    "per_source": {name: the same summary over that source's rows} (names sorted)."""
    summary = _summary(rows)
    sources = sorted({row["source"] for row in rows if row.get("source")})
    if len(sources) > 1:
        summary["per_source"] = {
            name: _summary([r for r in rows if r.get("source") == name]) for name in sources
        }
    return summary


def _summary(rows: list[dict]) -> dict:
    return metrics.summarize({name: [r[name] for r in rows] for name in metrics.METRIC_NAMES})
