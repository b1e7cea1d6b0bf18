"""An outside tester's cases for round 12 (tester 12c): third-party code driving hybridexec.

joblib and scikit-learn, dask, tqdm, asyncio and actors, driven the way other libraries drive
an executor. Each test names the defect of the tester's report (C1, C2, ...) in its docstring
and fails on main 90ba57f (Python 3.11).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from .scenario import run_script

joblib = pytest.importorskip("joblib")

from .test_joblib import backend as backend  # noqa: E402 - after the skip; registered per test

pytestmark = pytest.mark.timeout(30)


def square(x: int) -> int:
    return x * x


class CallWrapper:
    """What ``sklearn.utils.parallel.delayed`` hands joblib: a new callable object per call.

    scikit-learn wraps each function in a fresh ``_FuncWrapper`` (it carries the caller's
    config into the worker), so two calls of one function are two different objects.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        functools.update_wrapper(self, function)  # as scikit-learn's _FuncWrapper does

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def wrapped_delayed(function: Callable[..., Any]) -> Callable[..., Any]:
    """``sklearn.utils.parallel.delayed``, reduced: ``delayed`` of a new wrapper per call."""

    def make(*args: Any, **kwargs: Any) -> Any:
        return joblib.delayed(CallWrapper(function))(*args, **kwargs)

    return make


def tasks_for(delayed: Callable[..., Any], parallel: Any, calls: int) -> int:
    """The tasks an executor got for ``calls`` calls in batches of 25 (``prefer="processes"``)."""
    with hx.Executor(max_processes=2) as ex:
        with joblib.parallel_config(backend="hybridexec", executor=ex, n_jobs=2):
            results = parallel(batch_size=25, prefer="processes")(
                delayed(square)(i) for i in range(calls)
            )
        assert results == [i * i for i in range(calls)]
        submitted: dict[str, int] = ex.stats()["submitted"]
    return sum(submitted.values())


def test_sklearn_delayed_calls_are_batched_as_joblib_delayed_ones() -> None:
    """C1: under the joblib backend, every call made through scikit-learn's ``delayed``
    becomes a task of its own: joblib's batches are torn apart. 100 calls in batches of 25
    are 100 tasks (``joblib.delayed``: 8), and 5,000 tiny calls with ``prefer="processes"``
    take 2.7 s against loky's 0.4 s (``joblib.delayed`` on hybridexec: 0.1 s). Breaks
    docs/integrations.md "batch_size: joblib's auto-batching, as with its own process backend"
    and "calls of different functions in one batch are split": these are calls of ONE
    function. ``joblib.py`` ``_function_of`` groups a batch by ``id()`` of the callable, and
    sklearn's ``_FuncWrapper`` is a new object per call (it is not unwrapped, as partials and
    bound methods are).
    """
    utils_parallel = pytest.importorskip("sklearn.utils.parallel")
    plain = tasks_for(joblib.delayed, joblib.Parallel, 100)
    sklearn = tasks_for(utils_parallel.delayed, utils_parallel.Parallel, 100)
    assert sklearn <= 2 * plain, f"{sklearn} tasks for 100 calls (joblib.delayed: {plain})"


def test_calls_wrapped_per_call_are_batched_as_one_function() -> None:
    """C1 (without scikit-learn): the same with a wrapper made per call, as sklearn's
    ``delayed`` does: 100 calls of ``square`` in batches of 25 go as 100 tasks, not ~8."""
    plain = tasks_for(joblib.delayed, joblib.Parallel, 100)
    wrapped = tasks_for(wrapped_delayed, joblib.Parallel, 100)
    assert wrapped <= 2 * plain, f"{wrapped} tasks for 100 calls (joblib.delayed: {plain})"


@hx.cpu_bound
def pid_of(resource: object) -> int:
    """A function hinted CPU-bound; its argument is an object that does not pickle."""
    return os.getpid()


def test_cpu_bound_hint_with_an_unpicklable_argument_runs_on_a_thread() -> None:
    """C3: ``ex.submit(cpu_bound_fn, threading.Lock())`` fails with ``SerializationError``
    ("argument 0 cannot be pickled") instead of running on a thread. docs/routing.md, layer 1:
    "A callable or arguments that cannot be pickled stay on threads, unless a process was
    asked for (``kind="process"`` given to the call, to ``options()`` or to the ``Executor``,
    or a ``max_memory``)"; a hint is not in that list (getting-started.md: "An automatically
    routed task that cannot be pickled runs on a thread instead; with an explicit
    ``kind="process"`` its future fails"). The same on a Dask backend, where distributed.md
    says such a call "runs on a local thread instead, unless you asked for kind="process"".
    ``@cpu_bound`` is ``_attach(fn, Options(kind="process"))`` (``_routing/_rules.py:93``), so
    the hint is treated as an explicit ``kind="process"``.
    """
    with hx.Executor(max_processes=1) as ex:
        future = ex.submit(pid_of, threading.Lock())
        assert future.result(timeout=20) == os.getpid()
        assert future.kind == "thread"


REMOTE_ALL_UNPICKLABLE = """
import logging
import os
import threading

import distributed

import hybridexec as hx

if __name__ == "__main__":
    cluster = distributed.LocalCluster(
        n_workers=1, processes=False, protocol="tcp", threads_per_worker=1, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster)
    try:
        lock = threading.Lock()
        with hx.Executor(backend=client, remote="all") as ex:
            future = ex.submit(lambda: (lock, os.getpid())[1])
            try:
                print("RESULT", future.kind, future.result(timeout=20) == os.getpid())
            except Exception as exc:
                print("RESULT", future.kind, type(exc).__name__, exc)
    finally:
        client.close()
        cluster.close()
"""


def test_remote_all_runs_an_unpicklable_call_on_a_local_thread(tmp_path: Path) -> None:
    """C2: with ``Executor(backend=client, remote="all")``, a call that cannot be pickled (the
    docs' own example: a lambda holding a lock) fails with ``SerializationError`` ("cannot
    pickle the callable ... _thread.lock"), and its ``kind`` is ``"process"``, a lane this
    executor does not use. docs/distributed.md, right after the ``remote="all"`` example: "A
    call that cannot be pickled (a lambda holding a lock, say) runs on a local thread
    instead, unless you asked for ``kind="process"``". The user did not: ``Executor.__init__``
    (``_executor.py:147-148``) turns ``remote="all"`` into ``kind="process"`` for the whole
    executor, which the router then treats as asked for.
    """
    pytest.importorskip("distributed")
    proc = run_script(tmp_path, REMOTE_ALL_UNPICKLABLE, timeout=25)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, proc.stdout + proc.stderr
    assert lines[0] == "RESULT thread True", lines[0]
