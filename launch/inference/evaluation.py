"""Scores a trained model as ISIC 2018 Task 1 does (`isic-evaluate`).

  evaluate         one split of a TFRecord dataset, at one of two resolutions:
                     training size    the records' S x S masks against the S x S predictions;
                     full resolution  each probability map resized (bilinear) to the image's
                                      original size, then thresholded, against the original
                                      8-bit mask read from the source folder (foreground
                                      > 128). This is the number the challenge reports.
  evaluate_folder  a folder of images and masks, at full resolution, without records

Scoring is launch/inference/scoring.py (the metrics of model/metrics.py: per image,
unweighted mean over images, headline the mean thresholded Jaccard). When the records
come from several input folders, metrics.json also has "per_source".

Outputs in `output_dir` (checked writable before any work): metrics.json (summary, with
the per-image confidence's "confidence" block: launch/inference/risk_coverage.py),
per_image.csv (one row per image, its confidence included), cases.png (best, median and
worst by Jaccard) and, with config.report, report.html (launch/inference/review_page.py).
"""

import csv
import json
import os

from core import files
from core.errors import InputError
from core.errors import MissingInputError
from launch.inference import case_figure
from launch.inference import models
from launch.inference import review_page
from launch.inference import risk_coverage
from launch.inference import scoring
from launch.inference.config import EvaluateConfig
from model import metrics
from pipeline import dataset as dataset_lib
from preprocessing import decode
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib

METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
FIGURE_FILE = "cases.png"


class EmptySplitError(InputError):
    """The requested split has no records."""


def default_output_dir(model_path: str, split: str, full_resolution: bool) -> str:
    """<model dir>/eval-<split>[-full]; a .keras file's directory is its model dir."""
    return os.path.join(_model_dir(model_path), f"eval-{split}" + ("-full" if full_resolution else ""))


def folder_output_dir(model_path: str, images_dir: str, masks_dir: str) -> str:
    """<model dir>/eval-folder-<name>, name: the folder's as isic-preprocess names its
    sources (D/images -> D, else the images folder's own)."""
    name = pairs_lib.name_sources([(images_dir, masks_dir)])[0].name
    return os.path.join(_model_dir(model_path), f"eval-folder-{name}")


def _model_dir(model_path: str) -> str:
    return model_path if files.isdir(model_path) else os.path.dirname(files.absolute(model_path))


def source_folders(
    manifest: dict, data_dir: str, images_dir: str | None = None, masks_dir: str | None = None
):
    """The folders of the original images and masks of each record's source.

    Returns a function: a record's source name -> (images_dir, masks_dir), from the
    overrides (one-folder records only), else from the manifest ("sources", or "source"
    for records built before several input folders existed).
    Raises:
      FileNotFoundError: a folder does not exist (the message says how to point at it).
      ValueError: overrides for records built from several folders.
    """
    recorded = _recorded_folders(manifest, data_dir, images_dir, masks_dir)
    for images, masks in recorded.values():
        _check_folder("images", images, images_dir, data_dir)
        _check_folder("masks", masks, masks_dir, data_dir)

    def folders(name: str) -> tuple[str, str]:
        if len(recorded) == 1:
            return next(iter(recorded.values()))
        if name not in recorded:
            raise InputError(
                f"a record of {data_dir} names the source {name!r}, which its "
                f"manifest does not list ({', '.join(sorted(recorded))}); rebuild "
                "the records with isic-preprocess --overwrite"
            )
        return recorded[name]

    return folders


