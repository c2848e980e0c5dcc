"""Smoke tests of isic-bench's code paths at the smallest settings (not timed tests).

The measurements run in this process on tiny models; the child-process runner is tested
with targets that do not load TensorFlow. Figures are only checked to be positive and
consistent with each other; the rows and results.json are checked field by field.
"""

import dataclasses
import json
import math
import os
import sys
import time

import pytest

from benchmarks import build_phases
from benchmarks import child
from benchmarks import config as config_lib
from benchmarks import flops
from benchmarks import gpu
from benchmarks import inference
from benchmarks import loop
from benchmarks import machine
from benchmarks import op_profile
from benchmarks import pipeline
from benchmarks import preprocess
from benchmarks import results
from benchmarks import stages
from benchmarks import startup
from benchmarks import suite
from benchmarks import training
from benchmarks import unet_stage
from benchmarks.config import BenchConfig
from core.errors import UserError
from preprocessing import pairs as pairs_lib
from preprocessing import synth
from preprocessing import tiny_records

ROW_FIELDS = {"stage", "measure", "unit", "ours", "baseline", "gain", "target", "passed", "detail"}


@pytest.fixture(scope="module")
def loop_result():
    return loop.measure_loop(chunks=(1, 4), fit_chunks=(1, 4), seconds=0.05, rounds=1)


@pytest.fixture(scope="module")
def unet_runs():
    measure = training.UnetMeasure(
        base_filters=2,
        batch_size=2,
        image_size=16,
        timed_steps=2,
        rounds=2,
        peak_size=64,
        peak_repeats=1,
        depth=1,
        profile_ops=True,
    )
    return {run.loop: run for run in training.measure_unet(measure)}


def test_config_reads_comma_lists_and_rejects_bad_ones():
    config = BenchConfig(stages="4, 3,3", unet_filters="8,16")
    assert config.stage_numbers == (3, 4) and config.unet_filter_counts == (8, 16)
    assert BenchConfig().stage_numbers == config_lib.STAGES == tuple(stages.STAGES)
    assert BenchConfig(stages=" gpu").gpu_check and BenchConfig(stages="gpu").stage_numbers == ()
    for bad in (
        {"stages": ""},
        {"stages": "7"},
        {"stages": "1,x"},
        {"unet_filters": "0"},
        {"inference_filters": 0},
        {"stages": "gpu,3"},
    ):
        with pytest.raises(UserError):
            BenchConfig(**bad)


def test_loop_measures_both_loops_per_chunk(loop_result):
    assert set(loop_result.ours) == {1, 4} and set(loop_result.fit) == {1, 4}
    for side in (loop_result.ours, loop_result.fit):
        for chunk, timing in side.items():
            assert timing.ms_per_step > 0 and timing.steps % chunk == 0
            assert timing.steps_per_s == pytest.approx(1000 / timing.ms_per_step)
    rows = stages.rows_loop(loop_result)
    assert [r.passed is None for r in rows] == [True, False]  # target only when chunked
    assert all(r.gain > 0 for r in rows)
    assert rows[1].target == "< 1 ms, >= 0.9x of fit"  # like for like: the 10% target


def test_loop_rows_pass_only_within_ten_percent_of_fit():
    def report(ours_ms, fit_ms):
        timing = lambda ms: loop.LoopTiming(
            ms_per_step=ms, steps_per_s=1e3 / ms, steps=64, cpu_ms_per_step=ms
        )
        return loop.LoopReport(
            ours={64: timing(ours_ms)},
            fit={1: timing(2.0), 64: timing(fit_ms)},
            rounds=1,
            seconds=1.0,
            image_size=8,
            batch_size=8,
            onednn=True,
        )

    assert stages.rows_loop(report(0.50, 0.46))[0].passed  # 0.92x
    assert not stages.rows_loop(report(0.50, 0.44))[0].passed  # 0.88x
    assert not stages.rows_loop(report(1.20, 1.20))[0].passed  # over 1 ms


