"""report.html: the one page a person opens to review a run (isic-evaluate, isic-predict).

One self-contained file: no network at all (no script, style, font or image from a URL;
the pictures are data: URIs, the plots inline SVG, the script and style inline), so it
opens the same from a laptop, a shared drive or a bucket. It holds:

  - the headline table (all images, and each source folder when there are several;
    isic-evaluate only) and what the confidence signal is;
  - the risk-coverage table and curve: the mean thresholded Jaccard of the most confident
    images, beside a random and an oracle ordering (isic-evaluate only);
  - a histogram of the Jaccard (isic-evaluate) or of the confidence (isic-predict);
  - every image as a thumbnail with its outlines (launch/inference/review_pictures.py),
    sortable by confidence and by Jaccard; a click (or Enter) opens it large; images
    whose confidence is below --check_below are marked "check".

Every number of the tables carries `data-key` (its path in metrics.json, "/"-separated)
and `data-value` (the exact value), so a test can compare the page with metrics.json.
The address fragment is a small hook for scripts and tests: `report.html#sort=jaccard:1`
sorts (key confidence|jaccard|id, 1 ascending, -1 descending), `&open=<ID>` opens one image.
"""

import base64
import html

import numpy as np

from core import files
from launch.inference import risk_coverage
from model import metrics

REPORT_FILE = "report.html"

