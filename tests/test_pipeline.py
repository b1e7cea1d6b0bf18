"""The process lane's pipelining: short calls sent ahead to busy workers, each ending on its own.

These drive a ``ProcessLane`` directly (one worker), so that calls really wait in a worker
behind another: the lane sends a call ahead only once the function was measured short.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridexec import Executor, WorkerCrashedError
from hybridexec._futures import Future, Task
from hybridexec._process import ProcessLane
from hybridexec._process._schedule import AHEAD_SECONDS, PIPELINE_SECONDS

from . import helpers
from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def nap(seconds: float | str, value: Any = None) -> Any:
    """Sleep ``seconds`` (not at all for 0: ``sleep(0)`` yields the CPU, slow under load).

    A path instead: wait until that file exists (the test says when, whatever the load).
    """
    if isinstance(seconds, str):
        deadline = time.monotonic() + 30
        while not os.path.exists(seconds) and time.monotonic() < deadline:
            time.sleep(0.005)
    elif seconds:
        time.sleep(seconds)
    return value


@pytest.fixture
def lane() -> Iterator[ProcessLane]:
    lane = ProcessLane(1, name="hx-test-pipeline")
    yield lane
    lane.shutdown(wait=True, cancel_futures=True)


def _submit(lane: ProcessLane, fn: Callable[..., Any], *args: Any) -> Future[Any]:
    future: Future[Any] = Future(kind="process")
    lane.submit(Task(fn, [(args, {})], future))
    return future


def _measure_short(lane: ProcessLane, fn: Callable[..., Any], *args: Any, depth: int = 2) -> None:
    # Calls one by one until the manager's figure says ``fn`` is short enough for ``depth``
    # calls in flight per worker: on a loaded machine a preempted call is measured long, and
    # the figure falls slowly (eight calls were not always enough: at load 13-21 a test then
    # waited in vain for calls sent ahead).
    deadline = time.monotonic() + 30
    calls = 0
    while calls < 8 or not _known_short(lane, fn, min(PIPELINE_SECONDS, AHEAD_SECONDS / depth)):
        assert time.monotonic() < deadline, f"{fn} not measured short in {calls} calls"
        _submit(lane, fn, *args).result(timeout=30)
        calls += 1


def _known_short(lane: ProcessLane, fn: Callable[..., Any], seconds: float) -> bool:
    manager = lane._manager
    assert manager is not None
    entry = manager.costs.get(id(fn))  # [weak reference, seconds per call]
    return entry is not None and entry[1] <= seconds


def _in_flight(lane: ProcessLane) -> int:
    manager = lane._manager
    assert manager is not None
    return sum(len(w.tasks) for w in list(manager.workers.values()))


def test_short_calls_are_sent_ahead_and_each_ends_on_its_own(
    lane: ProcessLane, tmp_path: Path
) -> None:
    _measure_short(lane, nap, 0.0, 0, depth=4)  # the head and three behind it
    gate = tmp_path / "go"
    head = _submit(lane, nap, str(gate), "head")  # runs until the test saw the others sent
    # Sent while the head runs: they wait in the worker, not in the lane.
    behind = [_submit(lane, nap, 0.0, i) for i in range(3)]
    try:
        assert wait_until(lambda: _in_flight(lane) == 4, 10)
    finally:
        gate.touch()
    assert head.result(timeout=30) == "head"
    assert [f.result(timeout=30) for f in behind] == [0, 1, 2]
    assert lane.stats["workers_started"] == 1


def test_crash_fails_the_running_call_and_sends_the_ones_behind_again(lane: ProcessLane) -> None:
    _measure_short(lane, helpers.exit_on, 0, -1)
    first = _submit(lane, nap, 0.3, "first")  # never measured: runs alone
    futures = [_submit(lane, helpers.exit_on, x, 2) for x in range(5)]
    assert first.result(timeout=30) == "first"
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 5
    assert [f.result() for f in futures[:2]] == [0, 1]
    with pytest.raises(WorkerCrashedError):
        futures[2].result()
    assert [f.result() for f in futures[3:]] == [3, 4]  # they never ran: sent again
    # The five went in one frame (a group). The worker's ring (_process/_ring.py, a memfd)
    # told which of them killed it: the culprit fails having run once. Without a ring, those
    # without a reply go again one by one, and the culprit kills a second worker.
    assert lane.stats["crashes"] == (1 if hasattr(os, "memfd_create") else 2)


def test_cancel_of_a_call_waiting_in_a_worker_keeps_the_worker(
    lane: ProcessLane, tmp_path: Path
) -> None:
    _measure_short(lane, nap, 0.0, 0)
    gate = tmp_path / "go"
    head = _submit(lane, nap, str(gate), "head")  # runs until the cancel is done, however slow
    waiting = _submit(lane, nap, 0.0, "dropped")
    assert wait_until(lambda: _in_flight(lane) == 2, 10)
    assert waiting.cancel()
    assert waiting.cancelled()
    gate.touch()
    assert head.result(timeout=30) == "head"  # the worker running it was not killed
    assert _submit(lane, nap, 0.0, "after").result(timeout=30) == "after"
    assert lane.stats["kills"] == 0
    assert lane.stats["workers_started"] == 1


def test_cancelled_waiting_call_that_runs_long_is_killed_after_a_grace(lane: ProcessLane) -> None:
    _measure_short(lane, nap, 0.0, 0)
    head = _submit(lane, nap, 0.2, "head")
    stuck = _submit(lane, nap, 30.0, "stuck")  # measured short, runs long
    assert wait_until(lambda: _in_flight(lane) == 2, 10)
    assert stuck.cancel()
    assert head.result(timeout=30) == "head"
    assert wait_until(lambda: lane.stats["kills"] == 1, 10)
    assert _submit(lane, nap, 0.0, "after").result(timeout=30) == "after"


def test_calls_with_a_timeout_are_never_sent_ahead(lane: ProcessLane) -> None:
    _measure_short(lane, nap, 0.0, 0)
    head = _submit(lane, nap, 0.3, "head")
    future: Future[Any] = Future(kind="process")
    lane.submit(Task(nap, [((0.0, "timed"), {})], future, timeout=5.0))
    assert wait_until(lambda: _in_flight(lane) == 1 and len(lane.pending) == 1, 10)
    assert head.result(timeout=30) == "head"
    assert future.result(timeout=30) == "timed"


def test_a_cancelled_waiting_call_is_seen_as_done_at_once() -> None:
    # A pending future cancelled by its user is seen by wait() and as_completed() at once,
    # also when the call was already sent ahead to a busy worker (its reply is dropped later).
    with Executor(max_processes=1) as ex:
        lane = ex.options(kind="process")
        for i in range(50):
            fut = lane.submit(helpers.square, i)
            if fut.cancel():
                done, _ = concurrent.futures.wait([fut], timeout=5)
                assert fut in done
            else:
                assert fut.result(timeout=30) == i * i
