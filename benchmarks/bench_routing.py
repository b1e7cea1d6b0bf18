"""Issues 4 and 15: automatic routing against fixed choices, verdict accuracy, routing overhead.

- mixed: 200 sleeps of 20 ms interleaved with 8 pure-Python loops of ~0.25 s, submitted at
  once: hybridexec (learning included: a fresh executor each run) vs stdlib threads and
  stdlib processes. Target: at most 0.5x the better of the two.
- pure CPU vs the process lane alone (target within 1.1x), pure I/O vs the thread lane alone
  (within 1.1x), GIL-free C work (hashlib, zlib, numpy) vs threads (within 1.15x, and never
  sent to processes).
- verdict accuracy: 20 rows x 20 shuffled runs, idle and with a CPU hog process running
  (``while True: pass`` in another interpreter). 18 function kinds (sleep, ``Event.wait``, a
  socket request, a Python loop, ``json.loads``, ``sorted``, ``re.findall``, ``pickle.loads``,
  ``sha256``, ``zlib``, ``bz2``, numpy matmul, sort, sum and std, the argument-dependent
  ``mode_task`` in both modes, a Python loop measured right after a BLAS product) are judged
  on the FIRST wave after the first measured call, each run with a fresh classifier: its
  first call is measured on a thread as the executor does, and the lane every call of the
  next wave gets is compared with the expected one. Two more rows follow ``drift_task``, a
  function that changes behaviour over time (it reads a state file: asleep, then a Python
  loop, then asleep again), through a fresh ``Executor`` per run in waves of ``2 * cpus``
  calls submitted at once: a change is handled right when every call of the new phase from
  its second wave on goes to the right lane (the wave in which the change happens cannot
  know it), except, on the turn to processes, the first call of the second wave: the re-check
  that the first wave's figures asked for is measured on a thread, as the first call of any
  function is (the calls submitted with it wait for its verdict). The strict count, without
  that allowance, is printed too. The first explanation of each wrong verdict is printed,
  for the routing owner.
- added latency per ``submit`` once a function is learned (target under 20 us).

Pools are warm (every worker started) before timing; each hybridexec run uses a fresh
executor, so learning is part of its time. Run: ``python -m benchmarks --only routing`` or
``python -m benchmarks.bench_routing [--quick] [--accuracy]`` (``--accuracy``: the verdict
table alone).
"""

from __future__ import annotations

import bz2
import collections
import concurrent.futures as cf
import hashlib
import json
import os
import pickle
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hybridexec
from hybridexec._routing import LearningClassifier

from ._common import CPUS, Table, fmt_seconds, measure, section, target_line
from ._workloads import (
    calibrate_cpu_loop,
    cpu_loop,
    drift_task,
    io_sleep,
    mode_task,
    socket_call,
    start_server,
    stop_server,
    tiny,
    warm,
)

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
Case = tuple[str, Callable[..., Any], tuple[Any, ...], str]
DRIFT = "drift"  # the case name of the function that changes behaviour over time
DRIFT_PLAN = (("io", 2), ("cpu", 5), ("io", 3))  # (behaviour, waves), in order
DRIFT_ROWS = {1: ("drift io->cpu", "process"), 2: ("drift cpu->io", "thread")}
DRIFT_IO_SECONDS = 0.02


def _accuracy_cases(port: int) -> list[Case]:
    rng = random.Random(4)
    words = " ".join(f"user{i}@host{i % 97}.com w{i}" for i in range(40_000))
    event = threading.Event()
    cases: list[Case] = [
        ("time.sleep", time.sleep, (0.03,), "thread"),
        ("Event.wait", event.wait, (0.03,), "thread"),
        ("socket recv", socket_call, (port, 30, 200_000), "thread"),
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
        ("mode='io'", mode_task, ("io", 30_000), "thread"),
        ("mode='cpu'", mode_task, ("cpu", 3_000_000), "process"),
    ]
    try:
        import numpy as np

        a = np.random.default_rng(1).random((600, 600))
        big = np.random.default_rng(3).random(8_000_000)
        cases.append(("numpy matmul", np.matmul, (a, a), "thread"))
        cases.append(
            ("numpy sort", np.sort, (np.random.default_rng(2).random(2_000_000),), "thread")
        )
        cases.append(("numpy sum (8M)", np.sum, (big,), "thread"))
        cases.append(("numpy std (8M)", np.std, (big,), "thread"))
        loop = calibrate_cpu_loop(0.04)
        cases.append(("loop after matmul", cpu_loop, (loop,), "process"))
    except ImportError:
        pass
    return cases


