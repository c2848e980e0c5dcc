"""isic-evaluate: exact metrics at training size and at full resolution, outputs, errors,
and a round trip train -> evaluate (library and command line) -> predict.

The hand-made dataset has source images of 48 x 32 (height x width) built into 16 x 16
records (3x vertically, 2x horizontally). Its model predicts p = R / 255 (tests/
test_predict.py), and every predicted region is a band of whole rows, so the bilinear
enlargement back to 48 x 32 crosses 0.5 exactly at the band's edges (no pixel lands on
0.5) and every count below is exact.
"""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from core import names
from core.errors import UserError
from launch import layout
from launch.inference import evaluation
from launch.inference import prediction
from launch.inference import scoring
from launch.inference.config import EvaluateConfig
from launch.inference.config import PredictConfig
from launch.training import trainer
from launch.training.config import TrainConfig
from pipeline import records as records_lib
from preprocessing import build
from preprocessing import tiny_records
from preprocessing.config import BuildConfig
from tests import test_review_page
from tests.test_predict import red_channel_model

S, H, W = 16, 48, 32
# The network's raw mask: exact-count tests start from it (the defaults add TTA and
# post-processing, tested on their own below).
RAW = dict(tta=False, fill_holes=False, largest_component=False)
SMALL = EvaluateConfig(full_resolution=False, **RAW)
FULL = EvaluateConfig(full_resolution=True, **RAW)


def _case(pred_rows, truth_box, fg=255, bg=0):
    """(image uint8 [H, W, 3] red on pred_rows, mask uint8 [H, W] with fg in truth_box)."""
    image = np.zeros((H, W, 3), np.uint8)
    image[pred_rows[0] : pred_rows[1], :, 0] = 255
    mask = np.full((H, W), bg, np.uint8)
    if truth_box:
        (r0, r1), (c0, c1) = truth_box
        mask[r0:r1, c0:c1] = fg
    return image, mask


# A: prediction rows 12-35 (records: 4-11); truth rows 13-36 on the 129/128 scale. At 16 x 16
#    the truth's area downsampling gives rows 4-11 too (a perfect score); at full size the
#    1-row shift costs 32 fp and 32 fn.
# B: empty truth, empty prediction: every metric is 1.
# C: prediction rows 6-20 (records: 2-6, all columns); truth rows 6-17, columns 0-25
#    (records: rows 2-5, columns 0-12): Jaccard exactly 0.65 at both sizes.
CASES = {
    "ISIC_A": _case((12, 36), ((13, 37), (0, W)), fg=129, bg=128),
    "ISIC_B": _case((0, 0), None),
    "ISIC_C": _case((6, 21), ((6, 18), (0, 26))),
}


def _scores(tp, fp, fn, tn):
    return {
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "sensitivity": tp / (tp + fn) if tp + fn else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "jaccard": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
    }


EXPECTED = {  # id -> (tp, fp, fn, tn), by hand from the comments above
    "small": {"ISIC_A": (128, 0, 0, 128), "ISIC_B": (0, 0, 0, 256), "ISIC_C": (52, 28, 0, 176)},
    "full": {"ISIC_A": (736, 32, 32, 736), "ISIC_B": (0, 0, 0, 1536), "ISIC_C": (312, 168, 0, 1056)},
}


