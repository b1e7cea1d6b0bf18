"""What a map does with its items besides sending them: its limit's slots, failures in place.

- ``Slots``: the calls of a map that count against its ``limit``. A call counts from its submit
  until it is collected, and longer when it timed out on a thread: a thread cannot be stopped,
  so its code may still run after its future failed with ``TaskTimeoutError``; its slot frees
  when that code returns (``_deadlines.late_end``). A call that timed out in a process frees
  its slot at the kill (its future fails as its worker is killed).
- ``failed``: a task that could not even be submitted (no descriptor, thread or process to
  spare: EMFILE, EAGAIN, MemoryError) becomes a future failed with that error, in the place of
  its items: the map puts it there (``return_exceptions``) or raises it in turn.
- ``split_outcomes`` and the inline runs of calls too cheap for a hand-off.
- ``MapState`` (what a map shares with its iterator's ``cancel()``), ``_Batch`` and
  ``batch_outcomes`` (a finished batch's, or the map's cancel).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from . import _lifecycle
from ._deadlines import late_end
from ._exceptions import SerializationError
from ._futures import Future, Items, Outcome, Task
from ._task import ends_map
from ._waits import wait_futures

if TYPE_CHECKING:
    from ._executor import Executor


_BELL_LOCK = threading.Lock()


class MapState:
    """How a map runs, and what it shares with its iterator's ``cancel()``."""

    def __init__(self, star: bool, limit: int | None, keep_errors: bool) -> None:
        self.star = star  # items are argument tuples (several iterables)
        self.limit = limit  # calls of this map in flight at most
        self.keep_errors = keep_errors  # return_exceptions=True
        self.waiting: set[Future[Any]] = set()
        self.cancelled: bool = False
        # Cancelled by cancel(): it wakes a consumer waiting for a running thread batch,
        # which cannot be cancelled (15c's C4).
        self.bell: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.input_error: Exception | None = None  # what reading the input raised
        # The failed item's exception the map raised (PEP 479 makes a StopIteration of an
        # item a RuntimeError: MapIterator.collect raises that item's own again, nothing else).
        self.item_error: BaseException | None = None

    def cancel(self) -> None:
        """Cancel the map from any thread: its work in flight, and the consumer's wait."""
        self.cancelled = True
        for future in list(self.waiting):
            future.cancel()
        with _BELL_LOCK:  # the consumer stops waiting for running thread calls; rung
            if not self.bell.done():  # once (a second cancel() logged a CRITICAL: 15f's F1)
                self.bell.cancel()
                self.bell.set_running_or_notify_cancel()

    def cancelled_now(self) -> bool:
        """``cancelled`` as another thread may have set it since it was last read."""
        return self.cancelled


class Batch:
    __slots__ = ("crashes", "future", "size", "started", "task")

    def __init__(
        self, future: Future[Any], task: Task, size: int, crashes: int, started: float
    ) -> None:
        self.future = future
        self.task = task
        self.size = size
        self.crashes = crashes  # the process lane's count of worker crashes at the submit
        self.started = started  # when it was submitted (perf_counter)


def batch_outcomes(batch: Batch, state: MapState) -> list[Outcome]:
    """The outcomes of a finished batch; a failure of the whole task stands for each item.

    Raises:
        CancelledError: the map was cancelled (cancel() rang ``state.bell``).
        BaseException: the task's failure, unless ``return_exceptions`` keeps it in place.
    """
    if not batch.future.done():  # cancel() rings the bell: a running batch is not waited for
        wait_futures((batch.future, state.bell), return_when="FIRST_COMPLETED")
        if state.cancelled:
            batch.future.cancel()  # (the lane stops it if it runs)
            raise concurrent.futures.CancelledError()
    keep_errors = state.keep_errors
    try:
        outcomes: list[Outcome] = batch.future.result()
    except concurrent.futures.CancelledError:
        raise  # the map was cancelled: that ends it, return_exceptions or not
    except BaseException as exc:
        # The task failed as a whole (a timeout, a crash of a single call, arguments that
        # cannot be pickled): with return_exceptions, each of its items gets the error.
        if not keep_errors or ends_map(exc):
            raise
        outcomes = [(False, exc)] * batch.size
    return outcomes


class Report(Protocol):
    """Where a map reports its finished calls (a progress bar or callback, in ``_views``)."""

    def update(self, n: int, lane: str) -> None: ...
    def close(self) -> None: ...


