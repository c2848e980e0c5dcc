"""report.html (launch/inference/review_page.py): its content from hand-made rows, and a
real browser (headless Chromium, skipped where it is absent) that loads it, sorts,
opens an image and takes a screenshot.

`check_page` is shared with tests/test_evaluate.py and tests/test_predict.py, which check
the pages the commands write against their metrics.json / confidence.csv.
"""

import html.parser
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from launch.inference import review_page
from launch.inference import review_pictures
from launch.inference import risk_coverage

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
)


class _Page(html.parser.HTMLParser):
    """Collects the cards' data- attributes, the tagged numbers and every src/href."""

    def __init__(self):
        super().__init__()
        self.cards, self.numbers, self.links = [], {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "card" in (attrs.get("class") or "").split():
            self.cards.append(attrs)
        if "data-key" in attrs:
            self.numbers[attrs["data-key"]] = attrs["data-value"]
        self.links += [attrs[k] for k in ("src", "href") if attrs.get(k)]


def _lookup(summary: dict, key: str):
    value = summary
    for part in key.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def check_page(path: str, summary: dict, confidences: dict, jaccards: dict | None = None) -> list[dict]:
    """Asserts that the page at `path` shows every image of `confidences` ({id: value})
    once, with its Jaccard when given, that its tagged numbers equal `summary`'s and
    that it loads nothing from elsewhere. Returns the cards' attributes."""
    text = open(path, encoding="utf-8").read()
    page = _Page()
    page.feed(text)
    assert sorted(c["data-id"] for c in page.cards) == sorted(confidences)
    for card in page.cards:
        assert float(card["data-confidence"]) == pytest.approx(confidences[card["data-id"]], abs=1e-6)
        if jaccards is not None:
            assert float(card["data-jaccard"]) == pytest.approx(jaccards[card["data-id"]], abs=1e-6)
        assert card["data-large"].startswith("data:image/jpeg;base64,")
    for key, value in page.numbers.items():
        expected = _lookup(summary, key)
        assert (
            (value == "null") if expected is None else float(value) == pytest.approx(expected, abs=1e-12)
        ), key
    assert all(link.startswith("data:image/jpeg;base64,") for link in page.links), page.links
    assert not re.search(r"https?://|(src|href)\s*=\s*[\"']?//|url\(", text)
    return page.cards


def _rows(n: int = 4) -> list[dict]:
    """n hand-made images: a disc of growing size, a truth disc a little larger."""
    rows = []
    yy, xx = np.mgrid[0:24, 0:32]
    for i in range(n):
        image = np.full((16, 16, 3), (200, 160, 140), np.uint8)
        pred = (yy - 12) ** 2 + (xx - 16) ** 2 < (3 + 2 * i) ** 2
        truth = (yy - 12) ** 2 + (xx - 16) ** 2 < (4 + 2 * i) ** 2
        jaccard = float(pred.sum() / truth.sum())
        rows.append(
            {
                "id": f"ISIC_{i}",
                "confidence": 0.2 + 0.2 * ((i * 3) % n) / n,
                "jaccard": jaccard,
                "picture": review_pictures.make(image, pred, truth),
            }
        )
    return rows


def _summary(rows: list[dict]) -> dict:
    c, j = [r["confidence"] for r in rows], [r["jaccard"] for r in rows]
    block = risk_coverage.summarize({"expected_jaccard": c}, j, "expected_jaccard", 0.3)
    mean = {"dice": 0.8, "jaccard": float(np.mean(j))}
    return {
        "num_images": len(rows),
        "count": len(rows),
        "mean": mean,
        "headline": {"thresholded_jaccard": 0.5, "dice": 0.8},
        "fraction_jaccard_below_0.65": 0.25,
        "per_source": {
            "clinic_a": {
                "num_images": 1,
                "mean": mean,
                "headline": {"thresholded_jaccard": 0.4, "dice": 0.7},
                "fraction_jaccard_below_0.65": 0.0,
            }
        },
        "split": "val",
        "resolution": "16x16",
        "model": "m.keras",
        "confidence": block,
    }


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    rows = _rows()
    summary = _summary(rows)
    path = str(tmp_path_factory.mktemp("page") / review_page.REPORT_FILE)
    review_page.write(path, summary, rows, "isic-evaluate: val split")
    return path, rows, summary


def test_the_page_holds_every_image_and_the_numbers_of_the_summary(page):
    path, rows, summary = page
    cards = check_page(
        path, summary, {r["id"]: r["confidence"] for r in rows}, {r["id"]: r["jaccard"] for r in rows}
    )
    assert [c["data-id"] for c in cards] == [r["id"] for r in sorted(rows, key=lambda r: r["confidence"])]
    checked = {c["data-id"] for c in cards if "check" in c["class"].split()}
    assert checked == {r["id"] for r in rows if r["confidence"] < 0.3}
    text = open(path, encoding="utf-8").read()
    for part in (
        "clinic_a",
        'id="curve"',
        'id="histogram"',
        'loading="lazy"',
        "oracle",
    ):
        assert part in text
    thumb = Image.open(io.BytesIO(rows[0]["picture"].thumb))
    assert thumb.size == rows[0]["picture"].thumb_size == (96, 72)  # the 24 x 32 aspect kept


def _chromium(*args, user_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={user_dir}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_loads_sorts_opens_and_screenshots_the_page(page, tmp_path):
    path, rows, _ = page
    worst = min(rows, key=lambda r: r["jaccard"])["id"]
    url = f"file://{path}#sort=jaccard:-1&open={worst}"
    dom = _chromium("--dump-dom", url, user_dir=tmp_path / "profile-dom").stdout
    assert f'data-open="{worst}"' in dom and 'data-sorted="jaccard:-1"' in dom
    order = re.findall(r'class="card[^"]*"[^>]*data-id="([^"]+)"', dom)
    assert order == [r["id"] for r in sorted(rows, key=lambda r: -r["jaccard"])]
    assert re.search(r'<div id="viewer">', dom)  # the large view is shown (no "hidden")
    shot = tmp_path / "report.png"
    result = _chromium(
        f"--screenshot={shot}", "--window-size=1000,800", url, user_dir=tmp_path / "profile-shot"
    )
    assert shot.is_file(), result.stderr[-2000:]
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[:2] == (800, 1000) and picture.std() > 10  # drawn, not blank
