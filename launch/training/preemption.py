"""Stopping a run on SIGTERM or SIGINT without losing the steps since the last checkpoint.

SLURM (`--signal`, `scancel`), Kubernetes (pod deletion, node drain) and preemptible
cloud VMs (their shutdown) send SIGTERM some seconds before SIGKILL; Ctrl-C is SIGINT.
On either, a run finishes the training step in flight, writes a checkpoint at that step
and raises `Stopped`, which `isic-train` turns into exit status 128 + the signal: 143 for
SIGTERM, 130 for SIGINT. Schedulers read these as "stopped, may restart" (Kubeflow's
ExitCode restart policy retries 130, 137 and 143 and gives up on 1). The same command
then resumes from that step (bit-identical under --deterministic). A second SIGINT
while stopping ends the process at once, as it would have without this module; a second
SIGTERM is ignored (schedulers and launchers often both send one).

One process (one device, or mirrored over local devices): `LocalStop`. The train and
eval steps' while loop reads its `flag` before every step (launch/training/steps.py), so
even a chunk of many steps, or a whole validation pass, ends after the step in flight.
Python runs signal handlers only between bytecodes, not while the main thread is inside
TensorFlow, so the flag is set by a thread woken through `signal.set_wakeup_fd`, to which
CPython's C-level handler writes at once.

Several workers (MultiWorkerMirroredStrategy): all must stop at the same step, so the
flag is not used. TensorFlow's own `PreemptionCheckpointHandler` agrees on the step
through the coordination service: the first worker to get the signal announces "after
the next call", every worker saves the checkpoint after that call and exits. `ClusterStop`
plugs the trainer in: the signal is the handler's termination notice, the trainer's
Saver writes the checkpoint (so it lands in model_dir/checkpoints as every other one),
all workers wait for each other, and the handler's exit raises `Stopped`. Workers that
got no signal themselves stop with status 143 (a peer's preemption). The handler counts
training calls only; between validation calls the workers instead agree through one
all-reduce (`requested`) and stop together (`stop_now`).

Before `attach` (the set-up: records check, model build, restore) there is nothing to
checkpoint, so one process raises `Stopped` at once (step None). Several workers do not:
a worker that left during the set-up would break the collectives its peers are already
in (they would fail with exit status 1, which schedulers read as a failure), so the
signal is acted on at the first point where the workers agree (the first training or
validation call after the set-up).
"""

import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Callable

import tensorflow as tf
from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)
HOST = "/cpu:0"  # LocalStop serves one process: its own CPU
# Where TensorFlow's failure handling looks for the GCE metadata server (see ClusterStop).
_METADATA_VARIABLE = "GCE_METADATA_IP"
_NO_METADATA_SERVER = "127.0.0.1:1"


class Stopped(Exception):
    """Training stopped on a signal after checkpointing; exit with `exit_status`.

    Not a UserError: nothing is wrong, and the status must be 128 + the signal, not 1.
    """

    def __init__(self, signum: int, step: int | None, checkpoint: str | None, seconds: float):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_status, self.seconds = 128 + signum, seconds
        name = signal.Signals(signum).name
        if step is None:  # during the set-up: nothing trained, nothing written to keep
            message = (
                f"stopped by {name} before training began; the model directory is as it "
                "was. Run the same command to start (or resume) again"
            )
        else:
            where = (
                f"its checkpoint is {checkpoint}. Run the same command to resume from it"
                if checkpoint
                else "nothing was trained yet, so there is nothing to keep"
            )
            message = f"stopped by {name} at step {step}; {where}"
        super().__init__(f"{message}. Exit status {self.exit_status}.")


class _Catcher:
    """Records SIGTERM and SIGINT while entered (main thread only); restores on exit.

    `signum` is the first signal caught; `event` is set as soon as one arrives, even
    while the main thread is inside TensorFlow, and so is `flag` when given.
    """

    def __init__(self, flag: tf.Variable | None):
        self.flag, self.signum, self.event = flag, None, threading.Event()
        self._previous, self._pipe, self._wakeup = {}, None, None
        # False during the set-up (records check, model build, restore): there is nothing
        # to checkpoint yet, so a signal then ends the run at once (raised from the handler).
        self.armed = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            logging.warning(
                "training runs outside the main thread: SIGTERM and SIGINT are not "
                "caught, a signal stops the run without a checkpoint"
            )
            return self
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        read, write = os.pipe()
        os.set_blocking(write, False)  # set_wakeup_fd requires it
        self._pipe = (read, write)
        self._wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), daemon=True, name="isic-signal-watcher").start()
        return self

    def __exit__(self, *exc):
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._pipe[1])  # the watcher's read returns b"" and it ends
        self._pipe = None

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:
            # A second Ctrl-C: stop now, as without this module. A second SIGTERM is
            # usual (the scheduler signals every process, the launcher forwards) and must
            # not cut the checkpoint short: it is ignored.
            if signum == signal.SIGINT:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.signum = signum
        # Not the flag: this handler runs in the main thread wherever it happens to be,
        # possibly inside a graph being built (a tf.function trace, the SavedModel
        # export), where assigning a variable fails ("Attempting to capture an
        # EagerTensor"). The watcher thread, which runs eagerly, sets it.
        self.event.set()
        if not self.armed:
            raise Stopped(signum, None, None, 0.0)
        logging.warning(
            "got %s: finishing the step in flight, then checkpointing and "
            "stopping (Ctrl-C again stops at once, without it)",
            signal.Signals(signum).name,
        )

    def _watch(self, read: int) -> None:
        try:
            while data := os.read(read, 64):
                if any(byte in SIGNALS for byte in data):
                    self._notice()
        finally:
            os.close(read)

    def _notice(self) -> None:
        self.event.set()
        if self.flag is not None:
            self.flag.assign(True)


