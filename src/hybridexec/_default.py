"""Module-level ``map``, ``imap``, ``submit``, ``arun`` and ``amap`` on one default Executor.

The default executor starts on first use. At interpreter exit (``_lifecycle``'s first phase)
it cancels its pending work and waits for the running work, unless Ctrl-C ended the program
(then the running process work is killed in the next phase); in a forked child it is forgotten,
so the child's first call starts a default executor of its own.
"""

from __future__ import annotations

import functools
import numbers
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal, TypedDict, TypeVar, overload

from typing_extensions import ParamSpec, Unpack

from . import _lifecycle
from ._executor import Executor
from ._futures import Future
from ._mapping import imap as _imap
from ._router import EXIT_BOUND
from ._routing import NOT_GIVEN, NotGiven, Options, checked_options
from ._views import ExecutorOptions, MapIterator, progress_report

P = ParamSpec("P")
R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")

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


"""Seconds interpreter exit waits for work the library chose to run on a thread (I5)."""


def shutdown_default() -> None:
    """Shut down the default executor if it was started; pending work is cancelled.

    At interpreter exit the running work is awaited, except that the measured first call of a
    function (a thread the user did not ask for, which cannot be killed) is awaited at most
    ``EXIT_BOUND`` seconds. After Ctrl-C nothing is awaited: the user asked to stop, and the
    process work still running is killed in the next phase.
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
    if _lifecycle.interrupted():
        # Ctrl-C: nothing is awaited, as for an executor left open. The workers never got the
        # SIGINT (process groups of their own, SIGINT ignored): the LANES phase kills the ones
        # still running a call (``kill_live_lanes``); the lane threads are daemons.
        return
    executor._router.join_at_exit(EXIT_BOUND)


def _forget_after_fork() -> None:
    global _default, _lock
    _lock = threading.Lock()
    _default = None  # the parent's; the child starts its own on first use


_lifecycle.on_fork(_forget_after_fork)


@overload
def submit(
    fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
) -> Future[R]: ...
@overload
def submit(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]: ...
def submit(fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Future[Any]:
    """Submit ``fn(*args, **kwargs)`` to the default Executor.

    Returns:
        A future with ``kind`` telling where it runs.

    Raises:
        TypeError: ``fn`` is not callable.

    .. versionadded:: 0.1
    """
    return default_executor().submit(fn, *args, **kwargs)


class MapOptions(TypedDict, total=False):
    """The keyword arguments that ``map`` and ``imap`` share (see :func:`imap`)."""

    kind: str
    ordered: bool
    chunksize: int | None
    timeout: float | None
    progress: bool | Callable[[int, int | None], object]
    limit: int | None
    executor: Executor | ExecutorOptions | None


# Typed like builtins.map: one or two iterables are checked against fn's parameters, three or
# more fall back to Callable[..., R] (the fallback takes at least three, so items that do not
# fit fn are an error, not a fallback); return_exceptions=True (or a bool) adds BaseException to
# the item type (what a failed call raised stands in its place, a GeneratorExit or the user's
# own BaseException too). An ``async def`` fn comes first: its calls are awaited, the items are
# what its coroutines return (item types are checked for one iterable only).
@overload
def imap(
    fn: Callable[[T1], Coroutine[Any, Any, R]], it1: Iterable[T1], /, *,
    return_exceptions: Literal[False] = ..., **options: Unpack[MapOptions],
) -> MapIterator[R]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[..., Coroutine[Any, Any, R]], it1: Iterable[Any], it2: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> MapIterator[R]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[..., Coroutine[Any, Any, R]], /, *iterables: Iterable[Any],
    return_exceptions: bool, **options: Unpack[MapOptions],
) -> MapIterator[R | BaseException]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[[T1], R], it1: Iterable[T1], /, *, return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> MapIterator[R]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[[T1, T2], R], it1: Iterable[T1], it2: Iterable[T2], /, *,
    return_exceptions: Literal[False] = ..., **options: Unpack[MapOptions],
) -> MapIterator[R]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[..., R], it1: Iterable[Any], it2: Iterable[Any], it3: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> MapIterator[R]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[[T1], R], it1: Iterable[T1], /, *, return_exceptions: bool,
    **options: Unpack[MapOptions],
) -> MapIterator[R | BaseException]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[[T1, T2], R], it1: Iterable[T1], it2: Iterable[T2], /, *,
    return_exceptions: bool, **options: Unpack[MapOptions],
) -> MapIterator[R | BaseException]: ...  # fmt: skip
@overload
def imap(
    fn: Callable[..., R], it1: Iterable[Any], it2: Iterable[Any], it3: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: bool, **options: Unpack[MapOptions],
) -> MapIterator[R | BaseException]: ...  # fmt: skip
def imap(
    fn: Callable[..., Any],
    /,
    *iterables: Iterable[Any],
    kind: str = "auto",
    ordered: bool = True,
    chunksize: int | None = None,
    timeout: float | NotGiven | None = NOT_GIVEN,
    progress: bool | Callable[[int, int | None], object] = False,
    limit: int | None = None,
    return_exceptions: bool = False,
    executor: Executor | ExecutorOptions | None = None,
) -> MapIterator[Any]:
    """Apply ``fn`` to the items of ``iterables`` lazily, with bounded work in flight.

    Like ``builtins.map``: with several iterables, ``fn`` takes one argument from each, and
    the shortest iterable ends the map. Items are read as workers become free, so an endless
    or huge iterable is fine. Calls are batched automatically from measured per-call times
    unless ``chunksize`` is given.

    Args:
        fn: A function taking one argument per iterable.
        *iterables: Any iterables, zipped lazily.
        kind: ``"auto"``, ``"thread"`` or ``"process"``.
        ordered: Yield in input order (True) or as results arrive (False).
        chunksize: Calls per task; None sizes batches from measured times. Ignored with a
            ``timeout``: each item then runs as a task of its own.
        timeout: Seconds each call may run (per item); a late one fails with
            ``TaskTimeoutError`` when its result is reached. None: no timeout, even for a
            function with an ``@hx.task`` timeout; left out, that one (or the view's) applies.
        progress: True for a tqdm bar (extra ``progress``), or a callback
            ``progress(done, total)``.
        limit: At most this many calls of this map in flight at once (a server with a small
            listen backlog, a rate-limited API). A batch counts as its number of calls, so
            batches are sized to share the limit; calls run inline in this thread run one
            at a time. A call that timed out on a thread (which cannot be killed) counts
            until its code returns.
        return_exceptions: Put each failed call's exception in its place among the results
            and carry on, instead of raising the first one; a call that could not be sent
            (``EMFILE``, ``EAGAIN``: no descriptor, thread or process to spare) gets that
            error. Cancellation, ``KeyboardInterrupt`` and ``SystemExit`` still end the map.
        executor: The Executor to use (the default one when None), or a view of one such as
            ``ex.options(kind="process", max_memory=2**30)``, whose options apply to every
            call; ``kind`` and ``timeout`` given here take precedence over the view's.

    Returns:
        An iterator of results. Unless ``return_exceptions``, the first failed call raises
        when its turn comes, and the work still in flight is cancelled.

    Raises:
        TypeError: ``fn`` is not callable, ``limit`` is not an int, ``executor`` is not an
            Executor or a view of one, or ``ordered``, ``return_exceptions`` or ``progress``
            is not a bool (``progress``: nor a callback).
        ValueError: unknown ``kind``, bad ``chunksize`` or ``timeout``, ``limit`` below 1 or
            below ``chunksize``.

    .. versionadded:: 0.1
    """
    ordered, return_exceptions = (
        _flag("ordered", ordered),
        _flag("return_exceptions", return_exceptions),
    )
    if not (progress is None or callable(progress)):
        progress = _flag("progress", progress, " (or a callback progress(done, total))")
    ex, under = _target(executor)
    options = checked_options(kind, timeout, None, under)
    run, state = _imap(
        ex,
        fn,
        iterables,
        options,
        ordered=ordered,
        chunksize=chunksize,
        progress=functools.partial(progress_report, progress),
        limit=limit,
        return_exceptions=return_exceptions,
    )
    return MapIterator(run, state)


@overload
def map(
    fn: Callable[[T1], Coroutine[Any, Any, R]], it1: Iterable[T1], /, *,
    return_exceptions: Literal[False] = ..., **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
def map(
    fn: Callable[..., Coroutine[Any, Any, R]], it1: Iterable[Any], it2: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
def map(
    fn: Callable[..., Coroutine[Any, Any, R]], /, *iterables: Iterable[Any],
    return_exceptions: bool, **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
@overload
def map(
    fn: Callable[[T1], R], it1: Iterable[T1], /, *, return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
def map(
    fn: Callable[[T1, T2], R], it1: Iterable[T1], it2: Iterable[T2], /, *,
    return_exceptions: Literal[False] = ..., **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
def map(
    fn: Callable[..., R], it1: Iterable[Any], it2: Iterable[Any], it3: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
def map(
    fn: Callable[[T1], R], it1: Iterable[T1], /, *, return_exceptions: bool,
    **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
@overload
def map(
    fn: Callable[[T1, T2], R], it1: Iterable[T1], it2: Iterable[T2], /, *,
    return_exceptions: bool, **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
@overload
def map(
    fn: Callable[..., R], it1: Iterable[Any], it2: Iterable[Any], it3: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: bool, **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
def map(
    fn: Callable[..., Any],
    /,
    *iterables: Iterable[Any],
    return_exceptions: bool = False,
    **options: Unpack[MapOptions],
) -> list[Any]:
    """Apply ``fn`` to every item concurrently and return the list of results.

    The one-liner: fast for tiny calls (batched automatically) and for slow ones (spread over
    threads or processes). Arguments as for :func:`imap`; several iterables are zipped, as by
    ``builtins.map``.

    Returns:
        The results, in input order unless ``ordered=False``; with ``return_exceptions``, a
        failed call's exception stands in its place.

    Raises:
        Exception: the first failed call's exception (unless ``return_exceptions``); the rest
            of the work is cancelled.

    .. versionadded:: 0.1
    """
    return imap(fn, *iterables, return_exceptions=return_exceptions, **options).collect()


def _flag(name: str, value: object, more: str = "") -> bool:
    """``value`` as a bool: a bool, an int or a numpy bool; else a TypeError naming ``name``."""
    if isinstance(value, numbers.Integral) or type(value).__name__ in ("bool", "bool_"):
        return bool(value)  # (numpy's bool is "bool" in numpy 2, "bool_" before)
    raise TypeError(f"{name} must be a bool{more}, not {type(value).__qualname__}")


def _target(executor: object) -> tuple[Executor, Options | None]:
    """The executor a map runs on, and the options of the view it was given as, if any."""
    if executor is None:
        return default_executor(), None
    if isinstance(executor, ExecutorOptions):
        return executor._executor, executor._opts
    if isinstance(executor, Executor):
        return executor, None
    raise TypeError(
        f"executor must be a hybridexec Executor, a view from its options(), or None, "
        f"not {type(executor).__qualname__}"
    )