def test_unet_measurement_counts_training_flops_and_profiles_ops(unet_runs):
    from model import unet

    flop = unet.unet_flops_per_image(16, 2, 1) * unet.TRAINING_FLOPS_PER_FORWARD_FLOP
    for run in unet_runs.values():
        assert run.images_per_s > 0 and run.warmup_s > 0 and run.peak.gflops > 0
        assert run.gflops == pytest.approx(run.images_per_s * flop / 1e9)
        assert run.images_per_s == pytest.approx(2 * 2 / (run.step_s * 2))
        assert run.rounds == 2 and run.ops.steps == 2
        assert run.ops.total_ms > 0 and min(run.ops.count_per_step.values()) > 0
        if run.loop == "ours_xla":  # one compiled cluster per step, not TensorFlow's ops
            assert not {"Conv2DBackpropFilter", "Conv2DBackpropInput"} & set(run.ops.ms_per_step), run.ops
            continue
        # The profiler saw the U-Net's convolutions and their gradients, in both loops.
        assert {"Conv2DBackpropFilter", "Conv2DBackpropInput"} <= {
            op.replace("_MklNative", "") for op in run.ops.ms_per_step
        }
    assert [r.loop for r in unet_runs.values()] == ["ours", "ours_xla", "fit"]
    assert len({r.xla_auto for r in unet_runs.values()}) == 1  # this machine's auto, once


def test_unet_cases_compare_ours_and_fit_in_one_child_and_fit_plain():
    cases = training.unet_cases((2, 32, 64), 2, 16, plain_filters=(2,), peak_size=64, plain_peak_size=32)
    assert [(c["base_filters"], c["loops"]) for c in cases["tuned"]] == [
        (2, ("ours", "ours_xla", "fit")),
        (32, ("ours", "ours_xla", "fit")),
        (64, ("ours", "ours_xla", "fit")),
    ]
    assert training.UnetMeasure(**cases["tuned"][0]).train_config().lr_schedule == "cosine"  # RECIPE
    with pytest.raises(ValueError, match="loops"):
        training.UnetMeasure(base_filters=2, loops=["theirs"])
    assert [(c["timed_steps"], c["rounds"]) for c in cases["tuned"]] == [(3, 4), (2, 3), (1, 2)]
    assert [(c["base_filters"], c["loops"], c["peak_size"]) for c in cases["plain"]] == [(2, ("fit",), 32)]


def test_unet_rows_compare_with_fit_in_the_same_process(unet_runs):
    plain_fit = dataclasses.replace(unet_runs["fit"], ops=None)
    tuned = [unet_runs["ours"], unet_runs["ours_xla"], unet_runs["fit"]]
    report = training.unet_report({"tuned": tuned, "plain": [plain_fit]}, peak_size=64)
    peak = unet_runs["ours"].peak.gflops  # the tuned child's probe; plain probes only reported
    assert report.peak_gflops == peak
    assert [r.env for r in report.runs] == ["tuned", "tuned", "tuned", "plain"]
    for run in report.runs:
        assert run.fraction_of_peak == pytest.approx(run.gflops / peak)
    off, on, fit = report.runs[:3]
    for auto in (False, True):  # the target row times the XLA setting auto picks
        runs = [dataclasses.replace(r, xla_auto=auto) for r in report.runs]
        rows = unet_stage.rows(dataclasses.replace(report, runs=tuple(runs)))
        versus, xla_row = rows[1], rows[2]
        picked = on if auto else off
        assert f"ours (XLA {'on' if auto else 'off'}, auto's pick) vs model.fit" in versus.measure
        assert (versus.ours, versus.baseline) == (picked.images_per_s, fit.images_per_s)
        assert versus.target.startswith(">= 1x")
        assert versus.passed == (versus.ours >= 0.97 * versus.baseline)
        assert xla_row.measure.endswith("ours XLA on vs off") and xla_row.passed is None
        assert (xla_row.ours, xla_row.baseline) == (on.images_per_s, off.images_per_s)
        assert f"auto picks {'on' if auto else 'off'}" in xla_row.detail
    assert "plain model.fit" in rows[3].measure and rows[3].passed is None
    ops = [r for r in rows if ", op " in r.measure]
    assert 0 < len(ops) <= unet_stage.PROFILE_ROWS and all(r.unit == "ms/step" for r in ops)
    assert "all traced ops" in rows[-1].measure


