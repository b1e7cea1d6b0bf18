"""An outside tester's cases for round 8 (tester 8a): the reply's way back from a worker.

Each test names the defect of the tester's report (A1, A2, ...) in its docstring; each failed
on 408c0f3. They use the public API only.

docs/hostile-input.md promises that a result or an exception that cannot be pickled in the
worker fails its task with ``SerializationError`` and that *the worker lives on*. Both break
when pickling or describing the reply raises something that is not an ``Exception``, or when
describing the user's exception raises in turn: the worker process exits and the task fails
with ``WorkerCrashedError``, the error for a task that killed its worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

from hybridexec import Executor, SerializationError

pytestmark = pytest.mark.timeout(60)

RESULT_LIMIT = 20.0

RAISED_BY_REDUCE: dict[str, BaseException] = {
    "SystemExit": SystemExit(5),
    "KeyboardInterrupt": KeyboardInterrupt(),
    "GeneratorExit": GeneratorExit(),
}


class ReduceRaises:
    """A result whose pickling raises the ``BaseException`` named by ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> NoReturn:
        raise RAISED_BY_REDUCE[self.name]


class ExceptionReduceRaises(Exception):
    """An exception whose pickling raises the ``BaseException`` named by ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __reduce__(self) -> NoReturn:
        raise RAISED_BY_REDUCE[self.name]


class UnpicklableWithBadStr(Exception):
    """An exception that holds a lock (so it will not pickle) and whose ``str()`` raises."""

    def __init__(self) -> None:
        super().__init__("bad")
        self.lock = threading.Lock()

    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")


def return_reduce_raises(name: str) -> ReduceRaises:
    return ReduceRaises(name)


def raise_reduce_raises(name: str) -> NoReturn:
    raise ExceptionReduceRaises(name)


def raise_unpicklable_with_bad_str() -> NoReturn:
    raise UnpicklableWithBadStr()


def worker_pid() -> int:
    return os.getpid()


def _fails_with_serialization_error_and_worker_lives(
    ex: Executor, fn: Callable[..., Any], *args: str
) -> None:
    run = ex.options(kind="process")
    before = run.submit(worker_pid).result(timeout=RESULT_LIMIT)
    future = run.submit(fn, *args)
    with pytest.raises(SerializationError):
        future.result(timeout=RESULT_LIMIT)
    # The one worker (max_processes=1) is still the one that answered before.
    assert run.submit(worker_pid).result(timeout=RESULT_LIMIT) == before


@pytest.mark.parametrize("name", sorted(RAISED_BY_REDUCE))
def test_result_whose_reduce_raises_a_base_exception_fails_with_serialization_error(
    name: str,
) -> None:
    """A1: a result whose ``__reduce__`` raises ``SystemExit``/``KeyboardInterrupt``/
    ``GeneratorExit`` ends the worker (exit code 5 or 1) and the task fails with
    ``WorkerCrashedError``; docs/hostile-input.md: "A result that fails to pickle in the
    worker: SerializationError ... The worker lives on" (the parent side already turns the
    same ``BaseException`` raised while unpickling into ``SerializationError``)."""
    with Executor(max_processes=1) as ex:
        _fails_with_serialization_error_and_worker_lives(ex, return_reduce_raises, name)


@pytest.mark.parametrize("name", sorted(RAISED_BY_REDUCE))
def test_exception_whose_reduce_raises_a_base_exception_fails_with_serialization_error(
    name: str,
) -> None:
    """A1 (exception side): a task raising an exception whose ``__reduce__`` raises a
    ``BaseException`` ends the worker too (``WorkerCrashedError``), where an exception that
    fails to pickle should give ``SerializationError`` naming it."""
    with Executor(max_processes=1) as ex:
        _fails_with_serialization_error_and_worker_lives(ex, raise_reduce_raises, name)


def test_unpicklable_exception_whose_str_raises_fails_with_serialization_error() -> None:
    """A2: a task raising an unpicklable exception whose ``__str__`` raises ends the worker
    (exit code 1, ``WorkerCrashedError``): the fallback message "the task raised X: {exc}"
    calls ``str()`` on it outside any guard. ``traceback`` itself copes with such exceptions
    (``<exception str() failed>``); an unpicklable one whose ``__repr__`` raises is fine."""
    with Executor(max_processes=1) as ex:
        _fails_with_serialization_error_and_worker_lives(ex, raise_unpicklable_with_bad_str)
