"""The five stages of isic-bench: how each is run, and the table rows made of its results.

`RUNNERS[stage](settings, data_dir, work_dir) -> raw results (JSON-able dict)` and
`ROWS[stage](raw) -> list of rows`. A row compares our figure with its baseline measured
in the same run: {"stage", "measure", "unit", "ours", "baseline", "gain" (how many times
better ours is: ours/baseline for rates, baseline/ours for times and memory), "target",
"passed" (None when the issue sets no target), "detail"}.
"""

import os

from benchmarks import inference
from benchmarks import startup
from benchmarks import training

LOOP_TARGET_MS = 1.0  # issue 6: loop overhead under 1 ms per step
UNET_TARGET_FRACTION = 0.45  # issue 6: >= 45% of the matmul peak at 64 filters
PIPELINE_TARGET = 1000.0  # issue 6: images/s per core with augmentation
BUILD_TARGET_PER_WORKER = 2.0  # issue 6: >= 2x the naive baseline per worker (sample)
BUILD_TARGET_FULL_SIZE = 5.0  # issue 6: >= 5x on full-size images
MEMORY_FLAT = 1.15  # "flat as the dataset grows": doubling the data adds < 15% peak memory


def _row(stage, measure, unit, ours, baseline, *, lower_is_better=False, target="", passed=None,
         detail=""):
    gain = (baseline / ours if lower_is_better else ours / baseline) if ours and baseline else None
    return {"stage": stage, "measure": measure, "unit": unit, "ours": ours, "baseline": baseline,
            "gain": gain, "target": target, "passed": passed, "detail": detail}


def _subset(data_dir: str | None, num_pairs: int, work_dir: str) -> str:
    """The first `num_pairs` pairs of data_dir as symlinks (or synthetic pairs when None)."""
    from preprocessing import pairs as pairs_lib
    from preprocessing import synth
    root = os.path.join(work_dir, "subset")
    if data_dir is None:
        synth.write_dataset(root, num_pairs, seed=0, num_workers=1, progress=False)
        return root
    found = pairs_lib.discover_pairs(*pairs_lib.dataset_dirs(data_dir)).pairs[:num_pairs]
    images_dir, masks_dir = pairs_lib.dataset_dirs(root)
    os.makedirs(images_dir)
    os.makedirs(masks_dir)
    for pair in found:
        os.symlink(os.path.abspath(pair.image_path), os.path.join(images_dir, pair.image_file))
        os.symlink(os.path.abspath(pair.mask_path),
                   os.path.join(masks_dir, os.path.basename(pair.mask_path)))
    return root


def run_build(settings: dict, data_dir: str | None, work_dir: str) -> dict:
    from benchmarks import preprocess
    settings = dict(settings)
    num_pairs = settings.pop("num_pairs")
    if num_pairs:
        data_dir = _subset(data_dir, num_pairs, work_dir)
    return preprocess.run_preprocess_benchmark(data_dir, os.path.join(work_dir, "build"), **settings)


