"""Time per TensorFlow op type of a few training steps, read from a profiler trace.

`trace(run, steps)` runs `run()` (which must run `steps` training steps) under
`tf.profiler.experimental` and sums, per op type (`_MklNativeConv2DBackpropFilter`,
`Mul`, ...), the time of the op events on TensorFlow's compute threads of the host
plane. Stage 4 (`isic-bench --stages 4 --profile_ops`) traces our loop and `model.fit`
this way and prints them side by side: the op-by-op comparison of docs/performance.md.

The default host tracer level records the ops the executor considers expensive (every
convolution, batch-norm and optimizer op of the U-Net); very cheap ops (a scalar add)
are not listed, which is why `OpTimes.total_ms` is below the wall time of a step.
"""

import collections
import dataclasses
import glob
import os
import tempfile
from typing import Callable

_COMPUTE_LINE = "tf_Compute"  # the executor's inter-op threads in the /host:CPU plane
_EXECUTOR_EVENTS = ("ExecutorState", "ExecutorDoneCallback")  # spans around ops, not ops


@dataclasses.dataclass(frozen=True)
class OpTimes:
    """Per op type: milliseconds and executions per training step."""

    steps: int
    ms_per_step: dict[str, float]
    count_per_step: dict[str, float]

    @property
    def total_ms(self) -> float:
        return sum(self.ms_per_step.values())


def trace(run: Callable[[], object], steps: int) -> OpTimes:
    """Profiles `run()` (`steps` training steps) and returns the time per op type."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="isic-op-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            raise RuntimeError(f"the profiler wrote no .xplane.pb under {logdir}")
        with open(max(paths, key=os.path.getmtime), "rb") as f:
            return op_times(f.read(), steps)


def op_times(xspace_bytes: bytes, steps: int) -> OpTimes:
    """Sums a serialized XSpace's op events per op type (see the module docstring)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace_bytes)
    ms, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith(_COMPUTE_LINE):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name.startswith(_EXECUTOR_EVENTS):
                    continue
                op_type = name.rsplit(":", 1)[-1]  # "scope/op_name:OpType"
                ms[op_type] += event.duration_ps / 1e9
                count[op_type] += 1
    return OpTimes(
        steps=steps,
        ms_per_step={k: v / steps for k, v in ms.most_common()},
        count_per_step={k: count[k] / steps for k, _ in ms.most_common()},
    )
