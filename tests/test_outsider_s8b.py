"""An outside tester's cases for round 8 (b): timeouts, cancel, actors, shared memory, maps.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring; each failed
on 408c0f3. They use the public API as a user would; the cases that break an executor or leave
something behind in their process run as a script in a fresh interpreter of its own session.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(120)


# ---- B1: a huge (or infinite) timeout on a process task breaks the process lane -----------

HUGE_TIMEOUT_PROCESS = """
import sys, time
import hybridexec as hx


def slow(x):
    time.sleep(1.0)
    return x


if __name__ == "__main__":
    timeout = float(sys.argv[1])
    with hx.Executor(max_processes=2) as ex:
        other = ex.options(kind="process").submit(slow, 7)
        while not other.running():
            time.sleep(0.01)
        try:
            huge = ex.options(kind="process", timeout=timeout).submit(slow, 1)
        except ValueError:
            huge = None  # refusing the value at submit would be fine too
        for name, fut in (("other", other), ("huge", huge)):
            if fut is None:
                print(name, "refused")
                continue
            try:
                print(name, fut.result(30))
            except Exception as exc:
                print(name, "failed", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("timeout", ["inf", "1e12"])
def test_huge_timeout_on_a_process_task_fails_no_other_task(tmp_path: Path, timeout: str) -> None:
    """B1: ``timeout=float("inf")`` (or 1e12) passes validation, then the process lane's manager
    fails with ``OverflowError`` and every task in the lane, an unrelated running one included,
    fails with ``BrokenExecutorError`` ("the process lane's manager kept failing")."""
    done = run_script(tmp_path, HUGE_TIMEOUT_PROCESS, timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    assert "other 7" in lines, done.stdout
    assert "huge 1" in lines or "huge refused" in lines, done.stdout


# ---- B2: a huge timeout on a thread task kills the lane's deadline timer ------------------


def _spin_until(stop: threading.Event) -> str:
    # Pure Python (sees the asynchronous interruption at once), bounded so the test ends.
    end = time.monotonic() + 20.0
    while not stop.is_set() and time.monotonic() < end:
        pass
    return "ran to the end"


def test_huge_timeout_on_a_thread_task_keeps_later_timeouts_working() -> None:
    """B2: a thread task with ``timeout=float("inf")`` runs fine, but the deadline timer thread
    dies of ``OverflowError`` in ``Condition.wait``; from then on no thread task of that
    executor ever times out (a 0.3 s timeout lets a spinning task run to its end)."""
    stop = threading.Event()
    with hx.Executor(max_threads=2, max_processes=1) as ex:
        try:
            first = ex.options(kind="thread", timeout=float("inf")).submit(int, 5)
        except ValueError:
            first = None  # refusing the value at submit would be fine too
        if first is not None:
            assert first.result(10) == 5
        late = ex.options(kind="thread", timeout=0.3).submit(_spin_until, stop)
        try:
            exc = late.exception(timeout=15)
        except TimeoutError:
            exc = None
        finally:
            stop.set()
        assert isinstance(exc, hx.TaskTimeoutError), exc


# ---- B3: a timeout while the worker sends a large result leaks its /dev/shm segment -------

TIMEOUT_DURING_REPLY = """
import glob, os, signal, sys, time
import numpy as np
import hybridexec as hx

MARK = os.path.abspath("in_reply")


class SlowToPickle:
    def __reduce__(self):
        open(MARK, "w").close()  # the worker is sending its reply now
        if sys.argv[1] == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
        return (SlowToPickle, ())


def big_result(_):
    # 32 MB: placed in shared memory on the way back, then the rest of the reply stalls
    return (np.ones(4_000_000), SlowToPickle())


def mine():
    return sorted(glob.glob(f"/dev/shm/hx{os.getpid()}_*"))


if __name__ == "__main__":
    mode = sys.argv[1]
    with hx.Executor(max_processes=1) as ex:
        for _ in range(3):
            if os.path.exists(MARK):
                os.unlink(MARK)
            opts = ex.options(kind="process", timeout=1.0 if mode == "timeout" else None)
            fut = opts.submit(big_result, 0)
            if mode == "cancel":
                while not os.path.exists(MARK):
                    time.sleep(0.01)
                assert fut.cancel()
            try:
                fut.result(30)
            except (hx.TaskTimeoutError, hx.WorkerCrashedError):
                pass
            except BaseException as exc:
                assert fut.cancelled(), exc
    print("left", len(mine()), sum(os.path.getsize(p) for p in mine()))
"""


@pytest.mark.parametrize("mode", ["timeout", "cancel", "crash"])
def test_a_reply_cut_short_leaves_no_segment(tmp_path: Path, mode: str) -> None:
    """B3: a process task whose worker is sending back a large numpy result (placed in shared
    memory) when its deadline passes, when it is cancelled, or when the worker dies, leaves a
    ~32 MB /dev/shm segment named after the parent, one per task, that outlives ``shutdown()``
    (only interpreter exit removes them: a long-lived program fills /dev/shm)."""
    done = run_script(tmp_path, TIMEOUT_DURING_REPLY, mode)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left 0 0" in done.stdout.split("\n"), done.stdout


# ---- B4: ActorRef.join(float("inf")) -------------------------------------------------------


class _Napper:
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_actor_join_with_an_infinite_timeout_waits(kind: Literal["thread", "process"]) -> None:
    """B4: ``ref.join(float("inf"))`` ("wait as long as it takes") raises ``OverflowError``
    from ``Thread.join``; worse, that failed join leaves the thread marked stopped, so every
    later ``join(0)`` says the actor is gone while it still runs (``join(5) or kill()`` then
    never kills)."""
    ref = hx.spawn(_Napper, kind=kind)
    try:
        busy = ref.ask(_Napper.nap, 0.5)
        ref.stop(wait=False)
        try:
            gone = ref.join(float("inf"))
        except OverflowError:
            gone = ref.join(0)  # the actor is still handling its message: must be False
            assert gone is False, "join(0) says a running actor is gone"
            raise
        assert gone is True
        assert busy.result(10) == 0.5
    finally:
        ref.kill()


# ---- B5: Executor(idle_timeout=float("inf")) ----------------------------------------------

IDLE_TIMEOUT_INF = """
import sys, time
import hybridexec as hx


def inc(x):
    return x + 1


if __name__ == "__main__":
    try:
        ex = hx.Executor(max_threads=1, max_processes=1, idle_timeout=float(sys.argv[1]))
    except ValueError:
        print("refused")  # refusing the value would be fine too
        raise SystemExit(0)
    print("first", ex.options(kind="thread").submit(inc, 1).result(10))
    time.sleep(0.3)  # the thread is idle now
    try:
        print("second", ex.options(kind="thread").submit(inc, 2).result(15))
    except TimeoutError:
        print("second hangs")
    ex.shutdown(wait=False, cancel_futures=True)
"""


@pytest.mark.parametrize("idle", ["inf", "1e12"])
def test_infinite_idle_timeout_keeps_the_thread_lane_working(tmp_path: Path, idle: str) -> None:
    """B5: with ``idle_timeout=float("inf")`` (accepted, and the natural "never retire"), the
    thread lane's worker thread dies of ``OverflowError`` once it goes idle; the lane still
    counts it, so the next thread task never runs (its future hangs forever)."""
    done = run_script(tmp_path, IDLE_TIMEOUT_INF, idle)
    lines = done.stdout.split("\n")
    assert "refused" in lines or "second 3" in lines, done.stdout + done.stderr[-2000:]
