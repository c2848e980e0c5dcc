"""Finding pairs and decoding one pair: modes, bit depths, EXIF, the mask area rule, errors.

Solid or half-and-half images are used so that box-resized values are known exactly.
"""

import os

import numpy as np
import pytest
from PIL import Image

from preprocessing import decode
from preprocessing import load
from preprocessing import pairs as pairs_lib
from tests.test_preprocess import write_pair

S = 16


def _load(tmp_path, image, mask, ext=".png", **save_kw):
    image_path, mask_path = write_pair(str(tmp_path), "X", image, mask, ext=ext, **save_kw)
    return load.load_pair(pairs_lib.Pair("X", image_path, mask_path), S)


def _half_mask(h=32, w=32):
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255
    return mask


# ----------------------------------------------------------------------------- discovery


def test_discovery_matches_ids_case_insensitively_and_counts_junk(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in (
        "A.jpg",
        "B.JPG",
        "C.Jpeg",
        "D.PNG",
        "DUP.jpg",
        "DUP.png",
        "NOMASK.jpg",
        ".DS_Store",
        "._A.jpg",
        "LICENSE.txt",
        "A_superpixels.png",
        "notes.md",
    ):
        (images / name).write_bytes(b"x")
    for name in (
        "A_segmentation.png",
        "B_Segmentation.PNG",
        "C_segmentation.png",
        "D_segmentation.png",
        "DUP_segmentation.png",
        "ORPHAN_segmentation.png",
        "A.png",
        "ATTRIBUTION.txt",
    ):
        (masks / name).write_bytes(b"x")
    (images / "subfolder").mkdir()

    listing = pairs_lib.discover_pairs(str(images), str(masks))
    assert [(p.case_id, p.image_file, p.mask_file) for p in listing.pairs] == [
        ("A", "A.jpg", "A_segmentation.png"),
        ("B", "B.JPG", "B_Segmentation.PNG"),
        ("C", "C.Jpeg", "C_segmentation.png"),
        ("D", "D.PNG", "D_segmentation.png"),
    ]
    reasons = {p.case_id: p.reason for p in listing.problems}
    assert sorted(reasons) == ["DUP", "NOMASK", "ORPHAN"]
    assert "two images for ID DUP: DUP.jpg, DUP.png" in reasons["DUP"]
    assert reasons["NOMASK"].startswith("image without mask")
    assert reasons["ORPHAN"].startswith("mask without image")
    assert listing.ignored == sorted(
        [
            "images/.DS_Store",
            "images/._A.jpg",
            "images/LICENSE.txt",
            "images/A_superpixels.png",
            "images/notes.md",
            "images/subfolder",
            "masks/A.png",
            "masks/ATTRIBUTION.txt",
        ]
    )

    # The fingerprint follows the pair files (not the junk) and survives a move.
    (images / "LICENSE.txt").write_bytes(b"changed")
    assert pairs_lib.discover_pairs(str(images), str(masks)).fingerprint == listing.fingerprint
    os.rename(tmp_path, str(tmp_path) + "_moved")
    moved = pairs_lib.discover_pairs(str(tmp_path) + "_moved/images", str(tmp_path) + "_moved/masks")
    assert moved.fingerprint == listing.fingerprint
    (tmp_path.parent / (tmp_path.name + "_moved") / "images" / "A.jpg").write_bytes(b"new")
    changed = pairs_lib.discover_pairs(str(tmp_path) + "_moved/images", str(tmp_path) + "_moved/masks")
    assert changed.fingerprint != listing.fingerprint


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    if mode == "L":
        image, expected = Image.new("L", (24, 20), 100), (100, 100, 100)
    elif mode == "P":
        image = Image.new("P", (24, 20), 1)
        image.putpalette([0, 0, 0, 10, 200, 30])
        expected = (10, 200, 30)
    elif mode == "RGBA":  # alpha is dropped, not composited
        image, expected = Image.new("RGBA", (24, 20), (10, 200, 30, 0)), (10, 200, 30)
    elif mode == "LA":
        image, expected = Image.new("LA", (24, 20), (60, 255)), (60, 60, 60)
    elif mode == "1":
        image, expected = Image.new("1", (24, 20), 1), (255, 255, 255)
    else:  # 16-bit grayscale: value // 257
        image = Image.fromarray(np.full((20, 24), 40000, np.uint16))
        expected = (155, 155, 155)
    small, mask, size = _load(tmp_path, image, np.zeros((20, 24), np.uint8))
    assert small.dtype == np.uint8 and small.shape == (S, S, 3)
    assert (small == np.array(expected, np.uint8)).all(), (mode, small[0, 0])
    assert size == (20, 24) and not mask.any()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    image = Image.new("CMYK", (24, 20), (0, 255, 255, 0))  # pure red
    small, _, _ = _load(tmp_path, image, np.zeros((20, 24), np.uint8), ext=".jpg", quality=95)
    assert np.abs(small.astype(int) - [255, 0, 0]).max() <= 8, small[0, 0]


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 high x 40 wide, left half white; orientation 6 = display rotated 90
    # degrees clockwise: upright it is 40 high x 20 wide with the white half on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    upright_mask = np.zeros((40, 20), np.uint8)
    upright_mask[:20] = 255
    small, mask, size = _load(tmp_path, stored, upright_mask, ext=".jpg", exif=exif, quality=95)
    assert size == (40, 20)
    assert small[: S // 2].min() > 240 and small[S // 2 :].max() < 15
    assert mask[: S // 2].all() and not mask[S // 2 :].any()
    # A mask drawn on the stored (unrotated) pixels is refused, with the reason.
    with pytest.raises(load.BadPairError, match="EXIF orientation 6"):
        _load(tmp_path, stored, np.zeros((20, 40), np.uint8), ext=".jpg", exif=exif)


def test_jpeg_draft_stays_aligned_with_the_full_decode(tmp_path):
    # 403 x 301 is not a multiple of the 1/8 DCT scale: the reduced image is 51 x 38
    # pixels of which the last column and row are partial. Resizing with draft()'s box
    # keeps the geometry (max error ~25 at this sharp edge, from the reduced IDCT);
    # resizing the whole 51 x 38 instead shifts the edge (max error > 60).
    image = np.zeros((301, 403, 3), np.uint8)
    image[:284, :380] = 255
    small, _, _ = _load(tmp_path, image, np.zeros((301, 403), np.uint8), ext=".jpg", quality=95)
    path = str(tmp_path / "images" / "X.jpg")
    reference = np.asarray(Image.open(path).convert("RGB").resize((S, S), Image.BOX)).astype(int)
    assert np.abs(small - reference).max() <= 32
    assert np.abs(small - reference).mean() <= 3
    assert decode.load_image(path, S)[0].tobytes() == small.tobytes()


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", ["1", "L_129", "P", "RGB", "RGBA", "I;16"])
def test_mask_modes_are_binarised_above_128(tmp_path, kind):
    # Left half foreground, right half background in every encoding.
    fg = np.zeros((32, 32), bool)
    fg[:, :16] = True
    if kind == "1":
        mask = Image.fromarray(fg)
    elif kind == "L_129":  # the boundary values: 129 is lesion, 128 is not
        mask = Image.fromarray(np.where(fg, 129, 128).astype(np.uint8))
    elif kind == "P":
        mask = Image.fromarray(fg.astype(np.uint8), "P")
        mask.putpalette([0, 0, 0, 255, 255, 255])
    elif kind == "RGB":
        mask = Image.fromarray(np.repeat(fg[..., None] * np.uint8(255), 3, axis=2))
    elif kind == "RGBA":
        mask = Image.fromarray(
            np.dstack([np.repeat(fg[..., None] * np.uint8(255), 3, axis=2), np.full((32, 32), 255, np.uint8)])
        )
    else:  # 16-bit: 33153 // 257 = 129 (lesion), 32896 // 257 = 128 (not)
        mask = Image.fromarray(np.where(fg, 33153, 32896).astype(np.uint16))
    _, small, _ = _load(tmp_path, np.zeros((32, 32, 3), np.uint8), mask)
    expected = np.zeros((S, S), np.uint8)
    expected[:, :8] = 1
    np.testing.assert_array_equal(small, expected)


def test_mask_is_binarised_before_area_downsampling(tmp_path):
    # 2x2 footprints. [129, 129, 0, 0]: half foreground -> lesion (averaging the raw
    # values first would give 64.5 -> background). [255, 255, 255, 100]: 3/4 -> lesion.
    # [255, 0, 0, 0]: 1/4 -> background.
    mask = np.zeros((32, 32), np.uint8)
    mask[0:2, 0:2] = [[129, 129], [0, 0]]
    mask[0:2, 2:4] = [[255, 255], [255, 100]]
    mask[0:2, 4:6] = [[255, 0], [0, 0]]
    _, small, _ = _load(tmp_path, np.zeros((32, 32, 3), np.uint8), mask)
    assert small[0, :3].tolist() == [1, 1, 0]
    assert small.sum() == 2 and small.dtype == np.uint8


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_zero_one_mask_is_refused(tmp_path, dtype):
    mask = np.zeros((32, 32), dtype)
    mask[:16] = 1
    with pytest.raises(load.BadPairError, match=r"no mask value is above 128 .*0/255"):
        _load(tmp_path, np.zeros((32, 32, 3), np.uint8), mask)


# ----------------------------------------------------------------------------- errors


def test_truncated_png_image_and_empty_files_name_the_file(tmp_path):
    rng = np.random.default_rng(0)
    image_path, mask_path = write_pair(
        str(tmp_path), "X", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), np.zeros((40, 50), np.uint8)
    )
    pair = pairs_lib.Pair("X", image_path, mask_path)
    with open(image_path, "r+b") as f:
        f.truncate(os.path.getsize(image_path) // 2)
    with pytest.raises(load.BadPairError) as info:
        load.load_pair(pair, S)
    assert info.value.problem.file == image_path and "cannot decode image" in info.value.problem.reason
    open(mask_path, "wb").close()
    write_pair(str(tmp_path), "X", np.zeros((40, 50, 3), np.uint8), np.zeros((40, 50), np.uint8))
    open(mask_path, "wb").close()
    with pytest.raises(load.BadPairError, match="cannot read mask") as info:
        load.load_pair(pair, S)
    assert info.value.problem.file == mask_path
    # The pool variant returns the problem instead of raising.
    assert load.try_load_pair((pair, S)) == (None, info.value.problem)


def test_unsupported_mask_mode_is_refused(tmp_path):
    # A float mask has no agreed 0-255 scale (saved as TIFF: PNG cannot hold mode F).
    image_path, mask_path = write_pair(
        str(tmp_path), "X", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    )
    Image.fromarray(np.full((8, 8), 255.0, np.float32)).save(mask_path, format="TIFF")
    with pytest.raises(load.BadPairError, match="unsupported mask mode F"):
        load.load_pair(pairs_lib.Pair("X", image_path, mask_path), S)


# ----------------------------------------------------------------------------- colour constancy


def test_shades_of_gray_follows_its_formula():
    # Two pixels per channel: e_c = ((a^6 + b^6) / 2)^(1/6); the grey target is the RMS
    # of the three estimates; each channel is scaled by target / e_c and rounded.
    image = np.array([[[100, 200, 50], [100, 100, 150]]], np.uint8)  # [1, 2, 3]
    x = image.astype(np.float64)
    e = ((x[0, 0] ** 6 + x[0, 1] ** 6) / 2) ** (1 / 6)
    target = np.sqrt(np.mean(e**2))
    expected = np.clip(np.rint(x * (target / e)), 0, 255).astype(np.uint8)
    out = decode.shades_of_gray(image, 6)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and out.shape == image.shape
    # After correction the illuminant is grey (up to rounding).
    e_out = np.mean(out.reshape(-1, 3).astype(np.float64) ** 6, axis=0) ** (1 / 6)
    assert np.ptp(e_out) < 1.0


def test_shades_of_gray_edge_cases():
    grey = np.full((4, 4, 3), 90, np.uint8)
    np.testing.assert_array_equal(decode.shades_of_gray(grey), grey)  # already grey
    black = np.zeros((2, 2, 3), np.uint8)
    np.testing.assert_array_equal(decode.shades_of_gray(black), black)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    out = decode.shades_of_gray(red)
    assert (out[..., 1:] == 0).all() and (out[..., 0] == round(200 / np.sqrt(3))).all()
    # Red mean 63.75 against a grey target of 167.4: x 2.63 takes 255 past the top.
    bright = np.array([[[255, 200, 200], [0, 200, 200], [0, 200, 200], [0, 200, 200]]], np.uint8)
    assert decode.shades_of_gray(bright, 1)[0, :, 0].tolist() == [255, 0, 0, 0]
    with pytest.raises(ValueError, match="uint8"):
        decode.shades_of_gray(np.zeros((2, 2, 3), np.float32))


def test_colour_constancy_record_round_trips_and_is_checked():
    on = decode.ColourConstancy("shades_of_gray", 6)
    assert on.to_dict() == {"colour_constancy": "shades_of_gray", "colour_constancy_p": 6}
    assert decode.ColourConstancy.from_dict(on.to_dict()) == on
    assert decode.ColourConstancy.from_dict(None) == decode.NO_COLOUR_CONSTANCY
    # A manifest's "preprocessing" also records the image size: other keys are ignored.
    assert decode.ColourConstancy.from_dict({"image_size": 128}) == decode.NO_COLOUR_CONSTANCY
    with pytest.raises(ValueError, match="unknown colour constancy 'grey_world'"):
        decode.ColourConstancy("grey_world")
    with pytest.raises(ValueError, match="integer >= 1"):
        decode.ColourConstancy("shades_of_gray", 0)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_colour_constancy_is_applied_to_the_resized_image(tmp_path, ext):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    image[..., 2] //= 3  # a blue-poor illuminant to correct
    image_path, mask_path = write_pair(
        str(tmp_path), "X", image, np.zeros((40, 56), np.uint8), ext=ext, quality=95
    )
    pair = pairs_lib.Pair("X", image_path, mask_path)
    on = decode.ColourConstancy("shades_of_gray", 6)
    plain, _, _ = load.load_pair(pair, S)
    corrected, mask, size = load.load_pair(pair, S, on)
    np.testing.assert_array_equal(corrected, decode.shades_of_gray(plain, 6))
    assert size == (40, 56) and not mask.any()
    # The pool variant takes the same colour constancy.
    (result, problem) = load.try_load_pair((pair, S, on))
    assert problem is None and result[0].tobytes() == corrected.tobytes()
    # And inference's loader, the same function, gives the same bytes.
    assert decode.load_image(image_path, S, on)[0].tobytes() == corrected.tobytes()
