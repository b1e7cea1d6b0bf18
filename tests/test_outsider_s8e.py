"""An outside tester's cases for round 8 (e): amap cancellation, lost tells, odd timeouts.

Each test names the defect of the tester's report (F1, F2, ...) in its docstring; each fails
on bee5756. They use the public API as a user would, and none depends on timing: what must
happen first is ordered by events.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(60)


def _amap_consumers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hybridexec-amap"]


def _run_then_join_consumers(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, then wait for the amap consumer threads it started to end."""
    before = set(_amap_consumers())
    asyncio.run(main())
    for thread in set(_amap_consumers()) - before:
        thread.join(30)
        assert not thread.is_alive()


# ---- F1: a cancel that lands while the amap submits a process call lets that call run --------


class _Gate:
    """An argument whose pickling, in the amap's consumer thread, waits for the cancel.

    It pickles as its path (a ``str``): the worker needs nothing of this module's classes.
    """

    def __init__(self, path: str, entered: threading.Event, release: threading.Event) -> None:
        self.path = path
        self.entered = entered
        self.release = release

    def __reduce__(self) -> tuple[Any, ...]:
        if threading.current_thread().name == "hybridexec-amap":
            self.entered.set()
            self.release.wait(20)
        return (str, (self.path,))


def _write_when_done(path: str) -> int:
    Path(path, "started").touch()
    import time

    time.sleep(5)  # killed by the cancel unless the defect lets it run
    Path(path, "finished").touch()
    return 1


def test_amap_cancel_during_a_process_submit_kills_that_call(tmp_path: Path) -> None:
    """F1: ``hx.amap`` cancelled while its consumer thread is inside ``submit_task`` (pickling
    the call) raises at once, but the call being submitted is not in ``state.waiting`` yet, so
    ``MapIterator.cancel`` (_views.py) does not cancel it, and the generator (_mapping._run)
    then waits for it: the process call of the cancelled amap runs to its end (5 s here) and
    its consumer thread with it. The changelog says a cancel kills the work in flight.

    The argument's ``__reduce__`` holds the consumer inside the submit until the cancel is done.
    """
    entered, release = threading.Event(), threading.Event()
    gate: Any = _Gate(str(tmp_path), entered, release)  # unpickles as the path: a str

    async def main() -> None:
        task = asyncio.ensure_future(hx.amap(_write_when_done, [gate], kind="process"))
        assert await asyncio.to_thread(entered.wait, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    _run_then_join_consumers(main)
    assert not (tmp_path / "finished").exists(), "the cancelled amap's process call ran to its end"


# ---- F2: kill() drops the tells still queued in the parent without a report ------------------


class _Slow:
    def ping(self) -> int:
        return os.getpid()

    def block(self) -> None:
        import time

        time.sleep(30)  # killed

    def work(self, pad: bytes) -> int:
        return len(pad)


def test_killed_process_actor_reports_each_queued_tell() -> None:
    """F2: ``ref.kill()`` of a process actor clears the tells still queued in the parent
    (``overflow``: they did not fit in the pipe) and hands them to ``drop()``, which only fails
    asks: those tells reach neither ``on_error`` nor the warning. docs/actors.md:81 and the
    round-8 changelog say every lost tell reaches ``on_error`` once, queued ones included; a
    death (not a kill) does report them (the supervisor's ``finally``), a kill of small tells
    too (they are in flight). Here 1 of 21 lost tells is reported (0 if the kill comes
    before the child started).
    """
    errors: list[BaseException] = []
    lock = threading.Lock()

    def on_error(exc: BaseException) -> None:
        with lock:
            errors.append(exc)

    pad = b"x" * 300_000  # 20 of them cannot all sit in a pipe: most wait in the parent
    with hx.Executor() as ex:
        ref = ex.spawn(_Slow, kind="process", on_error=on_error)
        assert ref.ask(_Slow.ping).result(30) != os.getpid()  # running in its own process
        ref.tell(_Slow.block)
        for _ in range(20):
            ref.tell(_Slow.work, pad)
        ref.kill()
        assert ref.join(30)
    with lock:
        assert len(errors) == 21, f"{len(errors)} of 21 lost tells reached on_error"
        assert all(isinstance(e, hx.ActorBrokenError) for e in errors)


class _Dies:
    def ping(self) -> int:
        return os.getpid()

    def die(self) -> None:
        os._exit(3)

    def work(self, x: int) -> int:
        return x


def test_kill_during_a_restart_reports_the_tells_sent_for_the_new_process() -> None:
    """F2b (F2's cause, another path): a process actor with ``max_restarts`` dies; the tells
    sent while it waits to restart (backoff 0.1 s, then a new process) queue in the parent for
    the new process; ``ref.kill()`` then drops all of them unreported (0 of 10 reach
    ``on_error``). Were they already in the new process's pipe, the kill would report them.
    """
    errors: list[BaseException] = []
    with hx.Executor() as ex:
        ref = ex.spawn(_Dies, kind="process", max_restarts=3, on_error=errors.append)
        ref.ask(_Dies.ping).result(30)
        with pytest.raises(hx.ActorBrokenError):
            ref.ask(_Dies.die).result(30)
        for i in range(10):
            ref.tell(_Dies.work, i)
        ref.kill()
        assert ref.join(30)
    assert len(errors) == 10, f"{len(errors)} of 10 lost tells reached on_error"


# ---- F3: an amap's progress callback still runs after the amap was cancelled -----------------


def test_amap_progress_is_not_called_after_the_cancel() -> None:
    """F3: ``hx.amap(fn, items, progress=cb)`` cancelled while a thread call runs raises at
    once, but its consumer thread goes on waiting for that call (threads cannot be stopped)
    and then reports it: ``cb(1, 1)`` runs after the awaiting code saw ``CancelledError``
    (after ``asyncio.run`` even). A cancelled map should report nothing more.
    """
    started, release = threading.Event(), threading.Event()
    calls: list[tuple[int, int | None]] = []
    cancelled = threading.Event()

    def blocked(x: int) -> int:
        started.set()
        release.wait(20)
        return x

    def progress(done: int, total: int | None) -> None:
        if cancelled.is_set():
            calls.append((done, total))

    async def main() -> None:
        task = asyncio.ensure_future(hx.amap(blocked, [1], kind="thread", progress=progress))
        assert await asyncio.to_thread(started.wait, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled.set()
        release.set()

    _run_then_join_consumers(main)
    assert calls == [], f"progress called after the cancel: {calls}"


# ---- F4: Executor.map(timeout=nan, limit=N) ignores the timeout -------------------------------


def test_executor_map_with_limit_and_nan_timeout_does_not_wait_for_the_end() -> None:
    """F4: ``Executor.map(fn, items, timeout=nan)`` raises ``TimeoutError`` at once (as the
    stdlib's does: a NaN deadline is never met), ``timeout=nan`` to ``hx.map`` is a
    ``ValueError``, but with ``limit=1`` the NaN is taken as no timeout at all: the map waits
    for every call and returns its results (a call that hangs hangs the map).
    """
    release = threading.Event()

    def wait_for_release(x: int) -> bool:
        return release.wait(3) or x < 0  # False: nobody released it, the map waited

    with hx.Executor() as ex:
        with pytest.raises((TimeoutError, ValueError)):
            list(ex.options(kind="thread").map(wait_for_release, [1], timeout=math.nan, limit=1))
        release.set()
