"""Issues 4 and 15: automatic routing against fixed choices, verdict accuracy, routing overhead.

- mixed: 200 sleeps of 20 ms interleaved with 8 pure-Python loops of ~0.25 s, submitted at
  once: hybridexec (learning included: a fresh executor each run) vs stdlib threads and
  stdlib processes. Target: at most 0.5x the better of the two.
- pure CPU vs the process lane alone (target within 1.1x), pure I/O vs the thread lane alone
  (within 1.1x), GIL-free C work (hashlib, zlib, numpy) vs threads (within 1.15x, and never
  sent to processes).
- verdict accuracy: 15 function kinds (an argument-dependent function and a Python loop
  measured right after a BLAS product among them) x 20 shuffled runs, each with a fresh
  classifier, judged on the first wave after the first measured call; idle and with a CPU
  hog process running.
- added latency per ``submit`` once a function is learned (target under 20 us).

Pools are warm (every worker started) before timing; each hybridexec run uses a fresh
executor, so learning is part of its time. Run: ``python -m benchmarks --only routing`` or
``python -m benchmarks.bench_routing [--quick] [--accuracy]`` (``--accuracy``: the verdict
table alone).
"""

from __future__ import annotations

import bz2
import concurrent.futures as cf
import hashlib
import json
import pickle
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import hybridexec
from hybridexec._routing import LearningClassifier

from ._common import CPUS, Table, fmt_seconds, measure, section, target_line
from ._workloads import calibrate_cpu_loop, cpu_loop, io_sleep, tiny, warm

IO_TASKS = 200
IO_SECONDS = 0.02
CPU_TASKS = 8
CPU_SECONDS = 0.25
ACCURACY_RUNS = 20


def _warm_processes(ex: hybridexec.Executor) -> None:
    opts = ex.options(kind="process")
    for f in [opts.submit(warm, 0.05) for _ in range(CPUS)]:
        f.result()


def _run_calls(submit: Callable[..., cf.Future[Any]], calls: list[tuple[Any, ...]]) -> None:
    for f in [submit(fn, *args) for fn, *args in calls]:
        f.result()


def _mixed_calls(cpu_n: int, io_tasks: int) -> list[tuple[Any, ...]]:
    per_cpu = io_tasks // CPU_TASKS
    calls: list[tuple[Any, ...]] = []
    for _ in range(CPU_TASKS):
        calls.append((cpu_loop, cpu_n))
        calls.extend((io_sleep, IO_SECONDS) for _ in range(per_cpu))
    return calls


def _hybrid(calls: list[tuple[Any, ...]], kind: str = "auto") -> Callable[[], None]:
    def run() -> None:
        with hybridexec.Executor(max_processes=CPUS) as ex:
            _warm_processes(ex)
            submit = ex.submit if kind == "auto" else ex.options(kind=kind).submit
            _run_calls(submit, calls)

    return run


def _timed_hybrid(
    calls: list[tuple[Any, ...]], kind: str, repeats: int
) -> tuple[list[float], dict[str, int]]:
    # Times the submissions and results only; executor start and warm-up are excluded.
    times: list[float] = []
    lanes: dict[str, int] = {}
    for _ in range(repeats):
        with hybridexec.Executor(max_processes=CPUS) as ex:
            _warm_processes(ex)
            before = dict(ex.stats()["submitted"])
            submit = ex.submit if kind == "auto" else ex.options(kind=kind).submit
            start = time.perf_counter()
            _run_calls(submit, calls)
            times.append(time.perf_counter() - start)
            after = ex.stats()["submitted"]
            lanes = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return times, lanes


def _stdlib(pool: cf.Executor, calls: list[tuple[Any, ...]], repeats: int) -> list[float]:
    with pool:
        if isinstance(pool, cf.ProcessPoolExecutor):
            list(pool.map(warm, [0.05] * CPUS))
        return measure(lambda: _run_calls(pool.submit, calls), repeats=repeats, warmup=0)


def _lanes_note(lanes: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(lanes.items()) if n)


# ---- workloads: time tables -------------------------------------------------------------------
def bench_mixed(cpu_n: int, cpu_seconds: float, io_tasks: int, repeats: int) -> None:
    calls = _mixed_calls(cpu_n, io_tasks)
    table = Table(
        f"mixed: {io_tasks} x {IO_SECONDS * 1e3:.0f} ms sleeps + {CPU_TASKS} x "
        f"{cpu_seconds:g} s Python loops, submitted at once",
        reference="hybridexec auto",
    )
    times, lanes = _timed_hybrid(calls, "auto", repeats)
    table.add("hybridexec auto", times, note=_lanes_note(lanes) + " (learning included)")
    threads = _stdlib(cf.ThreadPoolExecutor(), calls, repeats)
    table.add("stdlib threads", threads, note="default max_workers")
    procs = _stdlib(cf.ProcessPoolExecutor(CPUS), calls, repeats)
    table.add("stdlib processes", procs, note=f"{CPUS} workers")
    table.print()
    best = min(statistics.median(threads), statistics.median(procs))
    ratio = statistics.median(times) / best
    print(target_line("mixed <= 0.5x the better stdlib pool", ratio <= 0.5, f"{ratio:.2f}x"))


