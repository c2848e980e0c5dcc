"""isic-export: the serving graph reproduces isic-predict, the portable files reproduce Keras.

The model is a tiny U-Net whose last layer is scaled up, so that without training its
probabilities are confident and its masks are blobs with many borders, components and
holes: a strict test of the in-graph resize, threshold and post-processing. The in-graph
steps are also compared one by one with the Python functions they replace.
"""

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL import PngImagePlugin

from core.errors import UserError
from launch import layout
from launch.export import exporter
from launch.export import image_ops
from launch.export import mask_ops
from launch.export import parity
from launch.export import runtimes
from launch.export import serving
from launch.export.config import ExportConfig
from launch.inference import images
from launch.inference import models
from launch.inference import postprocess
from launch.inference import prediction
from launch.inference import segment
from launch.inference.config import InferenceConfig
from model import unet
from preprocessing import decode
from preprocessing import synth

# The network's raw mask: tests of single options start from here (the defaults turn
# TTA and both post-processing steps on).
RAW = ExportConfig(tta=False, fill_holes=False, largest_component=False)
S = 32
ALL_FORMATS = not runtimes.onnx_missing() and not runtimes.litert_missing()


def confident_unet(model_dir: str, image_size: int = S) -> str:
    """Saves an untrained U-Net (depth 2) with its output logits scaled by 40."""
    keras.utils.set_random_seed(0)
    model = unet.build_unet(image_size, 4, 2, bn_momentum=0.9)
    kernel, bias = model.get_layer("mask").get_weights()
    model.get_layer("mask").set_weights([kernel * 40.0, bias])
    os.makedirs(model_dir, exist_ok=True)
    model.save(os.path.join(model_dir, layout.MODEL_FILE))
    return model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return confident_unet(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    """(export folder, report, loaded serving SavedModel) of the default export."""
    folder = str(tmp_path_factory.mktemp("export") / "e")
    report = exporter.export_model(model_dir, folder, RAW, log=lambda _: None)
    return folder, report, tf.saved_model.load(os.path.join(folder, exporter.SERVING_DIR))


def _picture(index: int, size: tuple[int, int]) -> np.ndarray:
    """A synthetic dermoscopy picture resized to (width, height)."""
    picture, _ = synth.make_pair(7, index)
    return np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 [H, W, C] (C = 2: grey + alpha, 3: RGB, 4: RGBA)."""
    height, width, channels = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _big_endian_exif_jpeg(picture: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose APP1 EXIF is big-endian ("MM"), the byte order Pillow never writes."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def _every_kind(folder) -> list[str]:
    """Writes images of every size, mode and orientation isic-predict accepts."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(3)
    files = {}
    for i, (w, h) in enumerate(
        [(1, 1), (7, 1000), (1000, 7), (33, 17), (600, 450), (1023, 2047), (2047, 1023), (257, 129)]
    ):
        for ext in ("jpg", "png"):
            files[f"size_{w}x{h}_{ext}.{ext}"] = _picture(i, (w, h))
    modes = {"L": "png", "LA": "png", "RGBA": "png", "P": "png", "1": "png", "CMYK": "jpg"}
    for i, (mode, ext) in enumerate(modes.items()):
        files[f"mode_{mode}.{ext}"] = Image.fromarray(_picture(10 + i, (301, 203))).convert(mode)
    names = []
    for name, image in files.items():
        im = image if isinstance(image, Image.Image) else Image.fromarray(image)
        im.save(os.path.join(folder, name), quality=90)
        names.append(name)
    grey16 = (
        np.asarray(Image.fromarray(_picture(20, (120, 90))).convert("L")).astype(np.int64) * 257
        + rng.integers(0, 257, (90, 120))
    ).astype(np.uint16)
    Image.fromarray(grey16).save(os.path.join(folder, "mode_I16.png"))
    with open(os.path.join(folder, "rgb16.png"), "wb") as f:
        f.write(_png16(rng.integers(0, 65536, (45, 61, 3))))
    with open(os.path.join(folder, "rgba16.png"), "wb") as f:
        f.write(_png16(rng.integers(0, 65536, (45, 61, 4))))
    names += ["mode_I16.png", "rgb16.png", "rgba16.png"]
    picture = Image.fromarray(_picture(30, (161, 97)))
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        picture.save(os.path.join(folder, f"exif_{orientation}_jpg.jpg"), exif=exif.tobytes(), quality=90)
        picture.save(os.path.join(folder, f"exif_{orientation}_png.png"), exif=exif.tobytes())
        names += [f"exif_{orientation}_jpg.jpg", f"exif_{orientation}_png.png"]
    picture.save(
        os.path.join(folder, "xmp_8.jpg"),
        quality=90,
        xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>',
    )
    with open(os.path.join(folder, "exif_big_endian_6.jpg"), "wb") as f:
        f.write(_big_endian_exif_jpeg(_picture(31, (97, 161)), 6))
    return names + ["xmp_8.jpg", "exif_big_endian_6.jpg"]


def test_export_writes_each_format_with_readme_and_record(exported):
    folder, report, _ = exported
    assert os.path.isfile(os.path.join(folder, "serving", "saved_model.pb"))
    assert sorted(os.listdir(folder)) == sorted(
        ["serving", "README.md", "export.json"] + (["model.onnx", "model.tflite"] if ALL_FORMATS else [])
    )
    record = json.load(open(os.path.join(folder, exporter.EXPORT_FILE)))
    assert record["config"] == dataclasses.asdict(RAW) and record["image_size"] == S
    assert min(r["mask_agreement"] for r in record["serving_parity"]) >= parity.MASK_AGREEMENT
    # The confidence output is inside the parity checks (against isic-predict's confidence.csv).
    assert max(r["confidence_difference"] for r in record["serving_parity"]) <= parity.CONFIDENCE_TOLERANCE
    assert {f["name"]: f["path"] is not None for f in record["formats"]}["serving"]
    readme = open(os.path.join(folder, exporter.README_FILE)).read()
    for text in (
        "`segment`",
        "`probabilities`",
        "`network`",
        "image_bytes",
        "onnxruntime",
        f"[N, {S}, {S}, 3]",
        "isic-predict",
    ):
        assert text in readme
    assert not os.path.exists(folder + ".tmp") and not os.path.exists(folder + ".old")


def test_segment_equals_isic_predict_for_every_size_mode_and_orientation(exported, model_dir, tmp_path):
    _, _, served = exported
    names = _every_kind(tmp_path / "in")
    report = prediction.predict_folder(
        model_dir, str(tmp_path / "in"), str(tmp_path / "out"), parity.predict_config(RAW), progress=False
    )
    assert report["failed"] == []
    worst = {}
    for name in names:
        with open(tmp_path / "in" / name, "rb") as f:
            mask = served.signatures["segment"](image_bytes=tf.constant(f.read()))["mask"].numpy()
        expected = images.read_mask(str(tmp_path / "out" / (os.path.splitext(name)[0] + "_segmentation.png")))
        assert mask.dtype == np.uint8 and mask.shape == expected.shape, name
        assert set(np.unique(mask)) <= {0, 255}
        worst[name] = float(np.mean(mask == expected))
    assert min(worst.values()) >= parity.MASK_AGREEMENT, worst
    assert np.mean([v == 1.0 for v in worst.values()]) > 0.8  # most are identical


def test_serving_model_runs_without_the_project(exported, tmp_path):
    folder, _, served = exported
    image = tmp_path / "x.jpg"
    Image.fromarray(_picture(40, (300, 200))).save(image, quality=90)
    expected = served.signatures["segment"](image_bytes=tf.constant(image.read_bytes()))["mask"].numpy()
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "served = tf.saved_model.load(sys.argv[1])\n"
        "out = served.signatures['segment'](image_bytes=tf.constant(open(sys.argv[2], 'rb').read()))\n"
        "np.save(sys.argv[3], out['mask'].numpy())\n"
        "ours = ('core', 'launch', 'preprocessing', 'model', 'pipeline')\n"
        "assert not any(m.split('.')[0] in ours for m in sys.modules)\n"
        "print(sorted(served.signatures))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script, os.path.join(folder, "serving"), str(image), str(tmp_path / "m.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['network', 'probabilities', 'segment', 'serving_default']" in done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), expected)


def _encoded(fmt: str, cut: int | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_picture(70, (120, 80))).save(buffer, format=fmt)
    return buffer.getvalue()[:cut]


@pytest.mark.parametrize(
    "name,contents,message",
    [
        ("gif", lambda: _encoded("GIF"), "neither a JPEG nor a PNG"),
        ("text", lambda: b"not an image", "neither a JPEG nor a PNG"),
        ("empty", lambda: b"", "neither a JPEG nor a PNG"),
        ("truncated jpeg", lambda: _encoded("JPEG", 400), "JPEG"),
        ("truncated png", lambda: _encoded("PNG", 400), "PNG|png|Invalid"),
    ],
)
def test_unusable_bytes_fail_the_call_with_a_clear_error(exported, name, contents, message):
    _, _, served = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        served.signatures["segment"](image_bytes=tf.constant(contents()))


@pytest.mark.skipif(not ALL_FORMATS, reason="the [export] extra is not installed")
def test_onnx_runtime_and_litert_match_keras(exported, model_dir):
    folder, report, served = exported
    model, _ = models.load_model(model_dir)
    images = np.random.default_rng(0).uniform(size=(5, S, S, 3)).astype(np.float32)
    reference = runtimes.keras_predictor(model)(images)
    for predict in (
        runtimes.onnx_predictor(os.path.join(folder, "model.onnx")),
        runtimes.litert_predictor(os.path.join(folder, "model.tflite")),
        lambda x: served.signatures["network"](images=tf.constant(x))["probabilities"].numpy(),
    ):
        np.testing.assert_allclose(predict(images), reference, atol=parity.PROBABILITY_TOLERANCE, rtol=0)
        np.testing.assert_allclose(
            predict(images[:1]), reference[:1], atol=parity.PROBABILITY_TOLERANCE, rtol=0
        )
    assert {c.runtime for c in report.network_parity} == {"ONNX Runtime", "LiteRT"}


@pytest.mark.parametrize("image_size", [32, 128])
def test_in_graph_preparation_is_pixel_exact_with_the_builder(image_size):
    @tf.function(autograph=False, input_signature=[tf.TensorSpec([], tf.string)])
    def prepare(contents):
        pixels, box, size = image_ops.decode_small(contents, image_size)
        orientation = image_ops.orientation(contents)
        small = image_ops.upright(image_ops.box_resize(pixels, box, image_size), orientation)
        return small, image_ops.upright_size(size, orientation)

    rng = np.random.default_rng(image_size)
    # Each JPEG draft scale (1/1 .. 1/8), sides that are not multiples of it, and shapes
    # for which Pillow resamples the height first.
    sizes = [
        (int(rng.integers(1, 12 * image_size)), int(rng.integers(1, 12 * image_size))) for _ in range(10)
    ] + [(9 * image_size + 3, 2 * image_size + 1), (image_size, 17 * image_size)]
    for i, (width, height) in enumerate(sizes):
        for fmt in ("JPEG", "PNG"):
            buffer = io.BytesIO()
            Image.fromarray(_picture(i, (width, height))).save(buffer, format=fmt, quality=85)
            with Image.open(io.BytesIO(buffer.getvalue())) as im:
                expected = decode.prepare_image(im, image_size)
            got, size = prepare(tf.constant(buffer.getvalue()))
            np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"{fmt} {width}x{height}")
            assert tuple(size.numpy()) == (height, width)


