"""The progress bar of long loops: items done, items per second and time left.

Standard library only (the builder's processes do not import TensorFlow or Keras). It
redraws one line on a terminal and prints a line per ~10% otherwise (logs, CI), so a
captured log stays short.
"""

import sys
import time


class Progress:
    """`Progress(total, unit="image")`, then `advance(done)` after each item or batch."""

    def __init__(self, total: int, unit: str = "item", show: bool = True, stream=None):
        self._total, self._unit, self._show = max(int(total), 0), unit, show
        self._stream = stream or sys.stdout
        self._start = time.perf_counter()
        self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._next_line = 0  # without a terminal: the next tenth to print

    def advance(self, done: int) -> None:
        """Shows `done` of the total finished."""
        if not self._show:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = done / elapsed
        left = (self._total - done) / rate if rate > 0 else 0.0
        width = len(str(self._total))
        line = f"{done:{width}d}/{self._total} {self._unit}s  {rate:.1f} {self._unit}s/s  " + (
            f"{elapsed:.0f} s" if done >= self._total else f"ETA {left:.0f} s"
        )
        if self._tty:
            self._stream.write("\r" + line + ("\n" if done >= self._total else ""))
        elif done >= self._total or done * 10 >= self._next_line * self._total:
            self._stream.write(line + "\n")
            self._next_line = done * 10 // max(self._total, 1) + 1
        self._stream.flush()
