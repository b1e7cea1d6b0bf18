"""The direct path's other half: a caller waiting in ``result()`` reads its reply itself.

A call written to an offered worker by its submitter (see ``test_direct.py``) may be answered
without the manager: the caller that waits for it takes the worker's read token, reads the
reply, settles the future and does the manager's bookkeeping. These drive a one-worker
``ProcessLane`` and count who handled each reply; every call must still end exactly once and
as through the manager: with nobody calling ``result()``, a crash, a cancel, a timeout of the
wait, an interruption, or a reply that takes longer than the caller waits.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx
from hybridexec._exceptions import WorkerCrashedError
from hybridexec._futures import Future, Task
from hybridexec._process import ProcessLane, _direct
from hybridexec._process._direct import READ_BOUND
from hybridexec._process._schedule import PIPELINE_SECONDS
from hybridexec._process._supervision import WorkerRecord

from . import helpers
from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)


class Lane:
    """A one-worker lane that records which thread handled each reply."""

    def __init__(self) -> None:
        self.lane = ProcessLane(1, name="hx-test-reads")
        self.by_caller: list[int] = []  # threads that handled a reply through the direct read
        self.by_manager = 0  # replies the manager read
        self.fail_next: BaseException | None = None

    def start(self) -> None:
        assert self.submit(helpers.square, 3).result(timeout=30) == 9  # the worker is up
        manager = self.lane._manager
        assert manager is not None
        served, receive = manager.handle_served, manager._receive

        def handle(worker: WorkerRecord, data: bytes) -> None:
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            self.by_caller.append(threading.get_ident())
            served(worker, data)

        def counting(worker: WorkerRecord) -> None:
            self.by_manager += 1
            receive(worker)

        manager.handle_served = handle
        manager._receive = counting  # type: ignore[method-assign]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future(kind="process")
        self.lane.submit(Task(fn, [(args, {})], future))
        return future

    def offered(self) -> bool:
        """Wait until the manager sleeps with its idle worker offered."""
        return wait_until(lambda: bool(self.lane.ready), 10)

    def learn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` twice through the manager: the lane knows it as short."""
        for _ in range(2):
            future = self.submit(fn, *args)
            concurrent.futures.wait([future], timeout=30)  # not result(): the manager reads
            future.result(timeout=0)


@pytest.fixture
def lane() -> Iterator[Lane]:
    lane = Lane()
    lane.start()
    yield lane
    lane.lane.shutdown(wait=True, cancel_futures=True)


def test_a_caller_waiting_for_a_short_call_reads_its_reply_itself(lane: Lane) -> None:
    lane.learn(helpers.square, 2)
    received = lane.by_manager
    for x in range(20):
        assert lane.offered()
        assert lane.submit(helpers.square, x).result(timeout=30) == x * x
    me = threading.get_ident()
    # A reply may beat the caller to its pipe (then the manager reads it): most do not.
    assert lane.by_caller.count(me) >= 10
    assert lane.by_caller.count(me) + lane.by_manager - received == 20
    assert lane.lane.stats["tasks_done"] == 23  # the first, two to learn, twenty
    assert lane.lane.stats["workers_started"] == 1


def test_a_reply_nobody_waits_for_in_result_comes_through_the_manager(lane: Lane) -> None:
    lane.learn(helpers.square, 2)
    received = lane.by_manager
    got: list[int] = []
    done = threading.Semaphore(0)

    def collect(future: concurrent.futures.Future[int]) -> None:
        got.append(future.result())
        done.release()

    for x in range(5):
        assert lane.offered()
        lane.submit(helpers.square, x).add_done_callback(collect)
        assert done.acquire(timeout=30)
    assert got == [x * x for x in range(5)]
    assert lane.by_manager - received == 5
    assert not lane.by_caller


def test_callbacks_of_a_reply_the_caller_read_run_on_the_callback_threads(lane: Lane) -> None:
    lane.learn(helpers.square, 2)
    names: list[str] = []
    done = threading.Event()
    for x in range(10):
        assert lane.offered()
        future = lane.submit(helpers.square, x)
        future.add_done_callback(lambda f: names.append(threading.current_thread().name))
        future.add_done_callback(lambda f: done.set())
        assert future.result(timeout=30) == x * x
        assert done.wait(30)
        done.clear()
    assert lane.by_caller  # at least one was read by this thread
    assert threading.current_thread().name not in names


def test_a_crash_while_the_caller_reads_fails_that_call_alone(lane: Lane) -> None:
    lane.learn(helpers.exit_on, 1, 99)
    assert lane.offered()
    crashed = lane.submit(helpers.exit_on, 99, 99)
    with pytest.raises(WorkerCrashedError):
        crashed.result(timeout=30)
    assert lane.lane.stats["crashes"] == 1
    assert lane.submit(helpers.square, 5).result(timeout=30) == 25


