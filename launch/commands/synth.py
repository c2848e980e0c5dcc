"""isic-synth: writes a synthetic dermoscopy-like dataset in the input layout.

  isic-synth --output_dir D --num_images N --seed S

writes D/images/SYNTH_<7 digits>.jpg and D/masks/SYNTH_<7 digits>_segmentation.png
(0/255), then D/synth.json. Same flags, same bytes. Re-running with the same flags on a
complete output returns at once without touching the files (so a later isic-preprocess
sees unchanged inputs); other flags replace the SYNTH_* files. See synth.write_dataset.
"""

from launch import cli
from preprocessing.config import SynthConfig

PATHS = {"output_dir": "Dataset folder to create (images/, masks/)."}


def main(args, config: SynthConfig) -> int:
    from preprocessing import synth  # after cli set the environment TensorFlow reads

    synth.write_dataset(args.output_dir, config.num_images, config.seed, config.num_workers)
    return 0


def run() -> None:
    """Console-script entry point (isic-synth)."""
    cli.run(__name__, SynthConfig, main, paths=PATHS, required=("output_dir",))


if __name__ == "__main__":
    run()