def _recorded_folders(manifest, data_dir, images_dir, masks_dir) -> dict:
    """{source name: (images_dir, masks_dir)}, the overrides replacing the one source's."""
    recorded = {
        name: (s.get("images_dir", ""), s.get("masks_dir", ""))
        for name, s in manifest.get("sources", {}).items()
    }
    if not recorded:
        source = manifest.get("source", {})
        recorded = {"": (source.get("images_dir", ""), source.get("masks_dir", ""))}
    if not (images_dir or masks_dir):
        return recorded
    if len(recorded) > 1:
        raise InputError(
            f"the records of {data_dir} come from {len(recorded)} input folders "
            f"({', '.join(sorted(recorded))}); --data_source, --images_dir and "
            "--masks_dir can only replace the folder of one-folder records"
        )
    ((name, (images, masks)),) = recorded.items()
    return {name: (images_dir or images, masks_dir or masks)}


def _check_folder(what: str, folder: str, override: str | None, data_dir: str) -> None:
    if folder and files.isdir(folder):
        return
    origin = "as passed" if override else f"recorded in {os.path.join(data_dir, manifest_lib.MANIFEST_NAME)}"
    raise MissingInputError(
        f"full-resolution evaluation needs the original {what}, but the {what} folder "
        f"{folder or '(none)'} ({origin}) does not exist. Pass --data_source DIR "
        f"(with DIR/images and DIR/masks), or --images_dir and --masks_dir"
    )


def _check_inputs(manifest: dict, data_dir: str, split: str, model_size: int, model_path: str) -> int:
    """Returns the split's record count; raises if the split is unknown or empty, or the
    model was built for another image size."""
    if split not in manifest_lib.SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {manifest_lib.SPLITS}")
    count = int(manifest["counts"].get(split, 0))
    if count == 0:
        raise EmptySplitError(
            f"the {split!r} split of {data_dir} has no records (counts: {manifest['counts']}). "
            "Choose a --split that has records, or rebuild with isic-preprocess --splits giving it a share"
        )
    if manifest["image_size"] != model_size:
        raise InputError(
            f"{model_path} takes {model_size}x{model_size} images but {data_dir} "
            f"holds {manifest['image_size']}x{manifest['image_size']} records; "
            "evaluate on records built with the model's --image_size"
        )
    return count


def _check_colour_constancy(manifest: dict, data_dir: str, model_path: str) -> None:
    """Records must hold the pixels the model was trained on (colour constancy or not)."""
    trained = models.read_preprocessing(model_path)
    built = decode.ColourConstancy.from_dict(manifest.get("preprocessing"))
    if trained != built:
        raise InputError(
            f"{model_path} was trained on images with colour constancy {trained.to_dict()} but "
            f"the records of {data_dir} were built with {built.to_dict()}; evaluate on records "
            "built like the training records, or score the folder with --images_dir and "
            "--masks_dir (images are then prepared as the model expects)"
        )


