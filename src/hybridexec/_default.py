"""Module-level ``map``, ``imap`` and ``submit`` on one lazily started default Executor."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from ._executor import Executor
from ._futures import Future
from ._mapping import MapIterator
from ._mapping import imap as _imap
from ._routing import Options, check_kind, check_timeout

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
            atexit.register(_shutdown_default, _default)
        return _default


def _shutdown_default(executor: Executor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)


def shutdown_default() -> None:
    """Shut down the default executor if it was started (pending work is cancelled)."""
    global _default
    with _lock:
        executor, _default = _default, None
    if executor is not None:
        _shutdown_default(executor)


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
