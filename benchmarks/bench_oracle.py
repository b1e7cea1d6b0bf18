"""Issue 15: automatic routing against a hand-routed oracle, every fixed pool, and memory.

Workloads (built in every child from the same seed, sizes calibrated once by the parent):

- mixed, interleaved: socket requests to a local server (in its own process: 30 ms latency,
  64 KB answers), pure-Python loops, GIL-free C (``sha256`` of 8 MB, ``zlib`` of 2 MB,
  BLAS 400 x 400 products) and the argument-dependent ``mode_task`` (``"io"``: 20 ms asleep,
  ``"cpu"``: a Python loop), shuffled with a fixed seed and submitted at once;
- mixed, grouped: the same calls in blocks, one function after the other (bursts of a new
  function: its first call is measured while the rest of the burst waits for the verdict);
- pure CPU: 8 Python loops, against serial (no pool), the stdlib process pool and the machine's
  ceiling (the loops on raw forked processes, no pool: what the cores gave at that moment);
- GIL-free C: ``sha256``, ``zlib`` and BLAS products, against the stdlib thread pool;
- numpy chunks: 8 arrays of 16 MB (4 MB in ``--quick``), each sorted (GIL-free C) by one task;
  peak memory of the whole process tree.

**The oracle** is the same calls, each sent by hand to the lane known to be best for it:
sockets, sleeps (``mode_task("io")``) and GIL-free C to threads, Python loops (``cpu_loop``,
``mode_task("cpu")``) to processes. It is measured twice: on hybridexec's own lanes
(``ex.options(kind=...)``: the same dispatch costs, so the ratio is the cost of routing
alone) and on a ``ThreadPoolExecutor()`` beside a ``ProcessPoolExecutor(cpus)``. The target
is judged against the faster of the two (by median).

Contenders each run in a fresh interpreter (``isolated``), one per contender and round, the
order rotating between rounds so a load change on the shared machine hits all of them. Each
workload gets a fresh pool, warm (every worker started) before timing, then is timed twice:
fixed pools count both runs; hybridexec's first run (learning included: a fresh executor
that has never seen the functions) is the judged row, its second run is shown as "learned".

Memory: the chunks are created first, then the pool (as a user would: no warm-up), and all
8 tasks are submitted at once. A thread of the child samples every 5 ms the resident set
size (RSS, ``psutil``) of the child and all its descendants (workers, fork server, resource
tracker) and keeps the largest sum: "peak RSS of the process tree". Shared pages count once
per process, as RSS does.

Run: ``python -m benchmarks --only oracle`` or ``python -m benchmarks.bench_oracle [--quick]``;
``HX_BENCH_WORKLOADS=gilfree,cpu`` (say) runs only those workloads (and ``memory``, the peak).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._common import CPUS, Table, isolated, missing_peers_note, report, section, target_line
from ._peers import available, make
from ._workloads import (
    calibrate_cpu_loop,
    cpu_loop,
    matmul_trace,
    mode_task,
    sha256_hex,
    socket_call,
    sorted_median,
    start_server,
    stop_server,
    warm,
    zlib_size,
)
from .bench_overhead import _bytecode_cached

Call = tuple[str, Callable[..., Any], tuple[Any, ...], str]
"""``(label, fn, args, best lane)``."""

FIXED = ["stdlib-threads", "stdlib-processes", "loky", "pebble", "mpire", "joblib"]
ORACLES = ["oracle-hybridexec", "oracle-stdlib"]
NAMES = {
    "hybridexec": "hybridexec",
    "oracle-hybridexec": "oracle: hybridexec lanes",
    "oracle-stdlib": "oracle: stdlib pools",
    "stdlib-threads": "stdlib threads",
    "stdlib-processes": "stdlib processes",
    "loky": "loky",
    "pebble": "pebble",
    "mpire": "mpire",
    "joblib": "joblib",
    "serial": "serial (no pool)",
    "ceiling": "machine ceiling (raw fork)",
}
LEARNED = "hybridexec, learned"
MIXED = ("mixed", "grouped")
ROUNDS = 2


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"sockets": 24, "loops": 4, "c": 2, "mode_io": 6, "mode_cpu": 2, "pure": 4}
    return {"sockets": 40, "loops": 4, "c": 4, "mode_io": 10, "mode_cpu": 2, "pure": 8}


def build_calls(workload: str, quick: bool, port: int, cpu_n: int, mode_n: int) -> list[Call]:
    """The calls of ``workload``, the same in every child."""
    size = _sizes(quick)
    data = bytes(random.Random(1).getrandbits(8) for _ in range(1 << 16)) * 128  # 8 MB
    blob = (bytes(range(256)) * 64 + data[:16_384]) * 64  # 2 MB, compressible
    calls: list[Call] = []
    if workload in ("gilfree", *MIXED):
        import numpy as np

        a = np.random.default_rng(1).random((400, 400))
        n = size["c"] if workload != "gilfree" else 8
        calls += [("sha256", sha256_hex, (data,), "thread")] * n
        calls += [("zlib", zlib_size, (blob,), "thread")] * n
        calls += [("matmul", matmul_trace, (a,), "thread")] * n
    if workload == "gilfree":
        return calls
    if workload == "cpu":
        return [("python loop", cpu_loop, (cpu_n,), "process")] * size["pure"]
    loops = [("python loop", cpu_loop, (cpu_n,), "process")] * size["loops"]
    sockets = [("socket", socket_call, (port, 30, 65_536), "thread")] * size["sockets"]
    modes = [("mode='io'", mode_task, ("io", 20_000), "thread")] * size["mode_io"]
    modes += [("mode='cpu'", mode_task, ("cpu", mode_n), "process")] * size["mode_cpu"]
    if workload == "grouped":
        return loops + sockets + calls + modes
    calls = loops + sockets + calls + modes
    random.Random(15).shuffle(calls)
    return calls


# ---- in the child -----------------------------------------------------------------------------
def _warm_hybrid(ex: Any) -> None:
    list(ex.options(kind="process").map(warm, [0.05] * (2 * CPUS)))
    list(ex.options(kind="thread").map(warm, [0.01] * 4))


def _lanes(futures: list[tuple[str, Any]]) -> dict[str, dict[str, int]]:
    lanes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for label, f in futures:
        lanes[label][f.kind] += 1
    return {label: dict(c) for label, c in lanes.items()}


def _timeline(futures: list[tuple[str, Any]], start: float) -> dict[str, str]:
    """Per label: lanes, and medians/maxima of the wait before running and of the end (ms).

    ``HX_BENCH_TIMELINE=1``: each future notes when it started running (``_t_run``, set by a
    wrapper of ``set_running_or_notify_cancel`` in this child only) and when it was done.
    """
    rows: dict[str, list[tuple[float, float, str]]] = collections.defaultdict(list)
    for label, f in futures:
        run = getattr(f, "_t_run", start)
        done = getattr(f, "_t_done", run)
        rows[label].append(((run - start) * 1e3, (done - start) * 1e3, f.kind))
    out = {}
    for label, r in rows.items():
        waits, ends = [w for w, _, _ in r], [e for _, e, _ in r]
        lanes = collections.Counter(k for _, _, k in r)
        out[label] = (
            f"{dict(lanes)} start med {statistics.median(waits):.0f} max {max(waits):.0f}, "
            f"done med {statistics.median(ends):.0f} max {max(ends):.0f}"
        )
    if os.environ.get("HX_BENCH_TIMELINE") == "2":  # every call, by end: the critical path
        calls = sorted((e, w, k, label) for label, r in rows.items() for w, e, k in r)
        for n, (e, w, k, label) in enumerate(calls):
            out[f"#{n:02} {label}"] = f"{k:7} start {w:6.1f} done {e:6.1f}"
    return out


class _Verdicts:
    """``HX_BENCH_TIMELINE=2``: the classifier's DEBUG lines (verdicts, changes), timed."""

    def __init__(self) -> None:
        import logging

        self.lines: list[tuple[float, str]] = []
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self._emit  # type: ignore[method-assign]
        logger = logging.getLogger("hybridexec")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.handler)
        from hybridexec._routing import _classifier

        conclude = _classifier.LearningClassifier._conclude

        def noting(owner: Any, entry: Any, m: Any, recheck: bool) -> None:
            figures = " ".join(
                f"{k}={v * 1e3 if isinstance(v, float) else v:.3g}"
                for k, v in m._asdict().items()
                if v and not isinstance(v, bool)
            )
            gil = f"gil_share={m.gil_share:.2f} gil_fraction={m.gil_fraction:.2f}"
            self.lines.append((time.perf_counter(), f"measured {entry.name}: {gil} {figures}"))
            conclude(owner, entry, m, recheck)

        _classifier.LearningClassifier._conclude = noting  # type: ignore[method-assign]

    def _emit(self, record: Any) -> None:
        # Only the classifier's own lines, formatted now (an explanation changes later); the
        # router's line per call is not formatted: it would perturb what is timed.
        if str(record.msg).startswith("routing:"):
            self.lines.append((time.perf_counter(), record.getMessage()))

    def since(self, start: float) -> dict[str, str]:
        lines, self.lines = self.lines, []
        return {f"v{n:02}": f"{(t - start) * 1e3:6.1f} {m[:600]}" for n, (t, m) in enumerate(lines)}


