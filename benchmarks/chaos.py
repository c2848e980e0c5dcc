"""Chaos: a short deterministic run killed at random moments, restarted each time with the
same command, must end bit-identical to an uninterrupted run (issue 20).

    python -m benchmarks.chaos --kills 20 [--workers 2] [--seed 0] [--out /tmp/chaos]

Each attempt runs the same command (`isic-train`, or `isic-launch --num_workers 2 --
isic-train ...`) on tiny records and, until `--kills` faults were dealt, is hit by one
fault chosen by a seeded random generator: SIGKILL or SIGTERM, at a random time, or while
a checkpoint is being written (its `ckpt-N_temp` folder exists), or during validation (the
"validating at step" log line). SIGKILL goes to the whole process group (a node that
died); SIGTERM to the first process (a scheduler's notice; isic-launch forwards it). Then
the command is run again until it exits 0. The final weights' sha256 must equal the
uninterrupted reference's, every SIGTERM must end in exit status 143 (or 0 when it came
too late to matter) within `stop_bound` seconds (an argument of `chaos()`, 60 by default),
and no attempt may exit 1.

Takes about 10-20 s per attempt on a 2-core CPU (most of it TensorFlow's start-up): 20
kills, one process, about 5 minutes; 2 workers about twice that. tests/test_chaos.py runs
a short version with two chosen faults.
"""

import argparse
import dataclasses
import glob
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

from preprocessing import tiny_records

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOMENTS = ("time", "save", "validation")
_DIGEST = re.compile(r"^(?:\[w0\] )?weights sha256 (\w+)$", re.M)


@dataclasses.dataclass
class Attempt:
    """One run of the command: the fault dealt (None: none) and how it ended."""

    moment: str | None
    signal: str | None
    exit_status: int
    stop_seconds: float | None  # from the signal to the exit
    log_tail: str = ""


def train_command(records: str, model_dir: str, workers: int) -> list[str]:
    """The deterministic tiny run: 2 epochs of 8 steps, checkpoints every 3 steps."""
    train = [
        f"--data_dir={records}",
        f"--model_dir={model_dir}",
        "--base_filters=2",
        "--depth=2",
        "--batch_size=4",
        "--precision=float32",
        "--summary_images=0",
        "--noplots",
        "--nosaved_model",
        "--epochs=2",
        "--checkpoint_every_steps=3",
        "--steps_per_execution=1",
        "--deterministic",
        "--verify_records=size",
        "--noaugment",
    ]
    if workers == 1:
        return [sys.executable, "-m", "launch.commands.train", *train]
    return [
        sys.executable,
        "-m",
        "launch.commands.launch",
        f"--num_workers={workers}",
        "--grace_seconds=60",
        "--",
        *train,
        "--collective_timeout=60",
    ]


def _run(command, env, model_dir, moment, signum, rng, timeout, span=20.0) -> Attempt:
    """Runs `command` once; deals the fault (`moment`, `signum`) unless `moment` is None."""
    proc = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, seen_validation = [], threading.Event()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if "validating at step" in line:
                seen_validation.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    sent = None
    if moment is not None:
        deadline = time.monotonic() + timeout
        # "time": from the set-up to well into training (a resumed run has less to do).
        fire_at = time.monotonic() + rng.uniform(0.1, 0.6) * span
        temp = os.path.join(glob.escape(model_dir), "checkpoints", "ckpt-*_temp*")
        while proc.poll() is None and time.monotonic() < deadline:
            if (
                (moment == "time" and time.monotonic() >= fire_at)
                or (moment == "save" and glob.glob(temp))
                or (moment == "validation" and seen_validation.is_set())
            ):
                if signum == signal.SIGKILL:
                    os.killpg(proc.pid, signal.SIGKILL)  # every process: a node that died
                else:
                    proc.send_signal(signum)
                sent = time.monotonic()
                break
            time.sleep(0.001)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=10)
    name = signal.Signals(signum).name if sent is not None else None
    return Attempt(
        moment if sent is not None else None,
        name,
        proc.returncode,
        time.monotonic() - sent if sent is not None else None,
        "".join(lines[-40:]),
    )