def evaluate(
    model_path: str,
    data_dir: str,
    config: EvaluateConfig,
    *,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    output_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluates a model on config.split of a dataset; writes metrics.json, per_image.csv,
    cases.png and (config.report) report.html.

    Args:
      model_path: a model directory (uses its ISIC-UNet.keras) or a .keras file.
      data_dir: a TFRecord dataset from isic-preprocess.
      config: split, resolution, batch size and how masks are made (threshold, TTA,
        post-processing).
      images_dir, masks_dir: full resolution: the source folders of one-folder records;
        default: those the manifest records.
      output_dir: default `default_output_dir(model_path, split, full_resolution)`.
      progress: show a progress bar.
    Returns:
      The summary written to metrics.json: `scoring.summarize` output plus "split",
      "resolution", "model", "data_dir", "threshold", "count", "output_dir" and the
      inference options.
    Raises:
      FileNotFoundError: missing model, dataset, source folder or mask.
      ValueError: unusable model or records, empty split, mask of the wrong size.
      UserError: the output folder is not writable.
    """
    model, resolved = models.load_model(model_path, config.jit_compile)
    manifest = manifest_lib.read_manifest(data_dir)
    count = _check_inputs(manifest, data_dir, config.split, models.model_image_size(model), resolved)
    _check_colour_constancy(manifest, data_dir, resolved)
    folders = source_folders(manifest, data_dir, images_dir, masks_dir) if config.full_resolution else None
    output_dir = output_dir or default_output_dir(model_path, config.split, config.full_resolution)
    files.ensure_writable(output_dir)
    records = dataset_lib.Records.open(data_dir)
    records.verify([config.split])  # a damaged shard is named before any work
    rows = scoring.score_records(model, records, config, count, folders=folders, progress=progress)
    cases = case_figure.pick_cases(rows)
    panels = case_figure.record_panels(model, records, cases, config, folders)
    size = manifest["image_size"]
    summary = _summary(
        rows,
        config,
        resolved,
        output_dir,
        {
            "split": config.split,
            "resolution": "full" if config.full_resolution else f"{size}x{size}",
            "data_dir": files.absolute(data_dir),
        },
    )
    return _write_outputs(output_dir, summary, rows, panels)


def evaluate_folder(
    model_path: str,
    images_dir: str,
    masks_dir: str,
    config: EvaluateConfig,
    *,
    output_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluates a model on the image/mask pairs of two folders at full resolution,
    without records (config.split and config.full_resolution do not apply).

    Pairs are found as isic-preprocess finds them (preprocessing.pairs.discover_pairs)
    and read as it reads them, with the model's colour constancy. A pair it would refuse
    is not scored: summary["skipped"] lists it ({"id", "file", "reason"}).
    Returns:
      The summary written to metrics.json (as `evaluate`'s, with "images_dir" and
      "masks_dir" instead of "data_dir", and "split" None).
    Raises:
      FileNotFoundError: missing model or folder. ValueError: no usable pair, unusable
      model. UserError: the output folder is not writable.
    """
    model, resolved = models.load_model(model_path, config.jit_compile)
    colour_constancy = models.read_preprocessing(resolved)
    listing = pairs_lib.discover_pairs(images_dir, masks_dir)
    if not listing.pairs:
        raise InputError(
            f"{images_dir} and {masks_dir} hold no image/mask pairs "
            f"({len(listing.problems)} problems, {len(listing.ignored)} files "
            "ignored); masks must be named <ID>_segmentation.png"
        )
    output_dir = output_dir or folder_output_dir(model_path, images_dir, masks_dir)
    files.ensure_writable(output_dir)
    rows, problems = scoring.score_pairs(model, listing.pairs, config, colour_constancy, progress=progress)
    problems = sorted(listing.problems + problems, key=lambda p: (p.case_id, p.file))
    if not rows:
        raise InputError("no pair could be scored:\n" + "\n".join("  " + p.line() for p in problems))
    cases = case_figure.pick_cases(rows)
    panels = case_figure.pair_panels(
        model, {p.case_id: p for p in listing.pairs}, cases, config, colour_constancy
    )
    summary = _summary(
        rows,
        config,
        resolved,
        output_dir,
        {
            "split": None,
            "resolution": "full",
            "images_dir": files.absolute(images_dir),
            "masks_dir": files.absolute(masks_dir),
            "skipped": [p.as_dict() for p in problems],
        },
    )
    return _write_outputs(output_dir, summary, rows, panels)


def _summary(rows, config: EvaluateConfig, model_path: str, output_dir: str, extra: dict) -> dict:
    summary = scoring.summarize(rows)
    summary.update(extra)
    measured = {
        name[len("confidence_") :]: [r[name] for r in rows]
        for name in rows[0]
        if name.startswith("confidence_")
    }
    summary["confidence"] = risk_coverage.summarize(
        measured, [r["jaccard"] for r in rows], config.confidence, config.check_below
    )
    summary.update(
        {
            "model": files.absolute(model_path),
            "threshold": config.threshold,
            "tta": config.tta,
            "fill_holes": config.fill_holes,
            "largest_component": config.largest_component,
            "count": len(rows),
            "output_dir": files.absolute(output_dir),
        }
    )
    return summary


def _write_outputs(output_dir: str, summary: dict, rows: list[dict], panels: list) -> dict:
    """per_image.csv, cases.png, report.html (when the rows have pictures), then
    metrics.json (last: its presence means done)."""
    write_per_image(os.path.join(output_dir, PER_IMAGE_FILE), rows)
    case_figure.draw(os.path.join(output_dir, FIGURE_FILE), panels)
    if rows and "picture" in rows[0]:
        if summary.get("split"):
            where = f"{summary['split']} split"
        else:  # the folder's name as isic-preprocess names it (D/images -> D)
            where = pairs_lib.name_sources([(summary["images_dir"], summary["masks_dir"])])[0].name
        review_page.write(
            os.path.join(output_dir, review_page.REPORT_FILE), summary, rows, f"isic-evaluate: {where}"
        )
    files.write_atomic(os.path.join(output_dir, METRICS_FILE), json.dumps(summary, indent=1) + "\n")
    return summary


def write_per_image(path: str, rows: list[dict]) -> None:
    """per_image.csv: id, (source, when the records have one), original height and width,
    the metrics, the confusion counts, the confidence, then every confidence signal
    measured (confidence_<signal>)."""
    source = ["source"] if any("source" in row for row in rows) else []
    signals = [name for name in (rows[0] if rows else {}) if name.startswith("confidence_")]
    columns = [
        "id",
        *source,
        "height",
        "width",
        *metrics.METRIC_NAMES,
        *scoring.COUNT_NAMES,
        "confidence",
        *signals,
    ]
    with files.atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row.get(k, "")) for k in columns}
            )


