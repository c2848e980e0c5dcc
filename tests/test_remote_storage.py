"""Data and runs on a non-local filesystem (issue 21), without network.

TensorFlow's `ram://` filesystem stands in for gs://: it goes through tf.io.gfile like any
object store, and it is process-local, so the whole chain (build -> train -> resume ->
evaluate -> predict -> export) runs in this process through the public functions. The
lease lock (core/leases.py) is tested on ram:// and on a local folder whose
flock fails; an AST scan keeps run-directory files going through core/files.py.
"""

import ast
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

from core import files
from core import leases
from core import locks
from core.errors import UserError
from launch import cli
from launch.export import exporter
from launch.export.config import ExportConfig
from launch.inference import evaluation
from launch.inference import models
from launch.inference import prediction
from launch.inference.config import EvaluateConfig
from launch.inference.config import PredictConfig
from launch.training import checkpoints
from launch.training import trainer
from launch.training.config import TrainConfig
from model import unet
from pipeline import records as records_lib
from tests import build_helpers

RAW = dict(tta=False, fill_holes=False, largest_component=False)
TINY = TrainConfig(
    batch_size=4,
    base_filters=2,
    depth=2,
    strategy="one_device",
    precision="float32",
    summary_images=0,
    checkpoint_every_steps=2,
    epochs=1,
)