def test_op_times_sum_compute_thread_events_per_op_type():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {
        1: "a/conv:_MklNativeConv2D",
        2: "b/conv:_MklNativeConv2D",
        3: "x/mul:Mul",
        4: "ExecutorState::Process",
    }
    for i, name in names.items():
        plane.event_metadata[i].id, plane.event_metadata[i].name = i, name
    for line_name, events in (
        ("tf_Compute/1", [(1, 3e9), (3, 1e9), (4, 9e9)]),
        ("tf_Compute/2", [(2, 1e9)]),
        ("python", [(1, 5e9)]),
    ):
        line = plane.lines.add(name=line_name)
        for metadata_id, picoseconds in events:
            line.events.add(metadata_id=metadata_id, duration_ps=int(picoseconds))
    times = op_profile.op_times(space.SerializeToString(), steps=2)
    assert times.ms_per_step == {"_MklNativeConv2D": 2.0, "Mul": 0.5}  # python line, executor out
    assert times.count_per_step == {"_MklNativeConv2D": 1.0, "Mul": 0.5}
    assert times.total_ms == 2.5


@pytest.mark.parametrize("loop", ["ours", "keras"])
def test_inference_returns_every_image(loop):
    result = inference.measure_inference(
        base_filters=2, loop=loop, image_size=16, batch_size=3, num_batches=2, depth=1
    )
    assert result.images == 6 and result.images_per_s > 0 and result.gflops > 0


def test_child_runs_a_function_in_a_fresh_interpreter():
    run = child.run_child(
        "benchmarks.child:child_env",
        {"overrides": {"ISIC_BENCH_X": "7", "TF_ENABLE_ONEDNN_OPTS": None}},
        watch_tree=True,
    )
    assert run.value["ISIC_BENCH_X"] == "7" and "TF_ENABLE_ONEDNN_OPTS" not in run.value
    assert run.max_rss_mb > 0 and run.tree_rss_mb > 0 and run.started_at <= time.time()
    with pytest.raises(RuntimeError, match="no_such_function"):
        child.run_child("benchmarks.child:no_such_function", {})


def test_tree_memory_keeps_a_sustained_peak():
    # 300 MB held for a second: far longer than two samples, so it counts (the rule that
    # drops fork-before-exec windows must not drop real peaks).
    start = time.monotonic()
    run = child.run_child(
        "benchmarks.startup:run_module",
        {
            "module": "timeit",
            "argv": ["-n", "1", "-r", "1", "x = b'x' * (300 << 20); import time; time.sleep(60)"],
        },
        watch_tree=True,
        stop_when=lambda: time.monotonic() - start > 3,
    )
    assert run.tree_rss_mb > 300 and run.max_rss_mb > 300


def test_child_is_pinned_and_its_dataclass_rebuilt():
    first = min(os.sched_getaffinity(0))
    described = child.run_child("benchmarks.machine:describe", {}, machine.Machine, cpus={first}).value
    assert isinstance(described, machine.Machine) and described.cores == 1
    assert described.cpu_flags == machine.describe().cpu_flags


def test_child_is_stopped_when_asked():
    start = time.monotonic()
    run = child.run_child(
        "benchmarks.startup:run_module",
        {"module": "timeit", "argv": ["-n", "1", "import time; time.sleep(60)"]},
        stop_when=lambda: time.monotonic() - start > 0.5,
    )
    assert run.value is None and time.monotonic() - start < 30


def test_machine_records_cpu_model_and_vector_extensions():
    described = machine.describe()
    assert set(described.cpu_flags) <= set(machine.KERNEL_FLAGS)
    assert described.avx512 == ("avx512f" in described.cpu_flags)
    assert described.amx == bool({"amx_tile", "amx_bf16"} & set(described.cpu_flags))
    assert described.cpu in described.summary() and "AVX-512" in described.summary()


def _numbers(cls, **given):
    """An instance of a measurement dataclass: the given fields, 1.0 (or 1) for the others."""
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{name: given.get(name, 1 if hints[name] is int else 1.0) for name in hints})


