"""`isic-evaluate`: score a trained model as ISIC 2018 Task 1 does.

  isic-evaluate --model runs/unet --data_dir records/ [--split test] [--full_resolution]
  isic-evaluate --model runs/unet --images_dir I --masks_dir K      (or --data_source D)

With --data_dir, scores a split of the TFRecords (at their size, or with
--full_resolution against the original masks of the folders they were built from). With
only a folder of images and masks, scores it at full resolution without a build step.
Writes metrics.json, per_image.csv and cases.png into --output_dir (default
<model dir>/eval-<split>[-full], or eval-folder-<name>) and prints a short table, with one
line per input folder when the records come from several. Masks are made as isic-predict
makes them: --threshold, --tta, --fill_holes, --largest_component.
"""

import os
import sys

from core.errors import UserError
from launch import cli
from launch import layout
from launch.inference.config import EvaluateConfig

PATHS = {
    "model": layout.MODEL_HELP,
    "data_dir": "TFRecord dataset directory (with manifest.json) from isic-preprocess.",
    "data_source": "A folder with images/ and masks/: with --data_dir and --full_resolution, "
    "where the original files are now (default: the folders recorded in the "
    "manifest); without --data_dir, the folder to score.",
    "images_dir": "The original images folder (instead of --data_source).",
    "masks_dir": "The original masks folder, <ID>_segmentation.png (instead of --data_source).",
    "output_dir": "Where the outputs go (default <model dir>/eval-<split>[-full], or "
    "eval-folder-<name> for a folder).",
}


def source_overrides(args) -> tuple[str | None, str | None]:
    """(images_dir, masks_dir) from --data_source or --images_dir/--masks_dir.

    Raises:
      UserError: both forms, or only one of --images_dir/--masks_dir without --data_dir.
    """
    if args.data_source and (args.images_dir or args.masks_dir):
        raise UserError("pass either --data_source or --images_dir/--masks_dir, not both")
    if args.data_source:
        return os.path.join(args.data_source, "images"), os.path.join(args.data_source, "masks")
    if not args.data_dir and bool(args.images_dir) != bool(args.masks_dir):
        raise UserError(
            "to score a folder, pass both --images_dir and --masks_dir "
            "(or --data_source D with D/images and D/masks)"
        )
    return args.images_dir, args.masks_dir


def main(args, config: EvaluateConfig) -> int:
    images_dir, masks_dir = source_overrides(args)
    if args.data_dir is None and images_dir is None:
        raise UserError(
            "pass --data_dir (records from isic-preprocess), or a folder to "
            "score: --images_dir and --masks_dir, or --data_source"
        )
    if args.data_dir and images_dir and not config.full_resolution:
        raise UserError(
            "--data_source, --images_dir and --masks_dir are used with "
            "--data_dir only with --full_resolution (or drop --data_dir to "
            "score the folder itself)"
        )
    from launch.inference import evaluation  # after cli set the environment TensorFlow reads

    if args.data_dir:
        summary = evaluation.evaluate(
            args.model,
            args.data_dir,
            config,
            images_dir=images_dir,
            masks_dir=masks_dir,
            output_dir=args.output_dir,
        )
    else:
        summary = evaluation.evaluate_folder(
            args.model, images_dir, masks_dir, config, output_dir=args.output_dir
        )
    print(evaluation.format_table(summary))
    for entry in summary.get("skipped", []):
        print(f"isic-evaluate: skipped {entry['file']}: {entry['reason']}", file=sys.stderr)
    report = ", report.html" if config.report else ""
    print(f"metrics.json, per_image.csv, cases.png{report} in {summary['output_dir']}")
    return 1 if summary.get("skipped") else 0


def run() -> None:
    """Console-script entry point (isic-evaluate)."""
    cli.run(__name__, EvaluateConfig, main, paths=PATHS, required=("model",))


if __name__ == "__main__":
    run()
