"""The unit of work that lanes run: one call, or a batch of calls of the same function.

A batch resolves its single future to a list of ``Outcome`` pairs so that one failing item never
hides the others; one that ``stops`` (a map without ``return_exceptions``, an ``Executor.map``
chunk) runs no item after its first failure. A task for a thread carries a copy of its
submitter's ``contextvars`` context and runs in it. A single call is kept as its ``args`` and
``kwargs`` (no list of items made for it: a storm of submits makes fewer objects for the
garbage collector to walk).
"""

from __future__ import annotations

import _thread
import concurrent.futures
import contextvars
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._lazy import loaded
from ._waits import acquire_long

if TYPE_CHECKING:
    from ._futures import Future

Outcome = tuple[bool, Any]
"""``(True, value)`` or ``(False, exception)``: how one item of a batch ended."""

Call = tuple[tuple[Any, ...], dict[str, Any]]
"""One call's ``(args, kwargs)``."""
Items = list[Call]

_NO_KWARGS: dict[str, Any] = {}
"""The keyword arguments of every task of a call given none; never changed. The call's own
empty dict is not kept: a storm of submits keeps one object fewer per task alive, and the
garbage collector (its youngest generation is collected every 700 objects made and kept) runs
that much less often (issue 17)."""


class Task:
    """One call or a batch of calls, with the future that reports how it ended."""

    __slots__ = (
        "_items",
        "ahead",
        "args",
        "batch",
        "chosen",
        "context",
        "deadline",
        "elapsed",
        "fn",
        "future",
        "group",
        "kwargs",
        "mark",
        "payload",
        "profile",
        "route",
        "size",
        "split_at",
        "stops",
        "timeout",
        "wire",
    )
    ahead: list[Outcome]  # set only on a process batch whose first outcomes came ahead
    mark: int  # set only on a process batch of several items: its number (_process/_ring.py)
    split_at: int  # set only on a batch split item by item: the index of the item running then

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Items | Call,
        future: Future[Any],
        *,
        batch: bool = False,
        timeout: float | None = None,
        stops: bool = False,
    ) -> None:
        self.fn = fn
        # One call given as its (args, kwargs) pair is kept as both (no list, no pair: a storm
        # of submits makes fewer objects for the garbage collector to walk); ``items`` then
        # builds the list when asked.
        if type(items) is tuple:
            self._items: Items | None = None
            self.args, kwargs = items
            self.kwargs = kwargs or _NO_KWARGS
        else:
            self._items = items  # type: ignore[assignment]
            self.args, self.kwargs = items[0] if items else ((), _NO_KWARGS)  # a batch: its first
        self.future = future
        self.batch = batch
        # A batch that stops at its first failed item (a map without return_exceptions, an
        # Executor.map chunk, as the standard library's _process_chunk): see run_items.
        self.stops = stops
        self.timeout = timeout
        self.deadline: float | None = None
        self.payload: bytes | None = None  # pickled call, for the process lane
        # The process lane's deferred call (plain small arguments, pickled by the manager in a
        # frame with others): the pickled callable, the bytes it may take on the wire, and the
        # calls sent in one frame with it that have no reply yet (see _process/_group.py).
        self.wire: bytes | None = None
        self.size = 0
        self.group: list[int] | None = None
        self.elapsed = 0.0  # seconds the call(s) took where they ran
        # True when the library, not the user, chose the lane: interpreter exit waits for
        # such work on a thread only a short while (it cannot be killed; see ThreadLane).
        self.chosen = False
        self.profile: Any = None  # the thread lane's record of what calls of fn do
        # The submitter's context (a copy): thread tasks only (none crosses processes).
        self.context: contextvars.Context | None = None
        # The classifier's decision an auto-routed task was sent with: until it starts, the
        # task follows that verdict's successors (late binding, see _routing/_binding.py).
        self.route: Any = None

    @property
    def items(self) -> Items:
        """The calls: a list of ``(args, kwargs)`` pairs (one unless ``batch``)."""
        items = self._items
        return [(self.args, self.kwargs)] if items is None else items

    def start_clock(self) -> None:
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout

    def call(self) -> Outcome:
        """Run the calls in the current thread; return how they ended (no future touched).

        A batch ends as ``(True, outcomes)``. Lanes settle the future themselves, after they
        have marked the task finished (a deadline timer must not fire into done-callbacks).
        """
        fn = self.fn
        context = self.context
        started = time.perf_counter()
        try:
            if not self.batch:
                try:
                    if context is None:
                        return True, fn(*self.args, **self.kwargs)
                    return True, context.run(fn, *self.args, **self.kwargs)
                except BaseException as exc:  # SystemExit in a task must not end the worker
                    return False, exc
            if context is not None:  # each item sees what the previous ones set, as in a loop
                fn = functools.partial(context.run, fn)
            return True, run_items(fn, self.items, self.stops)
        finally:
            self.elapsed = time.perf_counter() - started

    def release(self) -> None:
        """Let go of the callable, the arguments and the pickled call: the task has ended.

        What ran must not outlive its future being done (I3): a finished task may stay
        referenced a while (a worker thread's loop, a ``map``'s bookkeeping, a timer).
        """
        self.fn = _released
        self._items, self.args, self.kwargs = [], (), _NO_KWARGS
        self.payload = self.wire = self.group = None
        self.context = None  # its values may be large, and are the submitter's
        self.route = None