def _ram(name: str) -> str:
    """A fresh ram:// folder (the filesystem lives as long as the process)."""
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def _tree(root: str) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root` (local or remote)."""
    found = {}
    for folder, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[
                os.path.relpath(path, root) if files.is_local(root) else path[len(root.rstrip("/")) + 1 :]
            ] = files.read_bytes(path)
    return found


def test_every_command_on_ram_filesystem(tmp_path):
    images_dir, _ = build_helpers.random_dataset(str(tmp_path / "raw"), 16, h=30, w=40)
    root = _ram("run")
    data_dir, model_dir = f"{root}/records", f"{root}/runs/x"

    # Build: the same bytes as a local build of the same inputs; a re-run finds it built.
    local = str(tmp_path / "records")
    built = build_helpers.build_dir(str(tmp_path / "raw"), data_dir, image_size=32)
    assert build_helpers.build_dir(str(tmp_path / "raw"), local, image_size=32) == built
    local_files = _tree(local)
    assert local_files.pop(".isic-preprocess.lock") == b""  # flock's file stays, a lease goes
    assert _tree(data_dir) == local_files
    assert build_helpers.build_dir(str(tmp_path / "raw"), data_dir, image_size=32) == built

    # Train, then resume in the same model directory for a second epoch.
    first = trainer.train(data_dir, model_dir, TINY, verbose=False)
    second = trainer.train(data_dir, model_dir, dataclasses.replace(TINY, epochs=2), verbose=False)
    assert second["step"] == 2 * first["step"] and second["epoch"] == 2
    written = set(_tree(model_dir))
    for name in (
        "config.json",
        "preprocessing.json",
        "history.csv",
        "loss.png",
        "ISIC-UNet.keras",
        "best/ISIC-UNet.keras",
        "saved_model/saved_model.pb",
        "checkpoints/run.json",
        "checkpoints/checkpoint",
    ):
        assert name in written, (name, sorted(written))
    assert any(n.startswith("logs/train/events.out.tfevents") for n in written)
    assert trainer.LOCK_FILE not in written  # the lease is released at the end
    assert not any(".tmp" in n for n in written)
    history = files.read_bytes(f"{model_dir}/history.csv").decode().splitlines()
    assert [row.split(",")[0] for row in history] == ["epoch", "1", "2"]

    # --warm_start from the remote .keras file and from the remote model directory.
    final = models.load_model(model_dir)[0].get_weights()
    for source in (f"{model_dir}/ISIC-UNet.keras", model_dir):
        fresh = unet.build_unet(32, TINY.base_filters, TINY.depth, bn_momentum=0.9)
        checkpoints.warm_start(fresh, source)
        assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), final))

    # Evaluate on the remote records, into the model directory's default output folder.
    summary = evaluation.evaluate(model_dir, data_dir, EvaluateConfig(split="val", **RAW), progress=False)
    metrics = json.loads(files.read_bytes(f"{model_dir}/eval-val/metrics.json"))
    assert metrics["count"] == summary["count"] > 0 and metrics["data_dir"] == data_dir
    assert files.isfile(f"{model_dir}/eval-val/per_image.csv")

    # Predict: images read from and masks written to remote folders.
    inputs = f"{root}/inputs"
    for name in sorted(os.listdir(images_dir))[:3]:
        tf.io.gfile.copy(os.path.join(images_dir, name), f"{inputs}/{name}")
    report = prediction.predict_folder(
        model_dir, inputs, f"{root}/masks", PredictConfig(overlays=True, **RAW), progress=False
    )
    assert len(report["written"]) == 3 and not report["failed"]
    assert all(files.isfile(p) for p in report["written"])
    assert len(files.listdir(f"{root}/masks/{prediction.OVERLAY_DIR}")) == 3

    # Export: the checked SavedModel lands whole, export.json (its marker) included.
    exporter.export_model(
        model_dir, f"{root}/export", ExportConfig(onnx=False, tflite=False, **RAW), log=lambda _: None
    )
    assert files.isfile(f"{root}/export/{exporter.EXPORT_FILE}")
    assert files.isfile(f"{root}/export/{exporter.SERVING_DIR}/saved_model.pb")


def test_remote_shards_are_verified_and_a_bad_one_is_named(tmp_path):
    build_helpers.random_dataset(str(tmp_path / "raw"), 12, h=30, w=40)
    data_dir = f"{_ram('verify')}/records"
    build_helpers.build_dir(str(tmp_path / "raw"), data_dir, image_size=16, num_shards=2)
    records = records_lib.Records.open(data_dir)
    checked = records.verify(("train", "val"))
    assert checked["shards"] == len(records.shards["train"]) + len(records.shards["val"])
    shard = records.shards["train"][1][0]
    data = files.read_bytes(shard)
    files.write_atomic(shard, data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(records_lib.RecordsError, match=os.path.basename(shard) + ": its sha256"):
        records.verify(("train",))
    files.write_atomic(shard, data[:-3])
    with pytest.raises(records_lib.RecordsError, match="truncated"):
        records.verify(("train",), "size")


def test_remote_flag_files_are_read_through_a_local_copy(tmp_path):
    remote = _ram("flags")
    files.write_atomic(f"{remote}/a.flags", "--epochs=3\n")
    files.write_atomic(f"{remote}/b.flags", "--data_dir=gs://b/records\n")
    argv = cli.local_flagfiles(
        [
            "isic-train",
            f"--flagfile={remote}/a.flags",
            "--flagfile",
            f"{remote}/b.flags",
            "--flagfile=local.flags",
            "--epochs=2",
        ]
    )
    assert argv[0::2] == ["isic-train", "--flagfile", "--flagfile=local.flags"]
    assert argv[-1] == "--epochs=2" and argv[1].startswith("--flagfile=")
    assert files.read_bytes(argv[1].split("=", 1)[1]) == b"--epochs=3\n"
    assert files.is_local(argv[3]) and files.read_bytes(argv[3]) == b"--data_dir=gs://b/records\n"
    with pytest.raises(UserError, match="missing.flags"):
        cli.local_flagfiles(["isic-train", f"--flagfile={remote}/missing.flags"])


def _lease_file(directory: str, host: str, renewed: float) -> None:
    holder = locks.Holder(host, 4242, "2026-01-01 00:00:00 +0000", "isic-train")
    files.write_atomic(f"{directory}/.lock", leases.Lease(holder, "someone-else", renewed).to_json())


def test_lease_refuses_a_live_holder_and_takes_over_a_stale_one():
    directory = _ram("lease")
    _lease_file(directory, "node7", time.time() - 5)
    with pytest.raises(locks.LockedError, match="node7.*renewed 5 s ago"):
        with locks.exclusive(directory, ".lock", "isic-train", advice="use another"):
            pass
    _lease_file(directory, "node7", time.time() - 10 * leases.STALE_SECONDS)
    with locks.exclusive(directory, ".lock", "isic-train", advice="use another") as stale:
        assert stale.host == "node7"
        held = leases.read(f"{directory}/.lock")
        assert held.holder.pid == os.getpid() and held.token != "someone-else"
        with pytest.raises(locks.LockedError, match=f"pid {os.getpid()}"):
            with locks.exclusive(directory, ".lock", "isic-train", advice="use another"):
                pass
    assert not files.exists(f"{directory}/.lock")


def test_local_mount_without_flock_falls_back_to_the_lease(tmp_path, monkeypatch, caplog):
    def no_flock(*_):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_flock)  # what gcsfuse answers
    directory = str(tmp_path / "run")
    with locks.exclusive(directory, ".lock", "isic-train", advice="use another") as stale:
        assert stale is None
        assert "no flock" in caplog.text
        assert leases.read(os.path.join(directory, ".lock")).holder.pid == os.getpid()
        with pytest.raises(locks.LockedError):
            with locks.exclusive(directory, ".lock", "isic-train", advice="use another"):
                pass
    assert not os.path.exists(os.path.join(directory, ".lock"))


def test_fuse_mounts_are_recognised_for_the_lease(tmp_path):
    table = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "gcsfuse /gcs fuse.gcsfuse rw,nosuid 0 0\n"
        "server:/export /mnt/my\\040nfs nfs4 rw 0 0\n"
    )
    assert locks.mount_type("/gcs/bucket/runs/x", table) == "fuse.gcsfuse"
    assert locks.mount_type("/gcsx/runs", table) == "ext4"
    assert locks.mount_type("/mnt/my nfs/runs", table) == "nfs4"
    assert not locks.mount_type(str(tmp_path)).startswith("fuse")  # this machine's tmp


# Calls that touch files, which library modules make through core/files.py so
# that remote paths work. Each exception says why the path is always local.
_FILE_CALLS = (
    {"open"}
    | {
        f"os.{n}"
        for n in (
            "replace",
            "rename",
            "remove",
            "unlink",
            "makedirs",
            "mkdir",
            "rmdir",
            "listdir",
            "scandir",
            "walk",
            "stat",
            "open",
            "fsync",
        )
    }
    | {f"os.path.{n}" for n in ("exists", "isfile", "isdir", "getsize", "getmtime", "abspath", "realpath")}
)
_ALLOWED = {
    # flock needs a local file descriptor; remote folders take the lease before this.
    "core/locks.py": {"os.makedirs", "os.open", "os.path.realpath"},
    # The raw image folders of isic-preprocess stay local (README: object storage).
    "preprocessing/pairs.py": {"os.path.abspath", "os.path.isdir", "os.scandir", "os.stat"},
    # isic-synth writes such raw folders.
    "preprocessing/synth.py": {
        "open",
        "os.makedirs",
        "os.listdir",
        "os.remove",
        "os.path.exists",
        "os.path.isfile",
    },
    # The export's local staging folder and its size.
    "launch/export/exporter.py": {"os.makedirs", "os.walk", "os.path.isfile", "os.path.getsize"},
    # A shard is written into the local file atomic_path stages (uploaded whole if remote).
    "preprocessing/shards.py": {"open"},
    # /proc/cpuinfo: this machine's CPU flags (precision auto).
    "launch/training/distribute.py": {"open", "os.path.exists"},
    # Pretrained encoder weights: the installed package's file or a local --encoder_weights.
    "model/torch_checkpoint.py": {"open"},
    "launch/training/config.py": {"os.path.isfile"},
    # The export check's test images, in a local temporary folder.
    "launch/export/parity.py": {"open", "os.makedirs"},
    # The package's own location.
    "launch/commands/launch.py": {"os.path.abspath"},
    # The package's own location (the watchdog's sidecar runs `-m core.watchdog` from it).
    "core/watchdog.py": {"os.path.abspath"},
    # /proc/<pid>/stat: whether a local worker was stopped (SIGSTOP).
    "launch/cluster/worker_output.py": {"open"},
    # The project's own .py files (the code every worker must run).
    "launch/training/agreement.py": {"open", "os.path.abspath", "os.walk"},
    # The test-only fault's marker file (a local temporary path the test gives).
    "launch/training/injected_faults.py": {"os.open"},
}


def test_library_modules_touch_files_only_through_files_py():
    project = pathlib.Path(__file__).resolve().parent.parent
    found = {}
    for package in ("core", "preprocessing", "pipeline", "model", "launch"):
        for path in sorted((project / package).rglob("*.py")):
            module = path.relative_to(project).as_posix()
            if module == "core/files.py":  # the one place
                continue
            calls = {
                _name(node.func)
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call)
            } & _FILE_CALLS
            if calls:
                found[module] = calls
    unexpected = {
        m: sorted(c - _ALLOWED.get(m, set())) for m, c in found.items() if c - _ALLOWED.get(m, set())
    }
    assert not unexpected, f"use core/files.py instead: {unexpected}"
    stale = {m: sorted(c - found.get(m, set())) for m, c in _ALLOWED.items() if c - found.get(m, set())}
    assert not stale, f"allowed calls no longer made, drop them from _ALLOWED: {stale}"


def _name(func) -> str:
    """'os.path.isdir' for the call target os.path.isdir, '' for non-dotted names."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    return ".".join([func.id, *reversed(parts)]) if isinstance(func, ast.Name) else ""