def _write_source(root) -> str:
    for folder in ("images", "masks"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for case_id, (image, mask) in CASES.items():
        Image.fromarray(image).save(os.path.join(root, "images", case_id + ".png"))
        Image.fromarray(mask).save(os.path.join(root, "masks", names.mask_name(case_id)))
    return str(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(source dir, records dir, model path) of the hand-made test-only dataset."""
    root = tmp_path_factory.mktemp("eval")
    source = _write_source(root / "source")
    records = str(root / "records")
    build.build_records(
        [(os.path.join(source, "images"), os.path.join(source, "masks"))],
        records,
        BuildConfig(image_size=S, splits="0,0,1", num_workers=1),
        progress=False,
    )
    return source, records, red_channel_model(str(root / "red.keras"))


@pytest.mark.parametrize("resolution", ["small", "full"])
def test_metrics_match_the_hand_computation(dataset, tmp_path, resolution):
    _, records, model = dataset
    out = str(tmp_path / "eval")
    config = dataclasses.replace(FULL if resolution == "full" else SMALL, batch_size=2)
    summary = evaluation.evaluate(model, records, config, output_dir=out, progress=False)
    expected = {i: _scores(*c) for i, c in EXPECTED[resolution].items()}
    with open(os.path.join(out, "per_image.csv")) as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(expected)
    for case_id, scores in expected.items():
        row = rows[case_id]
        assert tuple(int(row[k]) for k in ("tp", "fp", "fn", "tn")) == EXPECTED[resolution][case_id]
        assert (int(row["height"]), int(row["width"])) == (H, W)
        for name, value in scores.items():
            assert float(row[name]) == pytest.approx(value, abs=1e-6), (case_id, name)
    # C's Jaccard is exactly 0.65 and is kept; A's full-size 0.92 also passes.
    assert float(rows["ISIC_C"]["thresholded_jaccard"]) == pytest.approx(0.65, abs=1e-6)
    with open(os.path.join(out, "metrics.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(summary))
    for name in ("accuracy", "jaccard", "dice"):
        mean = np.mean([expected[i][name] for i in expected])  # unweighted over images
        assert summary["mean"][name] == pytest.approx(mean, abs=1e-12), name
    assert summary["headline"]["thresholded_jaccard"] == pytest.approx(summary["mean"]["jaccard"], abs=1e-12)
    assert summary["fraction_jaccard_below_0.65"] == 0.0
    assert summary["count"] == summary["num_images"] == 3 and summary["split"] == "test"
    assert summary["resolution"] == ("full" if resolution == "full" else "16x16")
    assert os.path.getsize(os.path.join(out, "cases.png")) > 1000
    assert "thresholded_jaccard" in evaluation.format_table(summary)


def test_threshold_is_applied_to_probabilities(dataset, tmp_path):
    # p is exactly 0 outside the predicted bands: foreground is p > threshold, so threshold 0
    # keeps the same masks, while p >= threshold would make B's prediction all foreground.
    _, records, model = dataset
    low = evaluation.evaluate(
        model,
        records,
        dataclasses.replace(SMALL, threshold=0.0),
        output_dir=str(tmp_path / "a"),
        progress=False,
    )
    assert low["mean"]["jaccard"] == pytest.approx((1 + 1 + 0.65) / 3)


def test_moved_source_needs_data_source_and_wrong_sizes_are_named(dataset, tmp_path):
    source, records, model = dataset
    moved_records = str(tmp_path / "records")
    shutil.copytree(records, moved_records)
    with open(os.path.join(moved_records, "manifest.json")) as f:
        manifest = json.load(f)
    gone = {"images_dir": str(tmp_path / "gone" / "images"), "masks_dir": str(tmp_path / "gone" / "masks")}
    manifest["source"] = gone
    for name in manifest["sources"]:
        manifest["sources"][name].update(gone)
    with open(os.path.join(moved_records, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(FileNotFoundError, match=r"gone/images .*recorded in .*manifest.json.*--data_source"):
        evaluation.evaluate(model, moved_records, FULL, progress=False, output_dir=str(tmp_path / "x"))
    copy = shutil.copytree(source, tmp_path / "copy")
    summary = evaluation.evaluate(
        model,
        moved_records,
        FULL,
        progress=False,
        images_dir=str(copy / "images"),
        masks_dir=str(copy / "masks"),
        output_dir=str(tmp_path / "y"),
    )
    assert summary["mean"]["jaccard"] == pytest.approx((0.92 + 1 + 0.65) / 3)
    # A mask that does not have the recorded original size is named.
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(copy / "masks" / names.mask_name("ISIC_B"))
    with pytest.raises(ValueError, match=r"ISIC_B_segmentation.png is 33x48 .* original is 32x48"):
        evaluation.evaluate(
            model,
            moved_records,
            FULL,
            progress=False,
            images_dir=str(copy / "images"),
            masks_dir=str(copy / "masks"),
            output_dir=str(tmp_path / "z"),
        )


def test_bad_inputs_are_clear_errors(dataset, tmp_path):
    _, records, model = dataset
    with pytest.raises(evaluation.EmptySplitError, match=r"'val' split .* has no records"):
        evaluation.evaluate(model, records, dataclasses.replace(SMALL, split="val"), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluation.evaluate(str(tmp_path / "no-model"), records, SMALL, progress=False)
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        evaluation.evaluate(model, str(tmp_path), SMALL, progress=False)
    other = red_channel_model(str(tmp_path / "s32.keras"), image_size=32)
    with pytest.raises(ValueError, match="takes 32x32 images but .* holds 16x16 records"):
        evaluation.evaluate(other, records, SMALL, progress=False)
    # Records of preprocessing/tiny_records.py have no source folders on disk.
    factory_records = str(tmp_path / "factory")
    tiny_records.write_records(factory_records, {"test": 2}, size=S)
    with pytest.raises(FileNotFoundError, match="full-resolution evaluation needs the original images"):
        evaluation.evaluate(model, factory_records, FULL, progress=False)


def test_default_output_dir_is_next_to_the_model(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    assert evaluation.default_output_dir(str(run), "test", False) == str(run / "eval-test")
    assert evaluation.default_output_dir(str(run / "best"), "val", True) == str(
        run / "best" / "eval-val-full"
    )
    assert evaluation.default_output_dir(str(run / "x.keras"), "test", True) == str(run / "eval-test-full")


def _counts(path: str) -> dict:
    with open(os.path.join(path, "per_image.csv")) as f:
        return {r["id"]: tuple(int(r[k]) for k in ("tp", "fp", "fn", "tn")) for r in csv.DictReader(f)}


def test_a_raw_folder_scores_as_its_records_at_full_resolution(dataset, tmp_path):
    source, _, model = dataset
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model, run / layout.MODEL_FILE)
    summary = evaluation.evaluate_folder(
        str(run), os.path.join(source, "images"), os.path.join(source, "masks"), FULL, progress=False
    )
    out = str(run / "eval-folder-source")
    assert summary["output_dir"] == out and summary["split"] is None and summary["skipped"] == []
    assert _counts(out) == EXPECTED["full"]
    assert summary["resolution"] == "full" and summary["count"] == 3
    assert summary["mean"]["jaccard"] == pytest.approx((0.92 + 1 + 0.65) / 3)
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert os.path.getsize(os.path.join(out, "cases.png")) > 1000
    assert evaluation.format_table(summary).startswith(f"folder {os.path.join(source, 'images')}, 3 images")


def test_a_raw_folder_skips_and_names_what_the_builder_would_refuse(dataset, tmp_path):
    source, _, model = dataset
    copy = shutil.copytree(source, tmp_path / "copy")
    (copy / "masks" / names.mask_name("ISIC_B")).write_bytes(b"broken")
    Image.fromarray(CASES["ISIC_A"][0]).save(copy / "images" / "ISIC_D.png")  # no mask
    summary = evaluation.evaluate_folder(
        model,
        str(copy / "images"),
        str(copy / "masks"),
        FULL,
        output_dir=str(tmp_path / "out"),
        progress=False,
    )
    assert sorted(_counts(str(tmp_path / "out"))) == ["ISIC_A", "ISIC_C"]
    assert [(e["id"], e["reason"].split(" (")[0]) for e in summary["skipped"]] == [
        ("ISIC_B", "cannot read mask"),
        ("ISIC_D", f"image without mask: expected {copy / 'masks' / 'ISIC_D_segmentation.png'}"),
    ]


def test_tta_and_post_processing_are_applied_to_what_is_scored(dataset, tmp_path):
    source, records, model = dataset
    # The red-channel model commutes with flips and rotations, and ISIC_C is not symmetric:
    # a wrong inverse transform would move its band.
    tta = evaluation.evaluate(
        model, records, dataclasses.replace(FULL, tta=True), output_dir=str(tmp_path / "tta"), progress=False
    )
    assert _counts(str(tmp_path / "tta")) == EXPECTED["full"] and tta["tta"] is True
    # The confidence of each image (per_image.csv), its summary (metrics.json) and the
    # review page, whose numbers are metrics.json's.
    with open(tmp_path / "tta" / "per_image.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    for row in rows.values():
        assert float(row["confidence"]) == float(row["confidence_" + tta["confidence"]["signal"]])
        assert {"confidence_tta_agreement", "confidence_boundary_margin"} <= set(row)
        assert 0.0 <= float(row["confidence"]) <= 1.0
    block = tta["confidence"]
    assert [r["coverage"] for r in block["risk_coverage"]] == [1.0, 0.9, 0.8]
    assert block["risk_coverage"][0]["confidence"]["thresholded_jaccard"] == pytest.approx(
        tta["headline"]["thresholded_jaccard"], abs=1e-12
    )
    assert block["auroc_jaccard_below_0.65"] is None  # no failure among the 3: undefined
    test_review_page.check_page(
        str(tmp_path / "tta" / "report.html"),
        json.load(open(tmp_path / "tta" / "metrics.json")),
        {i: float(r["confidence"]) for i, r in rows.items()},
        {i: float(r["jaccard"]) for i, r in rows.items()},
    )
    # A speck away from the lesion: a false positive that largest_component removes.
    speck = tmp_path / "speck"
    shutil.copytree(source, speck)
    image, mask = CASES["ISIC_C"]
    image = image.copy()
    image[42:48, 28:32, 0] = 255
    Image.fromarray(image).save(speck / "images" / "ISIC_C.png")
    plain = evaluation.evaluate_folder(
        model,
        str(speck / "images"),
        str(speck / "masks"),
        FULL,
        output_dir=str(tmp_path / "plain"),
        progress=False,
    )
    kept = evaluation.evaluate_folder(
        model,
        str(speck / "images"),
        str(speck / "masks"),
        dataclasses.replace(FULL, largest_component=True, fill_holes=True),
        output_dir=str(tmp_path / "kept"),
        progress=False,
    )
    tp, fp, fn, tn = _counts(str(tmp_path / "plain"))["ISIC_C"]
    assert fp > EXPECTED["full"]["ISIC_C"][1]
    assert _counts(str(tmp_path / "kept"))["ISIC_C"] == EXPECTED["full"]["ISIC_C"]
    assert kept["largest_component"] and kept["fill_holes"] and not plain["largest_component"]


def _two_sources(root) -> list[tuple[str, str]]:
    """Two input folders: "clinic_a" holds ISIC_A and ISIC_B, "clinic_b" ISIC_C."""
    inputs = []
    for name, ids in (("clinic_a", ("ISIC_A", "ISIC_B")), ("clinic_b", ("ISIC_C",))):
        for folder in ("images", "masks"):
            os.makedirs(os.path.join(root, name, folder))
        for case_id in ids:
            image, mask = CASES[case_id]
            Image.fromarray(image).save(os.path.join(root, name, "images", case_id + ".png"))
            Image.fromarray(mask).save(os.path.join(root, name, "masks", names.mask_name(case_id)))
        inputs.append((os.path.join(root, name, "images"), os.path.join(root, name, "masks")))
    return inputs


@pytest.mark.parametrize("resolution", ["small", "full"])
def test_records_from_two_folders_are_reported_per_source(dataset, tmp_path, resolution):
    _, _, model = dataset
    records = str(tmp_path / "records")
    build.build_records(
        _two_sources(str(tmp_path)),
        records,
        BuildConfig(image_size=S, splits="0,0,1", num_workers=1),
        progress=False,
    )
    out = str(tmp_path / "eval")
    summary = evaluation.evaluate(
        model, records, FULL if resolution == "full" else SMALL, output_dir=out, progress=False
    )
    assert _counts(out) == EXPECTED[resolution]  # each mask read from its own folder
    per_source = summary["per_source"]
    assert sorted(per_source) == ["clinic_a", "clinic_b"]
    assert per_source["clinic_a"]["num_images"] == 2 and per_source["clinic_b"]["num_images"] == 1
    jaccard = {i: _scores(*c)["jaccard"] for i, c in EXPECTED[resolution].items()}
    assert per_source["clinic_a"]["mean"]["jaccard"] == pytest.approx(
        (jaccard["ISIC_A"] + jaccard["ISIC_B"]) / 2
    )
    assert per_source["clinic_b"]["mean"]["jaccard"] == pytest.approx(jaccard["ISIC_C"])
    with open(os.path.join(out, "per_image.csv")) as f:
        assert {r["id"]: r["source"] for r in csv.DictReader(f)} == {
            "ISIC_A": "clinic_a",
            "ISIC_B": "clinic_a",
            "ISIC_C": "clinic_b",
        }
    table = evaluation.format_table(summary)
    assert "clinic_a" in table and "clinic_b" in table
    # Records written before sources existed: no per-source section.
    legacy = str(tmp_path / "legacy")
    tiny_records.write_records(legacy, {"test": 3}, size=S, legacy=True)
    summary = evaluation.evaluate(model, legacy, SMALL, output_dir=str(tmp_path / "e2"), progress=False)
    assert "per_source" not in summary and "clinic" not in evaluation.format_table(summary)
    with open(os.path.join(tmp_path, "e2", "per_image.csv")) as f:
        assert "source" not in next(csv.reader(f))


def test_source_folders_of_records_from_several_folders(tmp_path):
    for name in ("a", "b"):
        for folder in ("images", "masks"):
            (tmp_path / name / folder).mkdir(parents=True)
    manifest = {
        "sources": {
            name: {"images_dir": str(tmp_path / name / "images"), "masks_dir": str(tmp_path / name / "masks")}
            for name in "ab"
        }
    }
    folders = evaluation.source_folders(manifest, "records")
    assert folders("b") == (str(tmp_path / "b" / "images"), str(tmp_path / "b" / "masks"))
    with pytest.raises(ValueError, match="names the source 'c', which its manifest does not list"):
        folders("c")
    with pytest.raises(ValueError, match="come from 2 input folders .*one-folder records"):
        evaluation.source_folders(manifest, "records", str(tmp_path / "a" / "images"), None)
    manifest["sources"]["b"]["masks_dir"] = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"masks folder .*gone \(recorded in records/manifest.json\)"):
        evaluation.source_folders(manifest, "records")


def test_records_must_match_the_models_colour_constancy(dataset, tmp_path):
    _, records, model = dataset
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model, run / layout.MODEL_FILE)
    (run / layout.PREPROCESSING_FILE).write_text(
        json.dumps({"colour_constancy": "shades_of_gray", "colour_constancy_p": 6})
    )
    with pytest.raises(
        ValueError,
        match=r"trained on images with colour constancy .*shades_of_gray"
        r".* were built with .*'none'",
    ):
        evaluation.evaluate(str(run), records, SMALL, progress=False)


def test_a_shard_damaged_after_the_check_is_a_records_error_naming_it(tmp_path):
    """Evaluation checks the shards first; one damaged later (or a manifest without
    checksums) fails where it is read, as a RecordsError, not a TensorFlow traceback."""
    out = str(tmp_path / "records")
    tiny_records.write_records(out, {"test": 4}, size=S, shards_per_split=1)
    records = records_lib.Records.open(out)
    with open(records.files("test")[0][0], "r+b") as f:  # bytes inside the first record
        f.seek(40)
        f.write(b"\xff" * 8)
    model = keras.models.load_model(red_channel_model(str(tmp_path / "red.keras")))
    with pytest.raises(records_lib.RecordsError, match=f"{out}: a shard is corrupt"):
        scoring.score_records(model, records, SMALL, 4, progress=False)


def test_unwritable_output_is_refused_before_scoring(dataset, tmp_path):
    source, records, model = dataset
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="cannot write to the output folder"):
        evaluation.evaluate(model, records, SMALL, output_dir=str(tmp_path / "a_file" / "out"))
    with pytest.raises(UserError, match="cannot write to the output folder"):
        evaluation.evaluate_folder(
            model,
            os.path.join(source, "images"),
            os.path.join(source, "masks"),
            FULL,
            output_dir=str(tmp_path / "a_file" / "out"),
        )


def test_command_line_scores_a_folder_and_refuses_conflicting_flags(dataset, tmp_path):
    source, records, model = dataset
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.evaluate",
            f"--model={model}",
            f"--data_source={source}",
            f"--output_dir={out}",
            "--fill_holes",
            "--largest_component",
            "--tta",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert _counts(str(out)) == EXPECTED["full"] and "Traceback" not in result.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.evaluate",
            f"--model={model}",
            f"--data_dir={records}",
            f"--images_dir={source}/images",
            f"--masks_dir={source}/masks",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "only with --full_resolution" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_round_trip_train_evaluate_predict(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "source"
    for folder in ("images", "masks"):
        (source / folder).mkdir(parents=True)
    for i in range(16):
        image, mask = tiny_records.make_pair(rng, 40)  # 40 x 40 sources, 32 x 32 records
        Image.fromarray(image).save(source / "images" / f"ISIC_{i:07d}.jpg", quality=95)
        Image.fromarray(mask * 255).save(source / "masks" / names.mask_name(f"ISIC_{i:07d}"))
    records = str(tmp_path / "records")
    build.build_records(
        [(str(source / "images"), str(source / "masks"))],
        records,
        BuildConfig(image_size=32, splits="0.5,0.25,0.25", num_workers=1),
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    trainer.train(
        records,
        model_dir,
        TrainConfig(
            epochs=1,
            batch_size=4,
            base_filters=4,
            depth=2,
            strategy="one_device",
            precision="float32",
            plots=False,
            saved_model=False,
        ),
        verbose=False,
    )
    small = evaluation.evaluate(model_dir, records, SMALL, progress=False)
    assert small["count"] == 4 and 0.0 <= small["mean"]["dice"] <= 1.0
    assert os.path.exists(os.path.join(model_dir, "eval-test", "per_image.csv"))
    # The command line, at full resolution, into the default output directory.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.evaluate",
            f"--model={model_dir}",
            f"--data_dir={records}",
            "--full_resolution",
            "--batch_size=3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with open(os.path.join(model_dir, "eval-test-full", "metrics.json")) as f:
        full = json.load(f)
    assert full["count"] == 4 and full["resolution"] == "full"
    assert f"headline: thresholded Jaccard {full['headline']['thresholded_jaccard']:.4f}" in result.stdout
    report = prediction.predict_folder(
        model_dir,
        str(source / "images"),
        str(tmp_path / "pred"),
        PredictConfig(overlays=True),
        progress=False,
    )
    assert len(report["written"]) == 16 and not report["failed"]
    mask = Image.open(report["written"][0])
    assert (mask.mode, mask.size) == ("L", (40, 40)) and set(np.unique(np.asarray(mask))) <= {0, 255}
    with open(report["confidence_csv"]) as f:
        confidences = {r["id"]: float(r["confidence"]) for r in csv.DictReader(f)}
    assert len(confidences) == 16 and all(0.0 <= c <= 1.0 for c in confidences.values())
    summary = {"confidence": {"check_below": PredictConfig().check_below}}
    test_review_page.check_page(report["report_html"], summary, confidences)