def run_items(fn: Callable[..., Any], items: Items, stops: bool = False) -> list[Outcome]:
    """Run each item, capturing its result or exception.

    With ``stops``, the first failed item ends the batch: the items after it do not run, and
    their outcomes are ``not_run`` failures (one outcome per item all the same: a lane or a
    map that reads a batch's outcomes by position needs them all). An item whose exception
    ends its map whatever (``ends_map``: Ctrl-C, ``SystemExit``) ends the batch all the same.
    """
    outcomes: list[Outcome] = []
    append = outcomes.append
    for args, kwargs in items:  # (no enumerate: tiny calls come by the ten thousand)
        try:
            append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # SystemExit in one item must not lose the batch
            append((False, exc))
            if stops or ends_map(exc):  # the map raises it: the rest would run for nothing
                outcomes += [(False, not_run()) for _ in range(len(items) - len(outcomes))]
                break
    return outcomes


def ends_map(exc: BaseException) -> bool:
    """Whether an item's ``exc`` ends a map even with ``return_exceptions=True``."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True
    asyncio = loaded("asyncio")  # not imported (or not yet): nothing raised its cancellation
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def not_run() -> concurrent.futures.CancelledError:
    """The failure of an item that did not run: an earlier item of its batch failed."""
    return concurrent.futures.CancelledError("not run: an earlier item of its batch failed")


def _released(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the callable of a finished task (see ``Task.release``)."""
    raise RuntimeError("this task has ended: its callable was released")


class Deferred:
    """A result rebuilt by its first reader, not by the thread that settled the future.

    A lane's service thread (the process lane's manager) settles the futures of every caller;
    were it to unpickle each result itself, one that takes seconds to rebuild (a heavy
    ``__setstate__``, millions of small objects) would hold up the lane's other results,
    timeouts and crashes. ``settle(True, Deferred(rebuild, data))`` ends the future at once
    (``settle(False, ...)``: an exception to rebuild, ``_process._rebuild.failed``);
    ``result()`` or ``exception()`` calls ``rebuild(data) -> (ok, value)`` once, in the reading
    thread (a done-callback's runner, ``as_completed``'s caller), and keeps what it gave.
    One difference shows: a result that then fails to rebuild was reported to
    ``concurrent.futures.wait`` as a result, so ``FIRST_EXCEPTION`` does not return for it.
    """

    __slots__ = ("data", "lock", "outcome", "rebuild")

    def __init__(self, rebuild: Callable[[Any], Outcome], data: Any) -> None:
        self.rebuild = rebuild
        self.data = data
        self.lock = _thread.allocate_lock()  # not the future's: done() never waits for this
        self.outcome: Outcome | None = None

    def get(self, timeout: float | None, since: float = 0.0) -> Outcome:
        """``(ok, value)``, rebuilt by the first caller; the others wait up to ``timeout``.

        ``timeout`` counts from ``since`` (a ``time.monotonic()``; 0.0: from now), when the
        reader began to wait for the future: one timeout for both waits.

        Raises:
            TimeoutError: another thread's rebuild took longer than ``timeout``.
        """
        if timeout is not None and since:
            timeout -= time.monotonic() - since
        if timeout is None:
            self.lock.acquire()
        elif not acquire_long(self.lock, timeout if timeout >= 0 else 0.0):  # NaN: 0 too
            raise concurrent.futures.TimeoutError()
        try:
            if self.outcome is None:  # a Ctrl-C raised in rebuild leaves it to the next read
                self.outcome = self.rebuild(self.data)
                self.data = None
            return self.outcome
        finally:
            self.lock.release()


def orphaned(future: Any) -> float:
    """Fail ``future`` (its lock held), inherited through ``os.fork()`` unfinished: 0.0.

    Its work runs in the parent, whose lanes this child never touches: waiting for it here
    would last for ever (14a's A2). It fails in this process only; the parent's copy lives on.
    """
    from ._exceptions import BrokenExecutorError

    future._exception = BrokenExecutorError(
        "this future's work runs in the parent process: a forked child cannot wait for it"
    )
    future._state = concurrent.futures._base.FINISHED
    return 0.0


class _Orphaned(list):  # type: ignore[type-arg]
    """The waiters of an inherited future (``orphaned``): each is told at once it is done."""

    def __init__(self, future: Any) -> None:
        super().__init__()
        self.future = future

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        waiter.add_exception(self.future)


def orphaned_waiters(future: Any) -> list[Any]:
    """The ``_waiters`` of an inherited unfinished future: failed now, waiters told at once."""
    orphaned(future)
    return _Orphaned(future)
