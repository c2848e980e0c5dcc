"""Smoke tests of isic-bench's code paths at the smallest settings (not timed tests).

The measurements run in this process on tiny models; the child-process runner is tested
with a target that does not load TensorFlow. Figures are only checked to be positive and
consistent with each other.
"""

import json
import math
import os

import pytest

from benchmarks import child
from benchmarks import inference
from benchmarks import suite
from benchmarks import stages
from benchmarks import training


@pytest.fixture(scope="module")
def loop_result():
    return training.measure_loop(chunks=(1, 4), fit_chunks=(1,), seconds=0.05, rounds=1)


@pytest.fixture(scope="module")
def unet_runs():
    common = dict(base_filters=2, batch_size=2, image_size=16, timed_steps=2, peak_size=64,
                  peak_repeats=1, depth=1)
    return [dict(training.measure_unet(loop=loop, **common), env=env)
            for loop, env in (("ours", "tuned"), ("fit", "plain"))]


def test_loop_measures_both_loops_per_chunk(loop_result):
    assert set(loop_result["ours"]) == {"1", "4"} and set(loop_result["fit"]) == {"1"}
    for side in ("ours", "fit"):
        for chunk, m in loop_result[side].items():
            assert m["ms_per_step"] > 0 and m["steps"] % int(chunk) == 0
            assert m["steps_per_s"] == pytest.approx(1000 / m["ms_per_step"])
    rows = stages.rows_loop(loop_result)
    assert [r["passed"] is None for r in rows] == [True, False]  # target only when chunked
    assert all(r["gain"] > 0 for r in rows)


def test_unet_measurement_counts_training_flops(unet_runs):
    from model import unet
    for run in unet_runs:
        flop = unet.unet_flops_per_image(16, 2, 1) * unet.TRAINING_FLOPS_PER_FORWARD_FLOP
        assert run["images_per_s"] > 0 and run["warmup_s"] > 0 and run["peak"]["gflops"] > 0
        assert run["gflops"] == pytest.approx(run["images_per_s"] * flop / 1e9)
        assert run["images_per_s"] == pytest.approx(2 * 2 / (run["step_s"] * 2))


def test_unet_rows_use_the_best_oneDNN_probe_as_peak(unet_runs, monkeypatch):
    calls = []

    def fake_child(target, kwargs, env=None):
        calls.append((target, env))
        return [next(r for r in unet_runs if r["loop"] == c["loop"]) for c in kwargs["configs"]]

    monkeypatch.setattr(child, "run_child", fake_child)
    raw = training.run_unet_benchmark(filters=(2,), batch_size=2, image_size=16,
                                      fit_tuned_filters=(), peak_size=64)
    assert [env for _, env in calls] == [child.TUNED_ENV, child.PLAIN_ENV]
    peak = unet_runs[0]["peak"]["gflops"]  # the tuned child's probe; plain probes only reported
    assert raw["peak_gflops"] == peak
    for run in raw["runs"]:
        assert run["fraction_of_peak"] == pytest.approx(run["gflops"] / peak)
    rows = stages.rows_unet(raw)
    assert rows[0]["unit"] == "GFLOP/s" and rows[1]["passed"] is not None
    assert rows[1]["ours"] == raw["runs"][0]["images_per_s"]


@pytest.mark.parametrize("loop", ["ours", "keras"])
def test_inference_returns_every_image(loop):
    result = inference.measure_inference(base_filters=2, loop=loop, image_size=16, batch_size=3,
                                         num_batches=2, depth=1)
    assert result["images"] == 6 and result["images_per_s"] > 0 and result["gflops"] > 0


def test_child_runs_a_function_in_a_fresh_interpreter():
    env = child.run_child("benchmarks.child:child_env", {"overrides": {"ISIC_BENCH_X": "7",
                                                                       "TF_ENABLE_ONEDNN_OPTS": None}})
    assert env["ISIC_BENCH_X"] == "7" and "TF_ENABLE_ONEDNN_OPTS" not in env
    with pytest.raises(RuntimeError, match="no_such_function"):
        child.run_child("benchmarks.child:no_such_function", {})


def test_child_can_be_pinned_to_one_core():
    first = min(os.sched_getaffinity(0))
    assert child.run_child("benchmarks.machine:describe", {}, cpus={first})["cores"] == 1


def test_rows_of_the_other_stages_follow_their_reports():
    build = {"pairs": 10, "naive_pairs_per_s": 10.0, "builder_1w_pairs_per_s": 30.0,
             "builder_2w_pairs_per_s": 50.0, "builder_1w_speedup_per_worker": 3.0,
             "builder_2w_speedup_per_worker": 2.5, "builder_1w_peak_rss_mb": 100.0,
             "doubled_1w_peak_rss_mb": 101.0, "builder_2w_peak_tree_rss_mb": 300.0,
             "doubled_2w_peak_tree_rss_mb": 400.0,
             "full_size": {"size": "4000x3000", "naive_pairs_per_s": 1.0,
                           "builder_1w_pairs_per_s": 4.0, "builder_1w_speedup": 4.0}}
    rows = stages.rows_build(build)
    assert [r["passed"] for r in rows] == [True, True, False, True, False]
    assert rows[3]["gain"] == pytest.approx(100 / 101)  # memory: lower is better
    pipe = {"baseline_1core": {"images_per_s": 20.0, "images_per_cpu_s": 50.0},
            "pipeline_1core": {"images_per_s": 900.0, "images_per_cpu_s": 1200.0,
                               "steady_images_per_cpu_s": 1300.0},
            "pipeline_all_cores": {"images_per_s": 1500.0, "images_per_cpu_s": 900.0, "cores": 2}}
    assert [r["passed"] for r in stages.rows_pipeline(pipe)] == [True, False]
    serving = {"inference": {"ours": {"base_filters": 4, "batch_size": 2, "images_per_s": 4.0,
                                      "gflops": 1.0},
                             "keras_predict": {"images_per_s": 2.0}},
               "startup": {"ours": {"seconds": 10.0, "onednn": True}, "fit": {"seconds": 20.0}}}
    assert [r["gain"] for r in stages.rows_serving(serving)] == [2.0, 2.0]


def test_run_stages_writes_results_and_table(loop_result, tmp_path, monkeypatch):
    monkeypatch.setitem(stages.RUNNERS, 3, lambda settings, data_dir, work_dir: loop_result)
    results = suite.run_stages([3], str(tmp_path), {3: {}}, None, argv=["isic-bench"])
    with open(os.path.join(tmp_path, "results.json")) as f:
        written = json.load(f)
    assert written["rows"] == results["rows"] and len(written["rows"]) == 2
    assert written["machine"]["cores"] >= 1 and written["stages"]["3"]["ours"]
    table = stages.format_table(results["rows"])
    assert table.count("\n") == 3 and "loop overhead, 4 step(s) per call" in table
    assert not any(isinstance(v, float) and math.isnan(v) for v in results["rows"][0].values())
