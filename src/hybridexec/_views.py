"""Views of an executor and of its maps.

``ExecutorOptions`` (``ex.options(...)``), the iterator of ``hybridexec.imap``, and the
progress report (a callback or a tqdm bar) of ``hybridexec.map(progress=...)``. The iterator
behind ``Executor.map`` is ``_execmap``'s.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._asyncio import is_async_callable
from ._futures import Future
from ._routing import NOT_GIVEN, NotGiven, Options, checked_options, route_rules

if TYPE_CHECKING:  # _mapping loads with the first map
    from ._executor import Executor
    from ._mapitems import MapState
    from ._router import Router
    from ._routing import Explanation

P = ParamSpec("P")
R = TypeVar("R")


def executor_stats(router: Router) -> dict[str, Any]:
    """What ``Executor.stats`` returns (see there)."""
    table = getattr(router.classifier, "table", None)
    submitted = dict(router.counts)
    submitted["thread"] += router.threads.submitted  # the express path counts in the lane
    submitted["process"] += router.processes.submitted
    return {
        "submitted": submitted,
        "moved": router.binding.stats(),
        "threads": router.threads.size,
        "processes": router.processes.size,
        "process_lane": dict(router.processes.stats),
        "slots": router.slots.snapshot(),
        "decisions": table() if callable(table) else [],
    }


def _takes_kwargs(explain: Callable[..., Any]) -> bool:
    """Whether a classifier's ``explain`` takes the call's keyword arguments (``kwargs=``)."""
    import inspect

    try:
        params = inspect.signature(explain).parameters
    except (TypeError, ValueError):
        return False
    return "kwargs" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def explain_call(
    router: Router,
    options: Options,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Explanation:
    """What ``Executor.explain`` returns (see there): the decision, and the CPU slots now."""
    from ._routing import Explanation, function_name  # on use (a dataclass costs ~1 ms)

    name = ".".join(function_name(fn)[:2])
    slots = router.slots.snapshot()
    if is_async_callable(fn) and router.async_on_loop(fn, options):  # as Router.submit
        why = "an async def function: its calls run on the executor's event loop"
        return Explanation(name, "async", why, slots=slots)
    decision = route_rules(fn, options, router.default_kind)  # reads the hints too
    if decision is not None:
        return Explanation(name, decision.kind, decision.reason, slots=slots)
    if router.classifier is None:
        why = "no hint and no classifier: threads by default"
        return Explanation(name, "thread", why, slots=slots)
    explain = getattr(router.classifier, "explain", None)
    if not callable(explain):
        why = "the executor's classifier decides at each call"
        return Explanation(name, "?", why, slots=slots)
    if kwargs and _takes_kwargs(explain):  # shapes are told apart by keyword flags too
        result = explain(fn, args, kwargs=kwargs)
    else:  # (a classifier of the user's may take no keyword arguments)
        result = explain(fn, args if args or kwargs else None)
    if not isinstance(result, Explanation):
        return Explanation(name, "?", str(result), slots=slots)
    import dataclasses  # Explanation is one: loaded with it

    return dataclasses.replace(result, slots=slots)


class MapIterator(Iterator[R]):
    """The results of ``imap``: an iterator that can also cancel the work in flight."""

    def __init__(self, gen: Generator[list[R], None, None], state: MapState) -> None:
        self._gen = gen  # yields the values of each finished batch, in order
        # Values of the current batch not yet handed out: popped one by one, so a consumed
        # result is not kept alive by its batch (a list iterator would hold them all).
        self._buf: collections.deque[R] = collections.deque()
        self._state = state

    def __iter__(self) -> MapIterator[R]:
        return self

    def __next__(self) -> R:
        buf = self._buf
        while not buf:
            buf.extend(next(self._gen))
        return buf.popleft()

    def collect(self) -> list[R]:
        """Return all the remaining results as a list (at C speed, batch by batch)."""
        out = list(self._buf)
        self._buf.clear()
        try:
            out.extend(itertools.chain.from_iterable(self._gen))
        except RuntimeError as exc:
            # A call's StopIteration, raised again in the run (a generator), became this
            # (PEP 479); here nothing iterates: the call's own exception, as result() raises.
            # Only an item's: any other stays this RuntimeError (17b's B6).
            cause = exc.__cause__
            if cause is self._state.item_error and isinstance(cause, StopIteration):
                raise cause from None
            raise
        return out

    def close(self) -> None:
        """Stop: cancel the work in flight (killing running process work)."""
        self._gen.close()

    def cancel(self) -> None:
        """Cancel the work in flight from any thread; the consumer sees ``CancelledError``."""
        self._state.cancel()


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
        router = self._executor._router  # as Executor.submit: the express path first
        future = router.plans.submit_express(router, fn, args, kwargs, self._opts)
        return future or router.submit(fn, args, kwargs, self._opts)

    @overload
    def map(
        self, fn: Callable[..., Coroutine[Any, Any, R]], *iterables: Iterable[Any],
        timeout: float | None = None, chunksize: int = 1, buffersize: int | None = None,
        limit: int | None = None,
    ) -> Iterator[R]: ...  # fmt: skip
    @overload
    def map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], timeout: float | None = None,
        chunksize: int = 1, buffersize: int | None = None, limit: int | None = None,
    ) -> Iterator[R]: ...  # fmt: skip
    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
        chunksize: int = 1, buffersize: int | None = None, limit: int | None = None,
    ) -> Iterator[Any]:  # fmt: skip
        """``Executor.map`` with these options (``limit``: 0.4)."""
        return self._executor._map(fn, iterables, timeout, chunksize, buffersize, self._opts, limit)

    def options(
        self, *, kind: str = "auto", timeout: float | NotGiven | None = NOT_GIVEN,
        max_memory: int | None = None,
    ) -> ExecutorOptions:  # fmt: skip
        """Narrow these options further (as ``Executor.options``; ``max_memory``: 0.5)."""
        options = checked_options(kind, timeout, max_memory, self._opts)
        return ExecutorOptions(self._executor, options)


class _Progress:
    """Reports finished calls to a ``progress(done, total)`` callback or a tqdm bar."""

    def __init__(
        self, callback: Callable[[int, int | None], object] | None, bar: Any, total: int | None
    ) -> None:
        self._callback = callback
        self._bar = bar
        self._total = total
        self._done = 0
        self._lanes: list[str] = []

    def update(self, n: int, lane: str) -> None:
        self._done += n
        if self._callback is not None:
            self._callback(self._done, self._total)
            return
        if lane not in self._lanes:
            self._lanes.append(lane)
            self._bar.set_postfix_str("+".join(self._lanes), refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_report(
    progress: bool | Callable[[int, int | None], object], total: int | None
) -> _Progress | None:
    """The report of a map's ``progress=`` argument: a callback, a tqdm bar, or None."""
    if not (callable(progress) or progress):  # False, None, 0 (imap checked the type)
        return None
    if callable(progress):
        return _Progress(progress, None, total)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(
            "progress=True needs tqdm: pip install 'hybridexec[progress]'; running without a bar",
            RuntimeWarning,
            stacklevel=_caller_level(),
        )
        return None
    # The postfix names the lanes in use: "thread", "process" or "thread+process".
    return _Progress(None, tqdm(total=total, unit="task", dynamic_ncols=True), total)


def _caller_level() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside hybridexec."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package
    ):
        frame = frame.f_back
        level += 1
    return level


def leave_block(executor: Executor, interrupted: bool) -> None:
    """``Executor.__exit__``: shut down, and wait unless Ctrl-C ended the block or this wait.

    After Ctrl-C the queued calls are cancelled and the running ones not waited for (the
    standard library's executors wait for them; at interpreter exit they are killed).
    """
    try:
        executor.shutdown(wait=not interrupted, cancel_futures=interrupted)
    except KeyboardInterrupt:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
