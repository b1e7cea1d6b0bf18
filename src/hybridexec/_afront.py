"""The asyncio front of the default executor: ``arun`` and ``amap``.

Typed as ``_default``'s maps: an ``async def`` function's calls are awaited by the executor, so
what is awaited here is what its coroutines return.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal, TypeVar, overload

from typing_extensions import Unpack

from ._asyncio import collect_in_thread

# The package front loads default_executor, imap, map and submit from here: the async ones
# come with the first map, not later at a moment short of descriptors (an import opens files).
from ._default import MapOptions
from ._default import default_executor as default_executor
from ._default import imap as imap
from ._default import map as map
from ._default import submit as submit
from ._executor import Executor
from ._views import ExecutorOptions

R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")


@overload
async def arun(
    fn: Callable[..., Coroutine[Any, Any, R]], /, *args: Any,
    executor: Executor | ExecutorOptions | None = None, **kwargs: Any,
) -> R: ...  # fmt: skip
@overload
async def arun(
    fn: Callable[..., R], /, *args: Any, executor: Executor | ExecutorOptions | None = None,
    **kwargs: Any,
) -> R: ...  # fmt: skip
async def arun(
    fn: Callable[..., Any],
    /,
    *args: Any,
    executor: Executor | ExecutorOptions | None = None,
    **kwargs: Any,
) -> Any:
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


@overload
async def amap(
    fn: Callable[[T1], Coroutine[Any, Any, R]], it1: Iterable[T1], /, *,
    return_exceptions: Literal[False] = ..., **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[..., Coroutine[Any, Any, R]], it1: Iterable[Any], it2: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[..., Coroutine[Any, Any, R]], /, *iterables: Iterable[Any],
    return_exceptions: bool, **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[[T1], R], it1: Iterable[T1], /, *, return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[[T1, T2], R], it1: Iterable[T1], it2: Iterable[T2], /, *,
    return_exceptions: Literal[False] = ..., **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[..., R], it1: Iterable[Any], it2: Iterable[Any], it3: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: Literal[False] = ...,
    **options: Unpack[MapOptions],
) -> list[R]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[[T1], R], it1: Iterable[T1], /, *, return_exceptions: bool,
    **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[[T1, T2], R], it1: Iterable[T1], it2: Iterable[T2], /, *,
    return_exceptions: bool, **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
@overload
async def amap(
    fn: Callable[..., R], it1: Iterable[Any], it2: Iterable[Any], it3: Iterable[Any], /,
    *iterables: Iterable[Any], return_exceptions: bool, **options: Unpack[MapOptions],
) -> list[R | BaseException]: ...  # fmt: skip
async def amap(
    fn: Callable[..., Any],
    /,
    *iterables: Iterable[Any],
    return_exceptions: bool = False,
    **options: Unpack[MapOptions],
) -> list[Any]:
    """Await ``hybridexec.map(fn, *iterables, ...)`` without blocking the event loop.

    Arguments as for :func:`imap`; the work is batched as in :func:`hybridexec.map`.
    Cancelling the awaiting task (``asyncio.timeout``, ``wait_for``) cancels the work still in
    flight (killing what runs in processes) and raises at once; calls already running on
    threads cannot be stopped and end on their own.

    Returns:
        The results in input order (unless ``ordered=False``); with ``return_exceptions``, a
        failed call's exception stands in its place.

    Raises:
        Exception: the first failed call's exception (unless ``return_exceptions``).

    .. versionadded:: 0.1
    """
    results = imap(fn, *iterables, return_exceptions=return_exceptions, **options)
    return await collect_in_thread(results, iterables, return_exceptions)
