"""An outside tester's cases for round 10 (tester 10c): async deadlines as timers.

Each test names the defect of the tester's report (R1, ...) in its docstring and fails on main
da481b4 (Python 3.11).
"""

from __future__ import annotations

import time

import pytest

import hybridexec as hx

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