def bench_against_lane(
    title: str,
    calls: list[tuple[Any, ...]],
    lane: str,
    target: float,
    repeats: int,
    never: str | None = None,
) -> None:
    table = Table(title, reference="hybridexec auto")
    auto, lanes = _timed_hybrid(calls, "auto", repeats)
    table.add("hybridexec auto", auto, note=_lanes_note(lanes))
    fixed, _ = _timed_hybrid(calls, lane, repeats)
    table.add(f"{lane} lane alone", fixed, note=f"kind={lane!r}")
    table.print()
    ratio = statistics.median(auto) / statistics.median(fixed)
    print(target_line(f"within {target:g}x of the {lane} lane", ratio <= target, f"{ratio:.2f}x"))
    if never is not None:
        sent = lanes.get(never, 0)
        print(target_line(f"never sent to {never}es", sent == 0, f"{sent} tasks went there"))


# ---- verdict accuracy ------------------------------------------------------------------------
def _accuracy_cases() -> list[tuple[str, Callable[..., Any], tuple[Any, ...], str]]:
    rng = random.Random(4)
    words = " ".join(f"user{i}@host{i % 97}.com w{i}" for i in range(40_000))
    event = threading.Event()
    cases: list[tuple[str, Callable[..., Any], tuple[Any, ...], str]] = [
        ("time.sleep", time.sleep, (0.03,), "thread"),
        ("Event.wait", event.wait, (0.03,), "thread"),
        ("python loop", cpu_loop, (calibrate_cpu_loop(0.04),), "process"),
        ("json.loads", json.loads, (json.dumps([{"k": i} for i in range(60_000)]),), "process"),
        ("sorted", sorted, ([rng.random() for _ in range(300_000)],), "process"),
        ("re.findall", re.compile(r"[a-z]+\d+@[a-z]+\d+\.com").findall, (words,), "process"),
        (
            "pickle.loads",
            pickle.loads,
            (pickle.dumps([str(i) for i in range(300_000)]),),
            "process",
        ),
        ("hashlib.sha256", hashlib.sha256, (b"x" * 40_000_000,), "thread"),
        ("zlib.compress", zlib.compress, (bytes(range(256)) * 20_000,), "thread"),
        ("bz2.compress", bz2.compress, (bytes(range(256)) * 4_000,), "thread"),
    ]
    try:
        import numpy as np

        a = np.random.default_rng(1).random((600, 600))
        cases.append(("numpy matmul", np.matmul, (a, a), "thread"))
        cases.append(
            ("numpy sort", np.sort, (np.random.default_rng(2).random(2_000_000),), "thread")
        )
    except ImportError:
        pass
    return cases


def mode_task(mode: str, n: int) -> int:
    """An argument-dependent function: ``"io"`` sleeps ``n`` us, ``"cpu"`` loops ``n`` times."""
    if mode == "io":
        time.sleep(n / 1e6)
        return 0
    total = 0
    for i in range(n):
        total += i
    return total


