"""What a model sees at inference is what it was trained on: the same decoding (image
modes, EXIF, colour constancy) and the same mask rules as the builder, byte for byte, and
the colour constancy found in the model's preprocessing.json."""

import json

import numpy as np
import pytest
from PIL import Image

from core import names
from launch import layout
from launch.inference import images
from launch.inference import models as inference
from pipeline import pixels
from preprocessing import decode
from preprocessing import load
from preprocessing import pairs
from tests.test_predict import S
from tests.test_predict import _save_mode
from tests.test_predict import red_channel_model


@pytest.mark.parametrize(
    "mode,ext",
    [
        ("RGB", ".jpg"),
        ("RGB", ".png"),
        ("L", ".png"),
        ("RGBA", ".png"),
        ("P", ".png"),
        ("I;16", ".png"),
        ("CMYK", ".jpg"),
        ("exif6", ".jpg"),
    ],
)
def test_load_image_matches_the_builder_byte_for_byte(tmp_path, mode, ext):
    # The model must see at prediction time exactly the pixels it was trained on.
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(75, 61, 3), dtype=np.uint8)
    image_path = str(tmp_path / f"a{ext}")
    upright = (75, 61)
    _save_mode(image_path, rgb, mode)  # exif6: stored 61 high x 75 wide, upright 75 x 61
    mask_path = str(tmp_path / names.mask_name("a"))
    Image.fromarray(np.full(upright, 255, np.uint8)).save(mask_path)
    built, _, built_size = load.load_pair(pairs.Pair("a", image_path, mask_path), S)
    ours, size = decode.load_image(image_path, S)
    assert size == built_size == upright
    np.testing.assert_array_equal(ours, built)


def _save_mask(path, kind: str) -> None:
    """A 32 x 32 mask, left half foreground, in one of many encodings (some refused)."""
    fg = np.zeros((32, 32), bool)
    fg[:, :16] = True
    if kind == "1":
        Image.fromarray(fg).save(path)
    elif kind in ("L", "LA", "RGB", "RGBA", "P"):
        Image.fromarray(fg.astype(np.uint8) * np.uint8(255)).convert(kind).save(path)
    elif kind == "I;16":
        Image.fromarray(np.where(fg, 33153, 32896).astype(np.uint16)).save(path)
    elif kind == "F":  # refused: float values have no 0-255 scale (a TIFF named .png)
        Image.fromarray(fg.astype(np.float32) * 255).save(path, format="TIFF")
    else:  # "zero_one": refused, it would read as an empty mask
        Image.fromarray(fg.astype(np.uint8)).save(path)


@pytest.mark.parametrize("kind", ["1", "L", "LA", "RGB", "RGBA", "P", "I;16", "F", "zero_one"])
def test_builder_and_evaluation_accept_the_same_masks(tmp_path, kind):
    # The same file through the builder (load_pair) and through evaluation (read_mask):
    # both accept it with the same foreground, or both refuse it with the same reason.
    image_path, mask_path = str(tmp_path / "a.png"), str(tmp_path / names.mask_name("a"))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image_path)
    _save_mask(mask_path, kind)
    try:
        _, small, _ = load.load_pair(pairs.Pair("a", image_path, mask_path), S)
    except load.BadPairError as e:
        with pytest.raises(ValueError) as info:
            images.read_mask(mask_path)
        assert kind in ("F", "zero_one") and e.problem.reason in str(info.value)
        return
    full = images.read_mask(mask_path, (32, 32)) > 128
    assert full[:, :16].all() and not full[:, 16:].any()
    assert small[:, :8].all() and not small[:, 8:].any()


@pytest.mark.parametrize("mode,ext", [("RGB", ".jpg"), ("P", ".png"), ("exif6", ".jpg")])
def test_colour_constancy_inputs_match_the_builder_byte_for_byte(tmp_path, mode, ext):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    rgb[..., 1] //= 2
    image_path = str(tmp_path / f"a{ext}")
    _save_mode(image_path, rgb, mode)
    mask_path = str(tmp_path / names.mask_name("a"))
    Image.fromarray(np.zeros((45, 70), np.uint8)).save(mask_path)
    on = decode.ColourConstancy("shades_of_gray", 6)
    built, _, _ = load.load_pair(pairs.Pair("a", image_path, mask_path), S, on)
    ours, _ = decode.load_image(image_path, S, on)
    np.testing.assert_array_equal(ours, built)
    assert not np.array_equal(ours, decode.load_image(image_path, S)[0])


def test_records_and_prediction_inputs_are_identical_with_colour_constancy(tmp_path):
    # Records built with Shades of Gray hold exactly the pixels inference prepares for a
    # model whose preprocessing.json (the trainer's copy of the manifest's) says so.
    from pipeline import dataset
    from preprocessing import build
    from preprocessing.config import BuildConfig

    rng = np.random.default_rng(4)
    source = tmp_path / "source"
    for folder in ("images", "masks"):
        (source / folder).mkdir(parents=True)
    for i, (h, w) in enumerate([(50, 40), (33, 61), (80, 80)]):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image[..., 0] //= 2
        Image.fromarray(image).save(source / "images" / f"ISIC_{i}.jpg", quality=90)
        Image.fromarray(np.zeros((h, w), np.uint8)).save(source / "masks" / names.mask_name(f"ISIC_{i}"))
    records = str(tmp_path / "records")
    manifest = build.build_records(
        [(str(source / "images"), str(source / "masks"))],
        records,
        BuildConfig(image_size=S, splits="0,0,1", num_workers=1, colour_constancy="shades_of_gray"),
        progress=False,
    )
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    red_channel_model(str(model_dir / layout.MODEL_FILE))
    (model_dir / layout.PREPROCESSING_FILE).write_text(json.dumps(manifest["preprocessing"]))
    colour = inference.read_preprocessing(str(model_dir))
    assert colour == decode.ColourConstancy("shades_of_gray", 6)
    seen = 0
    for batch in dataset.read_examples(records, "test", 4).as_numpy_iterator():
        for case_id, image in zip(batch["case_id"], batch["image"]):
            ours, _ = decode.load_image(str(source / "images" / f"{case_id.decode()}.jpg"), S, colour)
            np.testing.assert_array_equal(pixels.to_unit_range(ours), image)
            seen += 1
    assert seen == 3


def test_preprocessing_json_is_found_next_to_the_model_or_above_it(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    red_channel_model(str(run / layout.MODEL_FILE))
    red_channel_model(str(run / "best" / layout.MODEL_FILE))
    assert inference.read_preprocessing(str(run)) == decode.NO_COLOUR_CONSTANCY  # none written
    on = decode.ColourConstancy("shades_of_gray", 4)
    (run / layout.PREPROCESSING_FILE).write_text(json.dumps(on.to_dict()))
    for path in (run, run / "best", run / "best" / layout.MODEL_FILE, run / layout.MODEL_FILE):
        assert inference.read_preprocessing(str(path)) == on, path
    (run / "best" / layout.PREPROCESSING_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"best/preprocessing.json is not a usable"):
        inference.read_preprocessing(str(run / "best"))
