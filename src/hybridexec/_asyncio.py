"""asyncio integration: an event loop owned by the executor.

``async def`` functions submitted to an Executor run as tasks on one event loop that lives in a
thread of its own, started on first use. Their futures say ``kind == "async"``; cancelling one
cancels the coroutine; a timeout cancels it and fails the future with ``TaskTimeoutError``.

``arun`` and ``amap`` (in ``_default.py``) are for code already inside an event loop; ``amap``
consumes its map in a thread of its own (``collect_in_thread``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _lifecycle
from ._callbacks import serve
from ._deadlines import Timers
from ._exceptions import TaskTimeoutError
from ._futures import Future
from ._profiles import name_of
from ._waits import join_thread, thread_alive

if TYPE_CHECKING:
    import asyncio


R = TypeVar("R")

_CO_COROUTINE = 0x80
"""``inspect.CO_COROUTINE``: inspect itself (~3 ms to import) loads for a callable without code."""
_BUILTIN = type(len)

ABANDON_GRACE = 1.0
"""Seconds ``shutdown(wait=True)`` (and interpreter exit) waits for the loop's thread once
every future of its coroutines has ended: past it, a coroutine whose future already ended (it
timed out or was cancelled) but which does not return (it swallows ``CancelledError``, or
blocks the loop) is left running on the daemon thread, with a warning."""

logger = logging.getLogger("hybridexec")


def is_async_callable(fn: object) -> bool:
    """Return True for ``async def`` functions, also behind ``functools.partial``/methods."""
    code = getattr(fn, "__code__", None)  # functions and bound methods: the submit fast path
    if code is not None:  # (a decorator's plain wrapper of an async def is not one: 14g G1)
        return bool(code.co_flags & _CO_COROUTINE)
    while isinstance(fn, functools.partial):
        fn = fn.func
    if type(fn) is _BUILTIN:
        return False  # C functions (pow, os.getpid, math.sqrt) are never coroutine functions
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    )


def run_coroutine(fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
    """Run an ``async def`` to completion in this thread (for thread and process lanes)."""
    import asyncio  # on use: importing it costs ~20 ms

    async def main() -> R:
        return await fn(*args, **kwargs)

    return asyncio.run(main())


def _expire(armed: list[Any]) -> None:
    """A coroutine's deadline, on the timer thread: fail its future, cancel it on its loop."""
    if not armed:
        return  # it ended first
    future, task, loop, timeout = armed
    future.settle(False, TaskTimeoutError(f"task exceeded its {timeout:g} s timeout"))
    if task is not None:
        with contextlib.suppress(RuntimeError):  # its loop closed meanwhile: nothing runs
            loop.call_soon_threadsafe(task.cancel)


