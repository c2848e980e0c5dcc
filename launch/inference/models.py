"""The trained model at inference: loading it, running it, and sizing its output.

  load_model          a model directory (-> M/ISIC-UNet.keras) or a .keras file, checked
  use_xla             whether its forward pass is compiled by XLA (--jit_compile)
  read_preprocessing  the colour constancy the model was trained with (preprocessing.json)
  predict             float32 [B, S, S, 3] in [0, 1] -> float32 probabilities [B, S, S]
  to_original_size    probabilities [S, S] -> [H, W] (bilinear), before any thresholding

Image preprocessing must match the builder's pixel for pixel, or the model sees other
inputs at prediction time than in training: inference decodes with preprocessing/decode.py
(`decode.load_image`), with the colour constancy the model's preprocessing.json records,
and scales with pipeline/pixels.py; tests/test_predict.py checks it against `load.load_pair`.
"""

import json
import zipfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from core import files
from core.errors import InputError
from launch import layout
from launch.inference.config import JIT_COMPILE
from preprocessing import decode


def load_model(path: str, jit_compile: str = "auto") -> tuple[keras.Model, str]:
    """Loads a segmentation model for inference, its forward pass compiled by XLA as
    `jit_compile` ("auto", "on" or "off") asks (`use_xla`).

    Returns:
      (model mapping float32 [B, S, S, 3] in [0, 1] to probabilities [B, S, S, 1],
       the .keras path it came from).
    Raises:
      MissingInputError: see `layout.resolve_model_path`.
      ValueError: the file is not a loadable Keras model, or has other input/output shapes.
    """
    resolved = layout.resolve_model_path(path)
    # A .keras file is a zip archive whose directory is at its end: a file cut short (a
    # full disk, an interrupted copy) has none, and Keras would report it as "File not
    # found" (keras/src/saving/saving_api.py:214, after zipfile.is_zipfile said no).
    if files.is_local(resolved) and not zipfile.is_zipfile(resolved):
        raise InputError(
            f"{resolved} is not a complete .keras file ({files.getsize(resolved)} bytes, not "
            "a zip archive: cut short or damaged). Write it again: run the same isic-train "
            "command on its model directory (a finished run re-exports from its last "
            "checkpoint), or pass another model such as <model_dir>/best"
        ) from None
    try:
        model = keras.models.load_model(resolved, compile=False)
    except Exception as e:  # Keras reports broken archives with many exception types.
        raise InputError(
            f"cannot load the model {resolved} ({type(e).__name__}: {e}); "
            "it may be truncated: re-export it, or use another checkpointed model"
        ) from None
    model = in_float32(model)
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if (
        len(in_shape) != 4
        or in_shape[3] != 3
        or in_shape[1] is None
        or in_shape[1] != in_shape[2]
        or out_shape[1:] != (in_shape[1], in_shape[2], 1)
    ):
        raise InputError(
            f"{resolved} maps {in_shape} to {out_shape}; expected a segmentation "
            "model mapping [B, S, S, 3] images to [B, S, S, 1] probabilities"
        )
    use_xla(model, jit_compile)
    return model, resolved


def use_xla(model: keras.Model, setting: str) -> bool:
    """Whether `model.predict_on_batch` (what `predict` calls) compiles the forward pass with
    XLA, set on the model for `--jit_compile setting`; returns the choice.

    auto = Keras' own choice for a model predicting without a strategy: on where there is a
    GPU, off on CPU-only machines (keras/src/trainers/trainer.py `_resolve_auto_jit_compile`).
    Measured on CPU (benchmarks/inference.py, docs/performance.md): oneDNN's graph is faster
    than XLA's CPU code for the forward pass too, so auto keeps Keras' rule.
    """
    if setting not in JIT_COMPILE:
        raise ValueError(f"jit_compile must be one of {', '.join(JIT_COMPILE)}, got {setting!r}")
    chosen = bool(tf.config.list_physical_devices("GPU")) if setting == "auto" else setting == "on"
    model.jit_compile = chosen
    model.predict_function = None  # built again, with this setting, at the next call
    logging.info("--jit_compile %s: XLA %s for the forward pass", setting, "on" if chosen else "off")
    return chosen


def in_float32(model: keras.Model) -> keras.Model:
    """`model`, or the same network and weights computing in float32 when it was saved under a
    mixed precision policy (isic-train's --precision auto picks mixed_bfloat16 on CPUs that
    have it). Mixed precision speeds training up; inference computes in float32, so the
    scores, the masks and every export (ONNX has no bfloat16 convolution; LiteRT and the
    serving graph must match the Keras model) are the same whatever the training precision.
    Its weights are float32 under every policy, so nothing is lost."""
    if all(layer.dtype_policy.name == "float32" for layer in _layers(model)):
        return model
    float32 = model.__class__.from_config(_float32_policies(model.get_config()))
    float32.set_weights(model.get_weights())
    return float32


def _layers(model: keras.Model):
    """Every layer of `model`, those of nested models (a pretrained encoder) included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _float32_policies(config):
    """The (nested) layer config with every DTypePolicy set to float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return dict(config, config={"name": "float32"})
        return {key: _float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_policies(value) for value in config]
    return config


def model_image_size(model: keras.Model) -> int:
    """S, the square input size the model was built for."""
    return int(model.input_shape[1])


def read_preprocessing(model_path: str) -> decode.ColourConstancy:
    """The colour constancy a model was trained with, from its preprocessing.json.

    The file is looked for next to the .keras file `model_path` resolves to, then in that
    folder's parent (runs/unet/best/ISIC-UNet.keras -> runs/unet/preprocessing.json).
    None found: no colour constancy (models from before the option).
    Raises:
      MissingInputError: see `layout.resolve_model_path`.
      InputError: the file is not valid JSON or names an unknown method.
    """
    for candidate in layout.preprocessing_candidates(model_path):
        if files.isfile(candidate):
            try:
                with files.open(candidate) as f:
                    return decode.ColourConstancy.from_dict(json.load(f))
            except (OSError, ValueError, TypeError, AttributeError) as e:
                raise InputError(
                    f"{candidate} is not a usable preprocessing record ({e}); "
                    "it is written by isic-train: restore it from the run"
                ) from None
    return decode.NO_COLOUR_CONSTANCY


def predict(model: keras.Model, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Probabilities of a batch: float32 [B, S, S, 3] in [0, 1] -> float32 [B, S, S].

    A batch smaller than `batch_size` (the last one) is padded with zeros to it, so the
    predict function is traced for one shape only.
    """
    n = images.shape[0]
    images = np.ascontiguousarray(images, np.float32)
    if batch_size and n < batch_size:
        pad = np.zeros((batch_size - n, *images.shape[1:]), np.float32)
        images = np.concatenate([images, pad])
    return np.asarray(model.predict_on_batch(images), np.float32)[:n, ..., 0]


def to_original_size(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes one probability map [S, S] to `size` (height, width): float32 [H, W].

    Bilinear (triangle filter, half-pixel centres), antialiased when shrinking so that a
    side smaller than S averages the map instead of sampling it: Pillow's BILINEAR on a
    float32 ("F") image, which equals tf.image.resize(..., "bilinear", antialias=True) to
    ~1e-5 and is faster on CPU (docs/performance.md). Done before thresholding: enlarging
    a thresholded map would give staircase borders.
    """
    height, width = int(size[0]), int(size[1])
    p = Image.fromarray(np.ascontiguousarray(probabilities, np.float32), "F")
    return np.asarray(p.resize((width, height), Image.BILINEAR))
