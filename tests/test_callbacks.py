"""Done-callbacks never run on the library's service threads (issue K).

A future settled by the process lane's manager, a deadline timer or the event loop hands its
callbacks to a callback thread: a slow or blocking callback holds up neither results, nor
timeouts, nor later callbacks for long. Through the public API only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from hybridexec import Executor, TaskTimeoutError


def square(x: int) -> int:
    return x * x


def square_when(path: str, x: int) -> int:
    """Wait (in the worker) until ``path`` exists: the test adds its callbacks first."""
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return x * x


class _Blocking:
    """A done-callback that blocks until ``release`` is set (at most 20 s) and says when it ran
    and when it returned: a test sees another thing happen while it blocks, whatever the load.
    """

    def __init__(self) -> None:
        self.ran = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def __call__(self, _f: Future[Any]) -> None:
        self.ran.set()
        self.release.wait(20)
        self.returned.set()


def spin_until(event: threading.Event) -> None:
    """A thread task that a deadline can interrupt (it runs bytecode while it waits)."""
    deadline = time.monotonic() + 20
    while not event.is_set() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.timeout(30)
def test_a_slow_callback_on_one_process_future_does_not_delay_another(tmp_path: Path) -> None:
    # No clock: the slow callback blocks until the test releases it (or 20 s pass), and the
    # other future's result comes (within 10 s) while it still blocks.
    gate = tmp_path / "go"
    slow = _Blocking()

    with Executor(max_processes=2) as ex:
        p = ex.options(kind="process")
        p.submit(square, 1).result()
        a = p.submit(square_when, str(gate), 2)
        a.add_done_callback(slow)
        gate.touch()
        try:
            assert slow.ran.wait(10)  # the slow callback runs now
            b = p.submit(square, 3)
            assert b.result(timeout=10) == 9
            assert a.result(timeout=10) == 4
            assert not slow.returned.is_set()
        finally:
            slow.release.set()


@pytest.mark.timeout(30)
def test_a_callback_that_submits_to_the_process_lane_and_waits_completes(tmp_path: Path) -> None:
    # On the stdlib's ProcessPoolExecutor (and here before) this callback ran on the thread
    # that dispatches work: it waited for a task nobody would dispatch.
    gate = tmp_path / "go"
    got: list[int] = []
    done = threading.Event()
    with Executor(max_processes=1) as ex:
        p = ex.options(kind="process")

        def resubmit(_f: Future[Any]) -> None:
            got.append(p.submit(square, 5).result(timeout=15))
            done.set()

        f = p.submit(square_when, str(gate), 2)
        f.add_done_callback(resubmit)
        gate.touch()
        assert f.result(timeout=10) == 4
        assert done.wait(10)
        assert got == [25]


@pytest.mark.timeout(30)
def test_a_slow_timeout_callback_does_not_delay_another_thread_tasks_timeout() -> None:
    stop = threading.Event()
    slow = _Blocking()

    try:
        with Executor() as ex:
            a = ex.options(kind="thread", timeout=0.2).submit(spin_until, stop)
            a.add_done_callback(slow)
            b = ex.options(kind="thread", timeout=0.5).submit(spin_until, stop)
            with pytest.raises(TaskTimeoutError):
                a.result(timeout=10)
            assert slow.ran.wait(10)
            with pytest.raises(TaskTimeoutError):  # not a wait's TimeoutError after 10 s
                b.result(timeout=10)
            assert not slow.returned.is_set()  # b's deadline did not wait for it
            slow.release.set()  # before the shutdown, which waits for its futures' callbacks
    finally:
        stop.set()
        slow.release.set()


def _record(order: list[tuple[int, str]], what: tuple[int, str], _f: Future[Any]) -> None:
    order.append(what)


@pytest.mark.timeout(30)
def test_callbacks_run_in_settle_order_each_futures_in_the_order_added(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    order: list[tuple[int, str]] = []
    with Executor(max_processes=1) as ex:
        p = ex.options(kind="process")
        first = p.submit(square_when, str(gate), 0)
        futures = [first] + [p.submit(square, i) for i in range(1, 8)]
        for i, f in enumerate(futures):
            for tag in "abc":
                f.add_done_callback(functools.partial(_record, order, (i, tag)))
        gate.touch()
        assert [f.result(timeout=10) for f in futures] == [i * i for i in range(8)]
    # shutdown(wait=True) returned: every callback ran, in order.
    assert order == [(i, tag) for i in range(8) for tag in "abc"]


@pytest.mark.timeout(30)
def test_a_blocked_callback_only_holds_later_callbacks_a_short_while(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    blocked = _Blocking()
    later = threading.Event()
    with Executor(max_processes=1) as ex:
        p = ex.options(kind="process")
        a = p.submit(square_when, str(gate), 1)
        b = p.submit(square, 2)
        a.add_done_callback(blocked)  # blocks until the test releases it
        b.add_done_callback(lambda _f: later.set())
        gate.touch()
        try:
            assert b.result(timeout=10) == 4
            assert later.wait(10)
            assert not blocked.returned.is_set()  # another callback thread took over
        finally:
            blocked.release.set()


@pytest.mark.timeout(30)
def test_an_exception_in_a_callback_is_logged_and_the_next_callbacks_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = tmp_path / "go"
    after: list[int] = []

    def bad(_f: Future[Any]) -> None:
        raise ValueError("callback failed")

    with (
        caplog.at_level(logging.ERROR, logger="concurrent.futures"),
        Executor(max_processes=1) as ex,
    ):
        f = ex.options(kind="process").submit(square_when, str(gate), 3)
        f.add_done_callback(bad)
        f.add_done_callback(lambda fut: after.append(fut.result()))
        gate.touch()
        assert f.result(timeout=10) == 9
    assert after == [9]
    records = [r for r in caplog.records if "exception calling callback" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)


@pytest.mark.timeout(30)
def test_shutdown_wait_returns_after_the_callbacks_ran(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    ran: list[str] = []

    def slowish(_f: Future[Any]) -> None:
        time.sleep(0.3)  # the work of this callback: shutdown must wait for it
        ran.append(threading.current_thread().name)

    ex = Executor(max_processes=1)
    f = ex.options(kind="process").submit(square_when, str(gate), 2)
    f.add_done_callback(slowish)
    gate.touch()
    assert f.result(timeout=10) == 4
    ex.shutdown(wait=True)
    assert ran == ["hybridexec-callbacks"]  # not the manager's thread


@pytest.mark.timeout(30)
def test_a_blocked_callback_of_another_executor_does_not_hold_up_shutdown() -> None:
    # Shutdown waits for the callbacks of its own futures, as the stdlib's does; one that
    # never returns in another executor must not make it wait for ever.
    never = _Blocking()
    with Executor(max_processes=1) as other:
        blocked = other.options(kind="process").submit(square, 3)
        blocked.add_done_callback(never)
        assert blocked.result(timeout=10) == 9
        ex = Executor(max_processes=1)
        ran: list[int] = []
        f = ex.options(kind="process").submit(square, 5)
        f.add_done_callback(lambda f: ran.append(f.result()))
        assert f.result(timeout=10) == 25
        try:
            assert never.ran.wait(10)
            ex.shutdown(wait=True)
            waited = never.returned.is_set()
        finally:
            never.release.set()
    assert not waited, "shutdown waited for another executor's callback"
    assert ran == [25]  # its own callback had run


@pytest.mark.timeout(30)
def test_a_callback_added_after_the_future_is_done_runs_at_once_in_the_adding_thread() -> None:
    with Executor(max_processes=1) as ex:
        f = ex.options(kind="process").submit(square, 4)
        assert f.result(timeout=10) == 16
        where: list[int] = []
        f.add_done_callback(lambda _f: where.append(threading.get_ident()))
        assert where == [threading.get_ident()]


@pytest.mark.timeout(30)
def test_a_slow_callback_on_an_async_task_does_not_delay_another() -> None:
    gate = threading.Event()

    async def value(x: int) -> int:
        return x

    async def gated(x: int) -> int:
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return x

    slow = _Blocking()

    try:
        with Executor() as ex:
            a = ex.submit(gated, 1)
            a.add_done_callback(slow)
            gate.set()
            assert a.result(timeout=10) == 1
            assert slow.ran.wait(10)
            assert ex.submit(value, 2).result(timeout=10) == 2
            assert not slow.returned.is_set()
            slow.release.set()  # before the shutdown, which waits for its futures' callbacks
    finally:
        gate.set()
        slow.release.set()