def _note_times() -> None:
    from hybridexec import _futures

    running = _futures.Future.set_running_or_notify_cancel

    def note(self: Any) -> bool:
        self._t_run = time.perf_counter()
        return running(self)

    _futures.Future.set_running_or_notify_cancel = note  # type: ignore[method-assign]
    settle = _futures.Future.settle

    def done(self: Any, ok: bool, value: Any) -> None:
        self._t_done = time.perf_counter()
        settle(self, ok, value)

    _futures.Future.settle = done  # type: ignore[method-assign]


def _run_hybrid(calls: list[Call], oracle: bool) -> dict[str, Any]:
    import hybridexec

    timeline = os.environ.get("HX_BENCH_TIMELINE") in ("1", "2")
    if timeline:
        _note_times()
    timelines: list[dict[str, str]] = []
    verdicts = _Verdicts() if os.environ.get("HX_BENCH_TIMELINE") == "2" else None
    times: list[float] = []
    lanes: list[dict[str, dict[str, int]]] = []
    explain: dict[str, str] = {}
    with hybridexec.Executor(max_processes=CPUS) as ex:
        _warm_hybrid(ex)
        by_lane = {k: ex.options(kind=k) for k in ("thread", "process")}
        for _ in range(2):
            start = time.perf_counter()
            futures = [
                (label, (by_lane[best] if oracle else ex).submit(fn, *args))
                for label, fn, args, best in calls
            ]
            for _, f in futures:
                f.result()
            times.append(time.perf_counter() - start)
            lanes.append(_lanes(futures))
            if timeline:
                time.sleep(0.05)  # untimed: the last done callbacks run
                timelines.append(_timeline(futures, start))
                if verdicts is not None:
                    timelines[-1].update(verdicts.since(start))
                    timelines[-1]["moved"] = str(ex.stats().get("moved"))
        if not oracle:
            for label, fn, args, _ in {c[0]: c for c in calls}.values():
                explain[label] = str(ex.explain(fn, *args))
    return {"times": times, "lanes": lanes, "explain": explain, "timelines": timelines}


