"""Issue 17: per-task overhead of the process and thread lanes against their peers and limits.

Five rows, each printed with its peers and the ratio the issue's target is judged on:

- **tiny process tasks submitted one by one**: ``N`` calls of ``x + 1``, each its own
  ``submit`` (``ex.options(kind="process")``), then every result; peers: pebble's ``schedule``,
  the stdlib ``ProcessPoolExecutor.submit``, and joblib's ``Parallel`` (which batches by
  itself). Target: hybridexec >= the best peer.
- **one process round trip**: submit one call and wait for it, repeated; the median per call.
  The limit is a raw ``multiprocessing.Pipe`` echo to a child looping on ``recv``/``send``,
  measured in the same run. Target: hybridexec <= 2x the raw pipe.
- **cold start**: a fresh interpreter imports the pool, creates it and waits for the first
  process task's result. hybridexec uses its default (forkserver on Linux); the limit is the
  stdlib pool with ``fork``. Target: hybridexec <= 3x stdlib fork. Every module's bytecode is
  cached, as for an installed package (see ``_bytecode_cached``); the part spent importing the
  pool's modules is shown apart. ``COLD_RUNS`` interleaved runs (at least ``RUNS``).
- **submit storm** (thread side): ``N`` calls of ``x + 1`` each its own ``submit`` on
  ``hybridexec.Executor()`` (default routing), then every result; peers: the stdlib
  ``ThreadPoolExecutor()`` (default size), pebble's ``ThreadPool.schedule`` and joblib's
  ``Parallel(prefer="threads")`` (given the whole list). Target: >= 2x stdlib ThreadPool.
- **Executor.map chunksize=1** (thread side): ``list(ex.map(fn, range(N)))``; peers: the
  stdlib ``ThreadPoolExecutor().map``, pebble's ``ThreadPool.map`` (chunksize 1) and joblib.
  Target: >= 2x stdlib ThreadPool.

Each contender runs in its own fresh interpreter (``isolated``), ``RUNS`` times; a row's
figure is the median over its runs. The thread rows time ``THREAD_REPEATS`` rounds per
interpreter after a warm-up, and the contenders take turns run after run (the machine's load
falls on all of them alike).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ._common import (
    CPUS,
    Table,
    fmt_rate,
    fmt_seconds,
    isolated,
    median,
    peer_available,
    section,
    target_line,
)
from ._workloads import tiny

RUNS = 3
COLD_RUNS = 7
TINY_TASKS = 5_000
ROUND_TRIPS = 2_000
THREAD_TASKS = 20_000
THREAD_REPEATS = 5

ONE_BY_ONE = ["hybridexec", "pebble", "joblib", "stdlib", "floor"]
ROUND_TRIP = ["hybridexec", "pebble", "stdlib", "raw-pipe"]
COLD = ["hybridexec", "stdlib-fork", "stdlib-forkserver"]

NAMES = {
    "hybridexec": "hybridexec kind='process'",
    "pebble": "pebble ProcessPool.schedule",
    "joblib": "joblib Parallel (auto-batching)",
    "stdlib": "stdlib ProcessPoolExecutor.submit",
    "floor": "floor: one thread, no IPC, no router, grouped pickles",
    "raw-pipe": "raw multiprocessing.Pipe echo",
    "stdlib-fork": "stdlib ProcessPoolExecutor (fork)",
    "stdlib-forkserver": "stdlib ProcessPoolExecutor (forkserver)",
}
PEER = {"pebble": "pebble", "joblib": "joblib"}

THREADS = ["hybridexec", "stdlib", "pebble", "joblib"]
THREAD_NAMES = {
    "storm": {
        "hybridexec": "hybridexec Executor().submit",
        "stdlib": "stdlib ThreadPoolExecutor().submit",
        "pebble": "pebble ThreadPool.schedule",
        "joblib": "joblib Parallel(prefer='threads')",
    },
    "map": {
        "hybridexec": "hybridexec Executor().map",
        "stdlib": "stdlib ThreadPoolExecutor().map",
        "pebble": "pebble ThreadPool.map",
        "joblib": "joblib Parallel(prefer='threads')",
    },
}


# ---- child side ------------------------------------------------------------------------------
class _Pool:
    """One contender's pool: ``submit(fn, x)`` returns something with ``result()``."""

    def __init__(self, name: str, start_method: str | None = None) -> None:
        self.name = name
        if name == "floor":
            self.ex = None
        elif name == "hybridexec":
            import hybridexec

            self.ex: Any = hybridexec.Executor(max_processes=CPUS)
            self.target: Any = self.ex.options(kind="process")
        elif name == "pebble":
            import pebble

            self.ex = pebble.ProcessPool(max_workers=CPUS)
        elif name == "joblib":
            import joblib

            self.ex = joblib.Parallel(n_jobs=CPUS)
            self.ex.__enter__()
        elif name.startswith("stdlib"):
            import concurrent.futures

            ctx = multiprocessing.get_context(start_method) if start_method else None
            self.ex = concurrent.futures.ProcessPoolExecutor(max_workers=CPUS, mp_context=ctx)
            self.target = self.ex
        else:
            raise ValueError(name)

    def submit(self, x: int) -> Any:
        if self.name == "pebble":
            return self.ex.schedule(tiny, args=(x,))
        return self.target.submit(tiny, x)

    def run_tiny(self, n: int) -> None:
        if self.name == "floor":
            out = _floor(n)
        elif self.name == "joblib":
            import joblib

            out = self.ex(joblib.delayed(tiny)(x) for x in range(n))
        else:
            futures = [self.submit(x) for x in range(n)]
            out = [f.result() for f in futures]
        assert list(out) == [x + 1 for x in range(n)]

    def close(self) -> None:
        if self.name == "floor":
            return
        if self.name == "pebble":
            self.ex.close()
            self.ex.join()
        elif self.name == "joblib":
            self.ex.__exit__(None, None, None)
        else:
            self.ex.shutdown(wait=True)


