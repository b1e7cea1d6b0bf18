"""Contenders: hybridexec and its peers behind one small interface.

Each contender is used the way its documentation shows, with default settings except the
number of workers (processes = CPU count everywhere; threads: each library's default):

- ``start()`` creates the pool and starts every worker (warm pool), ``close()`` ends it;
- ``map(fn, items)`` runs ``fn`` over items and returns the results in order;
- ``run_calls(calls)`` submits heterogeneous calls at once and waits for all results.

Benchmark modules of other areas may use these too: ``make(name)`` builds one by name and
``available(names)`` filters out peers that are not installed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._common import CPUS, peer_available
from ._workloads import warm

Call = tuple[Callable[..., Any], tuple[Any, ...], str | None]
"""``(fn, args, hint)``: ``hint`` ("thread"/"process") is used by hinted hybridexec only."""


class Contender:
    name = "?"
    peer: str | None = None  # the optional package it needs
    lane = "process"  # where its tasks run, for the "ran on" column

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()

    def create(self) -> None:
        """Create the pool; workers may start lazily."""

    def start(self) -> None:
        """Create the pool and start all its workers (a warm pool)."""
        self.create()
        self.warm()

    def warm(self) -> None:
        # Each call blocks a worker a while, so every worker has to take one.
        self.map(warm, [0.05] * (2 * CPUS))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def ran_on(self, count: int) -> str:
        if self.kinds:
            return " ".join(f"{k}:{v}" for k, v in sorted(self.kinds.items()))
        return f"{self.lane}:{count}"


class Serial(Contender):
    name = "serial (no pool)"
    lane = "caller"

    def warm(self) -> None:
        pass

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return [fn(x) for x in items]

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        return [fn(*args) for fn, args, _ in calls]


class Ceiling(Contender):
    """What the machine gives: the calls dealt round-robin to ``CPUS`` processes forked for
    them (``os.fork``, no pool, no pickling, results dropped); a limit, not a peer.

    On a shared VM two CPU-bound processes rarely get two whole cores: this row tells how much
    of the ideal ``CPUS``-fold speed-up the machine allows at that moment.
    """

    name = "machine ceiling (raw fork)"
    lane = "process"

    def warm(self) -> None:
        pass

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return self.run_calls([(fn, (x,), None) for x in items])

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        pids = []
        for k in range(CPUS):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 0
                try:
                    for fn, args, _ in calls[k::CPUS]:
                        fn(*args)
                except BaseException:
                    code = 1
                os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        if any(codes):
            raise RuntimeError(f"a ceiling child failed: exit codes {codes}")
        return [None] * len(calls)


class HybridExec(Contender):
    """``hybridexec.map`` / ``Executor.submit``; ``kind`` as given, or per-call hints."""

    def __init__(self, kind: str = "auto", hinted: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.hinted = hinted
        if hinted:
            self.name = "hybridexec (hinted)"
        else:
            self.name = "hybridexec" if kind == "auto" else f"hybridexec kind={kind!r}"

    def create(self) -> None:
        import hybridexec

        self.ex = hybridexec.Executor()

    def warm(self) -> None:
        # Both lanes warm: routing may send work to either.
        list(self.ex.options(kind="process").map(warm, [0.05] * (2 * CPUS)))
        list(self.ex.options(kind="thread").map(warm, [0.01] * 4))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        import hybridexec

        before = dict(self.ex.stats()["submitted"])
        result = hybridexec.map(fn, items, kind=self.kind, executor=self.ex)
        after = self.ex.stats()["submitted"]
        # map() batches: these count tasks sent to each lane, not calls.
        self.kinds = collections.Counter(
            {
                f"{k}-batches": after[k] - before.get(k, 0)
                for k in after
                if after[k] > before.get(k, 0)
            }
        )
        return result

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        futures = []
        for fn, args, hint in calls:
            kind = hint if self.hinted and hint else self.kind
            target = self.ex if kind == "auto" else self.ex.options(kind=kind)
            futures.append(target.submit(fn, *args))
        results = [f.result() for f in futures]
        self.kinds = collections.Counter(f.kind for f in futures)
        return results

    def close(self) -> None:
        self.ex.shutdown(wait=True)


class _FuturesExecutor(Contender):
    chunksize: int | None = 1
    ex: concurrent.futures.Executor

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        chunksize = self.chunksize or max(1, len(items) // (4 * CPUS))
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        futures = [self.ex.submit(fn, *args) for fn, args, _ in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.ex.shutdown(wait=True)


class StdlibThreads(_FuturesExecutor):
    name = "stdlib ThreadPoolExecutor"
    lane = "thread"

    def create(self) -> None:
        self.ex = concurrent.futures.ThreadPoolExecutor()


class StdlibProcesses(_FuturesExecutor):
    """``ProcessPoolExecutor`` with the platform's default start method."""

    def __init__(self, chunksize: int | None = 1) -> None:
        super().__init__()
        self.chunksize = chunksize
        self.name = "stdlib ProcessPoolExecutor"
        if chunksize != 1:
            self.name += " chunksize=n/(4*cpus)"

    def create(self) -> None:
        self.ex = concurrent.futures.ProcessPoolExecutor(max_workers=CPUS)