def rows_build(raw: dict) -> list[dict]:
    naive = raw["naive_pairs_per_s"]
    one, two = raw["builder_1w_speedup_per_worker"], raw["builder_2w_speedup_per_worker"]
    big = raw["full_size"]
    x1, x2 = raw["builder_1w_peak_rss_mb"], raw["doubled_1w_peak_rss_mb"]
    t1, t2 = raw["builder_2w_peak_tree_rss_mb"], raw["doubled_2w_peak_tree_rss_mb"]
    return [
        _row(1, f"build records, 1 worker ({raw['pairs']} pairs)", "pairs/s",
             raw["builder_1w_pairs_per_s"], naive, target=f">= {BUILD_TARGET_PER_WORKER:g}x per worker",
             passed=one >= BUILD_TARGET_PER_WORKER,
             detail=f"{raw.get('builder_1w_cpu_speedup', float('nan')):.2f}x per CPU-s; baseline: "
                    "full PIL decode + resize, 1 process"),
        _row(1, "build records, 2 workers", "pairs/s", raw["builder_2w_pairs_per_s"], naive,
             target=f">= {BUILD_TARGET_PER_WORKER:g}x per worker", passed=two >= BUILD_TARGET_PER_WORKER,
             detail=f"{two:.2f}x per worker, {raw.get('builder_2w_cpu_speedup', float('nan')):.2f}x "
                    "per CPU-s"),
        _row(1, f"build, full-size {big['size']}, 1 worker", "pairs/s", big["builder_1w_pairs_per_s"],
             big["naive_pairs_per_s"], target=f">= {BUILD_TARGET_FULL_SIZE:g}x",
             passed=big["builder_1w_speedup"] >= BUILD_TARGET_FULL_SIZE,
             detail=f"{big.get('builder_1w_cpu_speedup', float('nan')):.2f}x per CPU-s"),
        _row(1, "peak RSS, 2x dataset vs 1x, 1 worker", "MB", x2, x1, lower_is_better=True,
             target=f"<= {MEMORY_FLAT:g}x of 1x", passed=x2 <= MEMORY_FLAT * x1,
             detail="baseline column: the 1x dataset"),
        _row(1, "peak RSS (process tree), 2x vs 1x, 2 workers", "MB", t2, t1, lower_is_better=True,
             target=f"<= {MEMORY_FLAT:g}x of 1x", passed=t2 <= MEMORY_FLAT * t1,
             detail="baseline column: the 1x dataset"),
    ]


def run_pipeline(settings: dict, data_dir: str | None, work_dir: str) -> dict:
    del work_dir
    from benchmarks import pipeline
    return pipeline.run_pipeline_benchmark(sample_dir=data_dir, **settings)


def rows_pipeline(raw: dict) -> list[dict]:
    # Per core = images per CPU-second of the process (one pinned core, or all cores'
    # CPU time): the capacity of a core, much steadier than wall time on a shared machine.
    ours, base, every = raw["pipeline_1core"], raw["baseline_1core"], raw["pipeline_all_cores"]
    return [
        _row(2, "input pipeline + augmentation, 1 pinned core", "img/CPU-s", ours["images_per_cpu_s"],
             base["images_per_cpu_s"], target=f">= {PIPELINE_TARGET:g} img/s/core",
             passed=ours["images_per_cpu_s"] >= PIPELINE_TARGET,
             detail=f"wall {ours['images_per_s']:.0f} vs {base['images_per_s']:.1f} img/s; "
                    f"{ours['steady_images_per_cpu_s']:.0f} without the per-epoch setup; baseline: "
                    "PIL load + resize per batch, no augmentation"),
        _row(2, f"same, all {every['cores']} cores", "img/CPU-s", every["images_per_cpu_s"],
             base["images_per_cpu_s"], target=f">= {PIPELINE_TARGET:g} img/s/core",
             passed=every["images_per_cpu_s"] >= PIPELINE_TARGET,
             detail=f"wall {every['images_per_s']:.0f} img/s on {every['cores']} cores"),
    ]


def run_loop(settings: dict, data_dir: str | None, work_dir: str) -> dict:
    del data_dir, work_dir
    return training.run_loop_benchmark(**settings)


def rows_loop(raw: dict) -> list[dict]:
    ours, fit = raw["ours"], raw["fit"]
    rows = []
    for chunk, mine in ours.items():
        against = chunk if chunk in fit else "1"
        chunked = chunk != "1"
        rows.append(_row(3, f"loop overhead, {chunk} step(s) per call", "ms/step", mine["ms_per_step"],
                         fit[against]["ms_per_step"], lower_is_better=True,
                         target=f"< {LOOP_TARGET_MS:g} ms" if chunked else "",
                         passed=mine["ms_per_step"] < LOOP_TARGET_MS if chunked else None,
                         detail=f"vs model.fit steps_per_execution={against}; CPU ms/step "
                                f"{mine['cpu_ms_per_step']:.2f} vs {fit[against]['cpu_ms_per_step']:.2f}"))
    return rows


