"""`isic-predict`: segment every image of a folder into ISIC submission masks.

  isic-predict --model runs/unet --input_dir photos/ --output_dir masks/ [--overlays]

Writes masks/<ID>_segmentation.png (8-bit, 0/255, the input's size) for each
photos/<ID>.jpg|.jpeg|.png, prepared as the model's training records were (its colour
constancy included) and made as isic-evaluate scores them: --threshold, --tta,
--fill_holes, --largest_component. Also writes confidence.csv (each image's confidence,
--confidence, marked check below --check_below) and report.html (the review page). Exits
with 1 if any image could not be read (the others are still written).
"""

import os
import sys

from launch import cli
from launch import layout
from launch.inference.config import PredictConfig

PATHS = {
    "model": layout.MODEL_HELP,
    "input_dir": "Folder of JPEG or PNG images (any size and mode); other files are ignored.",
    "output_dir": "Where <ID>_segmentation.png files go (created).",
}


def main(args, config: PredictConfig) -> int:
    from launch.inference import prediction  # after cli set the environment TensorFlow reads

    report = prediction.predict_folder(args.model, args.input_dir, args.output_dir, config)
    for name, reason in report["failed"]:
        print(f"isic-predict: skipped {name}: {reason}", file=sys.stderr)
    print(
        f"{len(report['written'])} masks written to {report['output_dir']}"
        + (f" (overlays in {report['output_dir']}/overlays)" if config.overlays else "")
        + f"; {len(report['failed'])} images failed; {len(report['ignored'])} other files ignored"
    )
    for key in ("confidence_csv", "report_html"):
        if key in report:
            print(f"{os.path.basename(report[key])}: {report[key]}")
    return 1 if report["failed"] else 0


def run() -> None:
    """Console-script entry point (isic-predict)."""
    cli.run(__name__, PredictConfig, main, paths=PATHS, required=("model", "input_dir", "output_dir"))


if __name__ == "__main__":
    run()
