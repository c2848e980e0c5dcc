"""The one error rule of every isic-* command (launch/cli.run): a UserError is one line
"isic-X: error: ..." and exit 1 without a traceback; any other exception keeps its
traceback. Run as a real command in a subprocess: absl flags are process-global."""

import importlib
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# A command whose main raises what --raise names.
_COMMAND = """
from core.errors import InputError, UserError
from launch import cli

def main(args, config):
    if args.kind == "user":
        raise UserError("the input folder /x has no pairs; pass --data_dir <folder>")
    if args.kind == "input":  # a UserError that is also a ValueError
        raise InputError("model /m was trained at 64x64; pass --image_size 64")
    if args.kind == "bug":
        raise ValueError("an internal invariant broke")
    print("ran")
    return 0

cli.run(__name__, None, main, paths={"kind": "what main raises"}, uses_tensorflow=False)
"""


def _run(tmp_path, kind):
    script = tmp_path / "isic-example"
    script.write_text(_COMMAND)
    return subprocess.run(
        [sys.executable, str(script), f"--kind={kind}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
        timeout=60,
    )


@pytest.mark.parametrize(
    "kind,message",
    [
        ("user", "the input folder /x has no pairs; pass --data_dir <folder>"),
        ("input", "model /m was trained at 64x64; pass --image_size 64"),
    ],
)
def test_a_user_error_is_one_line_and_exit_1(tmp_path, kind, message):
    result = _run(tmp_path, kind)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"isic-example: error: {message}"]
    assert result.stdout == ""


def test_any_other_exception_keeps_its_traceback(tmp_path):
    result = _run(tmp_path, "bug")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: an internal invariant broke" in result.stderr
    assert "isic-example: error:" not in result.stderr


def test_a_command_that_succeeds_exits_0(tmp_path):
    result = _run(tmp_path, "none")
    assert (result.returncode, result.stdout, result.stderr) == (0, "ran\n", "")


def test_multi_worker_without_a_cluster_is_one_line_from_isic_train(tmp_path):
    # The real command: no TF_CONFIG and no SLURM step (variables of either are removed).
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("SLURM_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.train",
            f"--data_dir={tmp_path / 'records'}",
            f"--model_dir={tmp_path / 'model'}",
            "--strategy=multi_worker",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=dict(env, PYTHONPATH=PROJECT_ROOT),
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "isic-train: error: --strategy multi_worker needs a cluster: TF_CONFIG is not set and this "
        "process is not one task of a multi-task SLURM step; start the workers with isic-launch, srun "
        "or your cluster operator (TFJob), or use --strategy auto for one process"
    )


def test_every_console_script_runs_its_command_under_its_name():
    """setup.py's isic-* entry points name a `run` that exists, and `python -m` on that
    module names the command as the console script does (isic-bench lives in
    benchmarks/, above launch/)."""
    with open(os.path.join(PROJECT_ROOT, "setup.py")) as f:
        scripts = re.findall(r'"(isic-[a-z]+)=([\w.]+):(\w+)"', f.read())
    assert len(scripts) == 8 and ("isic-bench", "benchmarks.bench", "run") in scripts
    for name, module, function in scripts:
        assert callable(getattr(importlib.import_module(module), function)), (name, module)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--output_dir=/nonexistent", "--stages=9"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
        timeout=120,
    )
    assert done.returncode == 1 and "--stages got '9'" in done.stderr and "Traceback" not in done.stderr
