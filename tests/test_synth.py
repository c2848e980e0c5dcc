"""isic-synth: determinism, sizes, exact masks, difficulty, and the generate() contract."""

import os

import numpy as np
import pytest
from PIL import Image

from preprocessing import build
from preprocessing import pairs as pairs_lib
from preprocessing import synth
from preprocessing.config import BuildConfig


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


@pytest.fixture(scope="module")
def six_pairs():
    return [synth.make_pair(0, index) for index in range(6)]


def test_same_seed_same_bytes_other_seed_other_pairs(six_pairs):
    image, mask = six_pairs[3]
    again = synth.make_pair(0, 3)
    assert synth.encode_pair(*again) == synth.encode_pair(image, mask)
    assert not np.array_equal(synth.make_pair(1, 3)[0][:100, :100], image[:100, :100])


def test_pairs_look_like_dermoscopy(six_pairs):
    sizes, fractions, contrasts = set(), [], []
    for image, mask in six_pairs:
        h, w = mask.shape
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert 600 <= w <= 1024 and 450 <= h <= 768
        assert set(np.unique(mask)) <= {0, 255}
        sizes.add((h, w))
        lesion = mask == 255
        fractions.append(lesion.mean())
        gray = image.mean(axis=2)
        contrasts.append(np.median(gray[~lesion]) - np.median(gray[lesion]))
    assert len(sizes) == 6  # varied image sizes
    assert all(0.01 < f < 0.8 for f in fractions) and max(fractions) > 3 * min(fractions)
    assert all(c > 8 for c in contrasts), contrasts  # lesions are darker than skin
    assert min(contrasts) < 30 < max(contrasts)  # ... some only slightly


def test_pairs_are_not_solved_by_a_threshold(six_pairs):
    # Hairs, vignetting, dark corners and low-contrast lesions: even the best global
    # threshold, chosen per image with the answer known, stays far from a perfect score.
    scores, all_lesion = [], []
    for image, mask in six_pairs:
        gray = np.asarray(Image.fromarray(image).convert("L").resize((128, 128), Image.BOX))
        truth = np.asarray(Image.fromarray(mask).resize((128, 128), Image.BOX)) >= 128
        scores.append(max(_dice(gray < t, truth) for t in range(0, 256, 4)))
        all_lesion.append(_dice(np.ones_like(truth), truth))
    assert np.mean(scores) < 0.9, scores
    assert np.mean(all_lesion) < 0.5  # the trivial answer scores poorly


def test_generate_writes_the_input_layout_once(tmp_path):
    out = str(tmp_path / "raw")
    assert synth.write_dataset(out, 2, seed=2, num_workers=1, progress=False)
    listing = pairs_lib.discover_pairs(os.path.join(out, "images"), os.path.join(out, "masks"))
    assert [p.case_id for p in listing.pairs] == ["SYNTH_0000000", "SYNTH_0000001"]
    assert listing.problems == [] and listing.ignored == []
    with open(os.path.join(out, "images", "SYNTH_0000001.jpg"), "rb") as f:
        assert f.read() == synth.encode_pair(*synth.make_pair(2, 1))[0]

    assert not [n for sub in ("images", "masks") for n in os.listdir(os.path.join(out, sub)) if ".tmp" in n]
    # Same flags: nothing is rewritten, so a build of these inputs stays valid.
    mtimes = [os.stat(p.image_path).st_mtime_ns for p in listing.pairs]
    assert not synth.write_dataset(out, 2, seed=2, num_workers=1, progress=False)
    assert [os.stat(p.image_path).st_mtime_ns for p in listing.pairs] == mtimes

    # Other flags replace the set (no stale pairs left behind).
    assert synth.write_dataset(out, 1, seed=3, num_workers=1, progress=False)
    assert sorted(os.listdir(os.path.join(out, "masks"))) == ["SYNTH_0000000_segmentation.png"]
    assert synth.write_dataset(out, 2, seed=3, num_workers=1, progress=False)

    # The builder accepts the output as it is.
    config = BuildConfig(image_size=16, num_workers=1, splits="0.5,0.5,0")
    manifest = build.build_records(
        [pairs_lib.dataset_dirs(out)], str(tmp_path / "records"), config, progress=False
    )
    assert manifest["counts"] == {"train": 1, "val": 1, "test": 0}


def test_generate_refuses_foreign_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "ISIC_0000000.jpg").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="ISIC_0000000.jpg was not written by isic-synth"):
        synth.write_dataset(str(tmp_path), 2, seed=0, num_workers=1, progress=False)
    assert (tmp_path / "images" / "ISIC_0000000.jpg").read_bytes() == b"real data"


def test_generate_output_does_not_depend_on_worker_count(tmp_path):
    synth.write_dataset(str(tmp_path / "a"), 2, seed=5, num_workers=1, progress=False)
    synth.write_dataset(str(tmp_path / "b"), 2, seed=5, num_workers=2, progress=False)
    for sub in ("images", "masks"):
        names = sorted(os.listdir(tmp_path / "a" / sub))
        assert names == sorted(os.listdir(tmp_path / "b" / sub)) and len(names) == 2
        for name in names:
            assert (tmp_path / "a" / sub / name).read_bytes() == (tmp_path / "b" / sub / name).read_bytes()
