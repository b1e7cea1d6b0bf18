"""The thread lane's submit path (issue 17): growth, the stall check, reused decisions, futures.

Through the public API: an ``Executor``, its futures and ``stats()``/``explain()``; the stall
check's timing and the futures' layout in a fresh interpreter are checked on the parts.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import hybridexec
from hybridexec import Executor
from tests import helpers


def _cpus() -> int:
    count = getattr(os, "process_cpu_count", None)
    return int(count() or 1) if count is not None else len(os.sched_getaffinity(0))


def noop(x: int | None = None) -> int | None:
    return x


def step(event: threading.Event, wait: bool) -> bool:
    """Computes (sets an event) or, with ``wait``, blocks until the event is set."""
    if wait:
        return event.wait(10)
    event.set()
    return True


def test_a_storm_of_tiny_calls_starts_about_one_thread_per_cpu() -> None:
    # Before: a thread per submit while none was idle, up to 256 (190 seen for 20,000 noops).
    with Executor(kind="thread") as ex:
        for i in range(20):  # its profile: a call keeps a CPU busy, it does not wait
            assert ex.submit(noop, i).result(timeout=30) == i
        futures = [ex.submit(noop, i) for i in range(5000)]
        assert [f.result(timeout=30) for f in futures] == list(range(5000))
        assert ex.stats()["threads"] <= _cpus() + 4


def test_blocking_calls_still_start_a_thread_each() -> None:
    with Executor(kind="thread") as ex:
        for f in [ex.submit(noop, i) for i in range(2000)]:  # tiny calls first
            f.result(timeout=30)
        for _ in range(2):  # unknown, then known to wait: both grow at once
            started = time.monotonic()
            futures = [ex.submit(helpers.sleep_then, 0.2, i) for i in range(64)]
            assert [f.result(timeout=30) for f in futures] == list(range(64))
            assert time.monotonic() - started < 2.0  # 64 x 0.2 s on few threads: 3.2 s or more
        assert ex.stats()["threads"] >= 32


def test_a_computing_function_that_blocks_after_all_gets_a_thread() -> None:
    # step() is seen to compute, so its tasks do not start threads beyond one per CPU; here
    # every thread blocks in step(wait=True) until a queued step() sets the event. The stall
    # check starts a thread for it; without that the waits would run out (and return False).
    with Executor(kind="thread") as ex:
        warm = threading.Event()
        for _ in range(20):
            assert ex.submit(step, warm, False).result(timeout=30)
        event = threading.Event()
        blocked = [ex.submit(step, event, True) for _ in range(_cpus() + 2)]
        setter = ex.submit(step, event, False)
        assert setter.result(timeout=30)
        assert all(f.result(timeout=30) for f in blocked)


def test_a_hint_attached_later_changes_the_lane_of_the_next_call(executor: Executor) -> None:
    fn = helpers.make_cpu_task()  # a fresh function object, picklable by reference
    assert [executor.submit(fn, 1).kind for _ in range(3)] == ["thread"] * 3
    hybridexec.cpu_bound(fn)  # marks fn itself
    assert executor.submit(fn, 1).kind == "process"


def test_sampled_timing_keeps_the_classifier_call_count_exact() -> None:
    # The first call is measured; then one call in 16 is timed and stands for the calls since.
    # Each time the count moves it is exact: it equals the calls made so far. Where it moves
    # is not fixed: on a loaded host a timed call can look slower than measured, the function
    # is measured again and the sampling starts over from that call (6 runs in 100 under a
    # CPU hog), or the calls look long enough to be timed every one (1 in 100).
    counts = [0]
    with Executor() as ex:
        for i in range(1, 35):
            assert ex.submit(noop, i).result(timeout=30) == i
            counts.append(ex.explain(noop, 1).calls)
    moved = [(i, counts[i]) for i in range(1, len(counts)) if counts[i] != counts[i - 1]]
    assert all(c == i for i, c in moved), counts
    assert counts[-1] > 34 - 16, counts  # never more than one period not counted yet


def test_futures_wait_and_time_out_as_the_standard_library_does() -> None:
    with Executor(kind="thread") as ex:
        gate = threading.Event()
        slow = ex.submit(step, gate, True)
        with pytest.raises(concurrent.futures.TimeoutError):
            slow.result(timeout=0.05)
        with pytest.raises(concurrent.futures.TimeoutError):
            slow.exception(timeout=0.05)
        done, pending = concurrent.futures.wait([slow], timeout=0.05)
        assert (done, pending) == (set(), {slow})
        seen: list[object] = []
        slow.add_done_callback(seen.append)
        fast = [ex.submit(helpers.add, i) for i in range(50)]
        assert sorted(f.result() for f in concurrent.futures.as_completed(fast, timeout=30)) == (
            list(range(50))
        )
        gate.set()
        assert slow.result(timeout=30) is True
        assert seen == [slow]
        assert slow.done()
        assert not slow.cancelled()
        assert slow.exception() is None


def test_futures_made_before_any_is_settled_build_no_dict_of_their_own() -> None:
    # CPython 3.11 shares one key table per class, which takes new names only while the first
    # few dozen instances are made: with the fields as plain attributes, futures made before
    # the first was settled left no room for _result, and each future then built a dict (one
    # more object for the garbage collector per future). A fresh interpreter shows it.
    script = (
        "import gc\n"
        "from hybridexec._futures import Future\n"
        "futures = [Future('thread') for _ in range(64)]\n"
        "for f in futures:\n"
        "    f.set_running_or_notify_cancel()\n"
        "    f.settle(True, 1)\n"
        "print(sum(any(type(r) is dict for r in gc.get_referents(f)) for f in futures))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["0"]


def test_the_stall_check_backs_off_while_tasks_are_taken_and_ends_when_nothing_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A storm empties the queue often: the check must not end there (each new arm wakes the
    # timer thread, which takes the GIL), only once no task was taken since the last look.
    from hybridexec._futures import Future, Task
    from hybridexec._threads import STALL_MAX, STALL_SECONDS, ThreadLane

    lane = ThreadLane()
    armed: list[Any] = []

    def record(_when: float, fn: Any) -> bool:
        armed.append(fn)
        return True

    monkeypatch.setattr(lane.timers, "try_call_at", record)
    try:
        lane._taken = 5
        lane._check_stall(4, STALL_SECONDS)  # tasks taken, none queued now: later, less often
        assert [fn.args for fn in armed] == [(5, 2 * STALL_SECONDS)]
        lane._stall_check = False
        lane._check_stall(4, STALL_MAX)
        assert armed[-1].args == (5, STALL_MAX)  # never less often than STALL_MAX
        lane._stall_check = False
        armed.clear()
        lane._check_stall(5, STALL_MAX)  # nothing taken, nothing queued: the check ends
        assert armed == []
        assert not lane._stall_check
        assert lane.size == 0
        future: Future[Any] = Future("thread")
        lane._queue.append(Task(noop, ((1,), {}), future))
        lane._check_stall(5, STALL_MAX)  # nothing taken, a task queued: a thread, look soon
        assert [fn.args[1] for fn in armed] == [STALL_SECONDS]  # (the thread may take it first)
        assert future.result(timeout=30) == 1
    finally:
        lane.shutdown(wait=True)
