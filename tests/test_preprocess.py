"""isic-preprocess: round trip with exact values, splits, several input folders,
determinism across worker counts, colour constancy, build-once behaviour, interruption
safety. Bad data, the CLI and the real sample: test_preprocess_cli.py.

Images are hand-made and tiny (tens of pixels), records 16 x 16, so that every expected
value can be computed by hand. Per-file decoding cases are in test_preprocess_load.py.
"""

import contextlib
import dataclasses
import io
import os

import numpy as np
import pytest

from core.errors import UserError
from preprocessing import build
from preprocessing import decode
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing import schema
from preprocessing import shards
from preprocessing import splits
from preprocessing.config import BuildConfig
from tests.build_helpers import CONFIG
from tests.build_helpers import S
from tests.build_helpers import build_dir
from tests.build_helpers import own_files
from tests.build_helpers import random_dataset
from tests.build_helpers import read_records
from tests.build_helpers import shard_bytes
from tests.build_helpers import write_pair

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
    write_pair(
        root,
        "ISIC_C",
        np.full((20, 24, 3), 128, np.uint8),
        np.zeros((20, 24), np.uint8),
        ext=".JPG",
        quality=95,
    )
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
    assert manifest["sources"] == {
        "data": {
            "images_dir": os.path.join(root, "images"),
            "masks_dir": os.path.join(root, "masks"),
            "counts": {"train": 3, "val": 0, "test": 0},
        }
    }
    assert {r["source"] for r in records.values()} == {"data"}
    assert manifest["preprocessing"] == {"image_size": S, "colour_constancy": "none", "colour_constancy_p": 6}


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "n,fractions,expected",
    [
        (456, (0.8, 0.1, 0.1), (365, 46, 45)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (5, (0.8, 0.1, 0.1), (4, 1, 0)),
        (3, (0.8, 0.1, 0.1), (3, 0, 0)),
        (7, (0, 0, 1), (0, 0, 7)),
        (7, (0.5, 0.5, 0), (4, 3, 0)),
        (2594, (0.8, 0.1, 0.1), (2075, 260, 259)),
        (0, (0.8, 0.1, 0.1), (0, 0, 0)),
    ],
)
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
    assert [shards.default_num_shards(n) for n in (0, 1, 5, 8, 46, 365, 600, 2075, 10**6)] == [
        0,
        1,
        5,
        8,
        8,
        8,
        10,
        16,
        16,
    ]
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
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
    ]
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
    assert len(shard_bytes(str(tmp_path / "w1"))) == 8 + 3 + 2  # 19/3/2 records
    assert one == two
    again = build_dir(roots, str(tmp_path / "w1"), num_workers=2, overwrite=True)
    assert shard_bytes(str(tmp_path / "w1")) == shard_bytes(str(tmp_path / "w2")) and again == one
    with (
        open(os.path.join(tmp_path / "w1", manifest_lib.MANIFEST_NAME), "rb") as a,
        open(os.path.join(tmp_path / "w2", manifest_lib.MANIFEST_NAME), "rb") as b,
    ):
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
        i: "clinic_a" if i.startswith("A") else "clinic_b" for i in ids
    }
    assert sorted(manifest["sources"]) == ["clinic_a", "clinic_b"]
    for name, prefix in (("clinic_a", "A"), ("clinic_b", "B")):
        source = manifest["sources"][name]
        assert source["images_dir"] == os.path.join(tmp_path, name, "images")
        assert source["counts"] == {s: sum(i.startswith(prefix) for i in expected[s]) for s in splits.SPLITS}
    assert "source" not in manifest  # one folder only: see test_round_trip_exact_values
    assert manifest["build"]["sources"] == ["clinic_a", "clinic_b"]
    assert manifest["ignored_files"] == 1
    assert records["B_003"]["source_image"] == "B_003.jpg"

    # Adding a folder to an existing build is a change of inputs, refused without --overwrite.
    with pytest.raises(build.OutputConflictError, match="sources"):
        build_dir(roots[:1], out)


