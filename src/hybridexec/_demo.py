"""The workload of ``python -m hybridexec demo``: blocking sleeps interleaved with CPU loops.

The task functions live here, in an importable module, so that every process pool (including
the standard library's) can pickle them by reference.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CPU_TASKS, CPU_SECONDS, IO_TASKS, IO_SECONDS = 8, 0.25, 160, 0.025
QUICK = (4, 0.03, 24, 0.01)


def cpu_work(n: int) -> int:
    """Pure-Python loop of ``n`` steps: holds the GIL, a fixed amount of work."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def io_work(seconds: float) -> float:
    """Blocking wait standing for I/O: releases the GIL."""
    time.sleep(seconds)
    return seconds


def calibrate(seconds: float, *, trials: int = 3, n: int = 50_000) -> int:
    """Return the ``cpu_work`` size that takes about ``seconds`` here.

    The best of ``trials`` short runs of ``n`` steps: on a shared machine, the least disturbed.
    """
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        cpu_work(n)
        best = min(best, time.perf_counter() - start)
    return max(1_000, int(n * seconds / best))


Call = tuple[Callable[..., Any], tuple[Any, ...]]


def workload(quick: bool = False) -> tuple[list[Call], str]:
    """Return the interleaved calls and a one-line description of them."""
    cpu_tasks, cpu_seconds, io_tasks, io_seconds = (
        QUICK if quick else (CPU_TASKS, CPU_SECONDS, IO_TASKS, IO_SECONDS)
    )
    n = calibrate(cpu_seconds)
    per_cpu = io_tasks // cpu_tasks
    calls: list[Call] = []
    for _ in range(cpu_tasks):
        calls.append((cpu_work, (n,)))
        calls.extend((io_work, (io_seconds,)) for _ in range(per_cpu))
    described = (
        f"{cpu_tasks} pure-Python loops of ~{cpu_seconds:g} s interleaved with "
        f"{per_cpu * cpu_tasks} sleeps of {io_seconds * 1e3:g} ms, submitted at once"
    )
    return calls, described


@dataclass
class Outcome:
    """How one executor did on the workload."""

    name: str
    seconds: float
    ran_on: dict[str, int] = field(default_factory=dict)


def _warm(ex: concurrent.futures.Executor, workers: int) -> None:
    # Start every worker before timing: each call blocks a worker, so each must take one.
    for fut in [ex.submit(io_work, 0.05) for _ in range(2 * workers)]:
        fut.result()


def _timed(
    name: str, ex: concurrent.futures.Executor, calls: Sequence[Call], lane: str | None
) -> Outcome:
    start = time.perf_counter()
    futures = [ex.submit(fn, *args) for fn, args in calls]
    for fut in futures:
        fut.result()
    seconds = time.perf_counter() - start
    if lane is not None:
        ran_on = {lane: len(futures)}
    else:
        ran_on = dict(collections.Counter(getattr(f, "kind", "?") for f in futures))
    return Outcome(name, seconds, ran_on)


def run(calls: Sequence[Call]) -> list[Outcome]:
    """Run ``calls`` on stdlib threads, stdlib processes and hybridexec (twice), warm pools."""
    from ._executor import Executor

    workers = os.cpu_count() or 1
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor() as threads:
        _warm(threads, workers)
        outcomes.append(_timed("stdlib ThreadPoolExecutor", threads, calls, "thread"))
    with concurrent.futures.ProcessPoolExecutor() as processes:
        _warm(processes, workers)
        outcomes.append(_timed("stdlib ProcessPoolExecutor", processes, calls, "process"))
    with Executor() as ex:
        # Both lanes warm; the routing itself starts from nothing and learns in the 1st run.
        for fut in [ex.options(kind="process").submit(io_work, 0.05) for _ in range(2 * workers)]:
            fut.result()
        outcomes.append(_timed("hybridexec.Executor (1st run)", ex, calls, None))
        outcomes.append(_timed("hybridexec.Executor (2nd run)", ex, calls, None))
    return outcomes


def table(outcomes: Sequence[Outcome]) -> str:
    """Format the outcomes: time, ratio to the best stdlib pool, where tasks ran."""
    best = min(o.seconds for o in outcomes if o.name.startswith("stdlib"))
    rows = [("executor", "time", "speed-up vs best stdlib", "ran on (thread / process)")]
    for o in outcomes:
        ran = f"{o.ran_on.get('thread', 0)} / {o.ran_on.get('process', 0)}"
        rows.append((o.name, f"{o.seconds:.2f} s", f"{best / o.seconds:.2f}x", ran))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