def test_rows_of_the_other_stages_follow_their_reports():
    build = preprocess.BuildReport(
        data_dir="d",
        pairs=10,
        image_size=8,
        cpus=2,
        naive_pairs_per_s=10.0,
        naive_pairs_per_cpu_s=12.0,
        one_worker=_numbers(
            preprocess.Builder, workers=1, pairs_per_s=30.0, speedup_per_worker=3.0, peak_rss_mb=100.0
        ),
        two_workers=_numbers(
            preprocess.Builder, workers=2, pairs_per_s=50.0, speedup_per_worker=2.5, peak_tree_rss_mb=300.0
        ),
        doubled_one_worker=_numbers(preprocess.Doubled, peak_rss_mb=101.0),
        doubled_two_workers=_numbers(preprocess.Doubled, peak_tree_rss_mb=400.0),
        full_size=preprocess.FullSize(
            pairs=1,
            size="4000x3000",
            naive_pairs_per_s=1.0,
            pairs_per_s=4.0,
            speedup=4.0,
            cpu_speedup=4.0,
            peak_rss_mb=1.0,
        ),
        phases=build_phases.Phases(
            pairs=10, start_up_s=0.5, jpeg_ms=2.0, png_ms=1.0, rest_ms=0.5, encode_ms=0.5, naive_ms=8.0
        ),
        load_average_before=0.0,
        load_average_after=0.0,
    )
    rows = stages.rows_build(build)
    assert [r.passed for r in rows] == [True, True, False, None, True, False]
    assert rows[3].ours == 4.0 and rows[3].gain == 2.0  # CPU ms per pair: lower is better
    assert "PNG decode 1" in rows[3].detail and "start-up 0.50 s" in rows[3].detail
    assert rows[4].gain == pytest.approx(100 / 101)  # memory: lower is better
    pipe = pipeline.PipelineReport(
        pipeline_1core=_numbers(
            pipeline.Throughput, images_per_s=900.0, images_per_cpu_s=1200.0, steady_images_per_cpu_s=1300.0
        ),
        pipeline_1core_no_augment=_numbers(pipeline.Throughput),
        pipeline_all_cores=_numbers(pipeline.Throughput, images_per_s=1500.0, images_per_cpu_s=900.0),
        baseline_1core=_numbers(pipeline.Throughput, images_per_s=20.0, images_per_cpu_s=50.0),
        cores=2,
        speedup_per_core=45.0,
        speedup_per_cpu_s=24.0,
        batch_size=2,
        image_size=8,
        records=4,
        epochs=1,
        baseline_source="synthetic",
        baseline_pairs=4,
    )
    assert [r.passed for r in stages.rows_pipeline(pipe)] == [True, False]
    serving = stages.ServingReport(
        inference=inference.InferenceReport(
            ours=_numbers(
                inference.InferenceRun,
                loop="ours",
                base_filters=4,
                batch_size=2,
                images_per_s=4.0,
                onednn=True,
            ),
            keras_predict=_numbers(inference.InferenceRun, loop="keras", images_per_s=2.0, onednn=False),
            speedup=2.0,
            ours_xla=_numbers(inference.InferenceRun, loop="ours_xla", images_per_s=3.0, onednn=True),
            xla_speedup=0.75,
        ),
        startup=startup.StartupReport(
            ours=startup.FirstStep(10.0, True),
            fit=startup.FirstStep(20.0),
            speedup=2.0,
            base_filters=4,
            batch_size=2,
            image_size=8,
            records=4,
        ),
    )
    assert [r.gain for r in stages.rows_serving(serving)] == [2.0, 0.75, 2.0]


def test_reports_survive_json(unet_runs, loop_result):
    report = training.unet_report({"tuned": [unet_runs["ours"], unet_runs["fit"]]}, 64)
    for value in (report, loop_result):
        assert results.from_json(type(value), json.loads(json.dumps(results.to_json(value)))) == value


