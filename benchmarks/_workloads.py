"""Task functions of the benchmarks, in a module every worker can import by name."""

from __future__ import annotations

import os
import time

from hybridexec._demo import calibrate, cpu_work, io_work


def tiny(x: int) -> int:
    """A trivial call: the cost is all in the dispatch."""
    return x + 1


# The demo's workload functions: pure-Python work holding the GIL for ``n`` iterations (fixed
# work, not fixed time), and a blocking wait standing for I/O.
cpu_loop = cpu_work
io_sleep = io_work


def warm(seconds: float) -> int:
    """Used to start every worker of a pool before timing: each call blocks a worker a while."""
    time.sleep(seconds)
    return os.getpid()


def calibrate_cpu_loop(seconds: float) -> int:
    """Return the ``cpu_loop`` size that takes about ``seconds`` on this machine, now."""
    return calibrate(seconds, trials=7, n=100_000)


# ---- faults ---------------------------------------------------------------------------------
def crash_task(i: int, crash_index: int, stamp_path: str, seconds: float) -> tuple[int, int, float]:
    """Return ``(i, pid, start)``; task ``crash_index`` writes its time of death and exits.

    ``start`` is ``time.monotonic()``, a system-wide clock on Linux, so the parent compares
    times taken in different workers.
    """
    start = time.monotonic()
    if i == crash_index:
        with open(stamp_path, "w") as f:
            f.write(repr(time.monotonic()))
        os._exit(1)
    time.sleep(seconds)
    return (i, os.getpid(), start)


def sleep_long(seconds: float = 60.0) -> float:
    """A task that blocks far longer than its timeout."""
    time.sleep(seconds)
    return seconds


def gil_c_loop() -> int:
    """Hold the GIL inside one C call that never returns to the eval loop for hours.

    ``sum`` over a ``range`` runs entirely in C: no bytecode boundary, so no Python signal
    handler, thread switch or asynchronous exception can run until it ends.
    """
    return sum(range(10**15))