class LoopLane:
    """One event loop in a daemon thread, owned by an executor."""

    kind = "async"

    def __init__(self, name: str = "hybridexec") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # The futures of the coroutines submitted and not ended, with their functions: a
        # future is added before its task exists, so a shutdown sees work not yet started.
        self._live: dict[Future[Any], Callable[..., Any]] = {}
        self._closed = False
        self._deadlines: Timers | None = None
        self._left = False  # the loop's thread was left running by shutdown (see _join)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio  # on use: importing it costs ~20 ms

        with self._lock:
            if self._closed or _lifecycle.exited:
                raise _lifecycle.closed_error()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:  # the loop stopped: no deadline is left to watch
                        with self._lock:
                            timers, self._deadlines = self._deadlines, None
                        if timers is not None:
                            timers.close(wait=False)

                _lifecycle.starting_thread()  # the helpers forked first, while it is safe
                self._thread = threading.Thread(
                    target=serve(run, self), name=f"{self._name}-loop", daemon=True
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def submit(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Future[Any]:
        """Schedule ``await fn(*args, **kwargs)`` on the loop; return its future."""
        import asyncio  # on use: importing it costs ~20 ms

        loop = self._ensure_loop()
        future: Future[Any] = Future(kind="async")

        async def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            # The deadline is a timer of its own, not wait_for: the coroutine's own
            # TimeoutError (its asyncio.wait_for ran out) is its outcome, not the deadline's
            # (it escaped this function and left the future running). It runs on the timer
            # thread, not on this loop: a coroutine that blocks the loop (time.sleep) fails
            # at its deadline all the same. The future fails at once, then the coroutine is
            # cancelled: one that swallows the cancel cannot hold the timeout up.
            armed: list[Any] | None = None
            if timeout is not None:  # (the timer holds only this list: emptied at the end)
                armed = [future, current(), loop, timeout]
                timers = self._timers()
                expire = functools.partial(_expire, armed)
                timer = timers.call_at(time.monotonic() + timeout, expire)
            try:
                result = await fn(*args, **kwargs)
            except asyncio.CancelledError:
                future.cancel()  # nothing if the deadline failed it first
            except BaseException as exc:
                future.settle(False, exc)
            else:
                future.settle(True, result)
            finally:
                if armed is not None:
                    armed.clear()  # the timer holds nothing of the task once it ended
                    timers.cancel(timer)  # nor keeps its record (15b's B4)

        current = asyncio.current_task

        def start() -> None:
            task = loop.create_task(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: self._live.pop(future, None))

            def stop() -> None:
                loop.call_soon_threadsafe(task.cancel)

            future._hx_stop = stop

        self._live[future] = fn
        loop.call_soon_threadsafe(start)
        return future

    def _timers(self) -> Timers:
        """The deadlines' timer thread, made on first use."""
        with self._lock:
            if self._deadlines is None:
                self._deadlines = Timers(f"{self._name}-async-deadlines")
            return self._deadlines

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the loop once its tasks finish (or are cancelled).

        With ``wait``, return once the loop's thread has ended, or ``ABANDON_GRACE`` seconds
        after the last future of its coroutines ended while a coroutine still runs (one that
        timed out or was cancelled but swallows ``CancelledError``): that one is left running
        on the daemon thread, with a warning (``_join``).
        """
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            # One drain only: a second, scheduled while the first stops the loop, would never
            # run (and warn "never awaited").
            first = not getattr(self, "_draining", False)
            self._draining = True
        if loop is None or thread is None:
            return
        # Only now, and then it is loaded already: importing asyncio at interpreter exit
        # (an executor released then) would cost Ctrl-C its exit status 130 (see _lifecycle).
        import asyncio

        async def drain() -> None:
            tasks = set(self._tasks)
            if cancel_futures:
                for task in tasks:
                    task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        if first and not loop.is_closed() and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(drain(), loop)
            except RuntimeError:
                pass  # already stopping
        ended = wait and thread is not threading.current_thread() and self._join(thread)
        if ended and not loop.is_closed():  # (not one left running: it still runs the loop)
            loop.close()

    def _join(self, thread: threading.Thread) -> bool:
        """Wait for the loop's thread to end, or leave it running past a grace.

        It is waited for as long as a future of its coroutines has not ended, then at most
        ``ABANDON_GRACE`` seconds more; a warning names the coroutines it leaves running.

        Returns:
            True once the thread has ended; False: it was left running (a daemon thread), by
            this call or an earlier one (a second shutdown, then exit, wait no grace again).
        """
        deadline: float | None = None
        while thread_alive(thread) and not self._left:
            live = list(self._live.items())  # (a copy: the loop thread changes it)
            if any(not future.done() for future, _ in live):
                deadline = None
                join_thread(thread, 0.1)  # in slices: a deadline may fail a future meanwhile
                continue
            deadline = time.monotonic() + ABANDON_GRACE if deadline is None else deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "hybridexec: leaving %s running on the event loop's daemon thread: its "
                    "future ended (it timed out or was cancelled), but %g s later the coroutine "
                    "has not returned (it swallows CancelledError, or blocks the loop)",
                    ", ".join(sorted({name_of(fn) for _, fn in live})) or "a coroutine",
                    ABANDON_GRACE,
                )
                self._left = True
            else:
                join_thread(thread, remaining)
        return not thread_alive(thread)


async def collect_in_thread(
    results: Any, iterables: tuple[Iterable[Any], ...], keep_errors: bool
) -> list[Any]:
    """Consume a map's ``results`` (an ``imap`` iterator) in a thread; await the list.

    Cancelling the awaiting task cancels the work still in flight and returns at once: calls
    already running on threads (which cannot be stopped) end on their own. With no thread to spare
    (RLIMIT_NPROC), no item could run: each gets that error if ``keep_errors``, else it is
    raised.
    """
    import asyncio  # on use: importing it costs ~20 ms

    control = _MapControl()
    loop = asyncio.get_running_loop()
    done: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()

    def consume() -> None:
        try:
            out: list[Any] = []
            for value in results:
                out.append(value)
                if control.stopped:
                    break
        except BaseException as exc:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # awaiter gone
                done.set_exception(exc)
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                done.set_result(out)
        finally:
            results.close()

    _lifecycle.starting_thread()  # the helpers forked first, while it is safe
    thread = threading.Thread(target=consume, name="hybridexec-amap", daemon=True)
    control.results = results
    try:
        thread.start()
    except RuntimeError as exc:  # "can't start new thread": nothing of the map ran
        results.close()
        if not keep_errors:
            raise
        return [exc for _ in zip(*iterables)]  # noqa: B905 - the shortest ends it, as in map
    try:
        return await asyncio.wrap_future(done, loop=loop)
    except asyncio.CancelledError:
        # Cancel what is in flight (process calls are killed, queued ones never run) and go:
        # waiting for the consumer thread would wait for thread calls no one can stop.
        control.stop()
        raise


class _MapControl:
    """Stops an ``amap`` whose awaiting task was cancelled."""

    def __init__(self) -> None:
        self.stopped = False
        self.results: Any = None

    def stop(self) -> None:
        self.stopped = True
        if self.results is not None:
            self.results.cancel()