def _floor(n: int) -> list[Any]:
    """What a process task costs at least, all in this thread: no pipe, no thread hop, no router.

    Per call: the lane's Future and Task, the call run as the worker runs it, its future
    settled with its own value. Per group of calls (as the lane sends a storm of tiny calls:
    ``_process/_group.py``, at most ``GROUP_MAX`` to a frame): one pickle of the calls (the
    callable's bytes and each call's arguments), unpickled as the worker does, and one pickle
    of the replies (the values, no failures, a time per call), unpickled as the lane does.
    What hybridexec pays on top of this per task is the IPC, the manager thread, the router,
    the clocks read per call and the bookkeeping of calls in flight.
    """
    import pickle

    from hybridexec._futures import Future, Task
    from hybridexec._process._group import GROUP_MAX
    from hybridexec._serialize import dumps_callable

    wire = dumps_callable(tiny)
    tasks = []
    for x in range(n):
        future: Future[Any] = Future("process")
        task = Task(tiny, ((x,), {}), future)
        task.wire = wire
        tasks.append(task)
    functions: dict[bytes, Any] = {}  # as the worker caches them
    for start in range(0, n, GROUP_MAX):
        group = tasks[start : start + GROUP_MAX]
        frame = pickle.dumps([[t.wire for t in group], [t.args for t in group]], 5)
        wires, arglists = pickle.loads(frame)
        values = []
        for fn_bytes, args in zip(wires, arglists, strict=True):
            fn = functions.get(fn_bytes)
            if fn is None:
                fn = functions[fn_bytes] = pickle.loads(fn_bytes)
            values.append(fn(*args))
        reply = pickle.dumps((values, None, [0.0] * len(values), 0.0, None), 5)
        values = pickle.loads(reply)[0]
        for task, value in zip(group, values, strict=True):
            task.future.set_running_or_notify_cancel()
            task.future.settle(True, value)
    return [task.future.result() for task in tasks]


def _echo(conn: Any) -> None:
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(tiny(x))


