"""Issue 2 workloads: tiny-task map, CPU-bound, I/O-bound, mixed, and pool cold start.

Fairness: every contender gets a warm pool (created, every worker started, and for the short
workloads one untimed run of the workload) before the timed runs; pool start-up is measured
apart, in the "cold start" table. Each (workload, contender) pair runs in its own fresh
interpreter with its own time limit, so no pool shares the machine with another's leftovers.
Processes: one per CPU for every pool; threads: each library's default.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ._common import (
    CPUS,
    Table,
    fmt_rate,
    fmt_seconds,
    isolated,
    measure,
    median,
    missing_peers_note,
    report,
    section,
    target_line,
)
from ._peers import Call, available, make, start_methods
from ._workloads import calibrate_cpu_loop, cpu_loop, io_sleep, tiny

TINY_ITEMS = 20_000
CPU_TASKS = 8
CPU_SECONDS = 0.25
IO_TASKS = 200
IO_SECONDS = 0.02

PEERS = ["loky", "pebble", "mpire", "joblib"]
POOLS = ["stdlib-threads", "stdlib-processes", *PEERS]
QUICK_SKIP = {"loky", "pebble", "mpire"}  # --quick keeps joblib, the fastest peer at defaults


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "tiny_items": 5_000,
            "cpu_seconds": 0.03,
            "io_tasks": 40,
            "repeats": 1,
            "budget": 1.0,
        }
    return {
        "tiny_items": TINY_ITEMS,
        "cpu_seconds": CPU_SECONDS,
        "io_tasks": IO_TASKS,
        "repeats": 5,
        "budget": 4.0,
    }


def _mixed_calls(cpu_n: int, cpu_tasks: int, io_tasks: int) -> list[Call]:
    # Interleaved: one CPU loop, then a run of sleeps, and so on.
    per_cpu = io_tasks // cpu_tasks
    calls: list[Call] = []
    for _ in range(cpu_tasks):
        calls.append((cpu_loop, (cpu_n,), "process"))
        calls.extend((io_sleep, (IO_SECONDS,), "thread") for _ in range(per_cpu))
    return calls


# ---- child side: contenders on one workload -------------------------------------------------
def measure_one(workload: str, contender: str, quick: bool, cpu_n: int) -> dict[str, Any]:
    """Time one contender on one workload; runs in a fresh interpreter (see ``isolated``)."""
    sizes = _sizes(quick)
    c = make(contender)
    if workload == "cold":
        start = time.perf_counter()
        c.create()
        c.map(tiny, list(range(2 * CPUS)))
        elapsed = time.perf_counter() - start
        result = {"name": c.name, "times": [elapsed], "ran_on": c.ran_on(2 * CPUS)}
        c.close()
        return result
    c.start()
    repeats, budget = sizes["repeats"], sizes["budget"]
    if workload == "tiny":
        items = list(range(sizes["tiny_items"]))
        expected = [x + 1 for x in items]

        def run() -> None:
            assert c.map(tiny, items) == expected

        times = measure(run, repeats=repeats, warmup=1, budget=budget)
        count = len(items)
    elif workload == "cpu":
        items = [cpu_n] * CPU_TASKS
        times = measure(
            lambda: c.map(cpu_loop, items), repeats=min(3, repeats), warmup=0, budget=budget
        )
        count = CPU_TASKS
    elif workload == "io":
        items_io = [IO_SECONDS] * sizes["io_tasks"]
        times = measure(
            lambda: c.map(io_sleep, items_io),
            repeats=repeats,
            warmup=0,  # 200 sleeps warm nothing that start() did not
            budget=budget,
        )
        count = len(items_io)
    elif workload == "mixed":
        calls = _mixed_calls(cpu_n, CPU_TASKS, sizes["io_tasks"])
        times = measure(
            lambda: c.run_calls(calls), repeats=min(3, repeats), warmup=0, budget=budget
        )
        count = len(calls)
    else:
        raise ValueError(f"unknown workload {workload!r}")
    result = {"name": c.name, "times": times, "ran_on": c.ran_on(count)}
    c.close()
    return result


def measure_paired(cpu_n: int, pairs: int) -> dict[str, Any]:
    """Serial and kind="process" runs of the CPU workload, alternating in one interpreter.

    Both sides of each pair see about the same load from the rest of the machine, so the
    ratio of a pair is steadier than the ratio of medians taken minutes apart.
    """
    serial, hx = make("serial"), make("hybridexec-process")
    hx.start()
    items = [cpu_n] * CPU_TASKS
    result: dict[str, Any] = {"serial": [], "process": []}
    for _ in range(pairs):
        for key, c in (("serial", serial), ("process", hx)):
            start = time.perf_counter()
            c.map(cpu_loop, items)
            result[key].append(time.perf_counter() - start)
    hx.close()
    return result


def measure_many(workload: str, contenders: list[str], quick: bool, cpu_n: int) -> None:
    """Measure several contenders one after the other in this interpreter (--quick mode)."""
    for name in contenders:
        result = measure_one(workload, name, quick, cpu_n)
        result["key"] = name
        report(result)


# ---- parent side ------------------------------------------------------------------------------
def _collect(
    table: Table,
    workload: str,
    contenders: list[str],
    quick: bool,
    cpu_n: int,
    runs: int = 1,
) -> None:
    if quick:
        contenders = [c for c in contenders if c not in QUICK_SKIP]
    present, missing = available(contenders)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in present}
    errors: dict[str, str] = {}
    if quick and workload != "cold":
        # One interpreter for all contenders: start-up costs would dominate a quick run.
        got = isolated(
            "benchmarks.bench_core:measure_many",
            90.0,
            workload=workload,
            contenders=present,
            quick=quick,
            cpu_n=cpu_n,
        )
        for value in got.values:
            results[value["key"]].append(value)
        for name in present:
            if not results[name]:
                errors[name] = got.error or "no result"
                break  # the contenders after it never ran
    else:
        for name in present:
            for _ in range(runs):
                got = isolated(
                    "benchmarks.bench_core:measure_one",
                    60.0 if quick else 150.0,
                    workload=workload,
                    contender=name,
                    quick=quick,
                    cpu_n=cpu_n,
                )
                if got.value is None:
                    errors[name] = got.error or "no result"
                    break
                results[name].append(got.value)
    for name in present:
        got_runs = results[name]
        times = [t for r in got_runs for t in r["times"]]
        label = got_runs[0]["name"] if got_runs else name
        error = errors.get(name, "" if got_runs else "not run (an earlier contender failed)")
        print(
            f"  [core/{workload}] {label}: {fmt_seconds(median(times)) if times else error}",
            file=sys.stderr,
            flush=True,
        )
        table.add(
            label,
            times or None,
            note=error,
            **{"ran on": got_runs[-1]["ran_on"] if got_runs else ""},
        )
    if missing:
        table.notes.append(f"not installed, skipped: {', '.join(missing)}")


def _best_peer(table: Table) -> Any:
    # Peers as users get them: hybridexec rows, serial and hand-tuned rows are not peers.
    rows = [
        r
        for r in table.rows
        if r.median is not None
        and not r.name.startswith(("hybridexec", "serial"))
        and "chunksize=" not in r.name
    ]
    return min(rows, key=lambda r: r.median) if rows else None


def run(quick: bool) -> None:
    """Entry point used by ``python -m benchmarks``."""
    sizes = _sizes(quick)
    section("core: hybridexec.map and Executor vs stdlib pools and peers (issue 2)")
    cpu_n = calibrate_cpu_loop(sizes["cpu_seconds"])
    print(f"start methods: {start_methods()}")
    print(
        "fairness: warm pools for every contender (all workers started, plus one untimed run "
        "of the tiny-task and I/O workloads); pool start-up is timed apart in the cold-start "
        "table; a fresh interpreter per contender and workload (--quick: per workload); "
        "processes = CPUs for every pool"
    )
    note = missing_peers_note()
    if note:
        print(f"peers {note}")
    if quick:
        print(
            "--quick: smaller sizes, one repeat, no cold-start table; targets are judged on "
            "the full run"
        )

    # Tiny tasks.
    n = sizes["tiny_items"]
    tiny_table = Table(
        f"tiny-task map: {n:,} calls of x + 1",
        reference="hybridexec",
        items=n,
        extra_columns=["ran on"],
    )
    _collect(
        tiny_table,
        "tiny",
        [
            "serial",
            "hybridexec",
            "hybridexec-process",
            "stdlib-threads",
            "stdlib-processes",
            "stdlib-processes-chunked",
            *PEERS,
        ],
        quick,
        cpu_n,
    )
    tiny_table.notes.append(
        "peers map with their default chunking (stdlib, loky and pebble: "
        "one call per task); the chunksize= row is hand-tuned, not a "
        "default, and is left out of the target's 'best peer'"
    )
    tiny_table.print()
    hx, best = tiny_table.row("hybridexec"), _best_peer(tiny_table)
    if hx and hx.median and best:
        ratio = best.median / hx.median
        print(
            target_line(
                "hybridexec.map >= 4x the throughput of the best peer",
                ratio >= 4,
                f"{ratio:.1f}x {best.name} ({fmt_rate(n / hx.median)} vs "
                f"{fmt_rate(n / best.median)})",
            )
        )
    tuned = tiny_table.ratio("stdlib ProcessPoolExecutor chunksize=n/(4*cpus)", "hybridexec")
    if tuned is not None:
        print(f"  info: vs the hand-tuned chunked stdlib pool: {tuned:.2f}x")

    # CPU-bound.
    cpu_table = Table(
        f"CPU-bound: {CPU_TASKS} pure-Python loops of ~{sizes['cpu_seconds']:g} s each",
        reference=["hybridexec", "hybridexec kind='process'"],
        extra_columns=["ran on"],
    )
    _collect(cpu_table, "cpu", ["serial", "hybridexec", "hybridexec-process", *POOLS], quick, cpu_n)
    cpu_table.print()
    paired = isolated(
        "benchmarks.bench_core:measure_paired", 90.0, cpu_n=cpu_n, pairs=1 if quick else 3
    ).value
    if paired:
        ratios = [s / p for s, p in zip(paired["serial"], paired["process"], strict=True)]
        ratio = median(ratios)
        print(
            f"  paired check (serial and kind='process' alternating in one interpreter): "
            f"per-pair speed-ups {', '.join(f'{r:.2f}x' for r in ratios)}"
        )
    else:
        ratio = cpu_table.ratio("serial (no pool)", "hybridexec kind='process'")
    if ratio is not None:
        print(
            target_line(
                f"kind='process' >= 1.9x faster than serial on {CPUS} cores",
                ratio >= 1.9 if CPUS >= 2 else None,
                f"{ratio:.2f}x",
            )
        )

    # I/O-bound.
    io_tasks = sizes["io_tasks"]
    io_table = Table(
        f"I/O-bound: {io_tasks} sleeps of {IO_SECONDS * 1e3:g} ms",
        reference="hybridexec",
        items=io_tasks,
        extra_columns=["ran on"],
    )
    _collect(io_table, "io", ["hybridexec", *POOLS], quick, cpu_n)
    io_table.notes.append(f"serial would take {io_tasks * IO_SECONDS:.1f} s (not run)")
    io_table.print()
    hx = io_table.row("hybridexec")
    if hx and hx.median:
        print(
            target_line(
                f"{IO_TASKS} sleeps in under 0.15 s",
                None if quick else hx.median < 0.15,
                fmt_seconds(hx.median) + (f" for {io_tasks} sleeps (--quick)" if quick else ""),
            )
        )

    # Mixed.
    calls = len(_mixed_calls(cpu_n, CPU_TASKS, io_tasks))
    mixed_table = Table(
        f"mixed: {CPU_TASKS} CPU loops interleaved with {io_tasks} sleeps, submitted at once "
        f"({calls} calls)",
        reference=["hybridexec", "hybridexec (hinted)"],
        extra_columns=["ran on"],
    )
    _collect(mixed_table, "mixed", ["hybridexec", "hybridexec-hinted", *POOLS], quick, cpu_n)
    ideal = max(CPU_TASKS * sizes["cpu_seconds"] / CPUS, IO_SECONDS)
    mixed_table.notes.append(
        f"ideal: about {ideal:.2f} s (CPU loops spread over {CPUS} processes, sleeps overlapped "
        "on threads); 'hinted' passes kind= per call, plain 'hybridexec' relies on routing"
    )
    mixed_table.print()

    # Cold start.
    if quick:
        return
    cold_table = Table(
        f"cold start: create the pool and map {2 * CPUS} tiny calls",
        reference="hybridexec kind='process'",
        extra_columns=["ran on"],
    )
    _collect(cold_table, "cold", ["hybridexec", "hybridexec-process", *POOLS], quick, cpu_n, runs=2)
    cold_table.notes.append(
        "a fresh interpreter per run: includes starting the forkserver, "
        "imports in the workers and the first round trip"
    )
    cold_table.print()
