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
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return
    threads = min(int(value) for value in env.values())
    user_api = None
    if "OMP_NUM_THREADS" not in env:
        user_api = "blas"  # the user chose OpenMP's count: limit BLAS only
    elif not any(name in env for name in LIMIT_VARIABLES[1:4]):
        user_api = "openmp"
    try:
        _limits = threadpool_limits(limits=threads, user_api=user_api)
    except Exception:  # a broken introspection of some library must not stop the worker
        _limits = None
