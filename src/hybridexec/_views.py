"""Views of an executor: ``ExecutorOptions`` and the iterator behind ``Executor.map``."""

from __future__ import annotations

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


def results(futures: list[tuple[Future[Any], bool]], end_time: float | None) -> Iterator[Any]:
    """The iterator behind ``Executor.map``: results in order, ``end_time`` for them all.

    A generator apart from ``map()`` so that ``map()`` raises bad input at once, not on
    iteration. Leaving it early cancels the futures not yet consumed.
    """
    try:
        futures.reverse()
        while futures:
            future, batch = futures[-1]
            if end_time is None:
                value = future.result()
            else:
                value = future.result(end_time - time.monotonic())
            futures.pop()
            if not batch:
                yield value
                continue
            values, error = split_outcomes(value)
            yield from values
            if error is not None:
                raise error
    finally:
        for future, _ in futures:
            future.cancel()


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
    ) -> Iterator[R]:
        """``Executor.map`` with these options."""
        return self._executor._map(fn, iterables, timeout, chunksize, self._opts)

    def options(self, *, kind: str = "auto", timeout: float | None = None) -> ExecutorOptions:
        """Narrow these options further."""
        options = Options(kind=check_kind(kind), timeout=check_timeout(timeout))
        return ExecutorOptions(self._executor, options.merged(self._opts))
