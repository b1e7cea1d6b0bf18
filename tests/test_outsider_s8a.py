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
import time
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

import hybridexec as hx
from hybridexec import Executor, SerializationError, TaskTimeoutError

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


# ---- A3: the manager unpickles replies, and a slow one holds up every other task -------------

GATE_CAP = 5.0
GATE = threading.Event()
GATE_SEEN: list[bool] = []


def _rebuild_after_gate(origin_pid: int) -> str:
    if os.getpid() != origin_pid:  # only in the parent, not while the worker pickles it
        GATE_SEEN.append(GATE.wait(GATE_CAP))
    return "rebuilt"


class SlowToUnpickle:
    """A result whose unpickling in the parent lasts until ``GATE`` is set (at most 5 s).

    It stands for any result that takes long to rebuild: millions of small objects, or a
    ``__setstate__`` that does real work.
    """

    def __reduce__(self) -> tuple[Callable[[int], str], tuple[int]]:
        return (_rebuild_after_gate, (os.getpid(),))


def return_slow_to_unpickle() -> SlowToUnpickle:
    return SlowToUnpickle()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_reply_slow_to_unpickle_does_not_hold_up_another_tasks_timeout() -> None:
    """A3: the process lane's manager thread unpickles a reply nobody is reading, so while one
    task's result takes long to unpickle in the parent, no other task of the lane completes:
    a ``timeout=0.5`` task fails only when that unpickling ends (4.3 s late for a 4 s
    unpickle; here the unpickle waits for the timeout, up to 5 s), and quick results wait too.
    docs/timeouts-and-killing.md: the ``TaskTimeoutError`` "comes a few milliseconds after
    the deadline, at most the kill's grace period later"."""
    GATE.clear()
    GATE_SEEN.clear()
    try:
        with Executor(max_processes=2) as ex:
            run = ex.options(kind="process")
            warm = [run.submit(nap, 0.0) for _ in range(2)]
            assert [f.result(timeout=RESULT_LIMIT) for f in warm] == [0.0, 0.0]
            late = ex.options(kind="process", timeout=0.5).submit(nap, 60.0)
            late.add_done_callback(lambda _: GATE.set())
            slow = run.submit(return_slow_to_unpickle)
            with pytest.raises(TaskTimeoutError):
                late.result(timeout=RESULT_LIMIT)
            rebuilt: object = slow.result(timeout=RESULT_LIMIT)
            assert rebuilt == "rebuilt"
        # The timed-out task ended while the other reply was being unpickled, not after.
        assert GATE_SEEN == [True]
    finally:
        GATE.set()


# ---- A4: return_exceptions=True and BaseException subclasses other than the two named -------


class OwnBaseException(BaseException):
    """A ``BaseException`` subclass of the user's (as ``pytest.fail``'s ``Failed`` is)."""


def fail_item_two(x: int) -> int:
    if x == 2:
        raise OwnBaseException("item 2")
    return x


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_map_with_return_exceptions_keeps_a_base_exception_subclass_in_its_place(
    kind: str,
) -> None:
    """A4: ``hx.map(..., return_exceptions=True)`` raises an item's ``BaseException``
    subclass (``GeneratorExit`` too) and drops every other result, on both lanes.
    docs/getting-started.md: "``return_exceptions=True`` puts each failing item's exception
    in its place ... Cancelling the map, ``KeyboardInterrupt`` and ``SystemExit`` still end
    it" (only those two are named; a single ``submit`` gives the exception back as is)."""
    with Executor(max_processes=1) as ex:
        results = hx.map(fail_item_two, range(4), executor=ex, kind=kind, return_exceptions=True)
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 1, 3]
    assert isinstance(results[2], OwnBaseException)