def test_run_stages_writes_results_and_table(loop_result, tmp_path):
    only_loop = {3: stages.Stage("loop", lambda config, data_dir, work_dir: loop_result, stages.rows_loop)}
    config = BenchConfig(stages="3", quick=True)
    report = suite.run_stages(config, str(tmp_path), None, argv=["isic-bench"], stages=only_loop)
    with open(os.path.join(tmp_path, results.RESULTS_FILE)) as f:
        written = json.load(f)
    assert len(report.rows) == 2 and all(isinstance(r, results.Row) for r in report.rows)
    assert [set(r) for r in written["rows"]] == [ROW_FIELDS] * 2
    assert [results.from_json(results.Row, r) for r in written["rows"]] == report.rows
    assert results.from_json(loop.LoopReport, written["stages"]["3"]) == loop_result
    assert written["config"] == dataclasses.asdict(config)
    assert written["machine"]["cores"] >= 1 and "avx512" in written["machine"]
    assert written["machine"]["cpu"] == machine.cpu_name()
    table = results.format_table(report.rows)
    assert table.count("\n") == 3 and "loop overhead, 4 step(s) per call" in table
    assert not any(
        isinstance(v, float) and math.isnan(v) for v in dataclasses.asdict(report.rows[0]).values()
    )


def test_stage_helpers_build_read_and_fit_tiny_records(tmp_path):
    records = startup.write_records(str(tmp_path / "startup"), num_pairs=8, image_size=32)
    raw = str(tmp_path / "startup" / "raw")
    built = preprocess.time_build(
        os.path.join(raw, "images"),
        os.path.join(raw, "masks"),
        str(tmp_path / "built"),
        image_size=32,
        num_workers=1,
    )
    assert built.records == 8 and built.seconds > 0 and built.max_rss_mb is None
    before = time.time()
    assert startup.fit_first_step(records, base_filters=2, batch_size=4, image_size=32) > before
    synthetic = str(tmp_path / "synthetic")
    tiny_records.write_records(synthetic, {"train": 8}, size=16)
    throughput = pipeline.measure_pipeline(synthetic, batch_size=4, epochs=1, augment=True, single_core=False)
    assert throughput.images == 8 and throughput.steady_images_per_cpu_s > 0


def test_quick_loop_stage_runs_in_a_child(tmp_path):
    report = stages.STAGES[3].run(BenchConfig(quick=True), None, str(tmp_path))
    assert isinstance(report, loop.LoopReport) and report.onednn  # the tuned environment
    assert set(report.ours) == {1, 16, 64} and set(report.fit) == {1, 64}
    assert len(stages.STAGES[3].rows(report)) == 3


def _gpu_run(images_per_s, devices=1, finite=True, digest="a", **changes):
    run = gpu.GpuRun(
        devices=devices,
        processes=1,
        precision="mixed_float16",
        all_reduce="NCCL" if devices > 1 else "-",
        images_per_s=images_per_s,
        timed_steps=100,
        loss_scale_skips=2,
        peak_memory_mb=5000.0,
        finite=finite,
        weights_sha256=digest,
        loss_scales=(16384.0,) * devices,
    )
    return dataclasses.replace(run, **changes)


def test_gpu_check_fails_on_non_finite_weights_scaling_below_the_floor_or_split_workers():
    one = _gpu_run(100.0)
    good = gpu.GpuCheckReport(
        ["GPU:0", "GPU:1", "GPU:2", "GPU:3"],
        one,
        _gpu_run(330.0, 4),
        [_gpu_run(300.0, 2), _gpu_run(300.0, 2)],
    )
    assert good.scaling_efficiency == pytest.approx(0.825) and gpu.judge(good) == []
    assert [r.passed for r in gpu.rows(good)] == [None, True, True]
    slow = dataclasses.replace(good, all=_gpu_run(270.0, 4))  # 0.675 < 0.7
    assert [p.split(" on")[0] for p in gpu.judge(slow)] == ["scaling efficiency 0.68"]
    assert gpu.judge(slow, floor=0.6) == [] and gpu.rows(slow)[1].passed is False
    broken = dataclasses.replace(
        good,
        one=_gpu_run(100.0, finite=False),
        two_processes=[_gpu_run(300.0, 2), _gpu_run(300.0, 2, digest="b")],
    )
    problems = gpu.judge(broken)
    assert len(problems) == 2 and "1 GPU: non-finite weights" in problems[0]
    assert "different weights" in problems[1]
    # One GPU: nothing to scale, the run itself is judged.
    alone = gpu.GpuCheckReport(["GPU:0"], one, None, None)
    assert alone.scaling_efficiency is None and gpu.judge(alone) == []
    # The one-GPU run again with the other XLA setting: a row of its own, judged too.
    xla = dataclasses.replace(good, one=dataclasses.replace(one, xla=True), one_other_xla=_gpu_run(80.0))
    rows = gpu.rows(xla)
    assert [r.measure for r in rows][2] == "1 GPU, XLA on vs off" and len(rows) == 4
    assert (rows[2].ours, rows[2].baseline, rows[2].passed) == (100.0, 80.0, None)
    assert "XLA on" in rows[2].detail
    bad_other = dataclasses.replace(xla, one_other_xla=_gpu_run(80.0, finite=False))
    assert "1 GPU, other XLA setting: non-finite weights" in gpu.judge(bad_other)[0]