class Slots:
    """The calls of one map counted against its ``limit`` (None: no limit, only counted)."""

    __slots__ = ("late", "limit", "used")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0  # calls submitted and not given back, late ones included
        self.late: dict[concurrent.futures.Future[None], int] = {}  # late end -> its calls

    def take(self, calls: int) -> None:
        """``calls`` more were submitted."""
        self.used += calls

    def give_back(self, future: Future[Any], calls: int) -> None:
        """``future`` (of ``calls`` calls) is done: free its slots, or when its code returns."""
        ended = late_end(future)
        if ended is None:
            self.used -= calls
        else:
            self.late[ended] = calls

    def fit(self, calls: int) -> bool:
        """True if ``calls`` more may be submitted now."""
        if self.late:
            for ended in [e for e in self.late if e.done()]:
                self.used -= self.late.pop(ended)
        return self.limit is None or self.used + calls <= self.limit

    def wait_late(self, state: MapState) -> None:
        """Wait until the code of a call that timed out returns; the map's cancel() wakes it.

        Raises:
            concurrent.futures.CancelledError: the map was cancelled.
        """
        stop: Future[Any] = Future("map")  # cancelled with the map's futures (see MapState)
        state.waiting.add(stop)
        try:
            if not state.cancelled:  # set before the futures are cancelled: one of them wins
                wait = [*self.late, stop]
                wait_futures(wait, None, concurrent.futures.FIRST_COMPLETED)
        finally:
            state.waiting.discard(stop)
        if state.cancelled:
            raise concurrent.futures.CancelledError()


def failed(fn: Callable[..., Any], items: Items, kind: str, error: BaseException) -> Task:
    """A task that was never submitted: its future (done) failed with ``error``."""
    future: Future[Any] = Future(kind)
    future.set_running_or_notify_cancel()
    future.settle(False, error)
    task = Task(fn, items, future, batch=True)
    task.release()  # nothing of it runs, nothing of it is kept
    task.elapsed = float("inf")  # no time of a call to size the next batches on
    return task


def split_outcomes(
    outcomes: list[Outcome], *, keep_errors: bool = False
) -> tuple[list[Any], BaseException | None]:
    """Split a batch into its values and the failure that ends the map (or None).

    Without ``keep_errors`` the values stop at the first failure. With it (a map's
    ``return_exceptions=True``) each exception stands in its item's place, a ``BaseException``
    such as ``GeneratorExit`` or the user's own too; only those ``ends_map`` names
    (``KeyboardInterrupt``, ``SystemExit``, asyncio's cancellation) still end it.
    """
    if not outcomes:
        return [], None
    oks, values = zip(*outcomes, strict=True)  # C speed: tiny calls come by the ten thousand
    if all(oks):
        return list(values), None
    if keep_errors:
        for index, (ok, value) in enumerate(outcomes):
            if not ok and ends_map(value):
                return list(values[:index]), value
        return list(values), None
    failed_at = oks.index(False)
    return list(values[:failed_at]), values[failed_at]


STRIDE = 2
NEAR = 8  # two slow strides at most this many strides apart end an inline run
"""Inline calls run this many at a time between two looks at the clock. Two strides that took
``slow`` seconds per call, at most ``NEAR`` strides apart, end the run there (a preemption or
a garbage collection makes one stride slow now and then, not two that close): calls
that grew costly run at most ``2 * STRIDE`` in the caller's thread, however they are spread
among tiny ones, before the rest goes back to the lane (a look per call would double a tiny
call's cost)."""


def ended(router: Any, state: MapState) -> BaseException:
    """Why a map whose executor shut down (or that was cancelled) stops.

    ``CancelledError`` after its own ``cancel()`` or ``shutdown(cancel_futures=True)``; else
    ``RuntimeError`` for the rest it may not submit after a plain shutdown (15c's C5).
    """
    if state.cancelled or router.cancelled:
        return concurrent.futures.CancelledError()
    return _lifecycle.closed_error()


