"""`isic-export`: portable copies of a trained model, each checked before it is written.

  isic-export --model runs/unet --output_dir runs/unet/export [--fill_holes ...]

Writes E/serving/ (a SavedModel whose `segment` signature takes a JPEG or PNG file's
bytes and returns isic-predict's 0/255 mask at the image's size: decoding, orientation,
resizing, the network, the resize back, the threshold and the post-processing all in the
graph), E/model.onnx and E/model.tflite (the network alone; each only when its packages
are installed: pip install 'isic-unet[export]'), E/README.md (how to call each one) and
E/export.json. --threshold, --tta, --fill_holes and --largest_component are fixed into
the serving graph, with isic-predict's defaults. Each format is checked against
isic-predict and Keras on synthetic images of every size and mode isic-predict accepts;
a mismatch exits with 1 and publishes nothing.
"""

from launch import cli
from launch import layout
from launch.export.config import ExportConfig

PATHS = {
    "model": layout.MODEL_HELP,
    "output_dir": "The export folder (created; an earlier export there is replaced).",
}


def main(args, config: ExportConfig) -> int:
    from launch.export import exporter  # after cli set the environment TensorFlow reads

    with cli.filtered_stderr():  # the conversions print oneDNN's uint8 notice
        report = exporter.export_model(args.model, args.output_dir, config)
    written = [f"{f.path} ({f.megabytes:.1f} MB)" for f in report.formats if f.path]
    print(
        f"Export of {report.model} written to {report.output_dir} in {report.seconds:.0f} s: "
        f"{', '.join(written)}; see {report.output_dir}/{exporter.README_FILE}"
    )
    return 0


def run() -> None:
    """Console-script entry point (isic-export)."""
    cli.run(__name__, ExportConfig, main, paths=PATHS, required=("model", "output_dir"))


if __name__ == "__main__":
    run()