def test_in_graph_colour_constancy_equals_shades_of_gray():
    rng = np.random.default_rng(1)
    for p in (1, 6):
        image = rng.integers(0, 256, (S, S, 3)).astype(np.uint8)
        image[..., 2] //= 3  # a colour cast to correct
        got = image_ops.shades_of_gray(tf.constant(image), p).numpy()
        expected = decode.shades_of_gray(image, p)
        assert np.abs(got.astype(int) - expected).max() <= 1 and np.mean(got == expected) > 0.999
    black = np.zeros((4, 4, 3), np.uint8)
    np.testing.assert_array_equal(image_ops.shades_of_gray(tf.constant(black), 6).numpy(), black)


def test_in_graph_resize_back_equals_isic_predicts():
    resize = tf.function(image_ops.bilinear_resize, autograph=False)
    p = np.random.default_rng(2).uniform(size=(S, S)).astype(np.float32)
    for size in [(1, 1), (7, 1000), (1000, 7), (S, S), (17, 33), (450, 600), (S // 2, 3 * S)]:
        np.testing.assert_array_equal(
            resize(tf.constant(p), tf.constant(size)).numpy(),
            models.to_original_size(p, size),
            err_msg=str(size),
        )


def test_in_graph_post_processing_equals_numpy():
    run = tf.function(
        lambda m: (mask_ops.fill_holes(m), mask_ops.largest_component(m), mask_ops.apply(m, True, True)),
        autograph=False,
        input_signature=[tf.TensorSpec([None, None], tf.bool)],
    )
    rng = np.random.default_rng(4)
    masks = [rng.uniform(size=rng.integers(1, 30, 2)) < rng.uniform(0.2, 0.8) for _ in range(60)]
    yy, xx = np.mgrid[0:300, 0:400]
    ring = ((yy - 150) ** 2 + (xx - 200) ** 2 < 120**2) & ((yy - 150) ** 2 + (xx - 200) ** 2 > 40**2)
    masks += [ring | ((yy < 20) & (xx < 20)), np.zeros((5, 6), bool), np.ones((5, 6), bool)]
    for mask in masks:
        filled, largest, both = (x.numpy() for x in run(tf.constant(mask)))
        np.testing.assert_array_equal(filled, postprocess.fill_holes(mask))
        np.testing.assert_array_equal(largest, postprocess.largest_component(mask))
        np.testing.assert_array_equal(both, postprocess.apply(mask, True, True))


def test_options_and_colour_constancy_are_fixed_into_the_graph(exported, model_dir, tmp_path):
    _, _, default_served = exported
    baked_model = confident_unet(str(tmp_path / "model"))
    with open(os.path.join(baked_model, layout.PREPROCESSING_FILE), "w") as f:
        json.dump(decode.ColourConstancy("shades_of_gray", 6).to_dict(), f)
    folder = str(tmp_path / "e")
    os.makedirs(folder)
    with open(os.path.join(folder, exporter.EXPORT_FILE), "w") as f:  # an earlier export there
        f.write("{}")
    config = ExportConfig(fill_holes=True, largest_component=True, onnx=False, tflite=False)
    report = exporter.export_model(baked_model, folder, config, log=lambda _: None)
    assert sorted(os.listdir(folder)) == ["README.md", "export.json", "serving"]
    assert {f.name: f.skipped for f in report.formats} == {
        "serving": None,
        "onnx": "--noonnx",
        "tflite": "--notflite",
    }
    assert report.colour_constancy["colour_constancy"] == "shades_of_gray"
    assert min(r.mask_agreement for r in report.serving_parity) >= parity.MASK_AGREEMENT
    readme = open(os.path.join(folder, exporter.README_FILE)).read()
    assert "shades of gray, p = 6" in readme and "fill holes on, keep the largest region on" in readme
    # The post-processed mask is one region without holes; the default export's is not.
    image = tmp_path / "x.jpg"
    Image.fromarray(_picture(50, (400, 300))).save(image, quality=90)
    contents = tf.constant(image.read_bytes())
    baked = tf.saved_model.load(os.path.join(folder, "serving"))
    mask = baked.signatures["segment"](image_bytes=contents)["mask"].numpy() > 128
    plain = default_served.signatures["segment"](image_bytes=contents)["mask"].numpy() > 128
    assert np.array_equal(mask, postprocess.apply(mask, True, True))
    assert not np.array_equal(plain, postprocess.apply(plain, True, True))


def test_in_graph_tta_equals_isic_predicts(model_dir):
    model, _ = models.load_model(model_dir)
    images = np.random.default_rng(5).uniform(size=(3, S, S, 3)).astype(np.float32)
    with_tta = InferenceConfig(tta=True, confidence="tta_agreement")
    out = serving.ServingGraph(model, with_tta).network(tf.constant(images))
    got = out["probabilities"].numpy()
    expected, signals = segment.predict(model, images, with_tta)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The graph's confidence is the one isic-predict writes (the same code, confidence.py).
    np.testing.assert_allclose(out["confidence"].numpy(), signals["tta_agreement"], atol=1e-5, rtol=0)
    assert (
        np.abs(got - segment.probabilities(model, images, dataclasses.replace(RAW, tta=False))).max() > 1e-3
    )


def test_parity_checks_refuse_a_mismatch(exported, model_dir, tmp_path):
    _, _, served = exported
    folder = tmp_path / "in"
    folder.mkdir()
    # A PNG oriented by XMP only: Pillow (isic-predict) turns it, the graph does not.
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta tiff:Orientation="6"/>')
    Image.fromarray(_picture(60, (90, 40))).save(folder / "xmp.png", pnginfo=info)
    with pytest.raises(parity.ParityError, match="xmp.png"):
        parity.check_serving(served, model_dir, str(folder), ["xmp.png"], RAW, str(tmp_path))
    images = np.random.default_rng(0).uniform(size=(2, S, S, 3)).astype(np.float32)
    reference = np.full((2, S, S), 0.5, np.float32)
    with pytest.raises(parity.ParityError, match="drifting"):
        parity.check_network("drifting", lambda x: reference + 2e-4, reference, images)
    assert parity.check_network("close", lambda x: reference + 5e-5, reference, images).max_difference < 1e-4


def test_a_folder_that_is_not_an_export_is_refused(model_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        exporter.export_model(model_dir, str(tmp_path), RAW, log=lambda _: None)
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_missing_converters_are_named_with_the_install_command():
    # None in sys.modules is how Python marks a module as absent: imports of it fail.
    script = (
        "import sys\n"
        "sys.modules.update(dict.fromkeys(['tf2onnx', 'onnxruntime', 'ai_edge_litert']))\n"
        "from launch.export import runtimes\n"
        "print(runtimes.onnx_missing())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "tf2onnx, onnxruntime not installed (pip install 'isic-unet[export]')" in done.stdout, done.stderr


def test_cli_reports_a_missing_model_without_traceback(tmp_path):
    command = os.path.join(os.path.dirname(sys.executable), "isic-export")
    done = subprocess.run(
        [command, "--model", str(tmp_path / "none"), "--output_dir", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "isic-export: error: model" in done.stderr and "does not exist" in done.stderr
    assert not os.path.exists(tmp_path / "e")


def test_export_options_are_isic_predicts_plus_the_formats():
    shared = {f.name for f in dataclasses.fields(InferenceConfig)}
    fields = {f.name: f.default for f in dataclasses.fields(ExportConfig)}
    assert set(fields) == shared | {"onnx", "tflite"}
    for name in shared:  # the serving graph is made with isic-predict's defaults
        assert fields[name] == getattr(InferenceConfig(), name)
    with pytest.raises(UserError, match="threshold"):
        ExportConfig(threshold=1.5)


def test_quick_latency_stage_runs_in_a_child(tmp_path):
    from benchmarks import latency
    from benchmarks import stages
    from benchmarks.config import BenchConfig

    report = stages.STAGES[latency.STAGE].run(BenchConfig(quick=True), None, str(tmp_path))
    names = [r.runtime for r in report.network]
    assert names[:2] == ["Keras", "SavedModel `network`"]
    assert all(0 < r.p50_ms <= r.p90_ms <= r.p99_ms and r.images_per_s > 0 for r in report.network)
    assert [r.runtime for r in report.end_to_end] == ["isic-predict (Python)", "SavedModel `segment`"]
    table = stages.STAGES[latency.STAGE].rows(report)
    assert len(table) == 2 * len(report.network) + 1 + len(report.skipped)
    assert table[0].baseline is None and table[1].baseline == report.network[0].p50_ms
