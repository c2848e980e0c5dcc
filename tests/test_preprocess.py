"""isic-preprocess: round trip with exact values, splits, several input folders,
determinism across worker counts, colour constancy, build-once behaviour (also without
TensorFlow), bad data, interruption safety, the CLI, the real sample.

Images are hand-made and tiny (tens of pixels), records 16 x 16, so that every expected
value can be computed by hand. Per-file decoding cases are in test_preprocess_load.py.
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from preprocessing import build
from preprocessing import decode
from preprocessing import load
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing import schema
from preprocessing import shards
from preprocessing import splits
from preprocessing.config import BuildConfig
from preprocessing.options import UserError
from tests.conftest import ISIC_SAMPLE, PROJECT_ROOT

S = 16


# ----------------------------------------------------------------------------- helpers

def write_pair(root, case_id, image, mask, ext=".png", **save_kw):
    """Writes root/images/<case_id><ext> and root/masks/<case_id>_segmentation.png."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    image_path = os.path.join(root, "images", case_id + ext)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(image_path, **save_kw)
    mask_path = os.path.join(root, "masks", case_id + "_segmentation.png")
    (mask if isinstance(mask, Image.Image) else Image.fromarray(mask)).save(mask_path)
    return image_path, mask_path


def random_dataset(root, n, seed=0, h=30, w=40, prefix="ID"):
    """n random JPEG pairs of h x w with a random 0/255 rectangle mask each."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y:y + h // 2, x:x + w // 2] = 255
        write_pair(root, f"{prefix}_{i:03d}", image, mask, ext=".jpg", quality=90)
    return os.path.join(root, "images"), os.path.join(root, "masks")


CONFIG = BuildConfig(image_size=S, num_workers=1)


def build_dir(root, out, **kw):
    """Builds root/images + root/masks (or several roots) into out with CONFIG + kw."""
    roots = [root] if isinstance(root, str) else root
    inputs = [pairs_lib.dataset_dirs(r) for r in roots]
    return build.build_records(inputs, out, dataclasses.replace(CONFIG, **kw), progress=False)


def read_records(out, manifest):
    """{case_id: parsed record as numpy} over all splits, with the split added."""
    records = {}
    for split in manifest_lib.SPLITS:
        paths = manifest_lib.shard_paths(out, manifest, split)
        if not paths:
            continue
        for batch in tf.data.TFRecordDataset(paths).batch(64):
            parsed = schema.parse_batch(batch, manifest["image_size"])
            for i, case_id in enumerate(parsed["case_id"].numpy()):
                records[case_id.decode()] = {
                    "split": split, "image": parsed["image"][i].numpy(),
                    "mask": parsed["mask"][i, ..., 0].numpy(),
                    "original_size": tuple(parsed["original_size"][i].numpy().tolist()),
                    "source_image": parsed["source_image"][i].numpy().decode(),
                    "source_mask": parsed["source_mask"][i].numpy().decode(),
                    "source": parsed["source"][i].numpy().decode()}
    return records


def shard_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read()
            for n in sorted(os.listdir(out)) if n.endswith(".tfrecord")}


def own_files(out):
    return sorted(n for n in os.listdir(out) if not n.startswith("."))


# ----------------------------------------------------------------------------- round trip

def test_round_trip_exact_values(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    # A: 32 x 32, left half red, right half blue; mask rows 8-23 x cols 4-15 (factor 2).
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    a_mask = np.zeros((32, 32), np.uint8)
    a_mask[8:24, 4:16] = 255
    write_pair(root, "ISIC_A", a, a_mask)
    # B: 48 high x 32 wide, solid grey; mask rows 13-36. Record row r covers source rows
    # 3r..3r+2: row 4 is 2/3 lesion (lesion), row 12 is 1/3 (not): record rows 4-11.
    b = np.full((48, 32, 3), 77, np.uint8)
    b_mask = np.zeros((48, 32), np.uint8)
    b_mask[13:37] = 255
    write_pair(root, "ISIC_B", b, b_mask)
    # C: a JPEG with an empty mask.
    write_pair(root, "ISIC_C", np.full((20, 24, 3), 128, np.uint8), np.zeros((20, 24), np.uint8),
               ext=".JPG", quality=95)
    for junk in ("images/.DS_Store", "images/LICENSE.txt", "masks/ATTRIBUTION.txt"):
        (tmp_path / "data" / junk).write_bytes(b"junk")

    manifest = build_dir(root, out, splits="1,0,0")
    records = read_records(out, manifest)

    assert sorted(records) == ["ISIC_A", "ISIC_B", "ISIC_C"]
    ra, rb, rc = records["ISIC_A"], records["ISIC_B"], records["ISIC_C"]
    expected = np.zeros((S, S, 3), np.uint8)
    expected[:, :8] = (255, 0, 0)
    expected[:, 8:] = (0, 0, 255)
    np.testing.assert_array_equal(ra["image"], expected)
    expected_mask = np.zeros((S, S), np.uint8)
    expected_mask[4:12, 2:8] = 1
    np.testing.assert_array_equal(ra["mask"], expected_mask)
    assert ra["original_size"] == (32, 32)
    assert (ra["source_image"], ra["source_mask"]) == ("ISIC_A.png", "ISIC_A_segmentation.png")
    assert (rb["image"] == 77).all()
    assert rb["mask"][4:12].all() and not rb["mask"][:4].any() and not rb["mask"][12:].any()
    assert rb["original_size"] == (48, 32)
    assert rc["source_image"] == "ISIC_C.JPG" and rc["original_size"] == (20, 24)
    assert np.abs(rc["image"].astype(int) - 128).max() <= 2 and not rc["mask"].any()

    assert manifest["counts"] == {"train": 3, "val": 0, "test": 0}
    assert manifest["splits"] == {"ISIC_A": "train", "ISIC_B": "train", "ISIC_C": "train"}
    assert manifest["image_size"] == S and manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["ignored_files"] == 3 and manifest["skipped"] == []
    assert manifest["shards"]["val"] == [] and manifest["shards"]["test"] == []
    assert sum(s["records"] for s in manifest["shards"]["train"]) == 3
    for entry in manifest["shards"]["train"]:
        assert entry["sha256"] == shards.sha256_file(os.path.join(out, entry["file"]))
    assert manifest == manifest_lib.read_manifest(out)
    assert manifest["source"]["images_dir"] == os.path.join(root, "images")
    assert manifest["sources"] == {"data": {
        "images_dir": os.path.join(root, "images"), "masks_dir": os.path.join(root, "masks"),
        "counts": {"train": 3, "val": 0, "test": 0}}}
    assert {r["source"] for r in records.values()} == {"data"}
    assert manifest["preprocessing"] == {"image_size": S, "colour_constancy": "none",
                                         "colour_constancy_p": 6}


# ----------------------------------------------------------------------------- splits

@pytest.mark.parametrize("n,fractions,expected", [
    (456, (0.8, 0.1, 0.1), (365, 46, 45)),
    (10, (0.8, 0.1, 0.1), (8, 1, 1)),
    (5, (0.8, 0.1, 0.1), (4, 1, 0)),
    (3, (0.8, 0.1, 0.1), (3, 0, 0)),
    (7, (0, 0, 1), (0, 0, 7)),
    (7, (0.5, 0.5, 0), (4, 3, 0)),
    (2594, (0.8, 0.1, 0.1), (2075, 260, 259)),
    (0, (0.8, 0.1, 0.1), (0, 0, 0)),
])
def test_split_counts_are_exact(n, fractions, expected):
    assert tuple(splits.split_counts(n, fractions).values()) == expected


def test_fraction_parsing_rejects_bad_values():
    assert splits.parse_fractions("0,0,1") == (0.0, 0.0, 1.0)
    for bad in ("0.8,0.1", "0.8,0.1,0.2", "a,b,c", "-0.1,0.6,0.5", "nan,0,1"):
        with pytest.raises(ValueError):
            splits.parse_fractions(bad)


def test_splits_depend_on_ids_and_seed_only_and_are_stable():
    ids = [f"ISIC_{i:07d}" for i in range(200)]
    first = splits.assign_splits(ids, (0.8, 0.1, 0.1), seed=3)
    assert {k: len(v) for k, v in first.items()} == {"train": 160, "val": 20, "test": 20}
    assert splits.assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=3) == first
    assert splits.assign_splits(ids, (0.8, 0.1, 0.1), seed=4) != first

    def split_of(assignment):
        return {i: s for s, members in assignment.items() for i in members}

    before = split_of(first)
    after = split_of(splits.assign_splits(ids + ["ISIC_9999999"], (0.8, 0.1, 0.1), seed=3))
    moved = [i for i in ids if before[i] != after[i]]
    assert len(moved) <= 4, moved


def test_shard_counts():
    assert [shards.default_num_shards(n) for n in (0, 1, 5, 8, 46, 365, 600, 2075, 10**6)] == \
        [0, 1, 5, 8, 8, 8, 10, 16, 16]
    assert shards.shard_sizes(10, 4) == [3, 3, 2, 2]


def test_splits_and_shards_in_the_manifest(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    random_dataset(root, 20)
    manifest = build_dir(root, out, num_shards=3)
    assert manifest["counts"] == {"train": 16, "val": 2, "test": 2}
    expected = splits.assign_splits([f"ID_{i:03d}" for i in range(20)], (0.8, 0.1, 0.1), 0)
    assert manifest["splits"] == {i: s for s, ids in expected.items() for i in ids}
    assert [s["records"] for s in manifest["shards"]["train"]] == [6, 5, 5]
    assert [s["file"] for s in manifest["shards"]["val"]] == [
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    records = read_records(out, manifest)
    assert {i: r["split"] for i, r in records.items()} == manifest["splits"]

    test_only = build_dir(root, str(tmp_path / "test_only"), splits="0,0,1")
    assert test_only["counts"] == {"train": 0, "val": 0, "test": 20}
    assert not [n for n in os.listdir(tmp_path / "test_only") if n.startswith(("train", "val"))]


# ----------------------------------------------------------------------------- determinism

def test_outputs_are_byte_identical_across_worker_counts_and_rebuilds(tmp_path):
    roots = [str(tmp_path / "clinic_a"), str(tmp_path / "clinic_b")]
    random_dataset(roots[0], 14, seed=5, prefix="A")
    random_dataset(roots[1], 10, seed=6, prefix="B")
    one = build_dir(roots, str(tmp_path / "w1"), num_workers=1)
    two = build_dir(roots, str(tmp_path / "w2"), num_workers=2)
    assert shard_bytes(str(tmp_path / "w1")) == shard_bytes(str(tmp_path / "w2"))
    assert len(shard_bytes(str(tmp_path / "w1"))) == 8 + 3 + 2   # 19/3/2 records
    assert one == two
    again = build_dir(roots, str(tmp_path / "w1"), num_workers=2, overwrite=True)
    assert shard_bytes(str(tmp_path / "w1")) == shard_bytes(str(tmp_path / "w2")) and again == one
    with open(os.path.join(tmp_path / "w1", manifest_lib.MANIFEST_NAME), "rb") as a, \
            open(os.path.join(tmp_path / "w2", manifest_lib.MANIFEST_NAME), "rb") as b:
        assert a.read() == b.read()


# ----------------------------------------------------------------------------- several folders

def test_several_folders_make_one_build_that_remembers_each_record_source(tmp_path):
    roots = [str(tmp_path / "clinic_a"), str(tmp_path / "clinic_b")]
    random_dataset(roots[0], 12, seed=1, prefix="A")
    random_dataset(roots[1], 8, seed=2, prefix="B")
    (tmp_path / "clinic_b" / "images" / "LICENSE.txt").write_text("ignored")
    out = str(tmp_path / "out")
    manifest = build_dir(roots, out, splits="0.5,0.25,0.25")

    ids = [f"A_{i:03d}" for i in range(12)] + [f"B_{i:03d}" for i in range(8)]
    # Splits are the same pure function of the union of IDs and the seed as for one folder.
    expected = splits.assign_splits(ids, (0.5, 0.25, 0.25), 0)
    assert manifest["splits"] == {i: s for s, members in expected.items() for i in members}
    assert manifest["counts"] == {"train": 10, "val": 5, "test": 5}
    records = read_records(out, manifest)
    assert {i: r["source"] for i, r in records.items()} == {
        i: "clinic_a" if i.startswith("A") else "clinic_b" for i in ids}
    assert sorted(manifest["sources"]) == ["clinic_a", "clinic_b"]
    for name, prefix in (("clinic_a", "A"), ("clinic_b", "B")):
        source = manifest["sources"][name]
        assert source["images_dir"] == os.path.join(tmp_path, name, "images")
        assert source["counts"] == {s: sum(i.startswith(prefix) for i in expected[s])
                                    for s in splits.SPLITS}
    assert "source" not in manifest          # one folder only: see test_round_trip_exact_values
    assert manifest["build"]["sources"] == ["clinic_a", "clinic_b"]
    assert manifest["ignored_files"] == 1
    assert records["B_003"]["source_image"] == "B_003.jpg"

    # Adding a folder to an existing build is a change of inputs, refused without --overwrite.
    with pytest.raises(build.OutputConflictError, match="sources"):
        build_dir(roots[:1], out)


def test_ids_in_several_folders_are_refused_with_the_list(tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")]
    random_dataset(roots[0], 3)                       # ID_000..ID_002
    random_dataset(roots[1], 2, seed=1)               # ID_000, ID_001 again
    random_dataset(roots[2], 2, prefix="C")
    with pytest.raises(UserError) as info:
        build_dir(roots, str(tmp_path / "out"))
    message = str(info.value)
    assert "2 ID(s) appear in more than one input folder" in message
    assert f"ID_000: in a ({os.path.join(roots[0], 'images')}), b ({os.path.join(roots[1], 'images')})" in message
    assert "ID_001: in a" in message and "ID_002" not in message and "C_000" not in message
    assert not os.path.exists(tmp_path / "out" / manifest_lib.MANIFEST_NAME)


def test_input_folders_are_named_after_their_data_folder():
    named = pairs_lib.name_sources([("/d/isic2017-train-256/images", "/d/isic2017-train-256/masks"),
                                    ("/d/ISIC-2017_Test_Data", "/d/ISIC-2017_Test_GroundTruth")])
    assert [s.name for s in named] == ["isic2017-train-256", "ISIC-2017_Test_Data"]
    assert named[1] == pairs_lib.Source("ISIC-2017_Test_Data", "/d/ISIC-2017_Test_Data",
                                        "/d/ISIC-2017_Test_GroundTruth")
    same = pairs_lib.name_sources([pairs_lib.dataset_dirs("/x/clinic1/isic"),
                                   pairs_lib.dataset_dirs("/x/clinic2/isic")])
    assert [s.name for s in same] == ["clinic1/isic", "clinic2/isic"]
    with pytest.raises(UserError, match="given twice"):
        pairs_lib.name_sources([pairs_lib.dataset_dirs("/x/a"), pairs_lib.dataset_dirs("/x/a/")])


# ----------------------------------------------------------------------------- options

def test_build_config_validates_and_names_the_flag():
    assert BuildConfig().fractions == (0.8, 0.1, 0.1)
    assert dataclasses.replace(CONFIG, splits="0,0,1").fractions == (0.0, 0.0, 1.0)
    for bad, message in (({"splits": "0.8,0.1"}, "--splits"), ({"splits": "0.5,0.5,0.5"}, "--splits"),
                         ({"image_size": 0}, "--image_size must be >= 1"),
                         ({"num_workers": 0}, "--num_workers"), ({"num_shards": 0}, "--num_shards"),
                         ({"colour_constancy": "retinex"}, "--colour_constancy must be one of"),
                         ({"colour_constancy_p": 0}, "--colour_constancy_p")):
        with pytest.raises(UserError, match=message):
            BuildConfig(**bad)


def test_colour_constancy_is_applied_recorded_and_part_of_the_build(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    # A bluish cast: Shades of Gray must pull it towards grey, exactly as decode does it.
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 90, 120, 200
    image[8:24, 8:24] = (40, 50, 110)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    image_path, _ = write_pair(root, "CAST", image, mask)
    manifest = build_dir(root, out, splits="1,0,0", colour_constancy="shades_of_gray")
    record = read_records(out, manifest)["CAST"]
    colour = decode.ColourConstancy("shades_of_gray", 6)
    np.testing.assert_array_equal(record["image"], decode.load_image(image_path, S, colour)[0])
    assert np.ptp(record["image"][0, 0].astype(int)) < np.ptp(image[0, 0].astype(int))
    assert manifest["preprocessing"] == {"image_size": S, "colour_constancy": "shades_of_gray",
                                         "colour_constancy_p": 6}
    assert manifest["build"]["colour_constancy"] == "shades_of_gray"
    with pytest.raises(build.OutputConflictError, match="colour_constancy: 'shades_of_gray' .* 'none' now"):
        build_dir(root, out, splits="1,0,0")
    with pytest.raises(build.OutputConflictError, match="colour_constancy_p: 6 .* 4 now"):
        build_dir(root, out, splits="1,0,0", colour_constancy="shades_of_gray", colour_constancy_p=4)


# ----------------------------------------------------------------------------- build once

def test_second_run_returns_at_once_and_other_options_are_refused(tmp_path, monkeypatch):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    random_dataset(root, 6)
    first = build_dir(root, out)
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in own_files(out)}

    def no_decoding(_):
        raise AssertionError("an already built dataset must not be decoded again")

    monkeypatch.setattr(load, "try_load_pair", no_decoding)
    assert build_dir(root, out) == first
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in own_files(out)} == mtimes

    with pytest.raises(build.OutputConflictError, match=r"image_size: 16 .* 32 now.*--overwrite"):
        build_dir(root, out, image_size=32)
    with pytest.raises(build.OutputConflictError, match="seed"):
        build_dir(root, out, seed=1)
    os.utime(os.path.join(root, "images", "ID_000.jpg"), ns=(1, 1))
    with pytest.raises(build.OutputConflictError, match="input files changed"):
        build_dir(root, out)
    assert manifest_lib.read_manifest(out) == first   # refusals leave the build alone

    monkeypatch.undo()
    rebuilt = build_dir(root, out, image_size=32, overwrite=True)
    assert rebuilt["image_size"] == 32 and rebuilt["build"]["image_size"] == 32
    assert read_records(out, rebuilt)["ID_000"]["image"].shape == (32, 32, 3)


# ----------------------------------------------------------------------------- interruption

def _fail_after(monkeypatch, n):
    """Makes the build stop as if killed while it encodes its record number n + 1."""
    original = schema.encode_example
    count = {"n": 0}

    def encode_example(*args, **kwargs):
        count["n"] += 1
        if count["n"] > n:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(schema, "encode_example", encode_example)


def test_interrupted_build_leaves_no_manifest_and_next_run_rebuilds(tmp_path, monkeypatch):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    random_dataset(root, 20)
    reference = build_dir(root, str(tmp_path / "reference"))

    _fail_after(monkeypatch, 7)   # in the second train shard
    with pytest.raises(KeyboardInterrupt):
        build_dir(root, out)
    assert own_files(out) == []
    monkeypatch.undo()

    # A run killed with SIGKILL cannot clean up: leave what it would have left.
    (tmp_path / "out" / "train-00001-of-00008.tmp.tfrecord").write_bytes(b"partial")
    (tmp_path / "out" / "manifest.tmp.json").write_bytes(b"{")
    (tmp_path / "out" / "train-00000-of-00008.tfrecord").write_bytes(b"complete but unpublished")
    (tmp_path / "out" / "notes.txt").write_text("the user's own file")
    manifest = build_dir(root, out)
    assert shard_bytes(out) == shard_bytes(str(tmp_path / "reference"))
    assert manifest["shards"] == reference["shards"]
    assert "notes.txt" in own_files(out)

    # --overwrite unpublishes the old build before writing: killed midway, no manifest.
    _fail_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_dir(root, out, overwrite=True)
    assert not os.path.exists(os.path.join(out, manifest_lib.MANIFEST_NAME))
    with pytest.raises(FileNotFoundError, match="not a finished TFRecord dataset"):
        manifest_lib.read_manifest(out)


# ----------------------------------------------------------------------------- bad data

def _bad_dataset(root):
    """Four good pairs plus one of every kind of problem the builder must report."""
    random_dataset(root, 4)
    rng = np.random.default_rng(9)
    noisy = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    jpg, _ = write_pair(root, "TRUNCATED_JPEG", noisy, np.zeros((60, 80), np.uint8), ext=".jpg")
    with open(jpg, "r+b") as f:
        f.truncate(os.path.getsize(jpg) // 2)
    _, png = write_pair(root, "TRUNCATED_MASK", noisy,
                        (rng.random((60, 80)) > 0.5).astype(np.uint8) * 255)
    with open(png, "r+b") as f:
        f.truncate(os.path.getsize(png) // 2)
    bad, _ = write_pair(root, "UNREADABLE", noisy, np.zeros((60, 80), np.uint8), ext=".jpg")
    with open(bad, "wb") as f:
        f.write(b"this is not a JPEG")
    write_pair(root, "SIZE_MISMATCH", noisy, np.zeros((60, 81), np.uint8))
    Image.fromarray(noisy).save(os.path.join(root, "images", "NO_MASK.png"))
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(
        os.path.join(root, "masks", "NO_IMAGE_segmentation.png"))
    for junk in (".DS_Store", "LICENSE.txt", "ATTRIBUTION.txt", "ISIC_0000000_superpixels.png"):
        with open(os.path.join(root, "images", junk), "wb") as f:
            f.write(b"junk")
    return {"TRUNCATED_JPEG": "truncated", "TRUNCATED_MASK": "truncated",
            "UNREADABLE": "cannot identify image file", "SIZE_MISMATCH": "mask is 81x60",
            "NO_MASK": "image without mask", "NO_IMAGE": "mask without image"}


def test_bad_data_is_listed_and_nothing_is_published(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    expected = _bad_dataset(root)
    with pytest.raises(build.BadDataError) as info:
        build_dir(root, out)
    found = {p.case_id: p for p in info.value.problems}
    assert sorted(found) == sorted(expected)
    for case_id, reason in expected.items():
        assert reason in found[case_id].reason, found[case_id]
        assert found[case_id].line() in str(info.value)
    assert found["TRUNCATED_MASK"].file.endswith("TRUNCATED_MASK_segmentation.png")
    assert found["SIZE_MISMATCH"].file.endswith("SIZE_MISMATCH_segmentation.png")
    assert found["UNREADABLE"].file.endswith("UNREADABLE.jpg")
    assert "--skip_bad" in str(info.value)
    assert own_files(out) == []


def test_skip_bad_records_the_problems_and_keeps_exact_splits(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    expected = _bad_dataset(root)
    manifest = build_dir(root, out, skip_bad=True, splits="0.5,0.25,0.25")
    assert sorted(e["id"] for e in manifest["skipped"]) == sorted(expected)
    assert all(set(e) == {"id", "file", "reason"} for e in manifest["skipped"])
    # Splits are computed over the 4 good pairs only (2/1/1), as if the bad ones were absent.
    assert manifest["counts"] == {"train": 2, "val": 1, "test": 1}
    good = [f"ID_{i:03d}" for i in range(4)]
    assert manifest["splits"] == {i: s for s, ids in splits.assign_splits(
        good, (0.5, 0.25, 0.25), 0).items() for i in ids}
    assert sorted(read_records(out, manifest)) == good
    assert manifest["ignored_files"] == 4
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_no_pairs_at_all_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "README.txt").write_text("empty")
    with pytest.raises(UserError, match="no image/mask pairs found: .* in .*/images"):
        build_dir(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="masks folder .* does not exist"):
        build.build_records([(str(tmp_path / "images"), str(tmp_path / "nope"))],
                            str(tmp_path / "o"), CONFIG)


# ----------------------------------------------------------------------------- CLI

def test_input_flags_are_exclusive_and_repeatable():
    assert pairs_lib.input_dirs(["D"]) == [(os.path.join("D", "images"), os.path.join("D", "masks"))]
    assert pairs_lib.input_dirs(["A", "B"])[1] == (os.path.join("B", "images"), os.path.join("B", "masks"))
    assert pairs_lib.input_dirs((), ["I"], ["M"]) == [("I", "M")]
    assert pairs_lib.input_dirs((), ["I1", "I2"], ["M1", "M2"]) == [("I1", "M1"), ("I2", "M2")]
    for args, message in (((["D"], ["I"], []), "cannot be combined"), ((["D"], [], ["M"]), "cannot be combined"),
                          (([], ["I"], []), "together"), (([], ["I1", "I2"], ["M1"]), "got 2 --images_dir and 1"),
                          (([], [], []), "pass --data_dir")):
        with pytest.raises(ValueError, match=message):
            pairs_lib.input_dirs(*args)


def test_cli_reports_bad_data_without_traceback(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    expected = _bad_dataset(root)
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "launch.commands.preprocess", "--images_dir", os.path.join(root, "images"),
         "--masks_dir", os.path.join(root, "masks"), "--output_dir", out, "--image_size", "16",
         "--num_workers", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index(": error: 6 bad pair(s)"):]
    error_lines = [l for l in message.splitlines() if l.startswith("  /")]
    assert len(error_lines) == len(expected)
    assert own_files(out) == []


def test_worker_imports_stay_free_of_tensorflow():
    # 'spawn' workers re-import the entry point's module and unpickle the task function's
    # module; TensorFlow there would cost each worker seconds and memory for nothing.
    code = ("import sys; import launch.commands.preprocess, launch.commands.synth, "
            "preprocessing.build, preprocessing.load, preprocessing.synth; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), timeout=60)
    assert result.stdout.strip() == "[]", (result.stdout, result.stderr)


# Runs isic-preprocess in this process and reports whether TensorFlow got imported.
_RERUN = """
import sys
from launch.commands import preprocess
sys.argv = ["isic-preprocess", *sys.argv[1:]]
try:
    preprocess.run()
