"""isic-preprocess: bad data, the command line, and the real ISIC sample."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core import names
from core.errors import UserError
from preprocessing import build
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing import splits
from tests.build_helpers import CONFIG
from tests.build_helpers import S
from tests.build_helpers import build_dir
from tests.build_helpers import own_files
from tests.build_helpers import random_dataset
from tests.build_helpers import read_records
from tests.build_helpers import shard_bytes  # noqa: F401
from tests.build_helpers import write_pair
from tests.conftest import ISIC_SAMPLE
from tests.conftest import PROJECT_ROOT

# ----------------------------------------------------------------------------- bad data


def _bad_dataset(root):
    """Four good pairs plus one of every kind of problem the builder must report."""
    random_dataset(root, 4)
    rng = np.random.default_rng(9)
    noisy = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    jpg, _ = write_pair(root, "TRUNCATED_JPEG", noisy, np.zeros((60, 80), np.uint8), ext=".jpg")
    with open(jpg, "r+b") as f:
        f.truncate(os.path.getsize(jpg) // 2)
    _, png = write_pair(root, "TRUNCATED_MASK", noisy, (rng.random((60, 80)) > 0.5).astype(np.uint8) * 255)
    with open(png, "r+b") as f:
        f.truncate(os.path.getsize(png) // 2)
    bad, _ = write_pair(root, "UNREADABLE", noisy, np.zeros((60, 80), np.uint8), ext=".jpg")
    with open(bad, "wb") as f:
        f.write(b"this is not a JPEG")
    write_pair(root, "SIZE_MISMATCH", noisy, np.zeros((60, 81), np.uint8))
    Image.fromarray(noisy).save(os.path.join(root, "images", "NO_MASK.png"))
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(os.path.join(root, "masks", "NO_IMAGE_segmentation.png"))
    for junk in (".DS_Store", "LICENSE.txt", "ATTRIBUTION.txt", "ISIC_0000000_superpixels.png"):
        with open(os.path.join(root, "images", junk), "wb") as f:
            f.write(b"junk")
    return {
        "TRUNCATED_JPEG": "truncated",
        "TRUNCATED_MASK": "truncated",
        "UNREADABLE": "cannot identify image file",
        "SIZE_MISMATCH": "mask is 81x60",
        "NO_MASK": "image without mask",
        "NO_IMAGE": "mask without image",
    }


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
    assert manifest["splits"] == {
        i: s for s, ids in splits.assign_splits(good, (0.5, 0.25, 0.25), 0).items() for i in ids
    }
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
        build.build_records([(str(tmp_path / "images"), str(tmp_path / "nope"))], str(tmp_path / "o"), CONFIG)


# ----------------------------------------------------------------------------- CLI


def test_input_flags_are_exclusive_and_repeatable():
    assert pairs_lib.input_dirs(["D"]) == [(os.path.join("D", "images"), os.path.join("D", "masks"))]
    assert pairs_lib.input_dirs(["A", "B"])[1] == (os.path.join("B", "images"), os.path.join("B", "masks"))
    assert pairs_lib.input_dirs((), ["I"], ["M"]) == [("I", "M")]
    assert pairs_lib.input_dirs((), ["I1", "I2"], ["M1", "M2"]) == [("I1", "M1"), ("I2", "M2")]
    for args, message in (
        ((["D"], ["I"], []), "cannot be combined"),
        ((["D"], [], ["M"]), "cannot be combined"),
        (([], ["I"], []), "together"),
        (([], ["I1", "I2"], ["M1"]), "got 2 --images_dir and 1"),
        (([], [], []), "pass --data_dir"),
    ):
        with pytest.raises(ValueError, match=message):
            pairs_lib.input_dirs(*args)


def test_cli_reports_bad_data_without_traceback(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    expected = _bad_dataset(root)
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.preprocess",
            "--images_dir",
            os.path.join(root, "images"),
            "--masks_dir",
            os.path.join(root, "masks"),
            "--output_dir",
            out,
            "--image_size",
            "16",
            "--num_workers",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index(": error: 6 bad pair(s)") :]
    error_lines = [text for text in message.splitlines() if text.startswith("  /")]
    assert len(error_lines) == len(expected)
    assert own_files(out) == []


def test_worker_imports_stay_free_of_tensorflow():
    # 'spawn' workers re-import the entry point's module and unpickle the task function's
    # module; TensorFlow there would cost each worker seconds and memory for nothing. The
    # builder also encodes records (schema, tfrecord) and reads manifests without it.
    code = (
        "import sys; import launch.commands.preprocess, launch.commands.synth, "
        "preprocessing.build, preprocessing.load, preprocessing.synth, preprocessing.schema, "
        "preprocessing.manifest, preprocessing.tfrecord; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
        timeout=60,
    )
    assert result.stdout.strip() == "[]", (result.stdout, result.stderr)


# Runs isic-preprocess in this process and reports whether TensorFlow got imported.
_RUN = """
import sys
from launch.commands import preprocess
sys.argv = ["isic-preprocess", *sys.argv[1:]]
try:
    preprocess.run()
except SystemExit as e:
    print("exit", e.code, "tensorflow" in sys.modules)
"""


def test_build_and_rerun_never_import_tensorflow(tmp_path):
    # The builder writes TFRecords itself (preprocessing/tfrecord.py): importing TensorFlow
    # took half of a build's time and most of its memory.
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    random_dataset(roots[0], 4)
    random_dataset(roots[1], 3, prefix="B")
    out = str(tmp_path / "out")
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    flags = [
        "--data_dir",
        roots[0],
        "--data_dir",
        roots[1],
        "--output_dir",
        out,
        "--image_size",
        str(S),
        "--num_workers",
        "2",
    ]

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-c", _RUN, *flags, *extra], capture_output=True, text=True, env=env, timeout=120
        )

    result = run()
    assert "Built " in result.stdout and result.stdout.strip().endswith("exit 0 False"), (
        result.stdout,
        result.stderr,
    )
    result = run()
    assert "already built" in result.stdout, result.stderr
    assert result.stdout.strip().endswith("exit 0 False"), result.stdout
    # A conflicting re-run is refused with the error convention.
    result = run("--seed", "1")
    assert result.stdout.strip().endswith("exit 1 False"), (result.stdout, result.stderr)
    assert "isic-preprocess: error: " in result.stderr and "seed: 0 in the existing build" in result.stderr


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not os.path.isdir(ISIC_SAMPLE), reason="ISIC sample not present")
def test_real_sample_subset(tmp_path):
    with open(os.path.join(ISIC_SAMPLE, "manifest.csv")) as f:
        rows = list(csv.DictReader(f))[::23][:20]  # 20 pairs spread over the sample
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for row in rows:
        for sub, name in (("images", row["id"] + ".jpg"), ("masks", names.mask_name(row["id"]))):
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
