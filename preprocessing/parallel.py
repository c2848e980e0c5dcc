"""An ordered, bounded parallel map over worker processes.

Results come back in input order whatever the number of workers, so the bytes the
builder writes never depend on it; at most `2 * num_workers` chunks are in flight, so
memory stays flat however many items there are (Pool.imap would queue every result the
consumer has not yet taken).

Workers are started with 'spawn': the parent has imported TensorFlow, whose threads make
fork() unsafe. Note that 'spawn' re-imports the parent's `__main__` module in each worker;
entry points keep TensorFlow out of their module-level imports for that reason.
"""

import collections
import contextlib
import itertools
import multiprocessing
import os
from typing import Callable
from typing import Iterable
from typing import Iterator


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@contextlib.contextmanager
def ordered_map(fn: Callable, items: Iterable, num_workers: int, chunk_size: int = 8) -> Iterator[Iterator]:
    """Context manager yielding an iterator over fn(item), in the order of `items`.

    Args:
      fn: a picklable module-level function (it runs in the workers).
      items: picklable inputs; consumed lazily.
      num_workers: 1 runs everything in this process (no pool: tests and debugging).
      chunk_size: items per task sent to a worker.
    Leaving the context terminates the workers, also on errors and early exits.
    """
    if num_workers <= 1:
        yield map(fn, items)
        return
    pool = multiprocessing.get_context("spawn").Pool(num_workers)
    try:
        yield _ordered_results(pool, fn, items, num_workers, chunk_size)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _ordered_results(pool, fn, items, num_workers, chunk_size):
    chunks = _chunked(items, chunk_size)
    pending = collections.deque(
        pool.apply_async(_run_chunk, (fn, chunk)) for chunk in itertools.islice(chunks, 2 * num_workers)
    )
    while pending:
        results = pending.popleft().get()  # re-raises a worker's exception here
        for chunk in itertools.islice(chunks, 1):
            pending.append(pool.apply_async(_run_chunk, (fn, chunk)))
        yield from results


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _run_chunk(fn: Callable, chunk: list) -> list:
    return [fn(item) for item in chunk]
