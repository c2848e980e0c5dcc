"""Time from process start to the end of the first training step (stage 5).

Ours: `python -m launch.commands.train` (what `isic-train` runs) on small records, with
--checkpoint_every_steps=1 so that the end of step 1 leaves a file: the time is the
modification time of checkpoints/ckpt-1.index minus the wall-clock time just before the
process was spawned. It includes the interpreter and TensorFlow imports, reading the
manifest, building the model and optimizer, tracing the step, the input pipeline's
first batch (with augmentation) and the first step, plus writing that small checkpoint.
The process is stopped once the file appears.

Baseline: a plain Keras script in a fresh interpreter doing the same work the plain way
(import, the same `pipeline.dataset.make_dataset`, `build_unet`, `compile`, `fit`),
stamping the wall-clock time in its first `on_train_batch_end`.

Both run with TensorFlow's default environment: ours must be fast as isic-train starts
by itself, whatever it sets up.
"""

import os
import re
import signal
import subprocess
import sys
import time

from benchmarks import child
from benchmarks import paths

_STAMP = "FIRST-STEP-END "
_FIT_SNIPPET = f"""
import sys, time
import keras
from model import losses, unet
from pipeline import dataset
data_dir, base_filters, batch_size, image_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ds = dataset.make_dataset(data_dir, "train", batch_size=batch_size, training=True)
model = unet.build_unet(image_size=image_size, base_filters=base_filters)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=lambda t, p: losses.bce_dice_loss(t, p))
def first_step_end(batch, logs):
    print({_STAMP!r} + repr(time.time()), flush=True)
    model.stop_training = True
model.fit(ds, epochs=1, verbose=0, callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=first_step_end)])
"""


def write_records(work_dir: str, num_pairs: int = 24, image_size: int = 128) -> str:
    """Synthetic pairs (isic-synth) built into train-only records by isic-preprocess's builder."""
    from preprocessing import build
    from preprocessing import synth
    raw, records = os.path.join(work_dir, "raw"), os.path.join(work_dir, "records")
    synth.write_dataset(raw, num_pairs, seed=0, num_workers=1, progress=False)
    build.build_records(os.path.join(raw, "images"), os.path.join(raw, "masks"), records,
                        image_size=image_size, fractions=(1.0, 0.0, 0.0), num_workers=1,
                        progress=False)
    return records


def ours_to_first_step(records: str, model_dir: str, base_filters: int, batch_size: int,
                       timeout: float = 600) -> dict:
    """Seconds from spawning `python -m launch.commands.train` to its first checkpoint (see module doc)."""
    marker = os.path.join(model_dir, "checkpoints", "ckpt-1.index")
    args = [sys.executable, "-m", "launch.commands.train", f"--data_dir={records}", f"--model_dir={model_dir}",
            "--epochs=1", f"--base_filters={base_filters}", f"--batch_size={batch_size}",
            "--checkpoint_every_steps=1", "--steps_per_execution=1", "--summary_images=0"]
    # INFO logs kept (TF_CPP_MIN_LOG_LEVEL=0) to see whether TF turned oneDNN on.
    env = child.child_env(dict(child.PLAIN_ENV, TF_CPP_MIN_LOG_LEVEL="0"))
    stderr_path = os.path.join(os.path.dirname(model_dir) or ".", "isic-train.stderr")
    with open(stderr_path, "w") as err:
        start = time.time()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=paths.PROJECT_ROOT)
        try:
            while not os.path.exists(marker):
                if proc.poll() is not None:
                    raise RuntimeError(f"isic-train exited with {proc.returncode} before its first "
                                       f"checkpoint; see {stderr_path}")
                if time.time() - start > timeout:
                    raise TimeoutError(f"isic-train wrote no {marker} within {timeout} s")
                time.sleep(0.01)
            seconds = os.stat(marker).st_mtime - start
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    with open(stderr_path) as f:
        onednn = "oneDNN custom operations are on" in f.read()
    return {"seconds": seconds, "onednn": onednn}


def fit_to_first_step(records: str, base_filters: int, batch_size: int, image_size: int,
                      timeout: float = 600) -> dict:
    """Seconds from spawning the plain model.fit script to its first on_train_batch_end."""
    args = [sys.executable, "-c", _FIT_SNIPPET, records, str(base_filters), str(batch_size),
            str(image_size)]
    start = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, env=child.child_env(child.PLAIN_ENV),
                          cwd=paths.PROJECT_ROOT, timeout=timeout)
    found = re.findall(_STAMP + r"([0-9.]+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"the model.fit startup script failed:\n{proc.stderr[-3000:]}")
    return {"seconds": float(found[0]) - start}


def run_startup_benchmark(work_dir: str, base_filters: int = 16, batch_size: int = 8,
                          image_size: int = 128, num_pairs: int = 24) -> dict:
    """Writes small records, then times ours and the model.fit script back to back."""
    records = write_records(work_dir, num_pairs, image_size)
    ours = ours_to_first_step(records, os.path.join(work_dir, "model"), base_filters, batch_size)
    fit = fit_to_first_step(records, base_filters, batch_size, image_size)
    return {"ours": ours, "fit": fit, "speedup": fit["seconds"] / ours["seconds"],
            "settings": {"base_filters": base_filters, "batch_size": batch_size,
                         "image_size": image_size, "records": num_pairs}}
