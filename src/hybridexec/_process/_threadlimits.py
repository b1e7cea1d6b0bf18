"""BLAS/OpenMP thread limits for worker processes: processes x BLAS threads <= cores.

Each worker that runs numpy (OpenBLAS, MKL, Apple Accelerate), numexpr or OpenMP code starts,
by default, one compute thread per core. ``n`` workers on ``n`` cores then run ``n * n``
compute threads: the cores thrash, and a worker's BLAS helper threads keep spinning after a
call. A worker therefore starts with those libraries limited to its share of the usable cores.

Two steps, because either alone misses a case:

1. ``thread_limit_env`` (parent side) names the environment variables to set; the child sets
   them before running any task (``apply_thread_limits``). The libraries read them when they
   load, which, under the default ``forkserver`` and under ``spawn``, happens in the worker.
2. Under ``fork`` (or a forkserver that preloaded numpy) the library is loaded already and
   reads no variable again: then ``threadpoolctl``, when installed, sets the limit at run time.

A variable the user set (in the parent's environment) is never overridden.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

LIMIT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
"""The variables read by OpenMP, OpenBLAS, MKL, Apple Accelerate and numexpr at load."""

_LOADED_HINTS = ("numpy", "scipy", "numexpr", "sklearn", "torch")
"""Modules whose presence means a thread pool may be loaded already (worth threadpoolctl)."""

_limits: Any = None  # the threadpoolctl limiter, kept so that its limits stay in force


def usable_cpus() -> int:
    """The CPUs this process may use: ``os.process_cpu_count()`` (3.13+), else the affinity."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return int(count() or 1)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_limit_env(
    max_processes: int, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment variables a worker should start with.

    Args:
        max_processes: Worker processes the lane may run at once.
        environ: The environment the user set (default: ``os.environ``).

    Returns:
        Each variable of ``LIMIT_VARIABLES`` that ``environ`` does not set, mapped to
        ``max(1, usable_cpus() // max_processes)``.
    """
    env = os.environ if environ is None else environ
    threads = str(max(1, usable_cpus() // max(1, max_processes)))
    return {name: threads for name in LIMIT_VARIABLES if name not in env}


def apply_thread_limits(env: Mapping[str, str]) -> None:
    """In a worker, before its first task: put ``env`` in force.

    Sets the variables (for libraries loaded from now on) and, for thread pools loaded
    already, applies the same limit with ``threadpoolctl`` when it is installed. Never
    raises: a worker without limits is slower, not broken.

    Args:
        env: What ``thread_limit_env`` returned in the parent (empty: nothing to do).
    """
    global _limits
    if not env:
        return
    for name, value in env.items():
        os.environ.setdefault(name, value)
    if not any(name in sys.modules for name in _LOADED_HINTS):
        return  # nothing loaded yet: the variables are enough, and importing costs ~10 ms
    try:
        # threadpoolctl ships no type hints (pyproject.toml lists no override for it).
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return
    try:
        chosen = ThreadpoolController().select(internal_api=_pools_to_limit(env))
        _limits = chosen.limit(limits=min(int(value) for value in env.values()))
    except Exception:  # a broken introspection of some library must not stop the worker
        _limits = None


_POOLS = {"OMP_NUM_THREADS": "openmp", "OPENBLAS_NUM_THREADS": "openblas", "MKL_NUM_THREADS": "mkl"}
"""The threadpoolctl pools (their ``internal_api``) each variable stands for."""


def _pools_to_limit(env: Mapping[str, str]) -> list[str]:
    """The pools whose variable hybridexec sets (``env``), never one whose count the user chose.

    BLIS and FlexiBLAS, which read none of these variables, are limited when the user chose
    no BLAS count at all.
    """
    pools = [pool for name, pool in _POOLS.items() if name in env]
    if all(name in env for name in LIMIT_VARIABLES[1:4]):
        pools += ["blis", "flexiblas"]
    return pools


class LocalPools:
    """This process's BLAS/OpenMP thread pools, narrowed while lane threads compute.

    A BLAS call starts, by default, one compute thread per core. On the thread lanes that
    oversubscribes the cores as soon as two calls run at once, and it is slow besides:
    OpenBLAS runs one multithreaded call at a time (the others wait on a lock, each holding a
    CPU slot and doing nothing), and its helper threads spin on a core for a while after each
    call. So while ``h`` threads hold CPU slots, the governor asks that each BLAS/OpenMP call
    get ``cores not held by processes // h`` threads (``narrow``): 2 lane threads on 2 cores
    run 2 single-threaded products side by side. One object per process (``local_pools``):
    with several executors the smallest count asked for is in force, and the counts found
    before come back when none asks any more (``release``).

    The pools are process-wide: a call outside the lanes (the main thread's) gets the same
    count meanwhile. Nothing is narrowed when the user chose a count (one of
    ``LIMIT_VARIABLES`` set) or without ``threadpoolctl``; a count the user sets with
    ``threadpoolctl`` while lane threads compute is overwritten when they stop.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.chosen = any(name in env for name in LIMIT_VARIABLES)  # the user's own count
        self.threads: int | None = None  # the count in force (None: the counts found)
        self._libs: list[Any] = []  # threadpoolctl's controllers of the pools found
        self._seen: frozenset[str] = frozenset()  # the hint modules loaded at the last look
        self._saved: list[tuple[Any, int]] = []  # (pool, its count) before narrowing
        self._wants: dict[object, int] = {}  # who asks for how many threads per call
        self._target: int | None = None  # the smallest count asked for (None: the ones found)
        self._later: dict[object, tuple[int, float]] = {}  # higher counts asked: (count, when)
        self._setter: threading.Thread | None = None  # sets the counts (see _set)
        self._cond = threading.Condition(threading.Lock())

    def prepare(self) -> bool:
        """Look for pools if a library that may bring one was loaded since the last look.

        Slow the first time (threadpoolctl scans the loaded libraries: ~5 ms): call it outside
        other locks. Returns whether there is a pool to narrow.
        """
        if self.chosen:
            return False
        loaded = frozenset(name for name in _LOADED_HINTS if name in sys.modules)
        if loaded != self._seen:
            libs = _find_pools()  # outside the lock: narrow() must not wait for a scan
            with self._cond:  # pools found while narrowed are narrowed from the next time on
                self._libs, self._seen = libs, loaded
        return bool(self._libs)

    def narrow(self, owner: object, threads: int, later: float = 0.0) -> None:
        """``owner`` asks for at most ``threads`` threads per call (until ``release``).

        A count higher than ``owner`` asked for before takes effect ``later`` seconds from now
        if not asked otherwise meanwhile: a slot given back between two tasks of a stream, taken
        again at once, changes nothing.
        """
        with self._cond:
            asked = self._wants.get(owner)
            if later > 0 and asked is not None and threads > asked:
                self._later[owner] = (threads, time.monotonic() + later)
                self._cond.notify_all()  # the setter thread lives: a count is narrowed
                return
            self._later.pop(owner, None)
            if asked != threads:
                self._wants[owner] = threads
                self._post(min(self._wants.values()))

    def release(self, owner: object) -> None:
        """``owner`` asks for nothing any more: the smallest count left, or the ones found."""
        with self._cond:
            self._later.pop(owner, None)
            if self._wants.pop(owner, None) is not None:
                self._post(min(self._wants.values(), default=None))

    def settle(self, timeout: float = 1.0) -> None:
        """Wait (outside other locks) until the count last asked for is in force."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._setter is not None and self.threads != self._target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _post(self, threads: int | None) -> None:  # with the lock held
        self._target = threads
        if self._setter is not None:
            self._cond.notify_all()
        elif threads != self.threads and self._libs:
            self._setter = threading.Thread(target=self._set, name="hybridexec-blas", daemon=True)
            try:
                self._setter.start()
            except RuntimeError:  # no thread to be had: leave the pools alone
                self._setter, self._libs = None, []

    def _set(self) -> None:
        """The setter thread: every count set from one thread, for as long as one is narrowed.

        OpenBLAS ignores a count raised by a thread other than the one that lowered it while
        that one lives (0.3.31): lane threads live on, so none of them sets a count itself.
        """
        with self._cond:
            while True:
                now, due = time.monotonic(), None
                for owner, (threads, when) in list(self._later.items()):
                    if when <= now:  # a higher count asked for long enough: it holds now
                        del self._later[owner]
                        self._wants[owner] = threads
                        self._target = min(self._wants.values())
                    elif due is None or when < due:
                        due = when
                target = self._target
                if target == self.threads:
                    if target is None:  # the counts found are back: nothing left to do
                        self._setter = None
                        self._cond.notify_all()
                        return
                    self._cond.wait(None if due is None else due - now)
                    continue
                self._apply(target)
                self._cond.notify_all()

    def restore_in_child(self) -> None:
        """In a forked child: give the pools this process's parent narrowed their counts back."""
        for lib, found in list(self._saved):
            try:
                lib.set_num_threads(found)
            except Exception:  # a broken library controller: the count stays as it was
                pass
        self.threads = None

    def _apply(self, threads: int | None) -> None:  # on the setter thread, with the lock held
        try:
            if self.threads is None:
                self._saved = [(lib, n) for lib in self._libs if (n := lib.get_num_threads())]
            for lib, found in self._saved:
                lib.set_num_threads(found if threads is None else max(1, min(found, threads)))
        except Exception:  # a broken library controller: leave the pools alone from now on
            self._libs = []
        self.threads = threads


_local: list[LocalPools] = []
_local_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The parent's setter thread is not in the child: the child makes its own LocalPools. Pools
    # the parent had narrowed get their counts back first, or the child (a user's os.fork(), a
    # fork-method Pool) would run its BLAS calls on one thread for good, with no one to raise
    # the count. No lock: the parent's may have been held at the fork; the child has one thread.
    old = _local[0] if _local else None
    _local.clear()
    if old is not None and old.threads is not None:
        old.restore_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def local_pools() -> LocalPools:
    """The ``LocalPools`` of this process (made on first use; a forked child makes its own)."""
    if not _local:
        with _local_lock:
            if not _local:
                _local.append(LocalPools())
    return _local[0]


def _find_pools() -> list[Any]:
    """The controllers (threadpoolctl's) of the BLAS and OpenMP pools loaded; none without it."""
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return []
    try:
        libs = ThreadpoolController().lib_controllers
    except Exception:  # as in apply_thread_limits
        return []
    return [lib for lib in libs if lib.user_api in ("blas", "openmp")]