class Loky(_FuturesExecutor):
    name = "loky"
    peer = "loky"

    def create(self) -> None:
        import loky

        self.ex = loky.get_reusable_executor(max_workers=CPUS)


class Pebble(Contender):
    name = "pebble ProcessPool"
    peer = "pebble"

    def create(self) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=CPUS)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self.pool.map(fn, items).result())

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        futures = [self.pool.schedule(fn, args=args) for fn, args, _ in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Mpire(Contender):
    name = "mpire WorkerPool"
    peer = "mpire"

    def create(self) -> None:
        import mpire

        # keep_alive: reuse the workers between map calls, as a warm pool should.
        self.pool = mpire.WorkerPool(n_jobs=CPUS, keep_alive=True)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self.pool.map(fn, items, progress_bar=False))

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        results = [self.pool.apply_async(fn, args=args) for fn, args, _ in calls]
        return [r.get() for r in results]

    def close(self) -> None:
        self.pool.stop_and_join()


class Joblib(Contender):
    name = "joblib Parallel"
    peer = "joblib"

    def create(self) -> None:
        import joblib

        self.delayed = joblib.delayed
        # The context manager keeps one backend (loky workers) across calls.
        self.parallel = joblib.Parallel(n_jobs=CPUS)
        self.parallel.__enter__()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self.parallel(self.delayed(fn)(x) for x in items))

    def run_calls(self, calls: Sequence[Call]) -> list[Any]:
        return list(self.parallel(self.delayed(fn)(*args) for fn, args, _ in calls))

    def close(self) -> None:
        self.parallel.__exit__(None, None, None)


_FACTORIES: dict[str, Callable[[], Contender]] = {
    "serial": Serial,
    "ceiling": Ceiling,
    "hybridexec": HybridExec,
    "hybridexec-process": lambda: HybridExec("process"),
    "hybridexec-hinted": lambda: HybridExec(hinted=True),
    "stdlib-threads": StdlibThreads,
    "stdlib-processes": StdlibProcesses,
    "stdlib-processes-chunked": lambda: StdlibProcesses(chunksize=None),
    "loky": Loky,
    "pebble": Pebble,
    "mpire": Mpire,
    "joblib": Joblib,
}

PEER_OF = {"loky": "loky", "pebble": "pebble", "mpire": "mpire", "joblib": "joblib"}


def make(name: str) -> Contender:
    """Build the contender registered as ``name``."""
    return _FACTORIES[name]()


def available(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split ``names`` into (installed, missing optional peers)."""
    present, missing = [], []
    for name in names:
        peer = PEER_OF.get(name)
        (present if peer is None or peer_available(peer) else missing).append(name)
    return present, missing


def start_methods() -> str:
    """Which start method each process contender uses, for the fairness note."""
    from hybridexec._process import default_start_method

    return (
        f"hybridexec {default_start_method()}, stdlib {multiprocessing.get_start_method()}, "
        "loky/joblib loky (spawn-like), pebble fork (its default context), mpire fork"
    )
