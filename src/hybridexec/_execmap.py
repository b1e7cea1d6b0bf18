"""``Executor.map`` (and a view's ``map``): the checks, then the calls submitted as read.

Every call goes through ``submit`` when a subclass overrides it (the standard library
documents that); otherwise calls go in groups where nothing observable changes (``_groups``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._futures import Future
from ._groups import submitter
from ._lifecycle import closed_error
from ._waits import capped, wait_futures

if TYPE_CHECKING:
    from ._executor import Executor
    from ._routing import Options


def executor_map(
    ex: Executor,
    plain: bool,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    opts: Options,
    limit: int | None,
) -> Iterator[Any]:
    """``Executor.map`` (and a view's): checks, then the calls submitted as results are read.

    ``plain``: ``ex``'s class does not override ``submit``.

    Raises:
        TypeError: ``fn`` is not callable (or a bad ``buffersize``/``limit``).
        ValueError: a bad ``chunksize``/``buffersize``/``limit``.
        RuntimeError: the executor was shut down.
    """
    check_map_args(chunksize, buffersize, limit)
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
    if ex._router.closed:
        raise RuntimeError("cannot schedule new futures after shutdown")
    end_time = None if timeout is None else time.monotonic() + timeout

    def shut_down() -> BaseException | None:
        # Why the map may submit no more: its executor was shut down under it (15c's C5).
        if not ex._router.closed:
            return None
        return concurrent.futures.CancelledError() if ex._router.cancelled else closed_error()

    calls = zip(*iterables)  # noqa: B905 - stops at the shortest, as map does
    if not plain and opts is ex._options:
        # A subclass counts, traces or wraps submit: every call goes through it.
        def submit_one() -> Submitted | None:
            args = next(calls, None)
            return None if args is None else (ex.submit(fn, *args), False, 1)

        return results(submit_one, buffersize, end_time, limit, shut_down=shut_down)
    if chunksize > 1 and _per_call_timeout(fn, opts):
        chunksize = 1  # a chunk is one task with one deadline: each call needs its own
    submit_next = submitter(ex._router, fn, calls, opts, chunksize, buffersize, limit)
    return results(submit_next, buffersize, end_time, limit, chunksize, shut_down=shut_down)


def _per_call_timeout(fn: Callable[..., Any], opts: Options) -> bool:
    """Whether calls of ``fn`` have a timeout: of the options, else of its ``@hx.task``."""
    from ._routing import Options, hints_of

    hinted = hints_of(fn)
    if hinted is not None:
        opts = opts.merged(Options("auto", hinted.timeout, hinted.max_memory))
    return opts.timeout is not None


def check_map_args(chunksize: int, buffersize: int | None, limit: int | None) -> None:
    """Raise for a bad ``chunksize``, ``buffersize`` or ``limit`` of ``Executor.map``."""
    from ._mapping import check_limit

    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int of at least 1, not {chunksize!r}")
    if buffersize is not None:
        if isinstance(buffersize, bool) or not isinstance(buffersize, int):
            raise TypeError(f"buffersize must be an int or None, not {buffersize!r}")
        if buffersize < 1:
            raise ValueError(f"buffersize must be None or at least 1, not {buffersize}")
    if check_limit(limit) is not None and chunksize > limit:  # type: ignore[operator]
        # A chunk counts as its number of calls: a bigger one could never start.
        raise ValueError(f"chunksize ({chunksize}) must not exceed limit ({limit})")


Submitted = tuple[Future[Any], bool, int]
"""What ``Executor.map`` submitted: the future, whether it is a batch, and how many calls."""


def results(
    submit_next: Callable[[], Submitted | None],
    buffersize: int | None,
    end_time: float | None,
    limit: int | None = None,
    chunk: int = 1,
    *,
    shut_down: Callable[[], BaseException | None],
) -> Iterator[Any]:
    """The iterator behind ``Executor.map``: results in order, ``end_time`` for them all.

    ``submit_next()`` submits the next call or chunk (of at most ``chunk`` calls), or returns
    None when the input is exhausted. Without ``buffersize`` or ``limit`` everything is
    submitted now, as the standard library does; with ``buffersize``, at most that many chunks
    are in flight and not yet yielded; with ``limit``, at most that many calls are submitted
    and not finished, the next ones going out as those finish while the consumer iterates.
    Leaving the iterator early cancels the futures not consumed. Consumed results are not
    kept: the iterator holds only what it has not yielded yet.

    A submit refused because the executor was shut down under the map (``shut_down()`` says
    why, None when it was not) ends the submitting, not the map: the calls already submitted
    run (a plain shutdown runs them) and their results are yielded; then the map raises that
    error (docs/guarantees.md, "A map under a shutdown").
    """
    from ._mapitems import Slots

    pending: collections.deque[tuple[Future[Any], bool]] = collections.deque()
    # With a limit: the futures not seen finished yet, and their calls (a chunk counts as its
    # number of calls: one whose worker crashed is retried call by call, all at once); a
    # call that timed out on a thread keeps its slot until its code returns (Slots).
    running: dict[Future[Any], int] = {}
    slots = Slots(limit)
    exhausted = False
    stopped: list[BaseException] = []  # why the map may submit no more, raised at its end

    def fill() -> None:
        nonlocal exhausted
        for future in [f for f in running if f.done()]:
            slots.give_back(future, running.pop(future))
        while (
            not exhausted
            and (buffersize is None or len(pending) < buffersize)
            and (limit is None or slots.fit(chunk))
        ):
            try:
                submitted = submit_next()
            except RuntimeError:
                # Raised here, it would drop the result just taken and cancel the calls
                # still queued, which the shutdown lets run: raised once they are handed out.
                why = shut_down()
                if why is None:
                    raise
                stopped.append(why)
                submitted = None
            if submitted is None:
                exhausted = True
                break
            pending.append(submitted[:2])
            if limit is not None:
                running[submitted[0]] = submitted[2]
                slots.take(submitted[2])
            del submitted  # no local for a future: it would keep its result alive

    def wait_head(timeout: float | None) -> None:
        # Under a limit, the calls behind the head go out as others finish, not only when
        # the head is taken (a slow head would otherwise hold the whole map back).
        deadline = None if timeout is None else time.monotonic() + timeout
        while running and not pending[0][0].done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and not left > 0:  # NaN too: a deadline never met
                return  # the result() that follows raises TimeoutError
            late: list[Any] = list(slots.late)
            left = None if left is None else capped(left)  # inf: looked at again each piece
            wait_futures([*running, *late], left, concurrent.futures.FIRST_COMPLETED)
            fill()

    try:
        fill()
    except BaseException:
        for future, _ in pending:
            future.cancel()
        raise
    top_up = fill if buffersize is not None or limit is not None else None
    wait = wait_head if limit is not None else None
    return _iterate(pending, running, top_up, wait, end_time, stopped)


def _iterate(
    pending: collections.deque[tuple[Future[Any], bool]],
    running: dict[Future[Any], int],
    fill: Callable[[], None] | None,
    wait_head: Callable[[float | None], None] | None,
    end_time: float | None,
    stopped: list[BaseException],
) -> Iterator[Any]:
    # A generator apart from results() so that map() raises bad input at once and submits
    # its work before the first next(), as the standard library does.
    from ._mapping import split_outcomes

    try:
        while pending:
            batch = pending[0][1]  # no local for the future: it would keep its result alive
            timeout = None if end_time is None else end_time - time.monotonic()
            if wait_head is not None:
                wait_head(timeout)
                timeout = None if end_time is None else end_time - time.monotonic()
            # In a list popped as it is yielded: a local would keep the result alive for as
            # long as the consumer holds this generator.
            held = [_take(pending, timeout)]
            if fill is not None:
                # The next calls go out before this result is yielded; a limit's count
                # lets go of the finished futures, this one included.
                fill()
            if not batch:
                yield held.pop()
                continue
            values, error = split_outcomes(held.pop())
            values.reverse()
            while values:
                yield values.pop()
            if error is not None:
                raise error
        if stopped:  # shut down under the map: the rest was never submitted
            raise stopped.pop()
    finally:
        for future, _ in pending:
            future.cancel()
        pending.clear()
        running.clear()


def _take(pending: collections.deque[tuple[Future[Any], bool]], timeout: float | None) -> Any:
    """The first pending future's result, popped so the iterator keeps no reference to it."""
    value = pending[0][0].result(timeout)
    pending.popleft()
    return value