def measure_one_by_one(contender: str, n: int) -> dict[str, Any]:
    """Time ``n`` tiny tasks submitted one by one (warm pool); runs in a fresh interpreter."""
    pool = _Pool(contender)
    pool.run_tiny(4 * CPUS)  # every worker started, every import done
    pool.run_tiny(n // 5)
    collections = _GcWatch() if os.environ.get("HX_BENCH_GC") == "1" else None
    cpu, start = time.process_time(), time.perf_counter()
    pool.run_tiny(n)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu  # diagnostic: this process's CPU (all its threads)
    pool.close()
    got: dict[str, Any] = {"times": [elapsed], "cpu": cpu}
    if collections is not None:
        got["gc"] = collections.stop()
    return got


class _GcWatch:
    """Diagnostic (``HX_BENCH_GC=1``): the garbage collections in the timed window.

    Collections per generation and the seconds they took, in this process (any thread).
    """

    def __init__(self) -> None:
        import gc

        self.started = 0.0
        self.seen: dict[int, list[float]] = {}
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            entry = self.seen.setdefault(info["generation"], [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - self.started

    def stop(self) -> dict[str, list[float]]:
        import gc

        gc.callbacks.remove(self._note)
        return {f"gen{g}": [int(c), round(t, 4)] for g, (c, t) in sorted(self.seen.items())}


def measure_round_trip(contender: str, n: int) -> dict[str, Any]:
    """Median of ``n`` single round trips (submit one, wait for it); fresh interpreter."""
    times: list[float] = []
    perf = time.perf_counter
    if contender == "raw-pipe":
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.get_context("fork").Process(target=_echo, args=(child,))
        proc.start()
        child.close()
        for x in range(n + 200):
            start = perf()
            parent.send(x)
            assert parent.recv() == x + 1
            times.append(perf() - start)
        parent.send(None)  # the forked child holds a copy of our end too: no EOF would come
        proc.join()
        parent.close()
    else:
        pool = _Pool(contender)
        pool.run_tiny(4 * CPUS)
        for x in range(n + 200):
            start = perf()
            assert pool.submit(x).result() == x + 1
            times.append(perf() - start)
        pool.close()
    return {"times": [median(times[200:])]}


def measure_cold(contender: str) -> dict[str, Any]:
    """Create the pool and wait for the first process task's result; fresh interpreter.

    Also reports the part spent importing the pool's modules (``import``), the rest being the
    pool's own start up to the first result.
    """
    start = time.perf_counter()
    if contender == "hybridexec":
        import hybridexec

        hybridexec.Executor  # noqa: B018 (the executor's modules load on first use)
    else:
        import concurrent.futures.process  # noqa: F401
    imported = time.perf_counter()
    if contender == "hybridexec":
        pool = _Pool("hybridexec")
    else:
        pool = _Pool("stdlib", contender.partition("-")[2])
    assert pool.submit(1).result() == 2
    elapsed = time.perf_counter() - start
    pool.close()
    return {"times": [elapsed], "import": imported - start}


@contextlib.contextmanager
def _bytecode_cached() -> Iterator[None]:
    """Fresh interpreters with the bytecode of every module cached, as an installed package has.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (as on the shared benchmark machine) and the
    source tree has no ``__pycache__``, each fresh interpreter would compile hybridexec's
    modules from source (~50 ms of a cold start) while the standard library's come compiled.
    The caches go to a temporary ``PYTHONPYCACHEPREFIX``, written by an untimed first run.
    """
    saved = {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    with tempfile.TemporaryDirectory(prefix="hx-pycache-") as prefix:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = prefix
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def measure_threads(contender: str, n: int, mode: str, repeats: int) -> dict[str, Any]:
    """``repeats`` timings of ``n`` tiny calls on a warm thread pool; fresh interpreter.

    ``mode`` ``"storm"``: one ``submit`` per call, then every result; ``"map"``: the pool's
    ``map`` with chunksize 1, consumed into a list. joblib is given the whole list either way.
    """
    run: Any
    if contender == "joblib":
        import joblib

        pool: Any = joblib.Parallel(n_jobs=-1, prefer="threads")
        pool.__enter__()

        def run() -> list[int]:
            return list(pool(joblib.delayed(tiny)(x) for x in range(n)))
    elif contender == "pebble":
        import pebble

        pool = pebble.ThreadPool()
        if mode == "map":

            def run() -> list[int]:
                return list(pool.map(tiny, range(n)).result())
        else:

            def run() -> list[int]:
                futures = [pool.schedule(tiny, args=(x,)) for x in range(n)]
                return [f.result() for f in futures]
    else:
        if contender == "hybridexec":
            import hybridexec

            pool = hybridexec.Executor()
        else:
            import concurrent.futures

            pool = concurrent.futures.ThreadPoolExecutor()
        if mode == "map":

            def run() -> list[int]:
                return list(pool.map(tiny, range(n)))
        else:

            def run() -> list[int]:
                futures = [pool.submit(tiny, x) for x in range(n)]
                return [f.result() for f in futures]

    expected = [x + 1 for x in range(n)]
    assert run() == expected  # warm-up: threads started, the function learned
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
        assert out == expected
    if contender == "joblib":
        pool.__exit__(None, None, None)
    elif contender == "pebble":
        pool.close()
        pool.join()
    else:
        pool.shutdown(wait=True)
    return {"times": [median(times)]}


def _thread_table(mode: str, title: str, runs: int, n: int, repeats: int) -> Table:
    names = THREAD_NAMES[mode]
    table = Table(title, reference=names["hybridexec"], items=n)
    present = [c for c in THREADS if c not in PEER or peer_available(PEER[c])]
    times: dict[str, list[float]] = {c: [] for c in present}
    errors: dict[str, str] = {}
    for turn in range(runs):  # contenders take turns: load changes fall on all of them
        for name in present[turn % len(present) :] + present[: turn % len(present)]:
            if name in errors:
                continue
            got = isolated(
                "benchmarks.bench_overhead:measure_threads",
                120.0,
                contender=name,
                n=n,
                mode=mode,
                repeats=repeats,
            )
            if got.value is None:
                errors[name] = got.error or "no result"
                continue
            times[name].extend(got.value["times"])
    for name in THREADS:
        if name not in present:
            table.notes.append(f"{PEER[name]} not installed, skipped")
            continue
        figure = fmt_seconds(median(times[name])) if times[name] else errors.get(name, "")
        print(f"  [overhead/threads-{mode}] {names[name]}: {figure}", file=sys.stderr, flush=True)
        table.add(names[name], times[name] or None, note=errors.get(name, ""))
    table.notes.append(
        f"each run: the median of {repeats} rounds in a fresh interpreter after a warm-up; "
        "default pool sizes (joblib: n_jobs=-1, given the whole list)"
    )
    return table


def _thread_rows(quick: bool) -> None:
    runs = 1 if quick else RUNS
    n = 2_000 if quick else THREAD_TASKS
    repeats = 2 if quick else THREAD_REPEATS
    for mode, title, label in (
        (
            "storm",
            f"submit storm: {n:,} x submit(x + 1) on threads, then every result",
            "submit storm >= 2x stdlib ThreadPool",
        ),
        (
            "map",
            f"Executor.map chunksize=1: list(map(x + 1, range({n:,}))) on threads",
            "Executor.map chunksize=1 >= 2x stdlib ThreadPool",
        ),
    ):
        table = _thread_table(mode, title, runs, n, repeats)
        table.print()
        names = THREAD_NAMES[mode]
        hx, std = table.row(names["hybridexec"]), table.row(names["stdlib"])
        if hx and hx.median and std and std.median:
            ratio = std.median / hx.median
            print(
                target_line(
                    label,
                    None if quick else ratio >= 2,
                    f"{fmt_rate(n / hx.median)} vs {fmt_rate(n / std.median)} ({ratio:.2f}x)",
                )
            )


# ---- parent side -----------------------------------------------------------------------------
def _table(
    title: str, target: str, contenders: list[str], runs: int, items: int | None, **kw: Any
) -> Table:
    table = Table(title, reference=NAMES["hybridexec"], items=items)
    for name in contenders:
        peer = PEER.get(name)
        if peer is not None and not peer_available(peer):
            table.notes.append(f"{peer} not installed, skipped")
            continue
        times: list[float] = []
        error = ""
        for _ in range(runs):
            got = isolated(f"benchmarks.bench_overhead:{target}", 120.0, contender=name, **kw)
            if got.value is None:
                error = got.error or "no result"
                break
            times.extend(got.value["times"])
        figure = fmt_seconds(median(times)) if times else error
        print(
            f"  [overhead/{target}] {NAMES[name]}: {figure}",
            file=sys.stderr,
            flush=True,
        )
        table.add(NAMES[name], times or None, note=error)
    return table


def _best(table: Table, names: list[str]) -> Any:
    rows = [table.row(NAMES[n]) for n in names]
    rows = [r for r in rows if r is not None and r.median is not None]
    return min(rows, key=lambda r: r.median) if rows else None


def run(quick: bool) -> None:
    """Entry point used by ``python -m benchmarks``."""
    runs = 1 if quick else RUNS
    n = 1_000 if quick else TINY_TASKS
    trips = 300 if quick else ROUND_TRIPS
    section(
        "overhead: per-task cost of the process and thread lanes vs peers and limits (issue 17)"
    )
    print(f"medians over {runs} run(s), each in a fresh interpreter; {CPUS} processes per pool")

    table = _table(
        f"tiny process tasks submitted one by one: {n:,} x submit(x + 1), then every result",
        "measure_one_by_one",
        ONE_BY_ONE,
        runs,
        n,
        n=n,
    )
    table.notes.append("joblib is given the whole list (its Parallel batches by itself)")
    table.print()
    table.notes.append("the floor row is a limit, not a peer: see _floor()")
    hx, best = table.row(NAMES["hybridexec"]), _best(table, ["pebble", "joblib", "stdlib"])
    if hx and hx.median and best:
        print(
            target_line(
                "tiny process tasks one by one >= the best peer",
                best.median >= hx.median,
                f"{fmt_rate(n / hx.median)} vs {best.name} {fmt_rate(n / best.median)} "
                f"({best.median / hx.median:.2f}x)",
            )
        )

    table = _table(
        f"one process round trip: submit one call, wait for it (median of {trips:,})",
        "measure_round_trip",
        ROUND_TRIP,
        runs,
        None,
        n=trips,
    )
    table.print()
    hx, raw = table.row(NAMES["hybridexec"]), table.row(NAMES["raw-pipe"])
    if hx and hx.median and raw and raw.median:
        ratio = hx.median / raw.median
        print(
            target_line(
                "one process round trip <= 2x a raw multiprocessing.Pipe echo",
                ratio <= 2,
                f"{fmt_seconds(hx.median)} vs {fmt_seconds(raw.median)} ({ratio:.2f}x)",
            )
        )

    cold_start(runs)
    _thread_rows(quick)


def cold_start(runs: int) -> None:
    """The cold-start table and its target line."""
    cold_runs = max(runs, COLD_RUNS)
    with _bytecode_cached():
        for name in COLD:  # untimed: writes the bytecode caches
            isolated("benchmarks.bench_overhead:measure_cold", 120.0, contender=name)
        times: dict[str, list[float]] = {name: [] for name in COLD}
        imports: dict[str, list[float]] = {name: [] for name in COLD}
        errors: dict[str, str] = {}
        for _ in range(cold_runs):  # interleaved: the machine's load changes over time
            for name in COLD:
                got = isolated("benchmarks.bench_overhead:measure_cold", 120.0, contender=name)
                if got.value is None:
                    errors[name] = got.error or "no result"
                    continue
                times[name].extend(got.value["times"])
                imports[name].append(got.value["import"])
    table = Table(
        "cold start: import, create the pool, wait for the first process task's result",
        reference=NAMES["hybridexec"],
    )
    for name in COLD:
        table.add(NAMES[name], times[name] or None, note=errors.get(name, ""))
        if imports[name]:
            print(
                f"  [overhead/measure_cold] {NAMES[name]}: {fmt_seconds(median(times[name]))}"
                f" (importing its modules {fmt_seconds(median(imports[name]))})",
                file=sys.stderr,
                flush=True,
            )
    table.notes.append("hybridexec with its default start method (forkserver on Linux)")
    table.notes.append(f"medians of {cold_runs} runs, interleaved; bytecode cached for all")
    hx_import = median(imports["hybridexec"]) if imports["hybridexec"] else None
    if hx_import is not None:
        table.notes.append(
            f"of hybridexec's figure, importing its modules: {fmt_seconds(hx_import)}"
        )
    table.print()
    hx, fork = table.row(NAMES["hybridexec"]), table.row(NAMES["stdlib-fork"])
    if hx and hx.median and fork and fork.median:
        ratio = hx.median / fork.median
        print(
            target_line(
                "process-lane cold start <= 3x stdlib fork",
                ratio <= 3,
                f"{fmt_seconds(hx.median)} vs {fmt_seconds(fork.median)} ({ratio:.2f}x)",
            )
        )


if __name__ == "__main__":  # the cold-start row alone: python -m benchmarks.bench_overhead cold [N]
    if sys.argv[1:2] != ["cold"]:
        raise SystemExit("usage: python -m benchmarks.bench_overhead cold [runs]")
    cold_start(int(sys.argv[2]) if len(sys.argv) > 2 else COLD_RUNS)