def test_ids_in_several_folders_are_refused_with_the_list(tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")]
    random_dataset(roots[0], 3)  # ID_000..ID_002
    random_dataset(roots[1], 2, seed=1)  # ID_000, ID_001 again
    random_dataset(roots[2], 2, prefix="C")
    with pytest.raises(UserError) as info:
        build_dir(roots, str(tmp_path / "out"))
    message = str(info.value)
    assert "2 ID(s) appear in more than one input folder" in message
    assert (
        f"ID_000: in a ({os.path.join(roots[0], 'images')}), b ({os.path.join(roots[1], 'images')})"
        in message
    )
    assert "ID_001: in a" in message and "ID_002" not in message and "C_000" not in message
    assert not os.path.exists(tmp_path / "out" / manifest_lib.MANIFEST_NAME)


def test_input_folders_are_named_after_their_data_folder():
    named = pairs_lib.name_sources(
        [
            ("/d/isic2017-train-256/images", "/d/isic2017-train-256/masks"),
            ("/d/ISIC-2017_Test_Data", "/d/ISIC-2017_Test_GroundTruth"),
        ]
    )
    assert [s.name for s in named] == ["isic2017-train-256", "ISIC-2017_Test_Data"]
    assert named[1] == pairs_lib.Source(
        "ISIC-2017_Test_Data", "/d/ISIC-2017_Test_Data", "/d/ISIC-2017_Test_GroundTruth"
    )
    same = pairs_lib.name_sources(
        [pairs_lib.dataset_dirs("/x/clinic1/isic"), pairs_lib.dataset_dirs("/x/clinic2/isic")]
    )
    assert [s.name for s in same] == ["clinic1/isic", "clinic2/isic"]
    with pytest.raises(UserError, match="given twice"):
        pairs_lib.name_sources([pairs_lib.dataset_dirs("/x/a"), pairs_lib.dataset_dirs("/x/a/")])


# ----------------------------------------------------------------------------- options


def test_build_config_validates_and_names_the_flag():
    assert BuildConfig().fractions == (0.8, 0.1, 0.1)
    assert dataclasses.replace(CONFIG, splits="0,0,1").fractions == (0.0, 0.0, 1.0)
    for bad, message in (
        ({"splits": "0.8,0.1"}, "--splits"),
        ({"splits": "0.5,0.5,0.5"}, "--splits"),
        ({"image_size": 0}, "--image_size must be >= 1"),
        ({"num_workers": 0}, "--num_workers"),
        ({"num_shards": 0}, "--num_shards"),
        ({"colour_constancy": "retinex"}, "--colour_constancy must be one of"),
        ({"colour_constancy_p": 0}, "--colour_constancy_p"),
    ):
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
    assert manifest["preprocessing"] == {
        "image_size": S,
        "colour_constancy": "shades_of_gray",
        "colour_constancy_p": 6,
    }
    assert manifest["build"]["colour_constancy"] == "shades_of_gray"
    with pytest.raises(build.OutputConflictError, match="colour_constancy: 'shades_of_gray' .* 'none' now"):
        build_dir(root, out, splits="1,0,0")
    with pytest.raises(build.OutputConflictError, match="colour_constancy_p: 6 .* 4 now"):
        build_dir(root, out, splits="1,0,0", colour_constancy="shades_of_gray", colour_constancy_p=4)


# ----------------------------------------------------------------------------- build once


def test_second_run_returns_at_once_and_other_options_are_refused(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    random_dataset(root, 6)
    first = build_dir(root, out)
    mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in own_files(out)}

    # An image garbled behind the fingerprint's back (same name, size and mtime): a re-run
    # that decoded anything would fail on it.
    image = os.path.join(root, "images", "ID_003.jpg")
    stat = os.stat(image)
    original = open(image, "rb").read()
    with open(image, "wb") as f:
        f.write(b"\0" * stat.st_size)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert build_dir(root, out) == first
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in own_files(out)} == mtimes
    with open(image, "wb") as f:
        f.write(original)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    with pytest.raises(build.OutputConflictError, match=r"image_size: 16 .* 32 now.*--overwrite"):
        build_dir(root, out, image_size=32)
    with pytest.raises(build.OutputConflictError, match="seed"):
        build_dir(root, out, seed=1)
    os.utime(os.path.join(root, "images", "ID_000.jpg"), ns=(1, 1))
    with pytest.raises(build.OutputConflictError, match="input files changed"):
        build_dir(root, out)
    assert manifest_lib.read_manifest(out) == first  # refusals leave the build alone

    rebuilt = build_dir(root, out, image_size=32, overwrite=True)
    assert rebuilt["image_size"] == 32 and rebuilt["build"]["image_size"] == 32
    assert read_records(out, rebuilt)["ID_000"]["image"].shape == (32, 32, 3)


# ----------------------------------------------------------------------------- interruption


class _CtrlCAfter(io.StringIO):
    """Standard output whose user presses Ctrl-C after the build's n-th progress update
    (the progress bar flushes once per pair): KeyboardInterrupt while pair n + 1 is written."""

    def __init__(self, n: int):
        super().__init__()
        self.left = n

    def flush(self):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt("simulated Ctrl-C")


def _interrupted_build(root, out, n, **kw):
    with contextlib.redirect_stdout(_CtrlCAfter(n)), pytest.raises(KeyboardInterrupt):
        build.build_records(
            [pairs_lib.dataset_dirs(root)], out, dataclasses.replace(CONFIG, **kw), progress=True
        )


def test_interrupted_build_leaves_no_manifest_and_next_run_rebuilds(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    random_dataset(root, 20)
    reference = build_dir(root, str(tmp_path / "reference"))

    _interrupted_build(root, out, 7)  # in the fourth train shard (8 shards of 2)
    assert own_files(out) == []

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
    _interrupted_build(root, out, 3, overwrite=True)
    assert not os.path.exists(os.path.join(out, manifest_lib.MANIFEST_NAME))
    with pytest.raises(FileNotFoundError, match="not a finished TFRecord dataset"):
        manifest_lib.read_manifest(out)
