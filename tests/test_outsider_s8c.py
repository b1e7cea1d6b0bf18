"""Outside tester 8c: asyncio around ``hx.amap``, found while breaking the library as a user.

Each test fails on the main branch it was written against (aaa4562) and names its defect.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import hybridexec
from hybridexec import Executor

from . import helpers
from .conftest import wait_until

_release = threading.Event()
_returned: list[int] = []


def _held(x: int) -> int:
    """A blocking call (I/O in real code) that returns when the test releases it, or at 10 s."""
    _release.wait(10)
    _returned.append(x)
    return x


def test_d1_wait_for_on_amap_of_thread_work_times_out_while_calls_still_block(
    executor: Executor,
) -> None:
    """D1: ``asyncio.wait_for(hx.amap(...), t)`` does not time out while thread calls block.

    The cancel path of ``amap`` joins the thread consuming the map, and that thread waits for
    the calls already running on threads: the timeout (or ``asyncio.timeout``, or
    ``task.cancel()``, or ``asyncio.run`` ending) takes effect only when every running call
    has returned, however long that is. ``asyncio.wait_for(loop.run_in_executor(ex, ...), t)``
    and ``hx.arun`` do time out at ``t``; ``amap`` of I/O calls, its main use, does not. It
    also holds for CPU work routed automatically: the first, measured call of a function runs
    on a thread, so ``wait_for(hx.amap(crunch, [15] * 4), 1)`` returns after 15 s, not 1 s.
    """
    _release.clear()
    _returned.clear()

    async def main() -> list[int]:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                hybridexec.amap(_held, [1, 2], kind="thread", executor=executor), 0.5
            )
        return list(_returned)  # what had returned when the timeout reached the caller

    try:
        seen = asyncio.run(main())
    finally:
        _release.set()
    # The calls were still blocked (released only now): the timeout must not have waited.
    assert seen == []


def test_d2_cancelling_amap_after_shutdown_default_executor_raises_cancelled(
    executor: Executor,
) -> None:
    """D2: an ``amap`` cancelled once the loop's default executor is shut down raises RuntimeError.

    The cancel path awaits ``asyncio.to_thread(thread.join)``, which needs the loop's default
    executor: after ``await loop.shutdown_default_executor()`` the awaiting task gets
    ``RuntimeError('Executor shutdown has been called')`` instead of ``CancelledError`` (the
    work in processes is still killed).
    """

    async def main() -> BaseException | None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(
            hybridexec.amap(helpers.sleep_then, [30.0] * 2, kind="process", executor=executor)
        )
        assert await asyncio.to_thread(
            wait_until, lambda: executor.stats()["process_lane"]["workers_started"] >= 1, 30
        )
        await loop.shutdown_default_executor()
        task.cancel()
        try:
            await task
        except BaseException as exc:  # its type is what the test checks
            return exc
        return None

    outcome: Any = asyncio.run(main())
    assert isinstance(outcome, asyncio.CancelledError), repr(outcome)
