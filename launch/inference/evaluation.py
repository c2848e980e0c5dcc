"""Scores a trained model on one split of a TFRecord dataset, as ISIC 2018 Task 1 does.

Two resolutions:
  training size     the records' S x S masks against the thresholded S x S predictions;
  full resolution   each probability map resized (bilinear) to the image's original size,
                    then thresholded, against the original 8-bit mask read from the source
                    folder (foreground > 128). This is the number the challenge reports.

The metrics are model/metrics.py's (per image, unweighted mean over images, headline the
mean thresholded Jaccard); counts are float64, exact for any image size.

Outputs in `output_dir`: metrics.json (summary), per_image.csv (one row per image) and
cases.png (best, median and worst images by Jaccard).
"""

import csv
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from launch.inference import case_figure
from launch.inference import models as inference
from model import metrics
from pipeline import dataset as dataset_lib
from preprocessing import manifest as manifest_lib

METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
FIGURE_FILE = "cases.png"


class EmptySplitError(ValueError):
    """The requested split has no records."""


def default_output_dir(model_path: str, split: str, full_resolution: bool) -> str:
    """<model dir>/eval-<split>[-full]; a .keras file's directory is its model dir."""
    model_dir = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    return os.path.join(model_dir, f"eval-{split}" + ("-full" if full_resolution else ""))


def source_dirs(manifest: dict, data_dir: str, images_dir: str | None,
                masks_dir: str | None) -> tuple[str, str]:
    """The folders of the original images and masks: the overrides, else the manifest's.

    Raises:
      FileNotFoundError: a folder does not exist (the message says how to point at it).
    """
    source = manifest.get("source", {})
    resolved = []
    for what, override in (("images", images_dir), ("masks", masks_dir)):
        folder = override or source.get(f"{what}_dir", "")
        if not folder or not os.path.isdir(folder):
            origin = "as passed" if override else f"recorded in {os.path.join(data_dir, manifest_lib.MANIFEST_NAME)}"
            raise FileNotFoundError(
                f"full-resolution evaluation needs the original {what}, but the {what} folder "
                f"{folder or '(none)'} ({origin}) does not exist. Pass --data_source DIR "
                f"(with DIR/images and DIR/masks), or --images_dir and --masks_dir")
        resolved.append(folder)
    return resolved[0], resolved[1]


def _check_inputs(manifest: dict, data_dir: str, split: str, model_size: int, model_path: str) -> int:
    """Returns the split's record count; raises if the split is unknown or empty, or the
    model was built for another image size."""
    if split not in manifest_lib.SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {manifest_lib.SPLITS}")
    count = int(manifest["counts"].get(split, 0))
    if count == 0:
        raise EmptySplitError(
            f"the {split!r} split of {data_dir} has no records (counts: {manifest['counts']}). "
            "Choose a --split that has records, or rebuild with isic-preprocess --splits giving it a share")
    if manifest["image_size"] != model_size:
        raise ValueError(f"{model_path} takes {model_size}x{model_size} images but {data_dir} "
                         f"holds {manifest['image_size']}x{manifest['image_size']} records; "
                         "evaluate on records built with the model's --image_size")
    return count


def _score_full_resolution(probabilities, batch, masks_dir, threshold):
    """Per-image confusion counts at the original sizes: 4 float64 arrays [B]."""
    counts = []
    for i, p in enumerate(probabilities):
        size = tuple(int(v) for v in batch["original_size"][i])
        mask_path = os.path.join(masks_dir, batch["source_mask"][i].decode())
        truth = metrics.binarize_uint8_mask(inference.read_mask(mask_path, size))
        pred = metrics.binarize_probabilities(inference.to_original_size(p, size), threshold)
        counts.append([c.numpy() for c in metrics.confusion_per_image(truth[None], pred[None], tf.float64)])
    return [np.concatenate(c) for c in zip(*counts)]


def score_split(model, data_dir: str, split: str, count: int, *, masks_dir: str | None,
                batch_size: int, threshold: float, progress: bool) -> list[dict]:
    """Scores every record of `split`; returns one dict per image (id, size, counts,
    metrics). Full resolution when `masks_dir` is given, else at the records' size."""
    rows = []
    bar = keras.utils.Progbar(count, stateful_metrics=("img/s",), verbose=1 if progress else 0,
                              unit_name="image")
    start = time.perf_counter()
    for batch in dataset_lib.read_examples(data_dir, split, batch_size).as_numpy_iterator():
        probabilities = inference.predict(model, batch["image"], batch_size)  # [B, S, S]
        if masks_dir is None:
            truth = metrics.binarize_probabilities(batch["mask"][..., 0], 0.5)
            pred = metrics.binarize_probabilities(probabilities, threshold)
            counts = [c.numpy() for c in metrics.confusion_per_image(truth, pred, tf.float64)]
        else:
            counts = _score_full_resolution(probabilities, batch, masks_dir, threshold)
        scores = {k: v.numpy() for k, v in metrics.isic_scores(*counts).items()}
        for i, case_id in enumerate(batch["case_id"]):
            row = {"id": case_id.decode(), "height": int(batch["original_size"][i][0]),
                   "width": int(batch["original_size"][i][1])}
            row.update({name: float(scores[name][i]) for name in metrics.METRIC_NAMES})
            row.update({k: int(c[i]) for k, c in zip(("tp", "fp", "fn", "tn"), counts)})
            rows.append(row)
        bar.update(len(rows), values=[("img/s", len(rows) / max(time.perf_counter() - start, 1e-9))])
    if len(rows) != count:
        raise ValueError(f"read {len(rows)} records of split {split!r} but {data_dir}'s manifest "
                         f"counts {count}; the dataset is damaged: rebuild it with isic-preprocess --overwrite")
    return rows


