"""The process lane's direct path: a submit writes its call to an idle worker itself.

While no call is in flight, the manager offers its idle workers before it sleeps, and a submit
writes the call frame under the lane's lock (no wake-up of the manager). These drive a
``ProcessLane`` directly (one worker) to see which path a call took: the manager is woken
through ``_wake_locked``, which the direct path never calls. Each call must still end exactly
as through the manager: result, crash, cancel, timeout, a write that fails.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx
from hybridexec import _faults
from hybridexec._exceptions import BrokenExecutorError, TaskTimeoutError, WorkerCrashedError
from hybridexec._faults import Fault
from hybridexec._futures import Future, Task
from hybridexec._process import ProcessLane
from hybridexec._process._frames import FrameReader, FramesWriteError, write_frames
from hybridexec._process._supervision import WorkerRecord

from . import helpers
from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)


class Lane:
    """A one-worker lane that counts the manager's wake-ups by submits."""

    def __init__(self) -> None:
        self.lane = ProcessLane(1, name="hx-test-direct")
        self.wakes = 0
        wake = self.lane._wake_locked

        def counting() -> None:
            self.wakes += 1
            wake()

        self.lane._wake_locked = counting  # type: ignore[method-assign]

    def submit(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None
    ) -> Future[Any]:
        future: Future[Any] = Future(kind="process")
        self.lane.submit(Task(fn, [(args, {})], future, timeout=timeout))
        return future

    def offered(self) -> bool:
        """Wait until the manager sleeps with its idle worker offered."""
        return wait_until(lambda: bool(self.lane.ready), 10)


@pytest.fixture
def lane() -> Iterator[Lane]:
    lane = Lane()
    assert lane.submit(helpers.square, 3).result(timeout=30) == 9  # the worker is up
    yield lane
    _faults.clear()
    lane.lane.shutdown(wait=True, cancel_futures=True)


def test_a_call_to_an_idle_worker_goes_without_waking_the_manager(lane: Lane) -> None:
    for x in range(20):
        assert lane.offered()
        wakes = lane.wakes
        future = lane.submit(helpers.square, x)
        assert lane.wakes == wakes  # written by this thread
        assert not lane.lane.pending
        assert future.running() or future.done()
        assert future.result(timeout=30) == x * x
    assert lane.lane.stats["workers_started"] == 1


def test_a_second_call_while_one_is_in_flight_goes_through_the_manager(lane: Lane) -> None:
    assert lane.offered()
    first = lane.submit(helpers.sleep_then, 0.3, "first")
    wakes = lane.wakes
    second = lane.submit(helpers.square, 4)
    assert lane.wakes == wakes + 1
    assert first.result(timeout=30) == "first"
    assert second.result(timeout=30) == 16


def test_a_crash_of_a_directly_sent_call_fails_it_alone(lane: Lane) -> None:
    assert lane.offered()
    wakes = lane.wakes
    crashed = lane.submit(helpers.exit_now, 3)
    assert lane.wakes == wakes
    with pytest.raises(WorkerCrashedError):
        crashed.result(timeout=30)
    assert lane.submit(helpers.square, 5).result(timeout=30) == 25
    assert lane.lane.stats["crashes"] == 1


def test_cancel_of_a_directly_sent_call_stops_its_worker(lane: Lane) -> None:
    assert lane.offered()
    wakes = lane.wakes
    running = lane.submit(helpers.sleep_then, 30.0, "never")
    assert lane.wakes == wakes
    assert running.running()
    assert running.cancel()
    assert running.cancelled()
    assert wait_until(lambda: lane.lane.stats["kills"] == 1, 10)
    assert lane.submit(helpers.square, 6).result(timeout=30) == 36


def test_a_call_with_a_timeout_goes_through_the_manager_and_times_out(lane: Lane) -> None:
    assert lane.offered()
    wakes = lane.wakes
    timed = lane.submit(helpers.sleep_then, 30.0, "late", timeout=0.3)
    assert lane.wakes == wakes + 1
    with pytest.raises(TaskTimeoutError):
        timed.result(timeout=30)
    assert lane.submit(helpers.square, 7).result(timeout=30) == 49


def test_a_failed_direct_write_fails_that_call_and_replaces_the_worker(
    lane: Lane, tmp_path: Path
) -> None:
    assert lane.offered()
    eagain = OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
    _faults.inject("lane.send", Fault("raise", eagain, times=1, shared=str(tmp_path / "f")))
    failed = lane.submit(helpers.square, 8)
    with pytest.raises(BrokenExecutorError) as info:
        failed.result(timeout=30)
    assert isinstance(info.value.__cause__, OSError)
    assert _faults.fired(str(tmp_path / "f")) == 1
    _faults.clear()
    assert lane.submit(helpers.square, 9).result(timeout=30) == 81
    assert lane.lane.stats["kills"] == 1