def run_unet(settings: dict, data_dir: str | None, work_dir: str) -> dict:
    del data_dir, work_dir
    return training.run_unet_benchmark(**settings)


def rows_unet(raw: dict) -> list[dict]:
    runs = raw["runs"]
    pick = {(r["base_filters"], r["loop"], r["env"]): r for r in runs}
    rows = []
    tuned = [r["peak"] for r in runs if r["env"] == "tuned" and r["peak"]]
    plain = [r["peak"] for r in runs if r["env"] == "plain" and r["peak"]]
    if plain:
        rows.append(_row(4, "float32 matmul peak (oneDNN vs TF default)", "GFLOP/s", raw["peak_gflops"],
                         max(p["gflops"] for p in plain),
                         detail=f"{tuned[0]['size']}^2 vs {plain[0]['size']}^2; the best oneDNN "
                                "probe is the peak"))
    for f in sorted({r["base_filters"] for r in runs}):
        ours, fit = pick[(f, "ours", "tuned")], pick[(f, "fit", "plain")]
        last = f == max(r["base_filters"] for r in runs)
        rows.append(_row(
            4, f"U-Net {f} filters, train, batch {ours['batch_size']}, {ours['image_size']}px", "img/s",
            ours["images_per_s"], fit["images_per_s"],
            target=f">= {UNET_TARGET_FRACTION:.0%} of peak" if last else "",
            passed=ours["fraction_of_peak"] >= UNET_TARGET_FRACTION if last else None,
            detail=f"{ours['gflops']:.1f} GFLOP/s = {ours['fraction_of_peak']:.0%} of peak "
                   f"({ours['fraction_per_cpu_s']:.0%} per CPU-s); plain model.fit "
                   f"{fit['fraction_of_peak']:.0%}"))
        same_env = pick.get((f, "fit", "tuned"))
        if same_env:
            rows.append(_row(4, f"U-Net {f} filters, ours vs model.fit, both oneDNN", "img/s",
                             ours["images_per_s"], same_env["images_per_s"],
                             detail=f"model.fit {same_env['fraction_of_peak']:.0%} of peak"))
    return rows


def run_serving(settings: dict, data_dir: str | None, work_dir: str) -> dict:
    del data_dir
    return {"inference": inference.run_inference_benchmark(**settings["inference"]),
            "startup": startup.run_startup_benchmark(work_dir, **settings["startup"])}


def rows_serving(raw: dict) -> list[dict]:
    ours, keras = raw["inference"]["ours"], raw["inference"]["keras_predict"]
    first = raw["startup"]
    return [
        _row(5, f"inference, U-Net {ours['base_filters']} filters, batch {ours['batch_size']}", "img/s",
             ours["images_per_s"], keras["images_per_s"],
             detail=f"{ours['gflops']:.1f} GFLOP/s; baseline: model.predict, TF defaults"),
        _row(5, "process start to end of first training step", "s", first["ours"]["seconds"],
             first["fit"]["seconds"], lower_is_better=True,
             detail=f"isic-train (oneDNN {'on' if first['ours']['onednn'] else 'OFF'}) vs a "
                    "plain model.fit script"),
    ]


RUNNERS = {1: run_build, 2: run_pipeline, 3: run_loop, 4: run_unet, 5: run_serving}
ROWS = {1: rows_build, 2: rows_pipeline, 3: rows_loop, 4: rows_unet, 5: rows_serving}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned Markdown table."""
    header = ["stage", "measure", "unit", "ours", "baseline", "gain", "target", "pass", "detail"]
    body = [[str(r["stage"]), r["measure"], r["unit"], _fmt(r["ours"]), _fmt(r["baseline"]),
             f"{r['gain']:.2f}x" if r["gain"] else "-", r["target"] or "-",
             {True: "PASS", False: "FAIL", None: "-"}[r["passed"]], r["detail"]] for r in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in [header] + body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
