"""Issue 15, items 1 and 3: the CPU-slot governor and late binding, against fixed pools.

- numpy chunks: 8 GIL-free numpy sorts submitted at once, the function learned already.
  Before the governor, auto mode spread them over 8 threads (each holding its own copy of a
  chunk) on a machine with fewer cores: more memory, no faster. Time and the peak of memory
  allocated meanwhile (tracemalloc, which numpy reports its arrays to), against a thread pool
  of one thread per core and one of 8 threads.
- a verdict that changes: a function learned as a Python loop (processes), then called 40
  times at once to sleep 50 ms (one key: ints count by type). Feedback from the first sleeps
  in processes demotes it to threads; with late binding the calls still queued move there,
  without it they wait for a worker each. A fresh executor per repeat (learning included in
  setup, not timed), against stdlib threads and processes.

Each contender runs in a fresh interpreter per round, the contenders taking turns.
``python -m benchmarks --only governor [--quick]``. To compare with another checkout, run it
with that checkout's ``src`` first on ``PYTHONPATH``.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import tracemalloc
from typing import Any

from ._common import CPUS, Table, isolated, median, report, section, target_line

CHUNK_FLOATS = 2_000_000
CHUNKS = 8
PHASE_CALLS = 40
PHASE_SLEEP = 0.05


def sort_chunk(data: Any) -> float:
    """GIL-free C work that keeps a CPU busy and allocates a copy of its chunk."""
    import numpy as np

    return float(np.sort(data)[0])


def phase(cpu: int, amount: float) -> int:
    """A Python loop of ``amount`` CPU seconds (``cpu`` true) or a sleep of ``amount`` s."""
    if cpu:
        end = time.thread_time() + amount
        n = 0
        while time.thread_time() < end:
            n += 1
        return n
    time.sleep(amount)
    return 0


def chunks_child(contender: str, repeats: int) -> None:
    """In a fresh interpreter: time ``CHUNKS`` sorts at once and their peak of memory."""
    import numpy as np

    import hybridexec

    rng = np.random.default_rng(5)
    chunks = [rng.random(CHUNK_FLOATS) for _ in range(CHUNKS)]
    pool: Any
    if contender == "hybridexec":
        pool = hybridexec.Executor()
        for _ in range(3):  # learned before timing, as in a long-running program
            pool.submit(sort_chunk, chunks[0]).result()
    else:
        pool = cf.ThreadPoolExecutor(int(contender.split("-")[1]))
    times, peaks = [], []
    try:
        for _ in range(repeats):
            tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            started = time.perf_counter()
            list(pool.map(sort_chunk, chunks))
            times.append(time.perf_counter() - started)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            tracemalloc.stop()
        report({"times": times, "peak": median(peaks)})
    finally:
        pool.shutdown()


def phase_child(contender: str, repeats: int) -> None:
    """In a fresh interpreter: time ``PHASE_CALLS`` sleeps of a function learned as CPU work."""
    import hybridexec

    times, moved = [], 0
    for _ in range(repeats):
        pool: Any
        if contender == "hybridexec":
            pool = hybridexec.Executor()
            while pool.explain(phase, 1, 0.03).kind != "process":
                pool.submit(phase, 1, 0.03).result()
            for _ in range(3):  # its verdict in processes, with process figures
                pool.submit(phase, 1, 0.03).result()
        elif contender == "stdlib-threads":
            pool = cf.ThreadPoolExecutor()
        else:
            pool = cf.ProcessPoolExecutor(CPUS)
            list(pool.map(phase, [0] * CPUS, [0.01] * CPUS))  # workers started
        try:
            started = time.perf_counter()
            futures = [pool.submit(phase, 0, PHASE_SLEEP) for _ in range(PHASE_CALLS)]
            for f in futures:
                f.result()
            times.append(time.perf_counter() - started)
            if contender == "hybridexec":
                moved += pool.stats().get("moved", {}).get("process->thread", 0)
        finally:
            pool.shutdown()
    report({"times": times, "moved": moved / repeats})


def _interleaved(
    target: str, contenders: tuple[str, ...], rounds: int
) -> dict[str, list[dict[str, Any]] | str]:
    """One fresh interpreter per contender and round, the contenders taking turns (the load
    of a shared machine drifts: each contender sees the same drift)."""
    got: dict[str, list[dict[str, Any]] | str] = {c: [] for c in contenders}
    for _ in range(rounds):
        for contender in contenders:
            runs = got[contender]
            if isinstance(runs, str):
                continue
            result = isolated(target, 300, contender=contender, repeats=1)
            if result.ok:
                runs.append(result.value)
            else:
                got[contender] = result.error or "failed"
    return got


def bench_chunks(rounds: int) -> None:
    table = Table(
        f"{CHUNKS} numpy sorts of {CHUNK_FLOATS * 8 >> 20} MiB at once, on {CPUS} cores",
        reference="hybridexec",
        extra_columns=["peak memory"],
    )
    contenders = ("hybridexec", f"threads-{CPUS}", f"threads-{CHUNKS}")
    peaks: dict[str, float] = {}
    for contender, runs in _interleaved(
        "benchmarks.bench_governor:chunks_child", contenders, rounds
    ).items():
        if isinstance(runs, str) or not runs:
            table.add(contender, note=str(runs))
            continue
        peaks[contender] = median([r["peak"] for r in runs])
        times = [t for r in runs for t in r["times"]]
        table.add(contender, times, **{"peak memory": f"{int(peaks[contender]) >> 20} MiB"})
    table.print()
    if "hybridexec" in peaks and f"threads-{CPUS}" in peaks:
        ratio = peaks["hybridexec"] / max(1, peaks[f"threads-{CPUS}"])
        print(
            target_line(
                f"peak memory within 1.5x of a {CPUS}-thread pool",
                ratio <= 1.5,
                f"{ratio:.2f}x",
            )
        )


def bench_phase(rounds: int) -> None:
    table = Table(
        f"{PHASE_CALLS} sleeps of {PHASE_SLEEP * 1e3:.0f} ms of a function learned as CPU work",
        reference="hybridexec",
        extra_columns=["moved"],
    )
    contenders = ("hybridexec", "stdlib-threads", "stdlib-processes")
    for contender, runs in _interleaved(
        "benchmarks.bench_governor:phase_child", contenders, rounds
    ).items():
        if isinstance(runs, str) or not runs:
            table.add(contender, note=str(runs))
            continue
        moved = median([r["moved"] for r in runs])
        times = [t for r in runs for t in r["times"]]
        table.add(contender, times, moved=f"{moved:.0f}" if contender == "hybridexec" else "")
    table.print()
    ours, procs = table.row("hybridexec"), table.row("stdlib-processes")
    if ours is not None and procs is not None and ours.median and procs.median:
        print(
            target_line(
                "faster than the process pool it was routed to (queued calls moved)",
                ours.median < procs.median,
                f"{procs.median / ours.median:.2f}x",
            )
        )


def run(quick: bool) -> None:
    section("Governor and late binding (issue 15)")
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("numpy is not installed: the numpy chunks table is skipped")
    else:
        bench_chunks(3 if quick else 9)
    bench_phase(2 if quick else 7)