def random_faults(kills: int, seed: int) -> list[tuple[str, int]]:
    """`kills` faults (moment, signal), drawn by a generator seeded with `seed`."""
    rng = random.Random(seed)
    return [(rng.choice(MOMENTS), rng.choice((signal.SIGKILL, signal.SIGTERM))) for _ in range(kills)]


def chaos(
    records: str,
    out: str,
    faults: list[tuple[str, int]],
    workers: int = 1,
    seed: int = 0,
    timeout: float = 600.0,
    stop_bound: float = 60.0,
    env: dict | None = None,
) -> dict:
    """Runs the reference, then the same command dealt `faults` in turn (then run until it
    exits 0); returns a summary (see the module docstring). `seed` draws the "time"
    faults' moments. Raises AssertionError naming the attempt when a check fails.
    """
    rng = random.Random(seed)
    env = dict(
        os.environ if env is None else env,
        PYTHONPATH=PROJECT_ROOT,
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    start = time.monotonic()
    reference = _run(
        train_command(records, os.path.join(out, "reference"), workers),
        env,
        os.path.join(out, "reference"),
        None,
        None,
        rng,
        timeout,
    )
    span = time.monotonic() - start  # "time" faults fall within a run's length
    assert reference.exit_status == 0, reference.log_tail
    model_dir = os.path.join(out, "faulted")
    command = train_command(records, model_dir, workers)
    attempts = _until_finished(command, env, model_dir, faults, rng, timeout, span, stop_bound)
    digest = _DIGEST.findall(attempts[-1].log_tail)
    want = _DIGEST.findall(reference.log_tail)
    assert digest and digest == want, (digest, want, attempts[-1].log_tail)
    stops = [a.stop_seconds for a in attempts if a.signal == "SIGTERM" and a.exit_status == 143]
    return {
        "attempts": len(attempts),
        "faults": sum(a.moment is not None for a in attempts),
        "by_moment": {m: sum(a.moment == m for a in attempts) for m in MOMENTS},
        "sigterm_stop_seconds_max": max(stops, default=None),
        "weights_sha256": digest[0],
    }


def _until_finished(command, env, model_dir, faults, rng, timeout, span, stop_bound) -> list[Attempt]:
    """Runs `command` dealt each of `faults` in turn, then until it exits 0; checks each
    attempt (no exit status 1; a SIGTERM ends in 143 or 0 within `stop_bound` seconds)."""
    attempts = []
    pending = list(faults)
    while True:
        moment, signum = pending.pop(0) if pending else (None, None)
        attempt = _run(command, env, model_dir, moment, signum, rng, timeout, span)
        attempts.append(attempt)
        where = f"attempt {len(attempts)} ({attempt.moment}, {attempt.signal})"
        print(
            f"{where}: exit {attempt.exit_status}"
            + (f", {attempt.stop_seconds:.2f} s after the signal" if attempt.stop_seconds else ""),
            flush=True,
        )
        assert attempt.exit_status != 1, f"{where} failed:\n{attempt.log_tail}"
        if attempt.signal == "SIGTERM":
            assert attempt.exit_status in (0, 143), f"{where}:\n{attempt.log_tail}"
            assert attempt.stop_seconds < stop_bound, f"{where}: {attempt.stop_seconds:.1f} s"
        if attempt.exit_status == 0:  # finished (a fault that came too late did nothing)
            if pending:
                print(f"finished with {len(pending)} faults not dealt", flush=True)
            return attempts
        assert len(attempts) < 2 * len(faults) + 5, "too many attempts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/isic-chaos")
    args = parser.parse_args()
    records = os.path.join(args.out, "records")
    if not os.path.exists(records):
        tiny_records.write_records(records, {"train": 32, "val": 8}, size=32)
    start = time.perf_counter()
    summary = chaos(
        records,
        os.path.join(args.out, f"w{args.workers}-s{args.seed}-{time.time():.0f}"),
        random_faults(args.kills, args.seed),
        args.workers,
        args.seed,
    )
    print(summary, f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