def test_gpu_check_finds_workers_and_replicas_that_disagree_the_wrong_all_reduce_and_hangs():
    good = gpu.GpuCheckReport(
        ["GPU:0", "GPU:1", "GPU:2", "GPU:3"],
        _gpu_run(100.0),
        _gpu_run(330.0, 4),
        [_gpu_run(300.0, 2), _gpu_run(300.0, 2)],
    )
    assert good.two_process_efficiency == pytest.approx(300 / 330) and gpu.judge(good) == []
    skips = [_gpu_run(300.0, 2), _gpu_run(300.0, 2, loss_scale_skips=3, loss_scales=(8192.0,) * 2)]
    assert gpu.judge(dataclasses.replace(good, two_processes=skips)) == [
        "2 processes: the workers ended with different loss-scale skips (worker 0: 2, worker 1: 3)",
        "2 processes: the workers ended with different loss scales (worker 0: (16384.0, 16384.0), "
        "worker 1: (8192.0, 8192.0))",
    ]
    replicas = dataclasses.replace(
        good, all=_gpu_run(330.0, 4, loss_scales=(16384.0, 16384.0, 8192.0, 16384.0))
    )
    assert gpu.judge(replicas) == [
        "all GPUs: the replicas' loss scales differ: [16384.0, 16384.0, 8192.0, 16384.0]"
    ]
    ring = dataclasses.replace(good, all=_gpu_run(330.0, 4, all_reduce="RING"))
    assert gpu.judge(ring) == ["all GPUs: NCCL expected between GPUs, TensorFlow ran RING"]
    slow = dataclasses.replace(good, two_processes=[_gpu_run(200.0, 2)] * 2)  # 200 / 330 < 0.7
    assert gpu.judge(slow)[0].startswith("2 processes reach 0.61 of one process's images/s")
    assert gpu.rows(slow)[-1].passed is False
    hung = dataclasses.replace(good, all=None, failed=("all GPUs: failed (RuntimeError): ...",))
    assert gpu.judge(hung) == ["all GPUs: failed (RuntimeError): ..."]


# A stand-in for the 2-process setup's workers: worker 1 hangs in its warm-up (its stall
# watchdog ends it after 1 s); worker 0 would wait forever for it.
HANGS_IN_WARM_UP = """
import json, os, time
from core import watchdog
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
with watchdog.Watchdog(1.0 if index else 600.0, name=f"gpu-check worker {index}", option="its bound") as dog:
    dog.progress("warm-up", doing="10 steps: tracing, compiling")
    time.sleep(600)
"""


def test_a_hanging_worker_fails_the_check_naming_the_phase():
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        gpu._two_processes([], {}, command=[sys.executable, "-c", HANGS_IN_WARM_UP])
    assert time.monotonic() - start < 60
    assert str(failure.value).startswith(
        "2 processes: failed (142): [w1] gpu-check worker 1 stalled: no progress for 1 s (its bound) in "
        "warm-up: 10 steps: tracing, compiling."
    ), str(failure.value)


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    if gpu.list_gpus():
        pytest.skip("this machine has a GPU: the check would run for real")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # nvidia-smi is not asked either
    assert gpu.main(str(tmp_path)) == 0
    assert "TensorFlow sees no GPU" in capsys.readouterr().out and not os.listdir(tmp_path)