def _first_wave(clf: LearningClassifier, fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """Measure the first call on a thread; return the lane of the next call (the first wave)."""
    decision = clf.classify(fn, args, {})
    probe = decision.probe
    if probe is None:  # an earlier call settled this key already
        return decision.kind
    assert probe.claim()
    worker = threading.Thread(target=lambda: probe.run(lambda: fn(*args)))
    worker.start()
    worker.join()
    return clf.classify(fn, args, {}).kind


def _judge(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    clf = LearningClassifier()
    if name.startswith("mode="):
        # Learned apart from the other mode, which the classifier saw first.
        other = ("io", 30_000) if args[0] == "cpu" else ("cpu", 3_000_000)
        _first_wave(clf, fn, other)
    elif name.startswith("loop after matmul"):
        fn_before, args_before = _MATMUL
        fn_before(*args_before)  # BLAS helper threads still spin while fn is measured
    return _first_wave(clf, fn, args)


_MATMUL: tuple[Callable[..., Any], tuple[Any, ...]] = (lambda: None, ())


def _accuracy_round(
    cases: list[tuple[str, Callable[..., Any], tuple[Any, ...], str]], runs: int, seed: int
) -> dict[str, int]:
    order = [case for case in cases for _ in range(runs)]
    random.Random(seed).shuffle(order)
    right: dict[str, int] = {name: 0 for name, *_ in cases}
    for name, fn, args, expected in order:
        right[name] += _judge(name, fn, args) == expected
    return right


def bench_accuracy(runs: int) -> None:
    global _MATMUL
    cases = _accuracy_cases()
    loop = calibrate_cpu_loop(0.04)
    cases.append(("mode='io'", mode_task, ("io", 30_000), "thread"))
    cases.append(("mode='cpu'", mode_task, ("cpu", 3_000_000), "process"))
    try:
        import numpy as np

        a = np.random.default_rng(1).random((500, 500))
        _MATMUL = (np.matmul, (a, a))
        cases.append(("loop after matmul", cpu_loop, (loop,), "process"))
    except ImportError:
        pass
    print(
        f"\n### verdict accuracy on the FIRST wave after the first measured call: "
        f"{len(cases)} function kinds x {runs} shuffled runs, fresh classifier each"
    )
    results: dict[str, dict[str, int]] = {}
    for label in ("idle", "CPU hog"):
        hog = None
        if label == "CPU hog":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            results[label] = _accuracy_round(cases, runs, seed=7)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    print(f"  {'function':20} {'expected':8} {'idle':>6} {'CPU hog':>8}")
    for name, _, _, expected in cases:
        idle, hogged = results["idle"][name], results["CPU hog"][name]
        print(f"  {name:20} {expected:8} {idle:3}/{runs:<2} {hogged:4}/{runs:<2}")
    for label, right in results.items():
        total = sum(right.values()) / (len(cases) * runs)
        print(
            target_line(
                f"first-wave accuracy >= 95% ({label})",
                total >= 0.95,
                f"{total:.1%} of {len(cases) * runs} verdicts",
            )
        )


# ---- submit overhead ----------------------------------------------------------------------------
def bench_overhead(n: int) -> None:
    print(f"\n### added latency per submit once learned ({n} submits of a tiny function)")
    per_submit: dict[str, float] = {}
    for label, kind in (("auto (learned)", "auto"), ("kind='thread' (no classifier)", "thread")):
        samples = []
        with hybridexec.Executor(kind=kind) as ex:
            ex.submit(tiny, 0).result()  # learn
            time.sleep(0.1)
            for _ in range(5):
                start = time.perf_counter()
                futures = [ex.submit(tiny, i) for i in range(n)]
                samples.append((time.perf_counter() - start) / n)
                for f in futures:
                    f.result()
        per_submit[label] = statistics.median(samples)
        print(f"  submit() with {label:30} {per_submit[label] * 1e6:6.1f} us per call")
    with hybridexec.Executor() as ex:
        ex.submit(tiny, 0).result()
        time.sleep(0.1)
        decide = measure(
            lambda: [ex._decide(tiny, (1,), {}, ex._options) for _ in range(n)], repeats=5
        )
    routing = statistics.median(decide) / n
    print(f"  routing decision alone (rules + learned verdict look-up): {routing * 1e6:.2f} us")
    added = per_submit["auto (learned)"] - per_submit["kind='thread' (no classifier)"]
    print(target_line("added latency per submit < 20 us", added < 20e-6, f"{added * 1e6:.1f} us"))


def run(quick: bool) -> None:
    section("bench_routing: automatic routing (issue 4)")
    repeats = 2 if quick else 3
    io_tasks = 100 if quick else IO_TASKS
    cpu_n = calibrate_cpu_loop(0.06 if quick else CPU_SECONDS)
    print(
        f"python loop calibrated: cpu_loop({cpu_n}) ~ {fmt_seconds(0.06 if quick else CPU_SECONDS)}"
    )
    bench_mixed(cpu_n, 0.06 if quick else CPU_SECONDS, io_tasks, repeats)
    bench_against_lane(
        f"pure CPU: {CPU_TASKS} Python loops",
        [(cpu_loop, cpu_n)] * CPU_TASKS,
        "process",
        1.1,
        repeats,
    )
    bench_against_lane(
        f"pure I/O: {io_tasks} x {IO_SECONDS * 1e3:.0f} ms sleeps",
        [(io_sleep, IO_SECONDS)] * io_tasks,
        "thread",
        1.1,
        repeats,
    )
    data = b"x" * 16_000_000
    blob = bytes(range(256)) * 16_000
    gil_free: list[tuple[Any, ...]] = [(hashlib.sha256, data)] * 8 + [(zlib.compress, blob)] * 8
    try:
        import numpy as np

        a = np.random.default_rng(1).random((500, 500))
        gil_free += [(np.matmul, a, a)] * 8
    except ImportError:
        pass
    bench_against_lane(
        "GIL-free C work: sha256, zlib.compress, numpy matmul",
        gil_free,
        "thread",
        1.15,
        repeats,
        never="process",
    )
    bench_accuracy(5 if quick else ACCURACY_RUNS)
    bench_overhead(2_000 if quick else 20_000)


if __name__ == "__main__":
    if "--accuracy" in sys.argv[1:]:  # the verdict table alone (about two minutes)
        bench_accuracy(5 if "--quick" in sys.argv[1:] else ACCURACY_RUNS)
    else:
        run("--quick" in sys.argv[1:])
