"""The checks an export must pass before isic-export publishes it.

  write_images      synthetic test images in every size and mode isic-predict accepts
  check_serving     the SavedModel's `segment` masks and confidences against isic-predict's
                    files and confidence.csv, and its `probabilities` against its maps
  check_network     a runtime's probabilities (ONNX Runtime, LiteRT) against Keras'

Images come from the synthetic dermoscopy generator (preprocessing/synth.py), so the
model sees lesion-like pictures and its masks have real borders, and are saved as RGB
JPEG (also large enough for 1/8 DCT scaling, and EXIF-rotated), RGBA, grayscale,
palette, 1-bit and 16-bit PNG, and in odd sizes (7 x 1000, smaller than the model's
input). isic-predict itself (prediction.predict_folder) writes the reference masks.
"""

import csv
import dataclasses
import os

import numpy as np
from PIL import Image

from core.errors import UserError
from launch.inference import images
from launch.inference import models
from launch.inference import prediction
from launch.inference import segment
from launch.inference.config import InferenceConfig
from launch.inference.config import PredictConfig
from pipeline import pixels
from preprocessing import decode
from preprocessing import synth

MASK_AGREEMENT = 0.999  # the share of pixels where the masks must agree (issue 15)
PROBABILITY_TOLERANCE = 1e-4  # the largest allowed |p - p_keras| (float32)
# The largest allowed |confidence - isic-predict's|: the same code (confidence.py) on maps
# that differ by <= PROBABILITY_TOLERANCE; a pixel that crosses the threshold moves an
# outline-based signal by about 1 / (outline length), so this is looser than the maps'.
CONFIDENCE_TOLERANCE = 2e-3
_SEED = 15


class ParityError(UserError):
    """An exported format does not reproduce isic-predict or Keras; nothing is published."""


@dataclasses.dataclass(frozen=True)
class ImageParity:
    """One test image through isic-predict and through the serving signatures."""

    name: str
    size: tuple[int, int]  # (height, width) of the mask
    mask_agreement: float  # share of pixels where the two masks agree
    max_probability_difference: float
    confidence_difference: float  # |serving confidence - isic-predict's confidence.csv|


@dataclasses.dataclass(frozen=True)
class NetworkParity:
    """A runtime's probabilities on a batch against Keras'."""

    runtime: str
    images: int
    max_difference: float


def _variants(rng: np.random.Generator):
    """(file name, save function) pairs: each saves a given uint8 RGB picture."""

    def save(fmt, mode=None, size=None, **kwargs):
        def write(picture: np.ndarray, path: str) -> None:
            im = Image.fromarray(picture)
            if size is not None:
                im = im.resize(size, Image.BILINEAR)
            if mode == "I;16":  # 16-bit grey: the 8-bit value * 257 plus sub-8-bit noise
                grey = np.asarray(im.convert("L")).astype(np.int64) * 257
                im = Image.fromarray(
                    (grey + rng.integers(0, 257, grey.shape)).clip(0, 65535).astype(np.uint16)
                )
            elif mode is not None:
                im = im.convert(mode)
            im.save(path, format=fmt, **kwargs)

        return write

    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the upright image is rotated 90 degrees clockwise
    return [
        ("rgb.jpg", save("JPEG", quality=90)),
        ("large_2048x1536.jpg", save("JPEG", size=(2048, 1536), quality=90)),
        ("exif_rotated.jpg", save("JPEG", size=(640, 480), quality=90, exif=exif.tobytes())),
        ("tall_7x1000.jpg", save("JPEG", size=(7, 1000), quality=90)),
        ("rgba.png", save("PNG", "RGBA", size=(731, 517))),
        ("grey.png", save("PNG", "L", size=(517, 731))),
        ("palette.png", save("PNG", "P", size=(600, 450))),
        ("sixteen_bit.png", save("PNG", "I;16", size=(300, 225))),
        ("one_bit.png", save("PNG", "1", size=(320, 240))),
        ("small_33x17.png", save("PNG", size=(33, 17))),
    ]


def write_images(folder: str, count: int | None = None) -> list[str]:
    """Writes the test images into `folder` (created); returns their file names."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(_SEED)
    names = []
    for index, (name, write) in enumerate(_variants(rng)[:count]):
        picture, _ = synth.make_pair(_SEED, index)
        write(picture, os.path.join(folder, name))
        names.append(name)
    return names


def predict_config(config: InferenceConfig) -> PredictConfig:
    """isic-predict's options equal to the export's inference options."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(InferenceConfig)}
    return PredictConfig(**shared, report=False)