# The page's style and script: template strings, longer than a function, kept as data.
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:24px}
svg text{font-size:11px}#controls{margin:.6em 0}
#grid{display:flex;flex-wrap:wrap;gap:6px}
.card{margin:0;padding:3px;background:#fff;border:2px solid #ddd;cursor:pointer;width:100px}
.card img{display:block;margin:auto}.card figcaption{font-size:11px;line-height:1.25}
.card.check{border-color:#d33}.badge{background:#d33;color:#fff;padding:0 3px;border-radius:3px}
#grid.only-check .card:not(.check){display:none}
#viewer{position:fixed;inset:0;background:rgba(0,0,0,.8);display:flex;align-items:center;
justify-content:center;flex-direction:column;color:#fff}#viewer[hidden]{display:none}
#viewer img{width:min(80vw,80vh);height:auto;image-rendering:auto;background:#000}
"""

_SCRIPT = """
const grid = document.getElementById('grid');
const viewer = document.getElementById('viewer');
function sortCards(key, dir) {
  const cards = Array.from(grid.children);
  cards.sort((a, b) => {
    const x = key === 'id' ? 0 : dir * (parseFloat(a.dataset[key]) - parseFloat(b.dataset[key]));
    return x || dir * a.dataset.id.localeCompare(b.dataset.id);
  });
  for (const card of cards) grid.appendChild(card);
  document.getElementById('sort').value = key + ':' + dir;
  document.body.dataset.sorted = key + ':' + dir;
}
function openCard(card) {
  document.getElementById('large').src = card.dataset.large;
  document.getElementById('caption').textContent = card.dataset.caption;
  viewer.hidden = false;
  document.body.dataset.open = card.dataset.id;
}
function closeViewer() { viewer.hidden = true; delete document.body.dataset.open; }
grid.addEventListener('click', e => { const c = e.target.closest('.card'); if (c) openCard(c); });
grid.addEventListener('keydown', e => {
  const c = e.target.closest('.card'); if (c && e.key === 'Enter') openCard(c); });
viewer.addEventListener('click', closeViewer);
document.addEventListener('keydown', e => { if (e.key === 'Escape') closeViewer(); });
document.getElementById('sort').addEventListener('change', e => {
  const [key, dir] = e.target.value.split(':'); sortCards(key, parseInt(dir)); });
document.getElementById('only-check').addEventListener('change', e => {
  grid.classList.toggle('only-check', e.target.checked); });
(function fromHash() {
  const args = new URLSearchParams(location.hash.slice(1));
  if (args.get('sort')) {
    const [key, dir] = args.get('sort').split(':'); sortCards(key, parseInt(dir || '1')); }
  const card = args.get('open') && grid.querySelector('[data-id="' + CSS.escape(args.get('open')) + '"]');
  if (card) openCard(card);
})();
"""


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _cell(value, key: str, percent: bool = False) -> str:
    """A table cell showing `value` (3 decimals, or a percentage), tagged with its
    metrics.json path; None (undefined, e.g. AUROC without failures) shows as a dash."""
    if value is None:
        return f'<td data-key="{html.escape(key)}" data-value="null">-</td>'
    shown = str(value) if isinstance(value, int) else f"{value:.1%}" if percent else f"{value:.3f}"
    return f'<td data-key="{html.escape(key)}" data-value="{value!r}">{shown}</td>'


def _headline(summary: dict) -> str:
    """The table of all images and of each source folder (isic-evaluate's summaries)."""
    below = f"fraction_jaccard_below_{metrics.JACCARD_THRESHOLD}"
    head = (
        "<tr><th>images</th><th>count</th><th>Dice</th><th>mean Jaccard</th>"
        f"<th>thresholded Jaccard</th><th>Jaccard &lt; {metrics.JACCARD_THRESHOLD}</th></tr>"
    )
    groups = [("all", "", summary)] + [
        (name, f"per_source/{name}/", s) for name, s in summary.get("per_source", {}).items()
    ]
    lines = [f"<table id='headline'>{head}"]
    for name, prefix, s in groups:
        lines.append(
            f"<tr><td>{html.escape(name)}</td>"
            + _cell(s["num_images"], prefix + "num_images")
            + _cell(s["mean"]["dice"], prefix + "mean/dice")
            + _cell(s["mean"]["jaccard"], prefix + "mean/jaccard")
            + _cell(s["headline"]["thresholded_jaccard"], prefix + "headline/thresholded_jaccard")
            + _cell(s[below], prefix + below, percent=True)
            + "</tr>"
        )
    return "\n".join(lines) + "</table>"


def _risk_table(block: dict) -> str:
    """The risk-coverage table of metrics.json's "confidence" block."""
    key = "confidence/auroc_jaccard_below_0.65"
    auroc = block["auroc_jaccard_below_0.65"]
    exact = "null" if auroc is None else repr(auroc)
    lines = [
        f"<p>AUROC of the confidence for Jaccard &lt; {metrics.JACCARD_THRESHOLD}: "
        f"<span data-key='{key}' data-value='{exact}'>"
        f"{'-' if auroc is None else f'{auroc:.3f}'}</span></p>",
        "<table id='risk'><tr><th>most confident</th><th>images</th>"
        + "".join(
            f"<th>{o}: thr. Jaccard</th><th>{o}: failures</th>" for o in ("confidence", "random", "oracle")
        )
        + "</tr>",
    ]
    for i, row in enumerate(block["risk_coverage"]):
        prefix = f"confidence/risk_coverage/{i}/"
        cells = "".join(
            _cell(row[o]["thresholded_jaccard"], f"{prefix}{o}/thresholded_jaccard")
            + _cell(row[o]["failure_rate"], f"{prefix}{o}/failure_rate", percent=True)
            for o in ("confidence", "random", "oracle")
        )
        lines.append(f"<tr><td>{row['coverage']:.0%}</td><td>{row['images']}</td>{cells}</tr>")
    return "\n".join(lines) + "</table>"


def _polyline(xs, ys, colour: str, width=240, height=160) -> str:
    """An SVG polyline of points in [0, 1] x [0, 1] on a `width` x `height` plot."""
    points = " ".join(f"{30 + x * width:.1f},{10 + (1 - y) * height:.1f}" for x, y in zip(xs, ys))
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>'


def _axes(x_label: str, y_label: str, y_top: float = 1, width=240, height=160) -> str:
    """The frame, the ticks (x: 0/0.5/1; y: 0, y_top / 2, y_top) and the labels of a plot."""
    ticks = "".join(
        f'<text x="{30 + t * width:.0f}" y="{height + 24}" text-anchor="middle">{t:g}</text>'
        f'<text x="26" y="{14 + (1 - t) * height:.0f}" text-anchor="end">{t * y_top:g}</text>'
        for t in (0, 0.5, 1)
    )
    return (
        f'<rect x="30" y="10" width="{width}" height="{height}" fill="#fff" stroke="#999"/>{ticks}'
        f'<text x="{30 + width / 2}" y="{height + 38}" text-anchor="middle">{x_label}</text>'
        f'<text x="4" y="8">{y_label}</text>'
    )


def _curve_svg(rows: list[dict]) -> str:
    """The risk-coverage curve: thresholded Jaccard of the kept images against the share
    kept, most confident first (blue), the oracle (grey) and random (dashed)."""
    c = risk_coverage.curve([r["confidence"] for r in rows], [r["jaccard"] for r in rows])
    mean = c["confidence"][-1]
    return (
        '<svg id="curve" width="290" height="230" role="img"><title>risk-coverage curve</title>'
        + _axes("share of images kept (most confident first)", "thresholded Jaccard of the kept")
        + _polyline(c["coverage"], c["oracle"], "#999")
        + _polyline(c["coverage"], c["confidence"], "#1f5fbf")
        + _polyline([0, 1], [mean, mean], "#d70").replace("/>", ' stroke-dasharray="4 3"/>')
        + '<text x="40" y="224" fill="#1f5fbf">confidence</text>'
        + '<text x="120" y="224" fill="#999">oracle</text>'
        + '<text x="180" y="224" fill="#d70">random (dashed)</text></svg>'
    )


def _histogram_svg(values, label: str, marker: float, bins=20, width=240, height=160) -> str:
    """A histogram of `values` in [0, 1] with a red line at `marker`."""
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0, 1))
    top = max(1, int(counts.max()))
    bars = "".join(
        f'<rect x="{30 + i * width / bins:.1f}" y="{10 + height * (1 - n / top):.1f}" '
        f'width="{width / bins - 1:.1f}" height="{height * n / top:.1f}" fill="#6b8fd6">'
        f"<title>{n}</title></rect>"
        for i, n in enumerate(counts)
    )
    x = 30 + marker * width
    return (
        f'<svg id="histogram" width="290" height="210" role="img"><title>histogram of the {label}</title>'
        + _axes(label, "images", top)
        + bars
        + f'<line x1="{x:.1f}" x2="{x:.1f}" y1="10" y2="{10 + height}" stroke="#d33"/></svg>'
    )


def _card(row: dict, check_below: float) -> str:
    """One image's figure: thumbnail, ID, scores, the "check" mark; the large view and
    the sort keys as data- attributes."""
    check = row["confidence"] < check_below
    jaccard = row.get("jaccard")
    scores = (f"J {jaccard:.3f} · " if jaccard is not None else "") + f"conf {row['confidence']:.3f}"
    caption = f"{row['id']}: {scores}" + (" · check" if check else "")
    picture = row["picture"]
    width, height = picture.thumb_size
    return (
        f'<figure class="card{" check" if check else ""}" tabindex="0" data-id="{html.escape(row["id"])}" '
        f'data-confidence="{row["confidence"]!r}" '
        f'data-jaccard="{(jaccard if jaccard is not None else -1)!r}" '
        f'data-caption="{html.escape(caption)}" data-large="{_data_uri(picture.large)}">'
        f'<img src="{_data_uri(picture.thumb)}" width="{width}" height="{height}" loading="lazy" '
        f'alt="{html.escape(row["id"])}"><figcaption>{html.escape(row["id"])}<br>{scores}'
        + (' <span class="badge">check</span>' if check else "")
        + "</figcaption></figure>"
    )


def _gallery(rows: list[dict], check_below: float, truth: bool) -> str:
    """The sort and filter controls, every image's card, and the (hidden) large view."""
    keys = [("confidence:1", "confidence, lowest first"), ("confidence:-1", "confidence, highest first")]
    if truth:
        keys += [("jaccard:1", "Jaccard, lowest first"), ("jaccard:-1", "Jaccard, highest first")]
    keys.append(("id:1", "ID"))
    options = "".join(f'<option value="{v}">{t}</option>' for v, t in keys)
    ordered = sorted(rows, key=lambda r: (r["confidence"], r["id"]))
    checked = sum(r["confidence"] < check_below for r in rows)
    return (
        f"<h2>Images ({len(rows)}; {checked} marked check: confidence &lt; {check_below:g})</h2>"
        f'<div id="controls">sort by <select id="sort">{options}</select> '
        '<label><input type="checkbox" id="only-check"> only "check"</label> '
        "· a click opens an image, Escape closes it</div>"
        '<div id="grid">' + "".join(_card(r, check_below) for r in ordered) + "</div>"
        '<div id="viewer" hidden><img id="large" alt="the image, large"><p id="caption"></p></div>'
    )


def _settings(summary: dict, truth: bool) -> str:
    """What was run: the model, the data, the inference options, the confidence signal."""
    data = summary.get("data_dir") or summary.get("images_dir") or summary.get("input_dir") or ""
    split = f", {summary['split']} split" if summary.get("split") else ""
    options = ", ".join(
        f"{k} {summary[k]}" for k in ("threshold", "tta", "fill_holes", "largest_component") if k in summary
    )
    block = summary["confidence"]
    resolution = (
        f", resolution {html.escape(str(summary['resolution']))}" if summary.get("resolution") else ""
    )
    return (
        f"<p>model <code>{html.escape(str(summary.get('model', '')))}</code><br>"
        f"data <code>{html.escape(str(data))}</code>{html.escape(split)}"
        f"{resolution}<br>"
        f"{html.escape(options)}<br>confidence: <b>{html.escape(block['signal'])}</b>, from the probability "
        "map at the model's input size (docs/evaluation.md). Outline: prediction magenta"
        + (", expert green.</p>" if truth else ".</p>")
    )


def render(summary: dict, rows: list[dict], title: str) -> str:
    """The page's HTML. `summary`: metrics.json's content (isic-evaluate: with truth) or
    isic-predict's summary (no "mean": no truth); `rows`: one dict per image with "id",
    "confidence", "picture" and, with truth, "jaccard"."""
    block = summary["confidence"]
    truth = "mean" in summary
    parts = [f"<h1>{html.escape(title)}</h1>", _settings(summary, truth)]
    if truth:
        parts += ["<h2>Summary</h2>", _headline(summary), "<h2>Confidence: risk and coverage</h2>"]
        parts += [_risk_table(block)]
        plots = _curve_svg(rows) + _histogram_svg(
            [r["jaccard"] for r in rows], "Jaccard", metrics.JACCARD_THRESHOLD
        )
    else:
        plots = _histogram_svg([r["confidence"] for r in rows], "confidence", block["check_below"])
    parts += [f'<div class="plots">{plots}</div>', _gallery(rows, block["check_below"], truth)]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(parts)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write(path: str, summary: dict, rows: list[dict], title: str) -> str:
    """Writes `render(...)` to `path` atomically; returns `path`."""
    files.write_atomic(path, render(summary, rows, title).encode("utf-8"))
    return path
