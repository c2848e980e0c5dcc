"""isic-predict and the shared inference helpers: sizes, modes, values, bad inputs.

The model is a saved 1x1 convolution whose probability is the red channel (p = R / 255),
so every expected mask is known exactly without training.
"""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from core.errors import UserError
from launch import layout
from launch.inference import models as inference
from launch.inference import prediction
from launch.inference.config import PredictConfig

S = 16
CONFIG = PredictConfig(tta=False, fill_holes=False, largest_component=False)  # raw mask
OVERLAYS = dataclasses.replace(CONFIG, overlays=True)


def red_channel_model(path: str, image_size: int = S) -> str:
    """Saves a model with p = R / 255 (a linear 1x1 convolution picking the red channel)."""
    inputs = keras.Input((image_size, image_size, 3))
    conv = keras.layers.Conv2D(1, 1, name="pick_red")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 1, 3, 1), np.zeros(1, np.float32)])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return red_channel_model(str(tmp_path_factory.mktemp("model") / "red.keras"))


def _half_red(height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: red (p = 1) in the left half, black (p = 0) in the right half."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 255
    return image


def _read(path: str) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


@pytest.mark.parametrize(
    "height,width,ext", [(1, 1, ".png"), (7, 1000, ".jpg"), (3000, 4000, ".jpg"), (33, 17, ".png")]
)
def test_masks_have_the_input_size_mode_and_values(model_path, tmp_path, height, width, ext):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    image = np.full((height, width, 3), 255, np.uint8) if width == 1 else _half_red(height, width)
    Image.fromarray(image).save(inp / f"ISIC_1{ext}", quality=95)
    report = prediction.predict_folder(model_path, str(inp), str(out), CONFIG, progress=False)
    assert report["failed"] == [] and len(report["written"]) == 1
    mask = _read(out / "ISIC_1_segmentation.png")
    assert mask.mode == "L" and mask.size == (width, height)
    values = np.asarray(mask)
    assert set(np.unique(values)) <= {0, 255}
    if width == 1:
        assert values.tolist() == [[255]]
    else:  # left half foreground, right half background, away from the resized border
        margin = max(2, width // 8)
        assert (values[:, : width // 2 - margin] == 255).all()
        assert (values[:, width // 2 + margin :] == 0).all()


def _save_mode(path, rgb: np.ndarray, mode: str) -> None:
    """Writes `rgb` (uint8 [H, W, 3], gray-ish) in another mode; "exif6": a JPEG stored
    W high x H wide (transposed) with EXIF orientation 6, so its upright size is H x W."""
    im = Image.fromarray(rgb)
    if mode == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        Image.fromarray(rgb.transpose(1, 0, 2)).save(path, exif=exif, quality=95)
    elif mode == "I;16":
        gray = np.asarray(im.convert("L")).astype(np.uint16) * 257
        Image.fromarray(gray).save(path)  # uint16 -> mode I;16
    elif mode == "CMYK":
        im.convert("CMYK").save(path, quality=95)
    else:
        im.convert(mode).save(path)


@pytest.mark.parametrize(
    "mode,ext",
    [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("I;16", ".png"), ("CMYK", ".jpg"), ("L", ".jpg")],
)
def test_any_mode_gives_binary_mask_of_the_input_size(model_path, tmp_path, mode, ext):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[:, :15] = 255  # white left half: p = 1 in every mode (gray, palette, CMYK, 16-bit)
    _save_mode(inp / f"x{ext}", rgb, mode)
    report = prediction.predict_folder(model_path, str(inp), str(out), OVERLAYS, progress=False)
    assert report["failed"] == []
    mask = _read(out / "x_segmentation.png")
    assert (mask.mode, mask.size) == ("L", (30, 40))
    values = np.asarray(mask)
    assert (values[:, :12] == 255).all() and (values[:, 18:] == 0).all()
    overlay = _read(out / "overlays" / "x_overlay.jpg")
    assert (overlay.mode, overlay.size) == ("RGB", (30, 40))


def test_exif_rotated_jpeg_is_segmented_upright(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    stored = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide x 20 high, red top half
    stored[:10, :, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: upright is 20 wide x 40 high
    Image.fromarray(stored).save(inp / "r.jpg", exif=exif, quality=95)
    prediction.predict_folder(model_path, str(inp), str(out), OVERLAYS, progress=False)
    mask = np.asarray(_read(out / "r_segmentation.png"))
    assert mask.shape == (40, 20) and _read(out / "overlays" / "r_overlay.jpg").size == (20, 40)
    # The stored top rows become the right-hand columns once rotated clockwise.
    assert (mask[:, 14:] == 255).all() and (mask[:, :6] == 0).all()


def test_unreadable_image_is_skipped_and_named(model_path, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.fromarray(_half_red(8, 8)).save(inp / "good.png")
    (inp / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    truncated = inp / "truncated.png"
    Image.fromarray(_half_red(50, 50)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    (inp / "notes.txt").write_text("not an image")
    (inp / ".DS_Store").write_bytes(b"\0")
    report = prediction.predict_folder(
        model_path, str(inp), str(out), dataclasses.replace(CONFIG, batch_size=2), progress=False
    )
    assert [os.path.basename(p) for p in report["written"]] == ["good_segmentation.png"]
    assert [name for name, _ in report["failed"]] == ["broken.jpg", "truncated.png"]
    assert all("cannot" in reason for _, reason in report["failed"])
    assert sorted(report["ignored"]) == [".DS_Store", "notes.txt"]
    assert sorted(os.listdir(out)) == ["confidence.csv", "good_segmentation.png", "report.html"]


def test_two_images_with_one_id_are_both_reported(model_path, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for ext in (".jpg", ".png", ".PNG"):
        Image.fromarray(_half_red(8, 8)).save(inp / f"x{ext}", format="PNG" if ext != ".jpg" else "JPEG")
    Image.fromarray(_half_red(8, 8)).save(inp / "y.png")
    report = prediction.predict_folder(model_path, str(inp), str(tmp_path / "out"), CONFIG, progress=False)
    assert [os.path.basename(p) for p in report["written"]] == ["y_segmentation.png"]
    assert [name for name, _ in report["failed"]] == ["x.PNG", "x.jpg", "x.png"]


def test_folder_without_images_is_a_clear_error(model_path, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .jpg, .jpeg or .png images"):
        prediction.predict_folder(model_path, str(tmp_path / "empty"), str(tmp_path / "out"), CONFIG)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "LICENSE.txt").write_text("x")
    with pytest.raises(ValueError, match=r"1 other entries ignored"):
        prediction.predict_folder(model_path, str(tmp_path / "other"), str(tmp_path / "out"), CONFIG)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        prediction.predict_folder(model_path, str(tmp_path / "missing"), str(tmp_path / "out"), CONFIG)


def test_model_paths_resolve_or_fail_with_the_fix(model_path, tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    red_channel_model(str(run / "best" / layout.MODEL_FILE))
    with pytest.raises(FileNotFoundError, match=r"pass --model .*best"):
        inference.load_model(str(run))
    model, resolved = inference.load_model(str(run / "best"))
    assert resolved == str(run / "best" / layout.MODEL_FILE) and inference.model_image_size(model) == S
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.load_model(str(tmp_path / "nope"))
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a complete .keras file"):
        inference.load_model(str(tmp_path / "broken.keras"))


def test_resize_happens_before_thresholding():
    # A 2x2 map enlarged to 8x8: bilinear values between the 0.4 and 0.9 centres cross 0.5
    # part-way, which thresholding first (nearest enlargement of a binary map) cannot give.
    p = np.array([[0.4, 0.9], [0.4, 0.9]], np.float32)
    full = inference.to_original_size(p, (8, 8))
    assert full.shape == (8, 8) and full.min() >= 0.4 - 1e-6 and full.max() <= 0.9 + 1e-6
    row = full[0] > 0.5
    assert row.tolist() == [False, False, False, True, True, True, True, True]
    # It is tf.image.resize's antialiased bilinear, enlarging and shrinking.
    rng = np.random.default_rng(0)
    q = rng.uniform(size=(S, S)).astype(np.float32)
    for size in [(37, 90), (5, 3), (S, S)]:
        reference = tf.image.resize(q[..., None], size, method="bilinear", antialias=True).numpy()[..., 0]
        np.testing.assert_allclose(inference.to_original_size(q, size), reference, atol=1e-4)
    # Shrinking averages (antialiased) rather than sampling one pixel.
    assert inference.to_original_size(np.array([[0.0, 1.0], [0.0, 1.0]], np.float32), (1, 1))[
        0, 0
    ] == pytest.approx(0.5, abs=1e-6)


def test_cli_reports_the_bad_file_and_exits_1(model_path, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(_half_red(8, 8)).save(inp / "good.png")
    (inp / "broken.png").write_bytes(b"garbage")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.predict",
            f"--model={model_path}",
            f"--input_dir={inp}",
            f"--output_dir={tmp_path / 'out'}",
            "--tta",
            "--fill_holes",
            "--largest_component",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert "1 masks written" in result.stdout and "1 images failed" in result.stdout
    assert (tmp_path / "out" / "good_segmentation.png").exists()


def test_prediction_applies_the_models_colour_constancy(tmp_path):
    # R = 100 under a green-blue cast: p = 100/255 < 0.5 as stored, but Shades of Gray
    # scales red by sqrt((100^2 + 2 * 200^2) / 3) / 100 = 1.73: p = 0.68, foreground.
    inp = tmp_path / "in"
    inp.mkdir()
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0], image[..., 1:] = 100, 200
    Image.fromarray(image).save(inp / "x.png")
    run = tmp_path / "run"
    run.mkdir()
    red_channel_model(str(run / layout.MODEL_FILE))
    prediction.predict_folder(str(run), str(inp), str(tmp_path / "plain"), CONFIG, progress=False)
    assert (np.asarray(_read(tmp_path / "plain" / "x_segmentation.png")) == 0).all()
    (run / layout.PREPROCESSING_FILE).write_text(
        json.dumps({"image_size": S, "colour_constancy": "shades_of_gray", "colour_constancy_p": 6})
    )
    prediction.predict_folder(str(run), str(inp), str(tmp_path / "sog"), CONFIG, progress=False)
    assert (np.asarray(_read(tmp_path / "sog" / "x_segmentation.png")) == 255).all()


# ----------------------------------------------------------------------------- inference options


def test_post_processing_options_shape_the_written_mask(model_path, tmp_path):
    # 64 x 64, red where the lesion is: a ring (outer 12-44, inner 20-36) and a speck.
    inp = tmp_path / "in"
    inp.mkdir()
    image = np.zeros((64, 64, 3), np.uint8)
    image[12:44, 12:44, 0] = 255
    image[20:36, 20:36, 0] = 0
    image[52:60, 52:60, 0] = 255
    Image.fromarray(image).save(inp / "x.png")
    masks = {}
    for name, options in {
        "plain": {},
        "fill": {"fill_holes": True},
        "largest": {"largest_component": True},
        "both": {"fill_holes": True, "largest_component": True, "tta": True},
    }.items():
        out = tmp_path / name
        prediction.predict_folder(
            model_path, str(inp), str(out), dataclasses.replace(CONFIG, **options), progress=False
        )
        masks[name] = np.asarray(_read(out / "x_segmentation.png")) == 255
    plain = masks["plain"]
    assert plain[28, 28] == 0 and plain[56, 56] == 1 and plain[14, 28] == 1  # hole, speck, ring
    assert masks["fill"][28, 28] and masks["fill"][56, 56]  # hole filled
    assert not masks["largest"][28, 28] and not masks["largest"][56, 56]  # speck gone
    assert masks["both"][28, 28] and not masks["both"][56, 56]
    # The red-channel model commutes with flips and rotations: TTA changes nothing else.
    speck = masks["plain"] & ~masks["largest"]
    np.testing.assert_array_equal(masks["both"], masks["fill"] & ~speck)


def test_unwritable_output_is_refused_before_any_prediction(model_path, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(_half_red(8, 8)).save(inp / "good.png")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match=r"cannot write to the output folder .*a_file/out"):
        prediction.predict_folder(model_path, str(inp), str(tmp_path / "a_file" / "out"), CONFIG)


def test_inference_options_are_validated_and_keep_each_commands_defaults():
    from launch.inference.config import EvaluateConfig

    with pytest.raises(UserError, match=r"--threshold must be in \[0, 1\), got 1.0"):
        PredictConfig(threshold=1.0)
    with pytest.raises(UserError, match="--batch_size must be >= 1"):
        EvaluateConfig(batch_size=0)
    with pytest.raises(UserError, match="--split must be one of train, val, test"):
        EvaluateConfig(split="validation")
    assert (PredictConfig().batch_size, EvaluateConfig().batch_size) == (16, 32)
    for config in (PredictConfig(), EvaluateConfig()):
        assert (config.threshold, config.tta, config.fill_holes, config.largest_component) == (
            0.5,
            True,
            True,
            True,
        )  # best on validation (docs/recipes.md)


def test_a_model_trained_in_mixed_bfloat16_is_loaded_computing_in_float32(tmp_path):
    """isic-train's --precision auto picks mixed_bfloat16 on CPUs with bf16: inference and
    every export then get the same network in float32 (ONNX has no bfloat16 convolution)."""
    from model import unet

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trained = unet.build_unet(32, 2, 2, bn_momentum=0.9)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = str(tmp_path / "m.keras")
    trained.save(path)
    loaded, _ = inference.load_model(path)
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in trained.layers}
    for a, b in zip(loaded.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    float32, bfloat16 = loaded.predict(x, verbose=0), trained.predict(x, verbose=0)
    assert float32.dtype == np.float32 and 0 < np.abs(float32 - bfloat16).max() < 0.05


def test_jit_compile_reaches_the_forward_pass_and_keeps_the_probabilities(tmp_path):
    """--jit_compile of isic-evaluate and isic-predict: `on` compiles the forward pass with
    XLA (a layer XLA cannot compile then fails, and runs with `off`), the probabilities equal
    those without XLA, and `auto` is off on this CPU-only machine (Keras' own rule)."""
    from model import unet

    path = str(tmp_path / "m.keras")
    unet.build_unet(32, 2, 2, bn_momentum=0.9).save(path)
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
    p = {}
    for setting in ("off", "on"):
        model, _ = inference.load_model(path, jit_compile=setting)
        assert model.jit_compile is (setting == "on")
        p[setting] = inference.predict(model, x, batch_size=4)
    np.testing.assert_allclose(p["on"], p["off"], atol=1e-5)
    model, _ = inference.load_model(path)
    assert inference.use_xla(model, "auto") is False and model.jit_compile is False

    inputs = keras.Input((4, 4, 3))
    host = keras.layers.Lambda(
        lambda t: tf.reshape(tf.numpy_function(np.tanh, [t], tf.float32), tf.shape(t)), output_shape=(4, 4, 3)
    )
    opaque = keras.Model(inputs, host(inputs))
    images = np.ones((1, 4, 4, 3), np.float32)
    inference.use_xla(opaque, "on")
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)):
        inference.predict(opaque, images)
    inference.use_xla(opaque, "off")
    assert inference.predict(opaque, images).shape == (1, 4, 4)