def test_a_reply_slower_than_the_callers_read_is_left_to_the_manager(lane: Lane) -> None:
    lane.learn(helpers.sleep_then, 0.0, "quick")
    received = lane.by_manager
    assert lane.offered()
    slow = lane.submit(helpers.sleep_then, 20 * READ_BOUND, "slow")
    # While the caller reads, another thread's call wakes the manager: it waits for the
    # worker to come back (within READ_BOUND), then runs that call after this one.
    other: list[Future[Any]] = []
    thread = threading.Thread(target=lambda: other.append(lane.submit(helpers.square, 6)))
    thread.start()
    assert slow.result(timeout=30) == "slow"
    thread.join(30)
    assert other[0].result(timeout=30) == 36
    assert lane.by_manager - received >= 1  # the slow reply, at least
    assert not lane.by_caller


def test_the_timeout_of_a_wait_ends_the_callers_read_not_the_call(
    lane: Lane, tmp_path: Path
) -> None:
    # No clock: the call answers only once the test opens its gate, after the wait ended.
    lane.learn(helpers.gated, str(tmp_path), "quick")  # the directory exists: at once
    assert lane.offered()
    gate = tmp_path / "go"
    future = lane.submit(helpers.gated, str(gate), "late")
    try:
        with pytest.raises(concurrent.futures.TimeoutError):
            future.result(timeout=0.005)
        assert not future.done()  # the wait ended, not the call
    finally:
        gate.touch()
    assert future.result(timeout=30) == "late"


def test_cancel_from_another_thread_while_the_caller_waits_stops_the_call(lane: Lane) -> None:
    lane.learn(helpers.sleep_then, 0.0, "quick")
    assert lane.offered()
    running = lane.submit(helpers.sleep_then, 30.0, "never")
    threading.Timer(0.05, running.cancel).start()
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=30)
    assert wait_until(lambda: lane.lane.stats["kills"] == 1, 10)
    assert lane.submit(helpers.square, 6).result(timeout=30) == 36


def test_an_interrupted_read_leaves_the_reply_to_the_manager(
    lane: Lane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Driven by events, not by the machine's speed: the call waits in the worker for a gate the
    # test opens once the caller holds the read token, and the caller reads for as long as it
    # takes (READ_BOUND raised). A gated call measured long is not offered to its caller's
    # read (cost above PIPELINE_SECONDS), so the lane learns it short first, gate open.
    monkeypatch.setattr(_direct, "READ_BOUND", 30.0)
    manager = lane.lane._manager
    assert manager is not None
    opened = tmp_path / "open"
    opened.touch()
    submitted = 1  # the first
    for attempt in range(5):
        for _ in range(200):  # a call preempted on a loaded machine is measured long
            lane.learn(helpers.gated, str(opened), "quick")
            submitted += 2
            cost = manager._cost(Task(helpers.gated, [((), {})], Future()))
            if cost is not None and cost <= PIPELINE_SECONDS:
                break
        assert lane.offered()
        gate = tmp_path / f"gate{attempt}"
        future = lane.submit(helpers.gated, str(gate), "value")
        submitted += 1
        if future._hx_before_wait is None:  # not sent direct: the manager woke meanwhile
            gate.touch()
            assert future.result(timeout=30) == "value"
            continue
        opener = threading.Thread(target=_open_when_read, args=(lane, gate))
        opener.start()
        lane.fail_next = KeyboardInterrupt()  # as Ctrl-C would, once the reply is in hand
        try:
            assert future.result(timeout=30) == "value"
        except KeyboardInterrupt:
            break
        finally:
            opener.join(30)
        # The manager woke and took the worker back before the caller read (it may): again.
        lane.fail_next = None
    else:
        pytest.fail("the caller never read a reply itself in 5 tries")
    assert not lane.by_caller  # it raised before handling anything
    assert future.result(timeout=30) == "value"  # the manager handled it
    assert lane.submit(helpers.square, 9).result(timeout=30) == 81
    assert lane.lane.stats["tasks_done"] == submitted + 1  # each once


def _open_when_read(lane: Lane, gate: Path) -> None:
    """Open ``gate`` once a caller holds the read token (or after 10 s: nobody read)."""
    wait_until(lambda: bool(lane.lane.reading), 10, interval=0.001)
    gate.touch()


def test_round_trips_from_several_threads_beside_a_stream_end_each_once() -> None:
    with hx.Executor(max_processes=2) as ex:
        target = ex.options(kind="process")
        assert target.submit(helpers.square, 1).result(timeout=30) == 1
        errors: list[BaseException] = []

        def trips(base: int) -> None:
            try:
                for x in range(base, base + 200):
                    assert target.submit(helpers.square, x).result(timeout=30) == x * x
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=trips, args=(1000 * i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        futures = [target.submit(helpers.add, x, 1) for x in range(500)]
        assert [f.result(timeout=30) for f in futures] == [x + 1 for x in range(500)]
        for thread in threads:
            thread.join(60)
        assert not errors
        assert ex.stats()["process_lane"]["workers_started"] == 2


def test_an_idle_worker_stops_watching_its_pipe() -> None:
    with hx.Executor(max_processes=1) as ex:
        target = ex.options(kind="process")
        for x in range(200):
            assert target.submit(helpers.square, x).result(timeout=30) == x * x
        pid = target.submit(helpers.pid).result(timeout=30)
        before = _cpu_seconds(pid)
        time.sleep(0.5)
        assert _cpu_seconds(pid) - before < 0.05  # asleep in read(), not watching


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
