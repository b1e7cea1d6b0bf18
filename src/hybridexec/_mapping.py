"""``map``/``imap`` with automatic batching and bounded in-flight work.

The first calls go out one by one (as many as the lane runs at once) and are timed where they
run. When the first of them finishes, its time per call sizes the batches for the rest:

- in processes, one batch should cost about ``PROCESS_BATCH_SECONDS`` so the pipe round trip
  is paid rarely, but there should be several batches per worker so none sits idle at the end;
- on threads, calls far cheaper than a hand-off (``TINY_CALL_SECONDS``) run in batches of about
  ``THREAD_BATCH_SECONDS``; anything slower goes one call per task, since it likely blocks.

Work in flight is bounded (lazy input never piles up in memory) and results come back in input
order or, with ``ordered=False``, as they finish.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._asyncio import is_async_callable
from ._futures import Future, Items, Outcome, Task
from ._routing import Options

if TYPE_CHECKING:
    from ._executor import Executor

R = TypeVar("R")

PROCESS_BATCH_SECONDS = 0.03
THREAD_BATCH_SECONDS = 0.005
TINY_CALL_SECONDS = 50e-6
MAX_BATCH = 50_000
THREAD_PROBES = 4


def imap(
    executor: Executor,
    fn: Callable[..., R],
    iterable: Iterable[Any],
    options: Options,
    *,
    ordered: bool = True,
    chunksize: int | None = None,
    progress: bool | Callable[[int, int | None], object] = False,
) -> MapIterator[R]:
    """Validate now, then return the lazy iterator of results."""
    if chunksize is not None and (
        isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
    ):
        raise ValueError(f"chunksize must be an int of at least 1 or None, not {chunksize!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
    if executor._router.closed:
        raise RuntimeError("cannot schedule new futures after shutdown")
    try:
        total: int | None = len(iterable)  # type: ignore[arg-type]
    except TypeError:
        total = None
    it = iter(iterable)
    state = _MapState()
    report = _progress(progress, total)
    return MapIterator(
        _run(executor, fn, it, total, options, ordered, chunksize, report, state), state
    )


class _MapState:
    """What a running map shares with its iterator's ``cancel()``."""

    def __init__(self) -> None:
        self.waiting: set[Future[Any]] = set()
        self.cancelled = False


class MapIterator(Iterator[R]):
    """The results of ``imap``: an iterator that can also cancel the work in flight."""

    def __init__(self, gen: Generator[list[R], None, None], state: _MapState) -> None:
        self._gen = gen  # yields the values of each finished batch, in order
        # Values of the current batch not yet handed out: popped one by one, so a consumed
        # result is not kept alive by its batch (a list iterator would hold them all).
        self._buf: deque[R] = deque()
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
        out.extend(itertools.chain.from_iterable(self._gen))
        return out

    def close(self) -> None:
        """Stop: cancel the work in flight (killing running process work)."""
        self._gen.close()

    def cancel(self) -> None:
        """Cancel the work in flight from any thread; the consumer sees ``CancelledError``."""
        self._state.cancelled = True
        for future in list(self._state.waiting):
            future.cancel()


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


def _progress(
    progress: bool | Callable[[int, int | None], object], total: int | None
) -> _Progress | None:
    if progress is False or progress is None:
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


class _Batch:
    __slots__ = ("future", "size", "task")

    def __init__(self, future: Future[Any], task: Task, size: int) -> None:
        self.future = future
        self.task = task
        self.size = size


