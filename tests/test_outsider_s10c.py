"""An outside tester's cases for round 10 (tester 10c): async deadlines as timers.

Each test names the defect of the tester's report (R1, ...) in its docstring and fails on main
da481b4 (Python 3.11).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(20)


async def blocks_the_loop(seconds: float) -> str:
    time.sleep(seconds)  # never yields: the loop (and the deadline's timer) waits for it
    return "finished late"


def test_coroutine_that_blocks_past_its_deadline_is_not_a_success() -> None:
    """R1: an ``async def`` task given ``timeout=0.05`` that blocks the event loop for 1 s
    (a synchronous call, no ``await``) gets its result, ``"finished late"``, 0.95 s past its
    deadline. docs/timeouts-and-killing.md, "Timeouts on coroutines": "With ``timeout=``, its
    future fails with ``TaskTimeoutError`` at the deadline". The deadline's timer
    (``_asyncio.py`` ``LoopLane.submit``) cannot run while the loop is blocked, and ``run()``
    cancels it in its ``finally`` as the coroutine returns, never asking whether it fell due:
    the deadline is silently dropped. A thread task blocked in a C call past its deadline
    fails with ``TaskTimeoutError`` (its timer is another thread's). Not timing-dependent:
    the block is 20 times the timeout, and the timer cannot run before the block ends.
    """
    with hx.Executor() as ex:
        fut = ex.options(timeout=0.05).submit(blocks_the_loop, 1.0)
        assert fut.kind == "async"
        with pytest.raises(hx.TaskTimeoutError):
            fut.result(timeout=10)


STOP_WHILE_START_RETRIED = """
import os, resource, threading
import hybridexec as hx


class C:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def fds():
    return len(os.listdir("/proc/self/fd")) - 1


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with hx.Executor(max_processes=1) as ex:
        warm = ex.spawn(C, kind="process")  # the actor modules are loaded
        warm.ask(C.add, 1).result(timeout=10)
        warm.stop()
        assert warm.join(10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds(), hard))
        ref = ex.spawn(C, kind="process", max_restarts=3)
        f = ref.ask(C.add, 1)
        # The shortage ends 1.5 s in, while stop() waits: after the first start's 1 s of tries.
        threading.Timer(1.5, resource.setrlimit, (resource.RLIMIT_NOFILE, (soft, hard))).start()
        ref.stop()
        print("ask", f.result(timeout=10), flush=True)
"""


def test_stop_while_a_start_is_retried_still_handles_the_queued_ask(tmp_path: Path) -> None:
    """R2: ``stop()`` (drain: "handles every queued message first") called while a process
    actor's start fails for want of descriptors: a start failing while stopping broke the
    actor at once, restarts left or not, and the queued ask failed with ActorBrokenError.
    The lead's fix counts it as a restart, as when open; the shortage here outlasts the
    first start's 1 s of tries and ends while ``stop()`` waits."""
    done = run_script(tmp_path, STOP_WHILE_START_RETRIED, timeout=30)
    assert "ask 1" in done.stdout, done.stdout + done.stderr