def _run_oracle_stdlib(calls: list[Call]) -> dict[str, Any]:
    times = []
    with cf.ThreadPoolExecutor() as threads, cf.ProcessPoolExecutor(CPUS) as procs:
        list(procs.map(warm, [0.05] * (2 * CPUS)))
        list(threads.map(warm, [0.01] * 4))
        pools: dict[str, cf.Executor] = {"thread": threads, "process": procs}
        for _ in range(2):
            start = time.perf_counter()
            futures = [pools[best].submit(fn, *args) for _, fn, args, best in calls]
            for f in futures:
                f.result()
            times.append(time.perf_counter() - start)
    return {"times": times}


def _run_peer(name: str, calls: list[Call]) -> dict[str, Any]:
    contender = make(name)
    contender.start()
    try:
        plain = [(fn, args, None) for _, fn, args, _ in calls]
        times = []
        for _ in range(2):
            start = time.perf_counter()
            contender.run_calls(plain)
            times.append(time.perf_counter() - start)
    finally:
        contender.close()
    return {"times": times}


def contender_child(
    contender: str, workloads: list[str], quick: bool, port: int, cpu_n: int, mode_n: int
) -> None:
    """In a fresh interpreter: time ``contender`` on each workload; report one dict each."""
    for workload in workloads:
        calls = build_calls(workload, quick, port, cpu_n, mode_n)
        if contender in ("hybridexec", "oracle-hybridexec"):
            result = _run_hybrid(calls, oracle=contender != "hybridexec")
        elif contender == "oracle-stdlib":
            result = _run_oracle_stdlib(calls)
        else:
            result = _run_peer(contender, calls)
        report({"workload": workload, **result})


