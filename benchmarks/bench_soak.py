"""Soak (issue 9): 100,000 small tasks through one executor, watching for leaks.

The tasks go through every path a long-running program uses: ``submit`` to the process lane
and to the thread lane, ``kind="auto"``, and ``hybridexec.map`` (batched), with a bounded
number in flight so that the figure measures leaks, not futures the caller keeps. The parent's
resident memory is read after a warm-up of 5,000 tasks (allocator pools, caches, classifier
tables filled) and again at the end, both after ``gc.collect()``.

Targets: the parent grows by less than 10 MB; after ``shutdown()`` no worker process that
served the run is still alive (zombies count as alive: they were not reaped).

Run alone: ``.venv/bin/python -m benchmarks --only soak`` (``--quick``: 20,000 tasks).
"""

from __future__ import annotations

import collections
import gc
import os
import time
from typing import Any

from ._common import fmt_rate, fmt_seconds, isolated, section, target_line

TASKS = 100_000
QUICK_TASKS = 20_000
WARMUP_TASKS = 5_000
WINDOW = 500  # futures in flight per submit wave
MAP_CHUNK = 1_500
GROWTH_LIMIT_MB = 10.0
TIME_LIMIT = 900.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "X"  # "Z" (zombie, not reaped) counts as leaked


def _increment(x: int) -> int:
    return x + 1


def _run_tasks(ex: Any, count: int, pids: set[int]) -> int:
    """Run ``count`` tasks through every entry point; return how many gave a wrong answer."""
    import hybridexec

    wrong = 0
    lanes = [ex.options(kind="process"), ex.options(kind="thread"), ex]
    done = 0
    wave = 0
    while done < count:
        n = min(count - done, MAP_CHUNK if wave % 4 == 3 else WINDOW)
        if wave % 4 == 3:
            results = hybridexec.map(_increment, range(n), executor=ex, kind="process")
            wrong += sum(r != i + 1 for i, r in enumerate(results))
        else:
            lane = lanes[wave % 3]
            futures = [lane.submit(_increment, i) for i in range(n)]
            for i, fut in enumerate(futures):
                wrong += fut.result(timeout=60) != i + 1
            del futures
        pids.update(ex.worker_pids)
        done += n
        wave += 1
    return wrong


def soak(tasks: int) -> dict[str, Any]:
    """In an isolated interpreter: the soak itself; returns the figures."""
    import hybridexec

    pids: set[int] = set()
    ex = hybridexec.Executor()
    _run_tasks(ex, WARMUP_TASKS, pids)
    gc.collect()
    rss_before = _rss_bytes()
    started = time.perf_counter()
    wrong = _run_tasks(ex, tasks, pids)
    seconds = time.perf_counter() - started
    gc.collect()
    rss_after = _rss_bytes()
    stats = ex.stats()
    ex.shutdown(wait=True)
    deadline = time.monotonic() + 10.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = sorted(p for p in pids if _alive(p))
    return {
        "tasks": tasks,
        "seconds": seconds,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "wrong": wrong,
        "workers_seen": len(pids),
        "leaked_workers": leaked,
        "submitted": stats["submitted"],
        "threads_alive": stats["threads"],
        "children_after": len(_children_of_self()),
    }


def _children_of_self() -> list[int]:
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(name))
    # multiprocessing's forkserver and resource tracker stay for the interpreter's life.
    return [p for p in found if not _infrastructure(p)]


def _infrastructure(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return True
    return b"forkserver" in cmdline or b"resource_tracker" in cmdline


def run(quick: bool) -> None:
    """Entry point used by ``python -m benchmarks``."""
    tasks = QUICK_TASKS if quick else TASKS
    section(f"soak: {tasks:,} small tasks through one executor (issue 9)")
    got = isolated("benchmarks.bench_soak:soak", TIME_LIMIT, tasks=tasks)
    if not got.ok or not isinstance(got.value, dict):
        print(f"  the soak did not finish: {got.error}")
        print(target_line(f"parent RSS grows < {GROWTH_LIMIT_MB:g} MB", False, "no figure"))
        print(target_line("no worker leaked", False, "no figure"))
        return
    v: dict[str, Any] = got.value
    growth_mb = (v["rss_after"] - v["rss_before"]) / 1e6
    lanes = collections.Counter(v["submitted"])
    print(
        f"  {v['tasks']:,} tasks in {fmt_seconds(v['seconds'])} "
        f"({fmt_rate(v['tasks'] / v['seconds'])}); submitted per lane: {dict(lanes)}; "
        f"wrong answers: {v['wrong']}"
    )
    print(
        f"  parent RSS {v['rss_before'] / 1e6:.1f} MB -> {v['rss_after'] / 1e6:.1f} MB "
        f"({growth_mb:+.1f} MB); worker processes that served the run: {v['workers_seen']}"
    )
    print(
        target_line(
            f"parent RSS grows < {GROWTH_LIMIT_MB:g} MB over {v['tasks']:,} tasks",
            None if quick else growth_mb < GROWTH_LIMIT_MB,
            f"{growth_mb:+.1f} MB",
        )
    )
    leaked = v["leaked_workers"]
    print(
        target_line(
            "no worker leaked after shutdown",
            not leaked and v["children_after"] == 0 and v["wrong"] == 0,
            f"{len(leaked)} worker(s) alive {leaked}, {v['children_after']} child process(es) left",
        )
    )


if __name__ == "__main__":
    run(quick=False)