def _run(
    executor: Executor,
    fn: Callable[..., Any],
    it: Iterator[Any],
    total: int | None,
    options: Options,
    ordered: bool,
    chunksize: int | None,
    report: _Progress | None,
    state: _MapState,
) -> Generator[list[Any], None, None]:
    first = list(itertools.islice(it, 1))
    if not first:
        if report is not None:
            report.close()
        return
    router = executor._router
    decision, opts = router.decide(fn, (first[0],), {}, options)
    kind = decision.kind
    lane_width = router.processes.max_processes if kind == "process" else router.threads.max_threads
    in_flight: deque[_Batch] | set[_Batch] = deque() if ordered else set()
    waiting = state.waiting
    remaining = None if total is None else total

    def submit(items: list[Any]) -> None:
        nonlocal remaining
        if state.cancelled or router.closed:
            # Cancelled by the consumer, or the executor shut down under a running map: the
            # rest of the work is cancelled, as shutdown(cancel_futures=True) says.
            raise concurrent.futures.CancelledError()
        calls: Items = [((item,), _NO_KWARGS) for item in items]
        future, task = router.submit_task(fn, calls, decision, opts.timeout, batch=True)
        batch = _Batch(future, task, len(items))
        if isinstance(in_flight, deque):
            in_flight.append(batch)
        else:
            in_flight.add(batch)
        waiting.add(future)
        if remaining is not None:
            remaining -= len(items)

    # One call at a time while the per-call cost is unknown, or for per-item timeouts.
    # A per-item timeout needs each item in a task of its own: a batch has one deadline.
    size = 1 if opts.timeout is not None else (chunksize or 1)
    probing = adaptive = chunksize is None and opts.timeout is None
    per_call = float("inf")
    inline = False
    probes = min(lane_width, THREAD_PROBES) if kind == "thread" else lane_width
    submit(first)
    if probing:
        for item in itertools.islice(it, probes - 1):
            submit([item])
    limit = lane_width * 2 if kind == "process" else lane_width
    exhausted = False
    try:
        while in_flight or not exhausted:
            if probing:
                done = concurrent.futures.wait(waiting, return_when="FIRST_COMPLETED").done
                timed = next(b for b in in_flight if b.future in done)
                per_call = timed.task.elapsed
                del done, timed  # hold no finished future (their results) while suspended
                size = _batch_size(per_call, kind, remaining, lane_width)
                probing = False
                if size > 1:
                    limit = max(lane_width * 2, 4) if kind == "process" else 4
                # Calls far cheaper than a hand-off gain nothing from another thread (they
                # hold the GIL or are done before it switches): run them here, in batches,
                # once the probes are in. An explicit kind="thread" keeps its lane.
                inline = (
                    kind == "thread"
                    and not decision.explicit
                    and per_call < TINY_CALL_SECONDS
                    and not is_async_callable(fn)
                )
            while not exhausted and not inline and len(in_flight) < limit:
                items = list(itertools.islice(it, size))
                if not items:
                    exhausted = True
                    break
                submit(items)
            if not in_flight:
                if inline and not exhausted:
                    yield from _run_inline(executor, fn, it, size, report, state)
                break
            if isinstance(in_flight, deque):
                batch = in_flight.popleft()
            else:
                done = concurrent.futures.wait(waiting, return_when="FIRST_COMPLETED").done
                batch = next(b for b in in_flight if b.future in done)
                in_flight.remove(batch)
                del done
            waiting.discard(batch.future)
            outcomes: list[Outcome] = batch.future.result()
            if adaptive and batch.size:
                # Refine the estimate: first calls pay for warm-up (imports, caches), so the
                # fastest per-call time seen is the best guide for the batches still to come.
                per_call = min(per_call, batch.task.elapsed / batch.size)
                size = _batch_size(per_call, kind, remaining, lane_width)
            if report is not None:
                report.update(len(outcomes), batch.future.kind)
            values, error = split_outcomes(outcomes)
            # Suspended at the yield, this frame must hold neither the values (handed to the
            # consumer, who lets each go once consumed) nor the batch and its future.
            box = [values]
            del values, outcomes, batch
            yield box.pop()
            if error is not None:
                raise error
    finally:
        for batch in in_flight:
            batch.future.cancel()
        if report is not None:
            report.close()


def split_outcomes(outcomes: list[Outcome]) -> tuple[list[Any], BaseException | None]:
    """Split a batch into the values up to its first failure, and that failure (or None)."""
    if not outcomes:
        return [], None
    oks, values = zip(*outcomes, strict=True)  # C speed: tiny calls come by the ten thousand
    if all(oks):
        return list(values), None
    failed = oks.index(False)
    return list(values[:failed]), values[failed]


def _run_inline(
    executor: Executor,
    fn: Callable[..., Any],
    it: Iterator[Any],
    size: int,
    report: _Progress | None,
    state: _MapState,
) -> Generator[list[Any], None, None]:
    router = executor._router
    while True:
        if state.cancelled or router.closed:
            raise concurrent.futures.CancelledError()
        items = list(itertools.islice(it, size))
        if not items:
            return
        # The leanest loop there is: no argument or outcome tuples (tiny calls come by the
        # ten thousand, and every allocation also feeds the garbage collector).
        values: list[Any] = []
        append = values.append
        error: BaseException | None = None
        try:
            for item in items:
                append(fn(item))
        except BaseException as exc:  # raised after the values before it are delivered
            error = exc
        router.counts["inline"] = router.counts.get("inline", 0) + len(items)
        if report is not None:
            report.update(len(values) + (error is not None), "inline")
        box = [values]
        del values, items, append
        yield box.pop()
        if error is not None:
            raise error


_NO_KWARGS: dict[str, Any] = {}  # shared: calls unpack it with **, never mutate it


def _batch_size(per_call: float, kind: str, remaining: int | None, workers: int) -> int:
    per_call = max(per_call, 1e-7)
    if kind == "process":
        size = PROCESS_BATCH_SECONDS / per_call
        if remaining is not None:
            # At least four batches per worker, so the last ones finish together.
            size = min(size, math.ceil(remaining / (4 * workers)))
    elif per_call < TINY_CALL_SECONDS:
        size = THREAD_BATCH_SECONDS / per_call
    else:
        size = 1
    return max(1, min(MAX_BATCH, int(size)))