class _TreePeak:
    """Samples the summed RSS of this process and all its descendants every 5 ms."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        import psutil

        total = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass  # it ended meanwhile
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.005)

    def __enter__(self) -> _TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def memory_child(contender: str, quick: bool) -> None:
    """In a fresh interpreter: peak tree RSS while ``contender`` sorts 8 numpy chunks."""
    import numpy as np

    length = 500_000 if quick else 2_000_000
    rng = np.random.default_rng(8)
    chunks = [rng.random(length) for _ in range(8)]
    calls = [(sorted_median, (chunk,), None) for chunk in chunks]
    tree = _TreePeak()
    baseline = tree.now()
    pool = make(contender)
    with tree:
        pool.create()
        start = time.perf_counter()
        pool.run_calls(calls)
        seconds = time.perf_counter() - start
    pool.close()
    report({"peak": tree.peak, "baseline": baseline, "seconds": seconds, "lanes": pool.ran_on(8)})


# ---- in the parent ----------------------------------------------------------------------------
def _plan(quick: bool) -> dict[str, list[str]]:
    if quick:
        plan = {
            "hybridexec": ["mixed", "cpu", "gilfree"],
            "oracle-hybridexec": ["mixed"],
            "stdlib-threads": ["mixed", "gilfree"],
            "stdlib-processes": ["mixed", "cpu"],
            "serial": ["cpu"],
            "ceiling": ["cpu"],
        }
    else:
        plan = {name: list(MIXED) for name in ["hybridexec", *ORACLES, *FIXED]}
        plan["hybridexec"] += ["cpu", "gilfree"]
        plan["stdlib-threads"].append("gilfree")
        plan["stdlib-processes"].append("cpu")
        plan["serial"] = ["cpu"]
        plan["ceiling"] = ["cpu"]
    wanted = _wanted()
    plan = {name: [w for w in ws if w in wanted] for name, ws in plan.items()}
    only = {c.strip() for c in os.environ.get("HX_BENCH_CONTENDERS", "").split(",") if c.strip()}
    if only:  # diagnostics: e.g. hybridexec,oracle-hybridexec,oracle-stdlib
        plan = {name: ws for name, ws in plan.items() if name in only}
    present, _ = available({name: ws for name, ws in plan.items() if ws})
    return {name: plan[name] for name in present}


def _wanted() -> set[str]:
    """The workloads to run: ``HX_BENCH_WORKLOADS`` (comma-separated: mixed, grouped, cpu,
    gilfree, memory), all of them when it is unset."""
    raw = os.environ.get("HX_BENCH_WORKLOADS", "")
    return {w.strip() for w in raw.split(",") if w.strip()} or {*MIXED, "cpu", "gilfree", "memory"}


def _collect(
    quick: bool, rounds: int, port: int, cpu_n: int, mode_n: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[dict[str, Any]]], list[str]]:
    plan = _plan(quick)
    names = list(plan)
    times: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    hybrid: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    errors: list[str] = []
    # Only the memory workload asked for: no contender times anything (and no rotation).
    for r in range(rounds if names else 0):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            got = isolated(
                "benchmarks.bench_oracle:contender_child",
                60 if quick else 180,
                contender=name,
                workloads=plan[name],
                quick=quick,
                port=port,
                cpu_n=cpu_n,
                mode_n=mode_n,
            )
            if got.error:
                errors.append(f"{NAMES[name]}: {got.error}")
            for value in got.values:
                workload, runs = value["workload"], value["times"]
                if name == "hybridexec":
                    times[workload][NAMES[name]].append(runs[0])
                    times[workload][LEARNED].append(runs[1])
                    hybrid[workload].append(value)
                else:
                    times[workload][NAMES[name]].extend(runs)
    return times, hybrid, errors


_STDLIB_PACKAGES = ("concurrent", "multiprocessing", "encodings", "json", "asyncio", "logging")
_PACKAGES = ("hybridexec", "cloudpickle", "psutil", "threadpoolctl", "numpy", "loky", "pebble")
_PACKAGES += ("mpire", "joblib")


def _compile_all() -> None:
    """Write the bytecode of every contender's modules into the cache (untimed).

    The cache prefix holds no bytecode at first, the standard library's included: the first
    interpreter to import a module compiled it in its timed run. That was hybridexec's child
    of round 0 (it runs first), for the standard library modules every contender uses and for
    those the workloads import on their first call (a socket's first connection imports
    ``encodings.idna``: 9-17 ms of compiling with the GIL held, which read as a GIL-bound
    call: mixed9). Now all of them are compiled before any contender runs.
    """
    import importlib.util
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    places = [["-l", stdlib]] + [[os.path.join(stdlib, name)] for name in _STDLIB_PACKAGES]
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        places += [[where] for where in (spec.submodule_search_locations or [])] if spec else []
    for place in places:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", *place],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def _table(title: str, rows: dict[str, list[float]]) -> Table:
    table = Table(title, reference="hybridexec")
    for name, samples in rows.items():
        note = ""
        if name == "hybridexec":
            note = "fresh executor: learning included (judged)"
        elif name == LEARNED:
            note = "same executor, second run"
        table.add(name, samples, note=note)
    table.print()
    return table


def _lanes_line(values: list[dict[str, Any]]) -> None:
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for value in values:
        for label, lanes in value["lanes"][0].items():
            total[label].update(lanes)
    text = "; ".join(
        f"{label} " + " ".join(f"{k}:{n}" for k, n in sorted(c.items()))
        for label, c in total.items()
    )
    print(f"  hybridexec lanes, learning run, all rounds: {text}")


def _explain_lines(values: list[dict[str, Any]]) -> None:
    if values:
        for label, why in values[-1]["explain"].items():
            print(f"    explain({label}): {why}")
        for value in values:
            for n, timeline in enumerate(value.get("timelines", [])):
                print(f"    timeline ({'learning' if n == 0 else 'learned'} run, ms):")
                for label, text in timeline.items():
                    print(f"      {label:12} {text}")


def _judge_mixed(workload: str, rows: dict[str, list[float]], values: list[Any]) -> None:
    med = {name: statistics.median(s) for name, s in rows.items() if s}
    hx = med.get("hybridexec")
    if hx is None:
        print(target_line(f"{workload}: hybridexec measured", False, "no figures"))
        return
    _lanes_line(values)
    _explain_lines(values)
    oracles = {n: med[n] for n in (NAMES[o] for o in ORACLES) if n in med}
    if oracles:
        best = min(oracles, key=oracles.__getitem__)
        ratio = hx / oracles[best]
        others = ", ".join(f"{hx / v:.2f}x of {n}" for n, v in oracles.items())
        print(target_line(f"{workload}: within 1.15x of the oracle", ratio <= 1.15, others))
    fixed = {n: med[n] for n in (NAMES[f] for f in FIXED) if n in med}
    if fixed:
        closest = min(fixed, key=fixed.__getitem__)
        print(
            target_line(
                f"{workload}: faster than every fixed pool ({len(fixed)})",
                hx < fixed[closest],
                f"closest {closest}: {fixed[closest] / hx:.2f}x slower than hybridexec",
            )
        )


def _judge_pure(rows: dict[str, list[float]], calls: int) -> None:
    """Pure CPU: the learned run is judged; the fresh one against what learning allows at best.

    On a fresh executor the first call runs on a thread for its measurement window ``W``
    before the others may go to processes (a call found holding the GIL reports after
    ``_probe.EARLY_HELD_SECONDS`` where that exists); that call then holds its core to the end. With
    ``calls`` equal calls of ``L`` seconds on 2 cores, one core runs the measured call and
    ``calls/2 - 1`` more, the other starts ``W`` late and runs ``calls/2``: the best makespan is
    ``W + calls/2 * L`` (calls are not divisible), a speed-up of at most ``2 / (1 + 2W/(calls L))``:
    1.88x for 8 calls of 0.1 s and a 25 ms window, 1.96x with 8 ms.
    """
    serial = statistics.median(rows[NAMES["serial"]])
    fresh = serial / statistics.median(rows["hybridexec"])
    if rows.get(LEARNED):
        learned = serial / statistics.median(rows[LEARNED])
        print(target_line(f">= 1.95x serial on {CPUS} cores", learned >= 1.95, f"{learned:.2f}x"))
        if rows.get(NAMES["ceiling"]):  # what the machine gave to raw forked processes
            ceiling = serial / statistics.median(rows[NAMES["ceiling"]])
            print(
                f"  the machine's ceiling (the calls on {CPUS} raw forked processes): "
                f"{ceiling:.2f}x serial; hybridexec, learned, at {learned / ceiling:.0%} of it"
            )
    if CPUS == 2 and calls % 2 == 0:
        from hybridexec._routing import _probe
        from hybridexec._routing._verdicts import WINDOW_SECONDS

        window = getattr(_probe, "EARLY_HELD_SECONDS", WINDOW_SECONDS)  # older: no early report
        per_call = serial / calls
        bound = 2 / (1 + 2 * window / (calls * per_call))
        print(
            f"  fresh executor (learning included): {fresh:.2f}x serial; at best {bound:.2f}x "
            f"with a {window * 1e3:.0f} ms window ({fresh / bound:.0%} of that bound)"
        )
    else:
        print(f"  fresh executor (learning included): {fresh:.2f}x serial")


def _memory(quick: bool) -> None:
    names, _ = available(["hybridexec", "stdlib-threads"] if quick else ["hybridexec", *FIXED])
    mb = 4 if quick else 16
    print(
        f"\n### peak memory: 8 numpy chunks of {mb} MB sorted at once (cold pool); "
        "sum of RSS of the process tree, sampled every 5 ms"
    )
    peaks: dict[str, float] = {}
    for name in names:
        got = isolated(
            "benchmarks.bench_oracle:memory_child",
            60 if quick else 120,
            contender=name,
            quick=quick,
        )
        if got.error or not isinstance(got.value, dict):
            print(f"  {NAMES[name]:20} failed: {got.error}")
            continue
        v = got.value
        peaks[NAMES[name]] = v["peak"] / 2**20
        print(
            f"  {NAMES[name]:20} peak {v['peak'] / 2**20:7.0f} MB   before the pool "
            f"{v['baseline'] / 2**20:5.0f} MB   {v['seconds']:.2f} s   ran on {v['lanes']}"
        )
    fixed = {n: p for n, p in peaks.items() if n != "hybridexec"}
    if "hybridexec" in peaks and fixed:
        best = min(fixed, key=fixed.__getitem__)
        ratio = peaks["hybridexec"] / fixed[best]
        print(
            target_line(
                "numpy chunks: peak memory within 1.3x of the best fixed pool",
                ratio <= 1.3,
                f"{ratio:.2f}x of {best}",
            )
        )


def run(quick: bool) -> None:
    section("bench_oracle: routing against a hand-routed oracle and every fixed pool (issue 15)")
    cpu_seconds = 0.04 if quick else 0.1
    cpu_n = calibrate_cpu_loop(cpu_seconds)
    start = time.perf_counter()
    mode_task("cpu", 200_000)
    mode_n = int(200_000 * 0.1 / (time.perf_counter() - start))
    size = _sizes(quick)
    print(
        f"python loop ~{cpu_seconds * 1e3:.0f} ms; mode_task('cpu') ~100 ms, ('io') 20 ms asleep; "
        f"sockets: 30 ms server latency, 64 KB answers; "
        f"mixed = {size['sockets']} sockets + {size['loops']} loops + {size['c']} each of "
        f"sha256 8 MB / zlib 2 MB / matmul 400x400 + {size['mode_io']} io + "
        f"{size['mode_cpu']} cpu mode_task calls"
    )
    note = missing_peers_note()
    if note:
        print(f"note: {note}")
    rounds = 1 if quick else int(os.environ.get("HX_BENCH_ROUNDS", ROUNDS))  # more: less noise
    server, port = start_server()
    try:
        # Every contender's modules compiled, as installed packages are: where
        # PYTHONDONTWRITEBYTECODE is set, a fresh executor's first measured call would
        # otherwise compile the routing modules it loads on first use (~7 ms) inside the
        # timed run, which no installed hybridexec does.
        with _bytecode_cached():
            _compile_all()
            times, hybrid, errors = _collect(quick, rounds, port, cpu_n, mode_n)
    finally:
        stop_server(server)
    for error in errors:
        print(f"  [FAILED] {error}")
    print(f"\n{rounds} round(s), each contender in a fresh interpreter per round")
    for workload, title in (
        ("mixed", "mixed, interleaved, submitted at once"),
        ("grouped", "mixed, grouped in bursts of one function, submitted at once"),
    ):
        if workload in times:
            _table(title, times[workload])
            _judge_mixed(workload, times[workload], hybrid[workload])
    if "cpu" in times:
        rows = times["cpu"]
        _table(f"pure CPU against serial: {size['pure']} Python loops", rows)
        if rows.get("hybridexec") and rows.get(NAMES["serial"]):
            _judge_pure(rows, size["pure"])
        _explain_lines(hybrid["cpu"])
    if "gilfree" in times:
        rows = times["gilfree"]
        _table("GIL-free C: 8 each of sha256 8 MB, zlib 2 MB, matmul 400x400", rows)
        if rows.get("hybridexec") and rows.get(NAMES["stdlib-threads"]):
            ratio = statistics.median(rows["hybridexec"]) / statistics.median(
                rows[NAMES["stdlib-threads"]]
            )
            print(target_line("within 1.1x of stdlib threads", ratio <= 1.1, f"{ratio:.2f}x"))
        _lanes_line(hybrid["gilfree"])
    if "memory" in _wanted():
        _memory(quick)


if __name__ == "__main__":
    run("--quick" in sys.argv[1:])
