"""Executor.map with chunksize=1: tiny calls run in groups, and nothing observable changes.

Each test checks (with a spy on ``Group``) that the grouped path really ran: the behaviour
under test is the one of the standard library's ``map``, which must hold for groups too.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest

import hybridexec
from hybridexec import _groups

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the groups made while the test runs."""
    made: list[int] = []
    real = _groups.Group.__init__

    def spy(self: _groups.Group, fn: Any, calls: Any, classifier: Any, lane: Any) -> None:
        made.append(len(calls))
        real(self, fn, calls, classifier, lane)

    monkeypatch.setattr(_groups.Group, "__init__", spy)
    return made


@pytest.fixture
def ex() -> Iterator[hybridexec.Executor]:
    with hybridexec.Executor() as executor:
        yield executor


def _learn(ex: hybridexec.Executor | hybridexec.ExecutorOptions, fn: Any) -> None:
    # Routed, then seen by the thread lane to compute (a profile of several calls).
    for _ in range(3):
        list(ex.map(fn, range(200)))


def inc(x: int) -> int:
    return x + 1


def fail_at_57(x: int) -> int:
    if x == 57:
        raise ValueError(x)
    return x


def swap_var(x: int) -> str:
    seen = VAR.get()
    VAR.set(f"set by {x}")  # must not reach the next call, even in the same group
    return seen


@pytest.mark.timeout(60)
def test_results_in_order_and_counted_per_call(ex: hybridexec.Executor, groups: list[int]) -> None:
    _learn(ex, inc)
    groups.clear()
    before = ex.stats()["submitted"]["thread"]
    assert list(ex.map(inc, range(5000))) == [x + 1 for x in range(5000)]
    assert max(groups, default=0) > 1
    assert sum(groups) <= 5000
    assert ex.stats()["submitted"]["thread"] - before == 5000  # each call counts


@pytest.mark.timeout(60)
def test_an_exception_stays_at_its_position(ex: hybridexec.Executor, groups: list[int]) -> None:
    _learn(ex, inc)
    for _ in range(3):  # fail_at_57 learned too (its calls compute)
        list(ex.map(fail_at_57, range(50)))
    groups.clear()
    it = ex.map(fail_at_57, range(1000))
    got = [next(it) for _ in range(57)]
    assert got == list(range(57))
    with pytest.raises(ValueError, match="57"):
        next(it)
    assert groups


@pytest.mark.timeout(60)
def test_each_call_runs_in_its_own_copy_of_the_context(
    ex: hybridexec.Executor, groups: list[int]
) -> None:
    _learn(ex, swap_var)
    groups.clear()
    token = VAR.set("submitter")
    try:
        assert set(ex.map(swap_var, range(2000))) == {"submitter"}
    finally:
        VAR.reset(token)
    assert max(groups, default=0) > 1
    assert VAR.get() == "unset"


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def spin(self, x: int) -> int:
        with self.lock:
            self.calls += 1
        end = time.thread_time() + 0.0002  # CPU: the lane sees its calls compute
        while time.thread_time() < end:
            pass
        return x + 1


@pytest.mark.timeout(60)
def test_closing_the_iterator_cancels_calls_not_started(groups: list[int]) -> None:
    counter = Counter()
    with hybridexec.Executor() as executor:
        ex = executor.options(kind="thread")
        _learn(ex, counter.spin)
        groups.clear()
        counter.calls = 0
        it = ex.map(counter.spin, range(5000))  # ~1 s of CPU
        assert isinstance(it, Generator)
        assert next(it) == 1
        it.close()  # as the standard library's: what has not started is cancelled
    assert groups
    assert counter.calls < 5000


@pytest.mark.timeout(60)
def test_shutdown_cancelling_futures_cancels_grouped_calls(groups: list[int]) -> None:
    counter = Counter()
    executor = hybridexec.Executor()
    ex = executor.options(kind="thread")
    _learn(ex, counter.spin)
    groups.clear()
    it = ex.map(counter.spin, range(5000))
    executor.shutdown(wait=True, cancel_futures=True)
    assert groups
    got: list[int] = []
    with pytest.raises(concurrent.futures.CancelledError):
        got.extend(it)  # the calls that ran, in order, then the first cancelled one
    assert got == [x + 1 for x in range(len(got))]
    assert len(got) < 5000


@pytest.mark.timeout(60)
def test_a_cancelled_call_of_a_group_is_skipped(ex: hybridexec.Executor) -> None:
    _learn(ex, inc)
    gate = threading.Event()
    started: list[int] = []

    def wait_then(x: int) -> int:
        started.append(x)
        gate.wait(10)
        return x

    call = hybridexec.Future[Any]("thread")
    other = hybridexec.Future[Any]("thread")
    lane = ex._router.threads  # the group as the map path hands it over
    group = _groups.Group(wait_then, [(call, (1,)), (other, (2,))], None, lane)
    group.context = contextvars.copy_context()
    assert other.cancel()
    lane.submit(group)
    while not started:
        time.sleep(0.001)
    assert not call.cancel()  # running: a thread cannot be stopped
    gate.set()
    assert call.result(timeout=10) == 1
    assert other.cancelled()
    assert started == [1]


def io_call(x: int) -> int:
    time.sleep(0.05)
    return x


@pytest.mark.timeout(60)
def test_calls_that_wait_are_not_grouped(ex: hybridexec.Executor, groups: list[int]) -> None:
    list(ex.map(io_call, range(64)))  # learned: its calls wait
    start = time.monotonic()
    assert list(ex.map(io_call, range(64))) == list(range(64))
    assert time.monotonic() - start < 2.0  # 64 x 50 ms on as many threads, not in series
    assert not groups