def format_table(summary: dict) -> str:
    """A short text table: mean and median of each metric, the headline, and one line
    per source when there are several."""
    where = f"{summary['split']} split" if summary.get("split") else f"folder {summary.get('images_dir')}"
    lines = [
        f"{where}, {summary['count']} images, resolution {summary['resolution']}",
        f"{'metric':<20} {'mean':>8} {'median':>8}",
    ]
    for name in metrics.METRIC_NAMES:
        lines.append(f"{name:<20} {summary['mean'][name]:>8.4f} {summary['median'][name]:>8.4f}")
    below_key = f"fraction_jaccard_below_{metrics.JACCARD_THRESHOLD}"
    lines.append(f"images with Jaccard < {metrics.JACCARD_THRESHOLD}: {summary[below_key]:.1%}")
    lines.append(
        f"headline: thresholded Jaccard {summary['headline']['thresholded_jaccard']:.4f}, "
        f"Dice {summary['headline']['dice']:.4f}"
    )
    block = summary.get("confidence")
    if block:
        auroc, rows = block["auroc_jaccard_below_0.65"], block["risk_coverage"]
        kept = ", ".join(f"{r['coverage']:.0%} {r['confidence']['thresholded_jaccard']:.4f}" for r in rows)
        lines.append(
            f"confidence ({block['signal']}): AUROC for Jaccard < {metrics.JACCARD_THRESHOLD} "
            f"{'-' if auroc is None else f'{auroc:.3f}'}; thresholded Jaccard of the most confident "
            f"{kept}; {block['checked']} images below --check_below {block['check_below']:g}"
        )
    if summary.get("per_source"):
        width = max(len("source"), *(len(name) for name in summary["per_source"]))
        lines.append(
            f"{'source':<{width}} {'images':>6} {'Dice':>7} {'thr. Jaccard':>12} "
            f"{'J < ' + str(metrics.JACCARD_THRESHOLD):>9}"
        )
        for name, s in summary["per_source"].items():
            lines.append(
                f"{name:<{width}} {s['num_images']:>6} {s['mean']['dice']:>7.4f} "
                f"{s['headline']['thresholded_jaccard']:>12.4f} {s[below_key]:>9.1%}"
            )
    return "\n".join(lines)
