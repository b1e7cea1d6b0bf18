"""Outside tester 10b: ``async def`` tasks on the executor's own event loop.

docs/getting-started.md ("An `async def` function submitted to an executor runs on an event
loop that the executor owns") and docs/index.md ("`async def` tasks"). Each test fails on the
main branch it was written against (9a712cf) and names its defect. What held (asyncio,
joblib/scikit-learn, dask, tqdm, concurrent.futures) is in the round's report, not here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import hybridexec as hx

CoroFn = Callable[[], Coroutine[Any, Any, None]]


async def _raises_timeout_error() -> None:
    """A coroutine whose own work times out (a socket read, an ``asyncio.timeout`` block)."""
    raise TimeoutError("the coroutine's own timeout")


async def _own_wait_for_runs_out() -> None:
    """The common shape of the same thing: the coroutine's own ``asyncio.wait_for`` expires."""
    await asyncio.wait_for(asyncio.sleep(30), 0.01)


@pytest.mark.parametrize("coro", [_raises_timeout_error, _own_wait_for_runs_out])
def test_async_task_that_raises_timeout_error_settles_its_future(coro: CoroFn) -> None:
    """I1: an ``async def`` task (no ``timeout=``) that raises ``TimeoutError`` never settles.

    ``LoopLane.submit``'s ``run()`` re-raises ``asyncio.TimeoutError`` (the built-in
    ``TimeoutError`` since 3.11) when the task has no timeout, out of the whole ``try``: the
    future stays RUNNING forever, ``result()`` without a timeout hangs, and asyncio logs "Task
    exception was never retrieved". The same coroutine on ``kind="thread"`` or ``"process"``
    fails its future with the ``TimeoutError``, as a plain function would.
    """
    with hx.Executor() as ex:
        future = ex.submit(coro)
        done, _ = concurrent.futures.wait([future], timeout=15)
        assert future in done, f"the future never settled: {future!r}"
        assert isinstance(future.exception(), TimeoutError)
        assert not isinstance(future.exception(), hx.TaskTimeoutError)


def test_async_task_own_timeout_error_is_not_reported_as_the_deadline() -> None:
    """I2: with ``timeout=30``, an ``async def`` task that raises its own ``TimeoutError`` at
    once fails with ``TaskTimeoutError("task exceeded its 30 s timeout")``: a deadline that
    did not pass. The thread and process lanes pass the task's own ``TimeoutError`` through
    (checked here too), so the user cannot tell their own timeout from hybridexec's.
    """
    with hx.Executor() as ex:
        for kind in ("thread", "process"):
            other = ex.options(kind=kind, timeout=30).submit(_raises_timeout_error)
            assert type(other.exception(timeout=30)) is TimeoutError, kind
        future = ex.options(timeout=30).submit(_raises_timeout_error)
        assert future.kind == "async"
        error = future.exception(timeout=15)
        assert type(error) is TimeoutError, f"{type(error).__name__}: {error}"
        assert str(error) == "the coroutine's own timeout"
