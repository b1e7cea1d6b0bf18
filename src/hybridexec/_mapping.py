"""``map``/``imap`` with automatic batching and bounded in-flight work.

The first calls go out one by one (as many as the lane runs at once) and are timed where they
run. When the first of them finishes, its time per call sizes the batches for the rest:

- in processes, one batch should cost about ``PROCESS_BATCH_SECONDS`` so the pipe round trip
  is paid rarely, but there should be several batches per worker so none sits idle at the end;
- on threads, calls far cheaper than a hand-off (``TINY_CALL_SECONDS``) run in batches of about
  ``THREAD_BATCH_SECONDS``; anything slower goes one call per task, since it likely blocks.

Work in flight is bounded (lazy input never piles up in memory) and results come back in input
order or, with ``ordered=False``, as they finish. Several iterables are zipped lazily, as by
``builtins.map``. A ``limit`` bounds the calls submitted and not yet collected, a batch counting
as its number of calls (a batch whose worker crashed is retried item by item, on several
workers at once); inline calls run one at a time. With ``return_exceptions`` a failed item's
exception takes its place among the values. An item whose worker was killed by SIGKILL (the
OOM killer's signal) runs once more, alone (an item of a batch of several did as the lane
retried the batch item by item), and the map's tasks in flight are halved from then on (see
``_process/_oom.py``); killed again, its ``WorkerCrashedError`` stands: two runs at most.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._asyncio import is_async_callable
from ._futures import Future, Items
from ._mapitems import (
    Batch,
    MapState,
    Report,
    Slots,
    batch_outcomes,
    ended,
    failed,
    fastest,
    found_batch,
    read_input,
    run_inline,
    then_input_error,
    typical,
    unpicklable,
)
from ._mapitems import split_outcomes as split_outcomes  # for Executor.map (_execmap)
from ._process import oom_killed, retry_killed
from ._routing import Options, route_rules
from ._waits import wait_futures

if TYPE_CHECKING:
    from ._executor import Executor

R = TypeVar("R")

PROCESS_BATCH_SECONDS = 0.03
THREAD_BATCH_SECONDS = 0.005
TINY_CALL_SECONDS = 50e-6
MAX_BATCH = 50_000
THREAD_PROBES = 4
PROBE_TRUST_SECONDS = 0.01
PROBE_WAIT_SECONDS = 0.1


def imap(
    executor: Executor,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    options: Options,
    *,
    ordered: bool = True,
    chunksize: int | None = None,
    progress: Callable[[int | None], Report | None] | None = None,
    limit: int | None = None,
    return_exceptions: bool = False,
) -> tuple[Generator[list[Any], None, None], MapState]:
    """Validate now; return the lazy run of ``fn`` over the zipped input, and its state.

    The run yields the values of each finished batch (``_views.MapIterator`` hands them out).
    """
    if chunksize is not None and (
        isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
    ):
        raise ValueError(f"chunksize must be an int of at least 1 or None, not {chunksize!r}")
    limit = check_limit(limit)
    if limit is not None and chunksize is not None and chunksize > limit:
        # A batch counts as its number of calls (see _run): a bigger one could never start.
        raise ValueError(f"chunksize ({chunksize}) must not exceed limit ({limit})")
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
    if executor._router.closed:
        raise RuntimeError("cannot schedule new futures after shutdown")
    # Options that contradict the function's own (max_memory on a thread) concern the call,
    # not an item: raised here, also with return_exceptions (which would put one per item).
    route_rules(fn, options, executor._router.default_kind)
    try:
        total: int | None = min((len(i) for i in iterables), default=0)  # type: ignore[arg-type]
    except TypeError:
        total = None
    # One iterable: items are the arguments themselves (the fast path, no tuple per item);
    # several: zipped lazily into argument tuples, stopping at the shortest, like builtins.map.
    star = len(iterables) != 1
    it = zip(*iterables) if star else iter(iterables[0])  # noqa: B905 - shortest, as map does
    state = MapState(star, limit, return_exceptions)
    report = None if progress is None else progress(total)
    if all(type(i) in _NEVER_RAISE for i in iterables):  # the common case costs nothing
        return _run(executor, fn, it, total, options, ordered, chunksize, report, state), state
    guarded = read_input(it, state)
    run = _run(executor, fn, guarded, total, options, ordered, chunksize, report, state)
    return then_input_error(run, state), state


_NEVER_RAISE = (list, tuple, range, str, bytes)
"""Iterables whose iterator never raises: read without ``read_input``'s guard (~10 ns an item)."""