except SystemExit as e:
    print("exit", e.code, "tensorflow" in sys.modules)
"""


def test_rerun_on_a_finished_build_returns_without_tensorflow(tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    random_dataset(roots[0], 4)
    random_dataset(roots[1], 3, prefix="B")
    out = str(tmp_path / "out")
    build_dir(roots, out)
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    flags = ["--data_dir", roots[0], "--data_dir", roots[1], "--output_dir", out,
             "--image_size", str(S), "--num_workers", "2"]
    result = subprocess.run([sys.executable, "-c", _RERUN, *flags], capture_output=True,
                            text=True, env=env, timeout=120)
    assert "already built" in result.stdout, result.stderr
    assert result.stdout.strip().endswith("exit 0 False"), result.stdout
    # A conflicting re-run is refused before TensorFlow too, with the error convention.
    result = subprocess.run([sys.executable, "-c", _RERUN, *flags, "--seed", "1"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip().endswith("exit 1 False"), (result.stdout, result.stderr)
    assert "isic-preprocess: error: " in result.stderr and "seed: 0 in the existing build" in result.stderr


# ----------------------------------------------------------------------------- real data

@pytest.mark.skipif(not os.path.isdir(ISIC_SAMPLE), reason="ISIC sample not present")
def test_real_sample_subset(tmp_path):
    with open(os.path.join(ISIC_SAMPLE, "manifest.csv")) as f:
        rows = list(csv.DictReader(f))[::23][:20]   # 20 pairs spread over the sample
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for row in rows:
        for sub, name in (("images", row["id"] + ".jpg"), ("masks", row["id"] + "_segmentation.png")):
            os.symlink(os.path.join(ISIC_SAMPLE, sub, name), tmp_path / sub / name)
    out = str(tmp_path / "out")
    manifest = build_dir(str(tmp_path), out, image_size=32)
    assert manifest["counts"] == {"train": 16, "val": 2, "test": 2}
    assert list(manifest["sources"]) == [os.path.basename(str(tmp_path))]
    records = read_records(out, manifest)
    assert len(records) == 20
    for row in rows:
        record = records[row["id"]]
        assert record["original_size"] == (int(row["height"]), int(row["width"]))
        assert set(np.unique(record["mask"])) <= {0, 1}
        # The area-downsampled mask keeps the lesion fraction (to within its pixel size).
        assert abs(record["mask"].mean() - float(row["lesion_fraction"])) < 0.08, row
        assert 20 < record["image"].mean() < 235
    with open(os.path.join(out, manifest_lib.MANIFEST_NAME)) as f:
        assert json.load(f)["build"]["input_files"] == 40
