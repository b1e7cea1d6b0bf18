"""asyncio: async def on the executor's loop, arun/amap, cancellation that stops work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest

import hybridexec
from hybridexec import Executor, TaskTimeoutError

from . import helpers
from .conftest import wait_until


async def double_later(x: int, delay: float = 0.01) -> int:
    await asyncio.sleep(delay)
    return 2 * x


async def fail_later() -> None:
    await asyncio.sleep(0)
    raise KeyError("async failure")


def test_async_def_runs_on_the_executors_loop(executor: Executor) -> None:
    futures = [executor.submit(double_later, i) for i in range(50)]
    assert [f.result(timeout=10) for f in futures] == [2 * i for i in range(50)]
    assert {f.kind for f in futures} == {"async"}


def test_many_async_tasks_run_concurrently(executor: Executor) -> None:
    started = time.monotonic()
    futures = [executor.submit(double_later, i, 0.2) for i in range(200)]
    assert [f.result(timeout=10) for f in futures] == [2 * i for i in range(200)]
    assert time.monotonic() - started < 5  # serially this would take 40 s


def test_async_exception_reaches_future(executor: Executor) -> None:
    with pytest.raises(KeyError, match="async failure"):
        executor.submit(fail_later).result(timeout=10)


def test_async_cancel_stops_the_coroutine(executor: Executor) -> None:
    fut = executor.submit(double_later, 1, 60)
    assert wait_until(fut.running, 10)
    assert fut.cancel()
    assert fut.cancelled()


def test_async_timeout(executor: Executor) -> None:
    fut = executor.options(timeout=0.1).submit(double_later, 1, 60)
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=10)


def test_async_def_in_an_explicit_lane(executor: Executor) -> None:
    assert executor.options(kind="thread").submit(double_later, 3).result(timeout=10) == 6
    fut = executor.options(kind="process").submit(double_later, 4)
    assert fut.result(timeout=30) == 8
    assert fut.kind == "process"


def test_map_of_async_def(executor: Executor) -> None:
    results: list[Any] = hybridexec.map(double_later, range(5), executor=executor)
    assert results == [0, 2, 4, 6, 8]


def test_arun_and_amap_inside_a_loop(executor: Executor) -> None:
    async def main() -> tuple[int, list[int]]:
        one = await hybridexec.arun(helpers.square, 5, executor=executor)
        many = await hybridexec.amap(helpers.square, range(100), executor=executor)
        return one, many

    one, many = asyncio.run(main())
    assert one == 25
    assert many == [i * i for i in range(100)]


def test_cancelling_arun_kills_process_work(executor: Executor) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(
            hybridexec.arun(helpers.sleep_then, 60, executor=executor.options(kind="process"))
        )
        assert await asyncio.to_thread(wait_until, lambda: bool(executor.worker_pids), 30)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: executor.stats()["process_lane"]["kills"] == 1, 10)


def test_cancelling_amap_cancels_work_in_flight(executor: Executor) -> None:
    async def main() -> Any:
        task = asyncio.ensure_future(
            hybridexec.amap(helpers.sleep_then, [30.0] * 4, kind="process", executor=executor)
        )
        assert await asyncio.to_thread(
            wait_until, lambda: executor.stats()["process_lane"]["workers_started"] >= 1, 30
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 20
    assert wait_until(lambda: executor.stats()["process_lane"]["kills"] >= 1, 10)


def test_imap_iterator_cancel_from_another_thread(executor: Executor) -> None:
    results = hybridexec.imap(helpers.sleep_then, [30.0] * 2, kind="process", executor=executor)
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            next(results)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    assert wait_until(lambda: executor.stats()["process_lane"]["workers_started"] >= 1, 30)
    results.cancel()
    thread.join(10)
    assert isinstance(outcome[0], concurrent.futures.CancelledError)
    assert wait_until(lambda: executor.stats()["process_lane"]["kills"] >= 1, 10)


def test_amap_takes_several_iterables_a_limit_and_return_exceptions(executor: Executor) -> None:
    async def main() -> tuple[list[int], list[int | BaseException]]:
        powers = await hybridexec.amap(pow, [2, 3, 4], [5, 6], limit=2, executor=executor)
        kept = await hybridexec.amap(
            helpers.fail_at, range(10), [4] * 10, return_exceptions=True, executor=executor
        )
        return powers, kept

    powers, kept = asyncio.run(main())
    assert powers == [32, 729]
    assert str(kept[4]) == "item 4 fails"
    assert kept[:4] + kept[5:] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_amap_bad_limit_raises_at_the_call(executor: Executor) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="limit"):
            await hybridexec.amap(helpers.square, [1], limit=0, executor=executor)

    asyncio.run(main())


async def swallow_cancel(seconds: float) -> str:
    """Sleeps ``seconds``; a cancel is swallowed once (the sleep is then finished)."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await asyncio.sleep(0.5)
        return "swallowed"
    return "slept"


def test_async_deadline_fails_the_task_even_if_the_coroutine_swallows_the_cancel(
    executor: Executor,
) -> None:
    fut = executor.options(timeout=0.1).submit(swallow_cancel, 60)
    with pytest.raises(TaskTimeoutError, match=r"0\.1 s timeout"):
        fut.result(timeout=10)
    # The loop goes on: the next coroutine runs.
    assert executor.submit(swallow_cancel, 0).result(timeout=10) == "slept"