def check_limit(limit: int | None) -> int | None:
    """Return ``limit`` if it is None or an int of at least 1; raise otherwise."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int or None, not {limit!r}")
    if limit < 1:
        raise ValueError(f"limit must be None or at least 1, not {limit}")
    return limit


def _run(
    executor: Executor,
    fn: Callable[..., Any],
    it: Iterator[Any],
    total: int | None,
    options: Options,
    ordered: bool,
    chunksize: int | None,
    report: Report | None,
    state: MapState,
) -> Generator[list[Any], None, None]:
    # Whatever ends the map (its end, a failure, close(), Ctrl-C or SystemExit from the input,
    # a submit or the progress callback), wherever (the first items too: 17b's B1), the work
    # it sent and did not collect is cancelled, a retry's too, and its report closed.
    in_flight: deque[Batch] | set[Batch] = deque() if ordered else set()
    try:
        yield from _lanes(executor, fn, it, total, options, chunksize, report, state, in_flight)
    finally:
        for batch in in_flight:
            batch.future.cancel()
        for future in list(state.waiting):  # a retry's (see resubmit)
            future.cancel()
        if report is not None:
            report.close()


def _lanes(
    executor: Executor,
    fn: Callable[..., Any],
    it: Iterator[Any],
    total: int | None,
    options: Options,
    chunksize: int | None,
    report: Report | None,
    state: MapState,
    in_flight: deque[Batch] | set[Batch],
) -> Generator[list[Any], None, None]:
    router = executor._router
    star, max_calls = state.star, state.limit
    remaining = None if total is None else total
    while True:
        first = list(itertools.islice(it, 1))
        if not first:
            return
        try:
            decision, opts = router.decide(fn, first[0] if star else (first[0],), {}, options)
            break
        except Exception as exc:  # no lane for it (a lazy import of the routing hit EMFILE)
            if not state.keep_errors or router.closed:
                raise
            remaining = None if remaining is None else remaining - 1
            if report is not None:
                report.update(1, "inline")
            yield [exc]  # in its place; the next item asks again
    kind = decision.kind
    lane_width = router.processes.max_processes if kind == "process" else router.threads.max_threads
    waiting = state.waiting
    # Calls submitted and not yet collected (or timed out on a thread and still running).
    # `limit` bounds this sum, a batch counting as its number of calls: a batch runs its
    # calls one after another, but one whose worker crashed is retried item by item on
    # several workers at once (see _process).
    slots = Slots(max_calls)
    crashes = router.processes.stats  # no crash since a batch's submit: no item to retry

    exhausted = closed = False  # the input's end; the executor shut down under the map

    def resubmit(item: Any) -> Future[Any] | None:  # an item killed by SIGKILL, alone
        if state.cancelled:
            raise concurrent.futures.CancelledError()
        try:
            future = router.submit_task(fn, [item], decision, opts.timeout, batch=True)[0]
        except RuntimeError:
            return None  # shut down: the item keeps the outcome of the run it had
        except Exception as exc:
            return failed(fn, [item], kind, exc).future
        # cancel() cancels it too; it leaves `waiting` once read (retry_killed's `read`): a
        # finished future left there would wake every later wait at once (17b's B6).
        waiting.add(future)
        if state.cancelled_now():
            future.cancel()
        return future

    def submit(items: list[Any]) -> None:
        nonlocal remaining, exhausted, closed
        if state.cancelled:
            raise concurrent.futures.CancelledError()
        if star:
            calls: Items = [(args, _NO_KWARGS) for args in items]
        else:
            calls = [((item,), _NO_KWARGS) for item in items]
        # Read before the submit: its worker may run it, die and be counted before it returns
        # (a busy machine: the kill was then not seen and the map failed, not retried).
        before = crashes["crashes"]
        try:
            future, task = router.submit_task(
                fn, calls, decision, opts.timeout, batch=True, stops=not state.keep_errors
            )
            waiting.add(future)  # at once: the map's cleanup cancels it whatever comes next
        except Exception as exc:  # a resource error (EMFILE, EAGAIN, MemoryError...): it
            if router.closed:  # fails these items, in their place (or raised in turn); shut
                exhausted = closed = True  # down under a running map: what runs ends and is
                return  # given, the rest is not submitted (15c's C5)
            task = failed(fn, calls, kind, exc)
            future = task.future
        if len(items) > 1 and unpicklable(future):
            waiting.discard(future)
            for item in items:  # one item that cannot pickle fails alone (13f's F3)
                submit([item])
            return
        batch = Batch(future, task, len(items), before, time.perf_counter())
        if isinstance(in_flight, deque):
            in_flight.append(batch)
        else:
            in_flight.add(batch)
        waiting.add(future)
        if state.cancelled_now():  # cancelled while it was being submitted: cancel() missed it
            future.cancel()
        slots.take(len(items))
        if remaining is not None:
            remaining -= len(items)

    # One call at a time while the per-call cost is unknown, or for per-item timeouts.
    # A per-item timeout needs each item in a task of its own: a batch has one deadline.
    size = 1 if opts.timeout is not None else (chunksize or 1)
    probing = adaptive = chunksize is None and opts.timeout is None
    per_call = float("inf")
    inline = left_inline = False  # left_inline: an inline run grew slow, never inline again
    probes = min(lane_width, THREAD_PROBES) if kind == "thread" else lane_width
    # Under a limit, batches share it among the tasks that run at once, so that the
    # limit does not serialise them; without one, batches are sized by time alone.
    cap = (
        MAX_BATCH
        if max_calls is None
        else max(1, max_calls // (4 if kind == "thread" else lane_width))
    )
    if max_calls is not None:
        probes = min(probes, max_calls)
    submit(first)
    if probing:
        for item in itertools.islice(it, probes - 1):
            submit([item])
    window = lane_width * 2 if kind == "process" else lane_width
    oom_cap = MAX_BATCH  # tasks in flight at most: halved by each item killed by SIGKILL
    while in_flight or not exhausted:
        if probing:
            wait_futures({*waiting, state.bell}, return_when="FIRST_COMPLETED")
            if state.cancelled:  # cancel() rang: running thread calls are not waited for
                raise concurrent.futures.CancelledError()
            if fastest(in_flight) < PROBE_TRUST_SECONDS:
                # Cheap calls: one time can mislead (the first call warms up; on a busy
                # machine it counts time spent waiting for a CPU) and would send the rest
                # one call per task. The other probes end within moments: use them too.
                wait_futures(waiting, timeout=PROBE_WAIT_SECONDS)
            per_call = typical(in_flight)  # not the fastest: one quick call misleads
            size = min(cap, _batch_size(per_call, kind, remaining, lane_width))
            probing = False
            if size > 1:
                window = max(lane_width * 2, 4) if kind == "process" else 4
        # Calls far cheaper than a hand-off gain nothing from another thread (they hold
        # the GIL or are done before it switches): run them here, in batches, once the
        # work in flight is in. An explicit kind="thread" keeps its lane. Checked again
        # as estimates improve: the first call pays for warm-up, and on a busy machine
        # its wall time counts the time it waited for a CPU.
        inline = (
            kind == "thread"
            and adaptive
            and not left_inline
            and not decision.explicit
            and per_call < TINY_CALL_SECONDS
            and not is_async_callable(fn)
        )
        while (
            not exhausted
            and not inline
            and len(in_flight) < min(window, oom_cap)
            and slots.fit(size)
        ):
            items = list(itertools.islice(it, size))
            if not items:
                exhausted = True
                break
            submit(items)
        if not in_flight:
            if slots.late and not exhausted and not inline:
                slots.wait_late(state)  # calls that timed out on threads hold the limit
                continue
            if inline and not exhausted:
                # Not capped by a limit: here one call runs at a time (13f's F6).
                most = _batch_size(per_call, kind, remaining, lane_width)
                slow = yield from run_inline(
                    executor, fn, it, most, report, state, 4 * TINY_CALL_SECONDS
                )
                if slow is not None:  # the calls grew slow: back to the lane (13f's F2)
                    (per_call, left), left_inline = slow, True
                    it = itertools.chain(left, it)  # the batch's calls not run go first
                    size = min(cap, _batch_size(per_call, kind, remaining, lane_width))
                    continue
            break
        if isinstance(in_flight, deque):
            batch = in_flight.popleft()
        else:
            # The batches' own futures, not `waiting` (which holds a retry's or a limit's
            # wait too): whatever wakes this wait is a batch found below (17b's B6).
            by_future = {b.future: b for b in in_flight}
            done = wait_futures({*by_future, state.bell}, return_when="FIRST_COMPLETED").done
            if state.cancelled:
                raise concurrent.futures.CancelledError()
            batch = found_batch(by_future, done)
            in_flight.remove(batch)
            del done, by_future
        outcomes = batch_outcomes(batch, state)
        waiting.discard(batch.future)  # (after: a cancel() meanwhile cancels it too)
        slots.give_back(batch.future, batch.size)
        killed = batch.crashes != crashes["crashes"] and batch.future.kind == "process"
        if killed and any(map(oom_killed, outcomes)):
            oom_cap = max(1, min(oom_cap, lane_width, len(in_flight) + 1) // 2)
            # A batch of several was split by the lane as its worker died: the item that
            # was running then ran twice already, those after it only in the split.
            after = getattr(batch.task, "split_at", -1) + 1
            if after < len(outcomes) and any(map(oom_killed, outcomes[after:])):
                wait_futures(waiting)  # the retry runs alone: the rest ends first
                outcomes = retry_killed(
                    outcomes, batch.task.items, resubmit, after, waiting.discard
                )
        if adaptive and batch.size:
            # Refine the estimate: a fall counts in full (first calls pay for warm-up:
            # imports, caches), a rise by half (calls may grow costly, or one was unlucky).
            seen = batch.task.elapsed / batch.size
            per_call = seen if seen < per_call else (per_call + seen) / 2
            size = min(cap, _batch_size(per_call, kind, remaining, lane_width))
            if size > 1 and kind == "thread":
                window = 4
        if report is not None and not state.cancelled:  # a cancelled map reports no more
            report.update(len(outcomes), batch.future.kind)
        values, error = split_outcomes(outcomes, keep_errors=state.keep_errors)
        # Suspended at the yield, this frame must hold neither the values (handed to the
        # consumer, who lets each go once consumed) nor the batch and its future.
        box = [values]
        del values, outcomes, batch
        yield box.pop()
        if error is not None:
            state.item_error = error  # (MapIterator.collect: an item's own StopIteration)
            raise error
    if closed:  # the rest was never submitted
        raise ended(router, state)


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