def _reference_probabilities(model, image_path, config, colour_constancy) -> np.ndarray:
    """isic-predict's probability map of one file at its size, float32 [H, W]."""
    image, size = decode.load_image(image_path, models.model_image_size(model), colour_constancy)
    p = segment.probabilities(model, pixels.to_unit_range(image[None]), config)[0]
    return models.to_original_size(p, size)


def check_serving(
    serving, model_path: str, folder: str, names: list[str], config: InferenceConfig, work_dir: str
) -> list[ImageParity]:
    """Compares the loaded SavedModel `serving` with isic-predict on folder/names.

    Raises:
      ParityError: a mask agrees on fewer than MASK_AGREEMENT of its pixels, has another
        size, or a probability differs by more than PROBABILITY_TOLERANCE.
    """
    import tensorflow as tf

    reference_dir = os.path.join(work_dir, "isic-predict")
    report = prediction.predict_folder(
        model_path, folder, reference_dir, predict_config(config), progress=False
    )
    if report["failed"]:
        raise ParityError(f"isic-predict could not read its test images: {report['failed']}")
    model, resolved = models.load_model(model_path)
    colour_constancy = models.read_preprocessing(resolved)
    with open(report["confidence_csv"], newline="") as f:
        expected_confidence = {row["file"]: float(row["confidence"]) for row in csv.DictReader(f)}
    results, problems = [], []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            contents = tf.constant(f.read())
        served = serving.signatures["segment"](image_bytes=contents)
        mask = served["mask"].numpy()
        p = serving.signatures["probabilities"](image_bytes=contents)["probabilities"].numpy()
        expected = images.read_mask(
            os.path.join(reference_dir, os.path.splitext(name)[0] + "_segmentation.png")
        )
        expected_p = _reference_probabilities(model, os.path.join(folder, name), config, colour_constancy)
        if mask.shape != expected.shape or p.shape != expected_p.shape:
            problems.append(f"{name}: the serving mask is {mask.shape}, isic-predict's {expected.shape}")
            continue
        result = ImageParity(
            name,
            tuple(mask.shape),
            float(np.mean(mask == expected)),
            float(np.max(np.abs(p - expected_p))),
            abs(float(served["confidence"].numpy()) - expected_confidence[name]),
        )
        results.append(result)
        if result.mask_agreement < MASK_AGREEMENT:
            problems.append(
                f"{name}: masks agree on {result.mask_agreement:.4%} of the pixels (< {MASK_AGREEMENT:.1%})"
            )
        if result.max_probability_difference > PROBABILITY_TOLERANCE:
            problems.append(
                f"{name}: probabilities differ by up to "
                f"{result.max_probability_difference:.2e} (> {PROBABILITY_TOLERANCE:g})"
            )
        if not result.confidence_difference <= CONFIDENCE_TOLERANCE:  # also catches NaN
            problems.append(
                f"{name}: confidence differs from isic-predict's by {result.confidence_difference:.2e} "
                f"(> {CONFIDENCE_TOLERANCE:g})"
            )
    if problems:
        raise ParityError("the serving SavedModel does not reproduce isic-predict: " + "; ".join(problems))
    return results


def network_inputs(model_path: str, folder: str, names: list[str]) -> np.ndarray:
    """The test images as the network sees them: float32 [N, S, S, 3] in [0, 1]."""
    model, resolved = models.load_model(model_path)
    colour_constancy = models.read_preprocessing(resolved)
    size = models.model_image_size(model)
    return pixels.to_unit_range(
        np.stack([decode.load_image(os.path.join(folder, n), size, colour_constancy)[0] for n in names])
    )


def check_network(
    runtime: str, predict_fn, keras_probabilities: np.ndarray, images: np.ndarray
) -> NetworkParity:
    """Compares `predict_fn` (float32 [N, S, S, 3] -> probabilities [N, S, S] or
    [N, S, S, 1]) with Keras' probabilities [N, S, S] on `images`.

    Raises:
      ParityError: a probability differs by more than PROBABILITY_TOLERANCE.
    """
    got = np.asarray(predict_fn(images), np.float32).reshape(keras_probabilities.shape)
    difference = float(np.max(np.abs(got - keras_probabilities)))
    if not difference <= PROBABILITY_TOLERANCE:  # also catches NaN
        raise ParityError(
            f"{runtime} probabilities differ from Keras' by up to {difference:.2e} "
            f"(> {PROBABILITY_TOLERANCE:g}) on {len(images)} test images"
        )
    return NetworkParity(runtime, len(images), difference)