class LocalStop:
    """Stopping a single-process run (see the module docstring)."""

    def __init__(self):
        # Read by the train steps before every step; created outside any strategy scope
        # and pinned to the host. Without a device, an eager variable goes to GPU:0 when
        # there is one, and the while loop's condition (steps.py) would copy it back to
        # the host before every step: the loop's predicate is read on the host.
        with tf.device(HOST):
            self.flag = tf.Variable(False, trainable=False, name="stop_requested")
        self._catcher = _Catcher(self.flag)
        self._save = self._step = None

    def __enter__(self):
        self._catcher.__enter__()
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)

    def attach(
        self, checkpoint: tf.train.Checkpoint, save: Callable[[], str | None], step: Callable[[], int]
    ) -> None:
        """`save()` checkpoints the current step and returns its path; `step()` is it."""
        del checkpoint
        self._save, self._step = save, step
        self._catcher.armed = True

    def after_chunk(self) -> None:
        """After a train_steps call: after a signal, checkpoint and raise Stopped."""
        if self.requested():
            self.stop_now()

    between_epochs = after_chunk  # one process: any point between calls will do

    def requested(self) -> bool:
        """Whether a stop signal arrived (set by the watcher thread at once)."""
        return self._catcher.event.is_set()

    def stop_now(self) -> None:
        """Checkpoints the current step and raises Stopped."""
        start = time.perf_counter()
        path = self._save()
        seconds = time.perf_counter() - start
        logging.info("checkpoint of the stop: %s (%.2f s)", path, seconds)
        raise Stopped(self._catcher.signum or signal.SIGTERM, self._step(), path, seconds)


class ClusterStop:
    """Stopping a multi-worker run with TensorFlow's PreemptionCheckpointHandler."""

    flag = None  # every worker must run the same steps: no early end inside a chunk

    def __init__(self, strategy: tf.distribute.Strategy):
        self._strategy, self._resolver = strategy, strategy.cluster_resolver
        self._catcher = _Catcher(None)
        self._catcher.armed = True  # no stop at once during the set-up: see the module doc
        self._handler = self._save = self._step = self._path = None
        self._scratch, self._seconds = None, 0.0

    def __enter__(self):
        self._catcher.__enter__()
        return self

    def __exit__(self, *exc):
        self._handler = None
        self._catcher.__exit__(*exc)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def attach(
        self, checkpoint: tf.train.Checkpoint, save: Callable[[], str | None], step: Callable[[], int]
    ) -> None:
        """Creates the handler once `checkpoint` is restored (see `LocalStop.attach`)."""
        self._save, self._step = save, step
        # The handler restores from (empty: the trainer has restored) and, on other
        # workers, writes under this folder; our save function writes the real checkpoint.
        self._scratch = tempfile.mkdtemp(prefix="isic-preemption-")
        config = tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=self._catcher.event.is_set,
            exit_fn=self._exit,
            grace_period=0,
            save_fn=self._save_now,
        )
        # The handler first asks the GCE metadata server (metadata.google.internal, up to
        # 5 s) which platform it runs on, and on GCE CPU VMs then does nothing at all. The
        # notice is the signal on every platform here, so the question goes to a closed
        # local port instead: no network traffic, the same behaviour everywhere.
        saved = os.environ.get(_METADATA_VARIABLE)
        os.environ[_METADATA_VARIABLE] = _NO_METADATA_SERVER
        try:
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                self._resolver, checkpoint, os.path.join(self._scratch, "ckpt"), config
            )
        finally:
            if saved is None:
                os.environ.pop(_METADATA_VARIABLE, None)
            else:
                os.environ[_METADATA_VARIABLE] = saved
        self._catcher.armed = True

    def after_chunk(self) -> None:
        """After each train_steps call, on every worker: the handler saves and exits when
        it is time. Exactly once per call: the handler counts calls, and relies on the
        call's collectives to keep every worker within one call of the others."""
        self._handler.save_checkpoint_if_preempted()

    def between_epochs(self) -> None:
        """Nothing: validation already asked `requested` after each of its calls."""

    def requested(self) -> bool:
        """Whether any worker got a stop signal: every worker must call it at the same
        point and gets the same answer (one all-reduce of a number). Used between
        validation calls, where the handler's call counting does not apply (it counts
        training calls: see after_chunk)."""
        mine = 1.0 if self._catcher.event.is_set() else 0.0
        total = self._strategy.reduce(
            tf.distribute.ReduceOp.SUM, self._strategy.run(lambda: tf.constant(mine)), axis=None
        )
        return float(total) > 0

    def stop_now(self) -> None:
        """Every worker: checkpoints the current step together and raises Stopped (after
        `requested` said so on all of them)."""
        self._save_now()
        self._exit()

    def _save_now(self) -> None:
        start = time.perf_counter()
        self._path = self._save()
        # Nobody exits before the chief's files are complete: a scheduler that kills the
        # rest of a job once one task exits (srun --kill-on-bad-exit) must not cut it short.
        _barrier(self._strategy)
        self._seconds = time.perf_counter() - start

    def _exit(self) -> None:
        raise Stopped(self._catcher.signum or signal.SIGTERM, self._step(), self._path, self._seconds)


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it (an all-reduce of one number)."""
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def stopper(strategy: tf.distribute.Strategy, num_workers: int):
    """The stopper of this run (a context manager): ClusterStop for several workers."""
    return ClusterStop(strategy) if num_workers > 1 else LocalStop()
