"""Pretrained encoders for the U-Net decoder: each one's layers, skip taps, input
normalisation and ImageNet weights.

Every encoder maps a [B, S, S, 3] image in [0, 1] to five features at strides 2, 4, 8, 16
and 32 (the U-Net's four skips and its bottleneck). The records and the input pipeline stay
[0, 1] floats: each encoder's own input normalisation is the first layer of the model (a
standard `Rescaling` layer), so exported models, `isic-evaluate` and `isic-predict`
need no extra preprocessing.

  efficientnet_lite0  model/efficientnet_lite.py; weights from the `pretrained` extra
                      (no network needed)                      16/24/40/112/320 channels
  efficientnetv2b0    keras.applications.EfficientNetV2B0      16/32/48/112/192
  mobilenetv3large    keras.applications.MobileNetV3Large      16/24/40/112/160

The Keras backbones download their ImageNet weights on first use into Keras' cache
(`$KERAS_HOME/models`, default `~/.keras/models`); without network that fails with a
`WeightsUnavailableError` that says what to do. `weights` is "imagenet", "none" (random
initialisation) or a PATH: for efficientnet_lite0 a legacy torch file laid out like the
package's; for the Keras backbones the file Keras would download (its `_notop` weights).
"""

import dataclasses
import os

import keras
from keras import layers

from model import efficientnet_lite

IMAGENET_MEAN, IMAGENET_STD = efficientnet_lite.MEAN, efficientnet_lite.STD
WeightsUnavailableError = efficientnet_lite.WeightsUnavailableError


@dataclasses.dataclass(frozen=True)
class _KerasBackbone:
    constructor: str  # attribute of keras.applications
    skips: tuple[str, ...]  # layers whose outputs are the features at strides 2..32
    mean: tuple[float, ...]  # what the ImageNet weights expect, for inputs in [0, 1]
    std: tuple[float, ...]


# The taps are the last block output at each stride (the ends of the stages), as in
# segmentation_models and keras-hub's feature pyramids. Both constructors are built with
# include_preprocessing=False and get the normalisation below, which is what their own
# preprocessing layer computes for 0-255 inputs, restated for [0, 1].
KERAS_BACKBONES = {
    "efficientnetv2b0": _KerasBackbone(
        "EfficientNetV2B0",
        ("block1a_project_activation", "block2b_add", "block3b_add", "block5e_add", "block6h_add"),
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "mobilenetv3large": _KerasBackbone(
        "MobileNetV3Large",
        (
            "expanded_conv_add",
            "expanded_conv_2_add",
            "expanded_conv_5_add",
            "expanded_conv_11_add",
            "expanded_conv_14_add",
        ),
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    ),  # [-1, 1]
}
ENCODERS = ("efficientnet_lite0", *KERAS_BACKBONES)


def _normalise(inputs, mean, std):
    """(x - mean) / std per channel, as x * (1 / std) + (-mean / std).

    A `Rescaling` layer with per-channel lists rather than `Normalization`: the latter keeps
    its mean and variance as eager tensors that tf2onnx turns into extra graph inputs;
    Rescaling's lists become constants of the traced graph.
    """
    return layers.Rescaling(
        scale=[1.0 / s for s in std], offset=[-m / s for m, s in zip(mean, std)], name="encoder_normalisation"
    )(inputs)


def apply_encoder(
    inputs, encoder: str, weights: str, *, bn_momentum: float, sync_batch_norm: bool = False
) -> list:
    """The five features [stride 2, 4, 8, 16, 32] of `encoder` applied to `inputs`.

    Args:
      inputs: the model's input tensor [B, S, S, 3], float32 in [0, 1]; S a multiple of 32.
      encoder: one of ENCODERS.
      weights: "imagenet", "none" or a path (module docstring).
      bn_momentum: momentum of every batch norm of the encoder (the pretrained ones too:
        Keras' 0.99 lags on short runs, launch/training/config.py).
      sync_batch_norm: batch-norm statistics over the global batch.
    Raises:
      ValueError: unknown encoder.
      WeightsUnavailableError: the weights cannot be found, downloaded or read.
    """
    if encoder == "efficientnet_lite0":
        x = _normalise(inputs, efficientnet_lite.MEAN, efficientnet_lite.STD)
        features, _ = efficientnet_lite.efficientnet_lite0(
            x, bn_momentum=bn_momentum, sync_batch_norm=sync_batch_norm
        )
        if weights != "none":
            state = efficientnet_lite.imagenet_state(None if weights == "imagenet" else weights)
            efficientnet_lite.load_weights(keras.Model(inputs, features), state)
        return features
    if encoder not in KERAS_BACKBONES:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {ENCODERS}")
    spec = KERAS_BACKBONES[encoder]
    x = _normalise(inputs, spec.mean, spec.std)
    backbone = _keras_backbone(encoder, spec, x, weights)
    for layer in backbone.layers:  # both are read at call time (and saved by get_config)
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum, layer.synchronized = bn_momentum, sync_batch_norm
    return [backbone.get_layer(name).output for name in spec.skips]


def _keras_backbone(encoder: str, spec: _KerasBackbone, x, weights: str) -> keras.Model:
    """The keras.applications model built on tensor `x` (its layers join the caller's graph)."""
    constructor = getattr(keras.applications, spec.constructor)
    try:
        return constructor(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_tensor=x,
            include_preprocessing=False,
        )
    except Exception as e:  # Keras raises a bare Exception on fetch failures
        if "URL fetch failure" not in str(e):
            raise
        reason = " ".join(str(e).split())  # one line
        raise WeightsUnavailableError(
            f"cannot download the ImageNet weights of {encoder} ({reason}). Connect to the "
            f"network once (Keras caches them in {_keras_cache()}), or pass "
            "the downloaded file with --encoder_weights PATH, or train from scratch with "
            "--encoder_weights none"
        ) from None


def _keras_cache() -> str:
    """Where keras.utils.get_file keeps downloaded weights ($KERAS_HOME/models)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models")