def test_gpu_check_measures_and_judges_on_a_cpu(tmp_path, capsys):
    # The measuring path (the trainer's steps, precision auto, the weights check, the
    # report file) on one CPU device, tiny; GPU figures (memory, scaling) stay empty.
    code = gpu.main(
        str(tmp_path),
        device_type="CPU",
        base_filters=2,
        image_size=16,
        per_device_batch=2,
        warmup_steps=1,
        timed_steps=2,
    )
    assert code == 0, capsys.readouterr().out
    with open(tmp_path / gpu.GPU_CHECK_FILE) as f:
        saved = json.load(f)
    one = saved["report"]["one"]
    from launch.training import distribute

    auto = distribute.choose_precision([], distribute.this_cpu_flags())[0]  # bf16 on bf16 CPUs
    assert one["finite"] and one["precision"] == auto and one["timed_steps"] == 2
    assert one["images_per_s"] > 0 and one["peak_memory_mb"] is None and saved["problems"] == []
    assert saved["report"]["one_other_xla"] is None  # XLA on/off is a GPU row (CPU: stage 4)
    float16 = saved["report"]["one_float16"]  # the loss-scaled step, one scale per replica
    assert float16["precision"] == "mixed_float16" and len(float16["loss_scales"]) == 1


def test_stage_4_measures_the_pretrained_encoder_beside_the_unets(unet_runs):
    cases = training.unet_cases(
        (2,),
        2,
        32,
        plain_filters=(),
        peak_size=64,
        plain_peak_size=32,
        encoders=(("efficientnet_lite0", 16),),
    )
    assert [(c.get("encoder", "unet"), c["base_filters"], c["loops"]) for c in cases["tuned"]] == [
        ("unet", 2, ("ours", "ours_xla", "fit")),
        ("efficientnet_lite0", 16, ("ours", "ours_xla", "fit")),
    ]
    lite = [
        dataclasses.replace(
            unet_runs[loop],
            encoder="efficientnet_lite0",
            ops=None,
            images_per_s=unet_runs[loop].images_per_s / 2,
        )
        for loop in ("ours", "ours_xla", "fit")
    ]
    report = training.unet_report({"tuned": [unet_runs["ours"], unet_runs["fit"], *lite]}, peak_size=64)
    rows = unet_stage.rows(report)
    encoder_row, xla_row = rows[-2:]
    assert encoder_row.measure.startswith("efficientnet_lite0 + U-Net decoder")
    auto = lite[1] if lite[0].xla_auto else lite[0]
    assert encoder_row.ours == auto.images_per_s and encoder_row.baseline == lite[2].images_per_s
    assert xla_row.measure == "efficientnet_lite0 + U-Net decoder 2, ours XLA on vs off"
    assert (xla_row.ours, xla_row.baseline) == (lite[1].images_per_s, lite[0].images_per_s)
    assert not any("efficientnet" in r.measure for r in rows[:-2])  # U-Net rows unchanged


def test_layer_flops_equal_the_unets_analytic_count():
    from model import unet

    model = unet.build_unet(32, 2, 2, bn_momentum=0.9)
    assert flops.layer_flops_per_image(model) == unet.unet_flops_per_image(32, 2, 2)


def test_build_phases_time_each_phase_of_the_builder(tmp_path):
    """Stage 1's breakdown on 3 synthetic pairs: every phase measured, in the builder's order."""
    synth.write_dataset(str(tmp_path), 3, seed=0, progress=False)
    pairs = pairs_lib.discover_pairs(*pairs_lib.dataset_dirs(str(tmp_path))).pairs
    phases = build_phases.measure_phases(pairs, 32, repeats=1)
    assert phases.pairs == 3 and phases.start_up_s > 0
    assert min(phases.jpeg_ms, phases.png_ms, phases.encode_ms, phases.naive_ms) > 0
    assert phases.rest_ms >= 0 and phases.builder_ms > phases.jpeg_ms + phases.png_ms