def _first_wave(clf: LearningClassifier, fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """Measure the first call on a thread; return the lane of the next call (the first wave).

    Every call of the first wave gets this same decision: it is the learned verdict, looked up.
    """
    decision = clf.classify(fn, args, {})
    probe = decision.probe
    if probe is None:  # an earlier call settled this key already
        return decision.kind
    assert probe.claim()
    worker = threading.Thread(target=lambda: probe.run(lambda: fn(*args)))
    worker.start()
    worker.join()
    return clf.classify(fn, args, {}).kind


def _judge(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, str]:
    """The first-wave lane of ``fn(*args)`` with a fresh classifier, and the explanation."""
    clf = LearningClassifier()
    if name.startswith("mode="):
        # Learned apart from the other mode, which the classifier saw first.
        other = ("io", 30_000) if args[0] == "cpu" else ("cpu", 3_000_000)
        _first_wave(clf, fn, other)
    elif name.startswith("loop after matmul"):
        fn_before, args_before = _MATMUL
        fn_before(*args_before)  # BLAS helper threads still spin while fn is measured
    return _first_wave(clf, fn, args), str(clf.explain(fn, args))


_MATMUL: tuple[Callable[..., Any], tuple[Any, ...]] = (lambda: None, ())


def _drift_run(cpu_n: int) -> tuple[dict[str, bool], str, dict[str, str]]:
    """One run of ``drift_task`` through a fresh executor, in waves of ``2 * CPUS`` calls.

    It sleeps for the first phase, loops in Python for the second, sleeps again for the third
    (``DRIFT_PLAN``); each wave is submitted at once and awaited. A change is handled right
    when every call of every wave of the new phase from its second wave on went to the right
    lane: the wave in which the change happens cannot know it, the next one must.

    Returns ``{row: right}`` (the change back to sleeping is judged only when the loops
    ended in processes), the lanes of every wave (``"tt|tt pppp|..."``) and the explanation
    given after each judged wave.
    """
    fd, path = tempfile.mkstemp(prefix="hx-drift-")
    os.close(fd)
    phases: list[str] = []
    reasons: dict[str, str] = {}
    right: dict[str, bool] = {}
    strict: dict[str, bool] = {}  # without the allowance for the measured re-check
    try:
        with hybridexec.Executor(max_processes=CPUS) as ex:
            for index, (behaviour, waves) in enumerate(DRIFT_PLAN):
                Path(path).write_text(behaviour)
                lanes: list[str] = []
                for _ in range(waves):
                    futures = [
                        ex.submit(drift_task, path, cpu_n, DRIFT_IO_SECONDS)
                        for _ in range(2 * CPUS)
                    ]
                    for f in futures:
                        f.result()
                    lanes.append("".join(f.kind[0] for f in futures))
                    if index in DRIFT_ROWS and len(lanes) == 2:
                        row = DRIFT_ROWS[index][0]
                        reasons[row] = str(ex.explain(drift_task, path, cpu_n, DRIFT_IO_SECONDS))
                phases.append("|".join(lanes))
                if index in DRIFT_ROWS:
                    row, expected = DRIFT_ROWS[index]
                    right[row] = all(set(w) == {expected[0]} for w in lanes[2:]) and (
                        len(lanes) < 2 or _second_wave_right(lanes[1], expected)
                    )
                    strict[row] = all(set(w) == {expected[0]} for w in lanes[1:])
                    if index == 2 and not phases[1].endswith("p" * 2 * CPUS):
                        # It never reached processes: going back to threads proves nothing.
                        del right[row], strict[row]
    finally:
        os.unlink(path)
    right.update({f"{row} (strict)": ok for row, ok in strict.items()})
    return right, " ".join(phases), reasons


def _second_wave_right(lanes: str, expected: str) -> bool:
    """The first wave after a change shows: every call on the ``expected`` lane, except, on
    a turn to processes, the one call measured on a thread to confirm it (the re-check that
    the first wave's figures asked for; the calls submitted with it wait for its verdict)."""
    wrong = sum(lane != expected[0] for lane in lanes)
    return wrong == 0 or (expected == "process" and wrong == 1 and lanes[0] == "t")


def _accuracy_round(
    cases: list[Case], runs: int, seed: int, drift_runs: int
) -> tuple[dict[str, int], dict[str, Any]]:
    """Judge every case ``runs`` times in one shuffled order; return rights and evidence."""
    order = [case[0] for case in cases for _ in range(runs)] + [DRIFT] * drift_runs
    random.Random(seed).shuffle(order)
    by_name = {case[0]: case for case in cases}
    right: dict[str, int] = {name: 0 for name, *_ in cases}
    right.update({row: 0 for row, _ in DRIFT_ROWS.values()})
    judged: collections.Counter[str] = collections.Counter(order)
    judged.update({row: 0 for row, _ in DRIFT_ROWS.values()})
    wrong: dict[str, str] = {}  # first explanation of a wrong verdict per row
    patterns: collections.Counter[str] = collections.Counter()
    strict: collections.Counter[str] = collections.Counter()  # "row": right, "row n": judged
    drift_n = calibrate_cpu_loop(0.03)
    for name in order:
        if name == DRIFT:
            rights, pattern, reasons = _drift_run(drift_n)
            patterns[pattern] += 1
            for row, ok in rights.items():
                if row.endswith(" (strict)"):
                    strict[row] += ok
                    strict[f"{row} n"] += 1
                    continue
                right[row] += ok
                judged[row] += 1
                if not ok:
                    wrong.setdefault(row, f"waves {pattern}; after the 2nd wave: {reasons[row]}")
            continue
        _, fn, args, expected = by_name[name]
        kind, why = _judge(name, fn, args)
        right[name] += kind == expected
        if kind != expected:
            wrong.setdefault(name, why)
    return right, {"wrong": wrong, "patterns": patterns, "judged": judged, "strict": strict}


def bench_accuracy(runs: int, drift_runs: int) -> None:
    global _MATMUL
    server, port = start_server()
    try:
        cases = _accuracy_cases(port)
        try:
            import numpy as np

            a = np.random.default_rng(1).random((500, 500))
            _MATMUL = (np.matmul, (a, a))
        except ImportError:
            pass
        rows = [(name, expected) for name, _, _, expected in cases]
        rows += list(DRIFT_ROWS.values())
        print(
            f"\n### verdict accuracy on the FIRST wave after the first measured call: "
            f"{len(rows)} rows x {runs} shuffled runs, fresh classifier each"
        )
        print(
            f"  drift rows: drift_task changes behaviour over time (io -> cpu -> io, waves of "
            f"{2 * CPUS} calls at once, a fresh executor per run); right = every wave of the "
            "new phase from its 2nd wave on went to the right lane (io->cpu: but for the "
            "re-check measured on a thread, the 2nd wave's first call); cpu->io is judged only "
            "in runs whose loops ended in processes (n/m: right of judged)"
        )
        results: dict[str, dict[str, int]] = {}
        evidence: dict[str, dict[str, Any]] = {}
        for label in ("idle", "CPU hog"):
            hog = None
            if label == "CPU hog":
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                results[label], evidence[label] = _accuracy_round(cases, runs, 7, drift_runs)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    finally:
        stop_server(server)
    print(f"  {'function':20} {'expected':8} {'idle':>6} {'CPU hog':>8}")
    for name, expected in rows:
        cells = [f"{results[k][name]:2}/{evidence[k]['judged'][name]:<2}" for k in results]
        print(f"  {name:20} {expected:8} {cells[0]:>6} {cells[1]:>8}")
    for label, ev in evidence.items():
        drifts = sum(ev["patterns"].values())
        for pattern, count in ev["patterns"].most_common(2):
            print(f"  drift lanes per wave ({label}, {count}/{drifts} runs): {pattern}")
        for name, why in ev["wrong"].items():
            print(f"  wrong ({label}) {name}: e.g. {why}")
    for label, ev in evidence.items():
        for row, _ in DRIFT_ROWS.values():
            key = f"{row} (strict)"
            print(
                f"  {key} ({label}): {ev['strict'][key]}/{ev['strict'][key + ' n']} "
                "(no call of the 2nd wave on the old lane, not even the measured re-check)"
            )
    for label, right in results.items():
        total_rows = sum(evidence[label]["judged"][name] for name, _ in rows)
        total = sum(right.values()) / max(1, total_rows)
        print(
            target_line(
                f"first-wave accuracy >= 95% ({label})",
                total >= 0.95,
                f"{total:.1%} of {total_rows} verdicts",
            )
        )
    changing = ["mode='io'", "mode='cpu'", *(row for row, _ in DRIFT_ROWS.values())]
    for label, right in results.items():
        count = sum(evidence[label]["judged"][n] for n in changing)
        share = sum(right[n] for n in changing) / max(1, count)
        print(
            target_line(
                f"argument-dependent and switching rows right within one wave ({label})",
                share >= 0.95,
                f"{share:.1%} of {count}",
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
            lambda: [ex._router.decide(tiny, (1,), {}, ex._options) for _ in range(n)], repeats=5
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
    bench_accuracy(5 if quick else ACCURACY_RUNS, 2 if quick else ACCURACY_RUNS)
    bench_overhead(2_000 if quick else 20_000)


if __name__ == "__main__":
    if "--accuracy" in sys.argv[1:]:  # the verdict table alone (about two minutes)
        quick = "--quick" in sys.argv[1:]
        bench_accuracy(5 if quick else ACCURACY_RUNS, 2 if quick else ACCURACY_RUNS)
    else:
        run("--quick" in sys.argv[1:])