def _hold(
    method: Callable[[], None],
) -> tuple[Callable[[], None], threading.Event, threading.Event]:
    """``method`` held at its first call: (the stand-in, set as it is held, set to let it go)."""
    held, gate = threading.Event(), threading.Event()

    def stand_in() -> None:
        if not gate.is_set():
            held.set()
            gate.wait(30)
        method()

    return stand_in, held, gate


def _ended(worker: WorkerRecord) -> bool:
    """Whether ``worker`` ended with every thread of it, and so closed its descriptors.

    Not "its pid is a zombie": the main thread shows as one while the worker's other threads
    still exit, holding the descriptors they share (its end of the call pipe among them, so a
    write to it still succeeds). The sentinel fires only when the whole process is gone.
    """
    return bool(wait([worker.sentinel], 10))


def test_a_call_written_to_an_offered_worker_that_died_runs_on_its_replacement(
    lane: Lane,
) -> None:
    assert lane.offered()
    manager = lane.lane._manager
    assert manager is not None
    (worker,) = manager.workers.values()
    # Hold the manager as it wakes (the worker's death wakes it), before it takes its workers
    # back: the submit then meets the dead worker's closed pipe.
    manager._reclaim, held, gate = _hold(manager._reclaim)  # type: ignore[method-assign]
    try:
        os.kill(worker.pid, signal.SIGKILL)
        assert _ended(worker)
        assert held.wait(10)  # awake, its offer not taken back
        assert lane.lane.ready == [worker]
        future = lane.submit(helpers.square, 11)
        assert lane.lane.send_failures  # the write met the closed pipe
    finally:
        gate.set()
        del manager._reclaim
    assert future.result(timeout=30) == 121  # never started in the dead worker: sent again
    assert lane.lane.stats["crashes"] == 0
    assert lane.lane.worker_pids() != [worker.pid]


def test_a_call_the_manager_writes_to_a_worker_that_died_runs_on_its_replacement(
    lane: Lane,
) -> None:
    # The same through the manager's own sends: it writes to an idle worker that died before
    # the manager saw it die (it sees the death only on its next sleep).
    assert lane.offered()
    manager = lane.lane._manager
    assert manager is not None
    (worker,) = manager.workers.values()
    manager._dispatch, held, gate = _hold(manager._dispatch)  # type: ignore[method-assign]
    try:
        lane.lane.wake()  # the manager takes its worker back and is held as it dispatches
        assert held.wait(10)
        os.kill(worker.pid, signal.SIGKILL)
        assert _ended(worker)
        wakes = lane.wakes
        future = lane.submit(helpers.square, 12)
        assert lane.wakes == wakes + 1  # to the manager
    finally:
        gate.set()
        del manager._dispatch
    assert future.result(timeout=30) == 144  # never started in the dead worker: sent again
    assert lane.lane.stats["crashes"] == 0
    assert lane.lane.worker_pids() != [worker.pid]


def test_a_failed_write_of_several_frames_tells_which_went_whole() -> None:
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        frames = [bytes([i]) * 10_000 for i in range(20)]  # more than the pipe holds
        with pytest.raises(FramesWriteError) as info:
            write_frames(w, frames)
        err = info.value
        assert isinstance(err.error, BlockingIOError)
        whole = err.whole(frames)
        assert 0 < whole < len(frames)
        os.set_blocking(r, False)
        got = b""
        while True:
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                break
            got += chunk
        assert len(got) == err.written
        reader = FrameReader(r)
        reader.buf = got
        assert [reader.next_frame() for _ in range(whole)] == frames[:whole]
        assert reader.next_frame() is None  # the next one did not go whole
    finally:
        os.close(r)
        os.close(w)


def test_kill_workers_ends_a_directly_sent_call(lane: Lane) -> None:
    assert lane.offered()
    running = lane.submit(helpers.sleep_then, 30.0, "never")
    assert running.running()
    lane.lane._kill_all(signal.SIGKILL)
    assert wait_until(running.done, 10)
    assert running.cancelled()
    assert lane.submit(helpers.square, 10).result(timeout=30) == 100


def test_round_trips_through_the_public_api_end_each_on_its_own() -> None:
    with hx.Executor(max_processes=2) as ex:
        target = ex.options(kind="process")
        for x in range(300):
            assert target.submit(helpers.square, x).result(timeout=30) == x * x
        futures = [target.submit(helpers.add, x, 1) for x in range(300)]
        assert [f.result(timeout=30) for f in futures] == [x + 1 for x in range(300)]
        assert ex.stats()["process_lane"]["workers_started"] == 2