def run_inline(
    executor: Executor,
    fn: Callable[..., Any],
    it: Iterator[Any],
    size: int,
    report: Report | None,
    state: MapState,
    slow: float,
) -> Generator[list[Any], None, tuple[float, list[Any]] | None]:
    """Run the rest of a map's calls in the consuming thread, ``size`` at a time.

    Returns None once the input is exhausted; or, once two strides of calls took ``slow``
    seconds or more each (they grew slow: the map sends the rest to its lane), the last one's
    time per call and the items of the batch not run yet (they go first).
    """
    router, seen = executor._router, 0
    while True:
        if state.cancelled or router.closed:  # shut down: RuntimeError unless it cancelled
            raise ended(router, state)  # futures, as the map's submits have it (15f's F2)
        items = list(itertools.islice(it, size))
        if not items:
            return None
        values, error, per_call, seen = _call_each(
            fn, items, state.star, state.keep_errors, slow, seen
        )
        done = len(values) + (error is not None)
        router.count("inline", done)
        if report is not None and not state.cancelled:  # a cancelled map reports no more
            report.update(done, "inline")
        left = items[done:] if per_call is not None and error is None else []
        box = [values]
        del values, items
        yield box.pop()
        if error is not None:
            state.item_error = error
            raise error
        if per_call is not None:
            return per_call, left


def _call_each(
    fn: Callable[..., Any], items: list[Any], star: bool, keep_errors: bool, slow: float, seen: int
) -> tuple[list[Any], BaseException | None, float | None, int]:
    """The values of the calls (and the exception that ended them), ``STRIDE`` at a time.

    The third item: the time per call of the second stride whose calls took ``slow`` seconds
    or more each (the calls stop there), else None; the fourth: the slow strides seen in this
    batch (``seen``: in the previous one, if its last stride was), for the next batch.
    """
    # The leanest loops there are: no argument or outcome tuples (tiny calls come by the
    # ten thousand, and every allocation also feeds the garbage collector).
    values: list[Any] = []
    append = values.append
    clock, count = time.perf_counter, len(items)
    slow_at = -1 if seen else None  # the last slow stride's index (-1: the previous batch's)
    last = clock()
    try:
        for start in range(0, count, STRIDE):
            part = items[start : start + STRIDE]
            if keep_errors:
                for item in part:
                    try:
                        append(fn(*item) if star else fn(item))
                    except BaseException as exc:  # return_exceptions: in place, and go on
                        if ends_map(exc):
                            raise
                        append(exc)
            elif star:
                for args in part:
                    append(fn(*args))
            else:
                for item in part:
                    append(fn(item))
            now = clock()
            took = (now - last) / len(part)
            if took >= slow:  # two slow strides close together: the calls grew slow (one
                index = start // STRIDE  # alone is a preemption or a collection)
                if slow_at is not None and index - slow_at <= NEAR:
                    return values, None, took, 0
                slow_at = index
            last = now
    except BaseException as exc:  # raised after the values before it are delivered
        return values, exc, None, 0
    return values, None, None, int(took >= slow) if count else 0


def fastest(in_flight: Iterable[Any]) -> float:
    """The least time per call among a map's finished batches (that ran)."""
    times = [b.task.elapsed / b.size for b in in_flight if b.future.done() and b.task.elapsed]
    return min(times, default=float("inf"))


def typical(in_flight: Iterable[Any]) -> float:
    """The median time per call of a map's probes: a running one's age counts (at least)."""
    now = time.perf_counter()
    times = sorted(
        (b.task.elapsed if b.future.done() and b.task.elapsed else now - b.started) / b.size
        for b in in_flight
    )
    return times[(len(times) - 1) // 2] if times else float("inf")


def unpicklable(future: Future[Any]) -> bool:
    """Whether a batch failed as it was submitted, one of its calls not pickling."""
    if not future.done() or future.cancelled():
        return False
    return isinstance(future.exception(), SerializationError)


def found_batch(by_future: dict[Future[Any], Batch], done: set[Any]) -> Batch:
    """The batch of a future in ``done``, found by a loop.

    Never by ``next()``: its StopIteration would end the map's generator as a RuntimeError
    (PEP 479), or a bare StopIteration out of ``hx.map`` (17b's B6).

    Raises:
        RuntimeError: none of ``done`` is a batch's (a bookkeeping error, said as such).
    """
    for future in done:
        batch = by_future.get(future)
        if batch is not None:
            return batch
    raise RuntimeError("hybridexec: a map woke for a future of none of its batches")


def read_input(it: Iterator[Any], state: MapState) -> Iterator[Any]:
    """The input, ended by its first ``Exception``, kept in ``state`` to raise after the rest."""
    # An error of the input ends it here; it is raised once the results of the items read
    # before it are out, as by builtins.map (they were dropped: 0-4 of 5 came out).
    try:
        yield from it
    except Exception as exc:
        state.input_error = exc


def then_input_error(
    run: Generator[list[Any], None, None], state: MapState
) -> Generator[list[Any], None, None]:
    """``run``, then the input's error if reading the input raised one."""
    yield from run
    if state.input_error is not None:
        raise state.input_error
