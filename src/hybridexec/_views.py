"""Views of an executor: ``ExecutorOptions`` and the iterator behind ``Executor.map``."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, overload

from typing_extensions import ParamSpec

from ._futures import Future
from ._mapping import split_outcomes
from ._routing import Options, check_kind, check_timeout

if TYPE_CHECKING:
    from ._executor import Executor

P = ParamSpec("P")
R = TypeVar("R")


def results(
    submit_next: Callable[[], tuple[Future[Any], bool] | None],
    buffersize: int | None,
    end_time: float | None,
) -> Iterator[Any]:
    """The iterator behind ``Executor.map``: results in order, ``end_time`` for them all.

    ``submit_next()`` submits the next call or chunk and returns its future (and whether it is
    a batch), or None when the input is exhausted. Without ``buffersize`` everything is
    submitted now, as the standard library does; with it, at most that many chunks are in
    flight and not yet yielded. Leaving the iterator early cancels the futures not consumed.
    Consumed results are not kept: the iterator holds only what it has not yielded yet.
    """
    pending: collections.deque[tuple[Future[Any], bool]] = collections.deque()
    exhausted = False

    def fill(limit: int | None) -> None:
        nonlocal exhausted
        while not exhausted and (limit is None or len(pending) < limit):
            submitted = submit_next()
            if submitted is None:
                exhausted = True
            else:
                pending.append(submitted)

    try:
        fill(buffersize)
    except BaseException:
        for future, _ in pending:
            future.cancel()
        raise
    return _iterate(pending, fill, buffersize, end_time)


def _iterate(
    pending: collections.deque[tuple[Future[Any], bool]],
    fill: Callable[[int | None], None],
    buffersize: int | None,
    end_time: float | None,
) -> Iterator[Any]:
    # A generator apart from results() so that map() raises bad input at once and submits
    # its work before the first next(), as the standard library does.
    try:
        while pending:
            batch = pending[0][1]  # no local for the future: it would keep its result alive
            timeout = None if end_time is None else end_time - time.monotonic()
            # In a list popped as it is yielded: a local would keep the result alive for as
            # long as the consumer holds this generator.
            held = [_take(pending, timeout)]
            if buffersize is not None:
                fill(buffersize)  # the next call goes out before this result is yielded
            if not batch:
                yield held.pop()
                continue
            values, error = split_outcomes(held.pop())
            values.reverse()
            while values:
                yield values.pop()
            if error is not None:
                raise error
    finally:
        for future, _ in pending:
            future.cancel()
        pending.clear()


def _take(pending: collections.deque[tuple[Future[Any], bool]], timeout: float | None) -> Any:
    """The first pending future's result, popped so the iterator keeps no reference to it."""
    value = pending[0][0].result(timeout)
    pending.popleft()
    return value


class ExecutorOptions:
    """An executor seen through fixed options; made by ``Executor.options()``."""

    def __init__(self, executor: Executor, options: Options) -> None:
        self._executor = executor
        self._opts = options

    @overload
    def submit(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]: ...
    @overload
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]: ...
    def submit(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Future[Any]:
        """``Executor.submit`` with these options."""
        return self._executor._router.submit(fn, args, kwargs, self._opts)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[R]:
        """``Executor.map`` with these options."""
        return self._executor._map(fn, iterables, timeout, chunksize, buffersize, self._opts)

    def options(self, *, kind: str = "auto", timeout: float | None = None) -> ExecutorOptions:
        """Narrow these options further."""
        options = Options(kind=check_kind(kind), timeout=check_timeout(timeout))
        return ExecutorOptions(self._executor, options.merged(self._opts))
