"""Stage 4 of isic-bench, the U-Net training step: how it is run (benchmarks/training.py
measures) and the table rows made of its report, as benchmarks/latency.py does for stage 6.
"""

from benchmarks import training
from benchmarks.config import BenchConfig
from benchmarks.results import Row

FIT_TARGET_GAIN = 1.0  # issue 12: a U-Net step at least as fast as model.fit's ...
NOISE_ALLOWANCE = 0.97  # ... where 3% below counts as noise on this shared machine
PROFILE_ROWS = 8  # with --profile_ops: the op types taking most time, per width


def run_stage(config: BenchConfig, data_dir: str | None, work_dir: str) -> training.UnetReport:
    """Stage 4 at --unet_filters widths."""
    del data_dir, work_dir
    if config.quick:
        return training.run_unet_benchmark(
            filters=(4,),
            batch_size=4,
            image_size=32,
            plain_filters=(4,),
            peak_size=512,
            plain_peak_size=256,
            profile_ops=config.profile_ops,
            quick=True,
            encoders=(("efficientnet_lite0", 1),),
        )
    return training.run_unet_benchmark(filters=config.unet_filter_counts, profile_ops=config.profile_ops)


def rows(raw: training.UnetReport) -> list[Row]:
    runs = [r for r in raw.runs if r.encoder == "unet"]
    pick = {(r.base_filters, r.loop, r.env): r for r in runs}
    rows = []
    tuned = [r.peak for r in runs if r.env == "tuned" and r.peak]
    plain = [r.peak for r in runs if r.env == "plain" and r.peak]
    if plain:
        rows.append(
            Row.compare(
                4,
                "float32 matmul peak (oneDNN vs TF default)",
                "GFLOP/s",
                raw.peak_gflops,
                max(p.gflops for p in plain),
                detail=f"{tuned[0].size}^2 vs {plain[0].size}^2; the best oneDNN probe is the peak",
            )
        )
    target = f">= {FIT_TARGET_GAIN:g}x ({NOISE_ALLOWANCE:g} for noise)"
    for f in sorted({r.base_filters for r in runs}):
        off, on = pick[(f, "ours", "tuned")], pick.get((f, "ours_xla", "tuned"))
        ours, fit = training.auto_ours(off, on), pick[(f, "fit", "tuned")]
        rows.append(
            Row.compare(
                4,
                f"U-Net {f} filters, ours ({training.xla_label(ours)}) vs model.fit, train batch "
                f"{ours.batch_size}, {ours.image_size}px",
                "img/s",
                ours.images_per_s,
                fit.images_per_s,
                target=target,
                passed=ours.images_per_s >= NOISE_ALLOWANCE * fit.images_per_s,
                detail=f"same process, oneDNN; {ours.fraction_of_peak:.0%} of peak vs model.fit "
                f"{fit.fraction_of_peak:.0%}; best of {ours.rounds} round(s) of "
                f"{ours.timed_steps} step(s)",
            )
        )
        rows.extend(training.xla_rows(f"U-Net {f} filters", off, on))
        plain_fit = pick.get((f, "fit", "plain"))
        if plain_fit:
            rows.append(
                Row.compare(
                    4,
                    f"U-Net {f} filters, ours vs plain model.fit (TF defaults)",
                    "img/s",
                    ours.images_per_s,
                    plain_fit.images_per_s,
                    detail=f"what isic-train's environment gives; plain model.fit "
                    f"{plain_fit.fraction_of_peak:.0%} of peak",
                )
            )
        if ours.ops and fit.ops:
            rows.extend(_op_rows(f, ours.ops, fit.ops))
    return rows + _encoder_rows(raw.runs, pick)


def _encoder_rows(runs, unets: dict) -> list[Row]:
    """A pretrained encoder's training step beside the U-Net's (isic-train --encoder)."""
    rows = []
    for encoder in sorted({r.encoder for r in runs} - {"unet"}):
        pick = {r.loop: r for r in runs if r.encoder == encoder}
        ours, fit = training.auto_ours(pick["ours"], pick.get("ours_xla")), pick["fit"]
        unet = unets.get((ours.base_filters, "ours", "tuned")) or unets.get(
            (min(f for f, _, _ in unets), "ours", "tuned")
        )
        rows.append(
            Row.compare(
                4,
                f"{encoder} + U-Net decoder {ours.base_filters}, ours ({training.xla_label(ours)}) vs "
                f"model.fit, train batch {ours.batch_size}, {ours.image_size}px",
                "img/s",
                ours.images_per_s,
                fit.images_per_s,
                detail=f"{ours.training_gflop_per_image:.2f} training GFLOP/image, "
                f"{ours.fraction_of_peak:.0%} of peak; U-Net {unet.base_filters} filters "
                f"{unet.images_per_s:.1f} img/s ({unet.training_gflop_per_image:.2f} GFLOP/image)",
            )
        )
        rows.extend(
            training.xla_rows(
                f"{encoder} + U-Net decoder {ours.base_filters}", pick["ours"], pick.get("ours_xla")
            )
        )
    return rows


def _op_rows(filters: int, ours, fit) -> list[Row]:
    """The PROFILE_ROWS op types taking most time, ours vs fit, then all traced ops."""

    def both(op):
        return ours.ms_per_step.get(op, 0.0) + fit.ms_per_step.get(op, 0.0)

    top = sorted(set(ours.ms_per_step) | set(fit.ms_per_step), key=both, reverse=True)
    rows = [
        Row.compare(
            4,
            f"  {filters} filters, op {op}",
            "ms/step",
            ours.ms_per_step.get(op),
            fit.ms_per_step.get(op),
            lower_is_better=True,
            detail=f"runs per step: {ours.count_per_step.get(op, 0):g} vs "
            f"{fit.count_per_step.get(op, 0):g} (profiler trace)",
        )
        for op in top[:PROFILE_ROWS]
    ]
    rows.append(
        Row.compare(
            4,
            f"  {filters} filters, all traced ops",
            "ms/step",
            ours.total_ms,
            fit.total_ms,
            lower_is_better=True,
            detail=f"{sum(ours.count_per_step.values()):.0f} vs "
            f"{sum(fit.count_per_step.values()):.0f} op runs per step",
        )
    )
    return rows