def write_per_image(path: str, rows: list[dict]) -> None:
    """per_image.csv: id, original height and width, the metrics, the confusion counts."""
    columns = ["id", "height", "width", *metrics.METRIC_NAMES, "tp", "fp", "fn", "tn"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in columns})


def evaluate(model_path: str, data_dir: str, split: str = "test", *, full_resolution: bool = False,
             images_dir: str | None = None, masks_dir: str | None = None,
             output_dir: str | None = None, batch_size: int = 32, threshold: float = 0.5,
             progress: bool = True) -> dict:
    """Evaluates a model on a split and writes metrics.json, per_image.csv and cases.png.

    Args:
      model_path: a model directory (uses its ISIC-UNet.keras) or a .keras file.
      data_dir: a TFRecord dataset from isic-preprocess.
      split: "train", "val" or "test".
      full_resolution: score at each image's original size against the source masks.
      images_dir, masks_dir: the source folders; default: those the manifest records.
      output_dir: default `default_output_dir(model_path, split, full_resolution)`.
      batch_size: images per prediction batch.
      threshold: a probability map is foreground where p > threshold (ISIC: 0.5).
      progress: show a progress bar.
    Returns:
      The summary written to metrics.json: `metrics.summarize` output plus "split",
      "resolution", "model", "data_dir", "threshold", "count" and "output_dir".
    Raises:
      FileNotFoundError: missing model, dataset, source folder or mask.
      ValueError: unusable model or records, empty split, mask of the wrong size.
    """
    model, resolved = inference.load_model(model_path)
    manifest = manifest_lib.read_manifest(data_dir)
    count = _check_inputs(manifest, data_dir, split, inference.model_image_size(model), resolved)
    if full_resolution:
        images_dir, masks_dir = source_dirs(manifest, data_dir, images_dir, masks_dir)
    output_dir = output_dir or default_output_dir(model_path, split, full_resolution)
    rows = score_split(model, data_dir, split, count, masks_dir=masks_dir if full_resolution else None,
                       batch_size=batch_size, threshold=threshold, progress=progress)

    summary = metrics.summarize({name: [r[name] for r in rows] for name in metrics.METRIC_NAMES})
    size = manifest["image_size"]
    summary.update({
        "split": split, "resolution": "full" if full_resolution else f"{size}x{size}",
        "model": os.path.abspath(resolved), "data_dir": os.path.abspath(data_dir),
        "threshold": threshold, "count": len(rows), "output_dir": os.path.abspath(output_dir)})
    os.makedirs(output_dir, exist_ok=True)
    write_per_image(os.path.join(output_dir, PER_IMAGE_FILE), rows)
    cases = case_figure.pick_cases(rows)
    case_figure.draw(os.path.join(output_dir, FIGURE_FILE), model, data_dir, split, cases,
                     threshold=threshold, images_dir=images_dir if full_resolution else None,
                     masks_dir=masks_dir if full_resolution else None, batch_size=batch_size)
    with open(os.path.join(output_dir, METRICS_FILE), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    return summary


def format_table(summary: dict) -> str:
    """A short text table: mean and median of each metric, and the headline."""
    lines = [f"{summary['split']} split, {summary['count']} images, resolution {summary['resolution']}",
             f"{'metric':<20} {'mean':>8} {'median':>8}"]
    for name in metrics.METRIC_NAMES:
        lines.append(f"{name:<20} {summary['mean'][name]:>8.4f} {summary['median'][name]:>8.4f}")
    below = summary[f"fraction_jaccard_below_{metrics.JACCARD_THRESHOLD}"]
    lines.append(f"images with Jaccard < {metrics.JACCARD_THRESHOLD}: {below:.1%}")
    lines.append(f"headline: thresholded Jaccard {summary['headline']['thresholded_jaccard']:.4f}, "
                 f"Dice {summary['headline']['dice']:.4f}")
    return "\n".join(lines)
