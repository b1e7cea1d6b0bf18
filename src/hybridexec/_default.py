"""Module-level ``map``, ``imap``, ``submit``, ``arun`` and ``amap`` on one default Executor.

The default executor starts on first use. At interpreter exit (``_lifecycle``'s first phase)
it cancels its pending work and waits for the running work; in a forked child it is forgotten,
so the child's first call starts a default executor of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from . import _lifecycle
from ._executor import Executor
from ._futures import Future
from ._mapping import MapIterator
from ._mapping import imap as _imap
from ._routing import Options, check_kind, check_timeout
from ._views import ExecutorOptions

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_default: Executor | None = None


def default_executor() -> Executor:
    """Return the shared default Executor, starting it on first use.

    It is shut down at interpreter exit (pending work cancelled, running work awaited).

    .. versionadded:: 0.1
    """
    global _default
    with _lock:
        if _default is None or _default._closed:
            _default = Executor()
            _lifecycle.on_exit(_lifecycle.EXECUTORS, shutdown_default)
        return _default


EXIT_BOUND = 1.0
"""Seconds interpreter exit waits for work the library chose to run on a thread (I5)."""


def shutdown_default() -> None:
    """Shut down the default executor if it was started; pending work is cancelled.

    At interpreter exit the running work is awaited, except that the measured first call of a
    function (a thread the user did not ask for, which cannot be killed) is awaited at most
    ``EXIT_BOUND`` seconds, and no thread work is awaited after Ctrl-C: the user asked to stop.
    """
    global _default
    with _lock:
        executor, _default = _default, None
    if executor is None:
        return
    if not _lifecycle.exiting():
        executor.shutdown(wait=True, cancel_futures=True)
        return
    executor.shutdown(wait=False, cancel_futures=True)
    # After Ctrl-C no thread work is awaited (the threads are daemons); the process lane
    # still stops in order (its workers got the SIGINT too, as the terminal's group).
    executor._router.join_at_exit(EXIT_BOUND, threads=not _lifecycle.interrupted())


def _forget_after_fork() -> None:
    global _default, _lock
    _lock = threading.Lock()
    _default = None  # the parent's; the child starts its own on first use


_lifecycle.on_fork(_forget_after_fork)


def submit(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
    """Submit ``fn(*args, **kwargs)`` to the default Executor.

    Returns:
        A future with ``kind`` telling where it runs.

    Raises:
        TypeError: ``fn`` is not callable.

    .. versionadded:: 0.1
    """
    return default_executor().submit(fn, *args, **kwargs)


def imap(
    fn: Callable[[Any], R],
    items: Iterable[Any],
    *,
    kind: str = "auto",
    ordered: bool = True,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: bool | Callable[[int, int | None], object] = False,
    executor: Executor | None = None,
) -> MapIterator[R]:
    """Apply ``fn`` to each item lazily, with bounded work in flight.

    Items are read as workers become free, so an endless or huge iterable is fine. Calls are
    batched automatically from measured per-call times unless ``chunksize`` is given.

    Args:
        fn: A function of one argument.
        items: Any iterable.
        kind: ``"auto"``, ``"thread"`` or ``"process"``.
        ordered: Yield in input order (True) or as results arrive (False).
        chunksize: Calls per task; None sizes batches from measured times. Ignored with a
            ``timeout``: each item then runs as a task of its own.
        timeout: Seconds each call may run (per item); a late one fails with
            ``TaskTimeoutError`` when its result is reached.
        progress: True for a tqdm bar (extra ``progress``), or a callback
            ``progress(done, total)``.
        executor: The Executor to use; the default one when None.

    Returns:
        An iterator of results. The first failed call raises when its turn comes, and the
        work still in flight is cancelled.

    Raises:
        TypeError: ``fn`` is not callable.
        ValueError: unknown ``kind``, bad ``chunksize`` or ``timeout``.

    .. versionadded:: 0.1
    """
    options = Options(kind=check_kind(kind), timeout=check_timeout(timeout))
    ex = executor if executor is not None else default_executor()
    return _imap(ex, fn, items, options, ordered=ordered, chunksize=chunksize, progress=progress)


def map(
    fn: Callable[[Any], R],
    items: Iterable[Any],
    *,
    kind: str = "auto",
    ordered: bool = True,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: bool | Callable[[int, int | None], object] = False,
    executor: Executor | None = None,
) -> list[R]:
    """Apply ``fn`` to every item concurrently and return the list of results.

    The one-liner: fast for tiny calls (batched automatically) and for slow ones (spread over
    threads or processes). Arguments as for :func:`imap`.

    Returns:
        The results, in input order unless ``ordered=False``.

    Raises:
        Exception: the first failed call's exception; the rest of the work is cancelled.

    .. versionadded:: 0.1
    """
    return (
        imap(
            fn,
            items,
            kind=kind,
            ordered=ordered,
            chunksize=chunksize,
            timeout=timeout,
            progress=progress,
            executor=executor,
        )
    ).collect()


async def arun(
    fn: Callable[..., R],
    /,
    *args: Any,
    executor: Executor | ExecutorOptions | None = None,
    **kwargs: Any,
) -> R:
    """Await ``fn(*args, **kwargs)`` run by an executor (the default one when None).

    ``executor`` may also be a view such as ``ex.options(kind="process", timeout=5)``.

    Cancelling the awaiting task cancels the work, and kills it when it runs in a process.

    Returns:
        What ``fn`` returned.

    .. versionadded:: 0.1
    """
    import asyncio  # on use: importing it costs ~20 ms

    ex = executor if executor is not None else default_executor()
    future = ex.submit(fn, *args, **kwargs)
    return await asyncio.wrap_future(future)


async def amap(
    fn: Callable[[Any], R],
    items: Iterable[Any],
    *,
    kind: str = "auto",
    chunksize: int | None = None,
    timeout: float | None = None,
    executor: Executor | None = None,
) -> list[R]:
    """Await ``hybridexec.map(fn, items, ...)`` without blocking the event loop.

    The work is batched as in :func:`hybridexec.map`. Cancelling the awaiting task cancels the
    work still in flight (killing what runs in processes).

    Returns:
        The results in input order.

    Raises:
        Exception: the first failed call's exception.

    .. versionadded:: 0.1
    """
    import asyncio  # on use: importing it costs ~20 ms

    control = _MapControl()
    results = imap(
        fn,
        items,
        kind=kind,
        chunksize=chunksize,
        timeout=timeout,
        executor=executor,
    )
    loop = asyncio.get_running_loop()
    done: concurrent.futures.Future[list[R]] = concurrent.futures.Future()

    def consume() -> None:
        try:
            out: list[R] = []
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

    thread = threading.Thread(target=consume, name="hybridexec-amap", daemon=True)
    control.results = results
    thread.start()
    try:
        return await asyncio.wrap_future(done, loop=loop)
    except asyncio.CancelledError:
        control.stop()
        await asyncio.to_thread(thread.join)
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
