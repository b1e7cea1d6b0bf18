"""Futures (and, from ``_task``, the unit of work that lanes run).

``Future`` is a ``concurrent.futures.Future`` that also records where it ran (``kind``) and can
be cancelled while running when its lane can stop the work (a process worker is killed).

Done-callbacks run one by one; one that raises (or is interrupted) is logged and the others
still run. A future settled on a service thread (``_callbacks.serve``: the process manager, a
deadline timer, the event loop...) hands its callbacks to the callback threads; elsewhere they
run at once, as in the standard library. A child forked while it was unfinished sees it fail
(``_task.orphaned``): its work runs in the parent.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, Generic, TypeVar

from . import _faults, _lifecycle
from ._task import Call as Call
from ._task import Deferred as Deferred
from ._task import Items as Items
from ._task import Outcome as Outcome
from ._task import Task as Task
from ._task import orphaned, orphaned_waiters
from ._task import run_items as run_items
from ._waits import wait_long

T = TypeVar("T")

_DONE = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED))
_allocate_rlock = _thread.RLock  # threading.RLock() wraps it in Python: 0.23 vs 0.10 us
logger = logging.getLogger("hybridexec")

FRESH_CONTEXT = contextvars.Context()
"""A thread task's ``context`` when its submitter's was empty: it runs in a new empty one.

A copy of an empty context and a new one hold the same (nothing); the copy need not live from
submit to run (one object less per queued task for the garbage collector, issue 17). Never
entered itself: the thread lane replaces it with ``contextvars.Context()`` as the task starts.
"""


# Set by _callbacks: the threads running a ``serve``d function, and where they hand over.
_service: dict[int, object] = {}  # service thread -> what it serves (see _callbacks)
_hand_over: Callable[[Future[Any]], None] | None = None


class Future(concurrent.futures.Future[T], Generic[T]):
    """A ``concurrent.futures.Future`` that knows where it ran.

    Attributes:
        kind: The lane the task went to: ``"thread"``, ``"process"``, ``"async"`` (an ``async
            def`` function on the executor's event loop) or a backend's name.
    """

    # Slots (issue 17): else, after ~30 futures made before one settled, each has a dict.
    __slots__ = (
        "_cond",
        "_exception",
        "_hx_before_wait",
        "_hx_born",
        "_hx_callbacks",
        "_hx_inline",
        "_hx_stop",
        "_hx_stop_with",
        "_hx_waiters",
        "_lock",
        "_result",
        "_state",
        "kind",
    )
    kind: str
    _hx_inline: list[Callable[[Future[T]], object]] | None  # the library's, quick
    # The stdlib's fields, but its Condition and lists are built only when used (see
    # _condition): most futures are done before anyone waits (fewer objects for the GC).
    _cond: threading.Condition | None
    _result: Any
    _exception: BaseException | None  # or a Deferred: an exception its reader rebuilds
    _hx_waiters: list[Any] | None
    _hx_callbacks: list[Callable[[Future[T]], object]] | None
    _hx_before_wait: Callable[[float | None], float | None] | None  # see result()
    # Set by a lane while the task runs somewhere it can be stopped (cancel() stops it).
    _hx_stop: Callable[[], None] | None
    # Or the same, called with the future: one for every call of a lane (no object per call);
    # it holds nothing of the call nor the lane itself, and counts only while the task runs.
    _hx_stop_with: Callable[[Future[Any]], None] | None
    # Set by the thread lane when a deadline failed the task while its code still runs: done
    # when that code returns (a map's limit counts the call until then: _deadlines).
    _hx_ended: concurrent.futures.Future[None] | None = None

    def __init__(self, kind: str = "thread") -> None:
        # An RLock, as the stdlib's Condition has: concurrent.futures.wait() holds every
        # future's lock while it calls cancelled() and exception(), which take it again.
        self._lock = _allocate_rlock()
        self._state, self._hx_born = PENDING, _lifecycle._generation  # (a child: see _wait)
        self.kind = kind
        self._cond = self._result = self._exception = self._hx_stop = self._hx_before_wait = None
        self._hx_waiters = self._hx_callbacks = self._hx_inline = self._hx_stop_with = None

    @property  # the stdlib's attribute, built on first use
    def _condition(self) -> threading.Condition:
        """The stdlib's Condition, on this future's lock: what waits and ``wait()`` use.

        Built once, under the lock, never read with it held (``_wait`` builds it itself); a
        state change notifies it if it exists: a waiter builds it before it checks the state.
        """
        cond = self._cond
        if cond is None:
            with self._lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(self._lock)
        return cond

    @_condition.setter
    def _condition(self, cond: threading.Condition) -> None:  # typing wants it writable
        self._cond = cond

    @property  # the stdlib's attribute, built on first use
    def _waiters(self) -> list[Any]:
        """The stdlib's waiters of ``wait()``/``as_completed()`` (they hold the lock)."""
        if self._hx_born != _lifecycle._generation and self._state not in _DONE:
            self._hx_waiters = orphaned_waiters(self)  # inherited (its parent's waiters too)
        elif self._hx_waiters is None:
            self._hx_waiters = []
        return self._hx_waiters

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._hx_waiters = waiters

    @property  # the stdlib's attribute, built on first use
    def _done_callbacks(self) -> list[Callable[[Future[T]], object]]:
        """The stdlib's done-callbacks (its callers hold the lock)."""
        if self._hx_callbacks is None:
            self._hx_callbacks = []
        return self._hx_callbacks

    @_done_callbacks.setter
    def _done_callbacks(self, callbacks: list[Callable[[Future[T]], object]]) -> None:
        self._hx_callbacks = callbacks

    def __repr__(self) -> str:
        if Deferred in (type(self._result), type(self._exception)):  # a repr runs no user code
            return f"<{type(self).__name__} at {id(self):#x} state=finished kind={self.kind}>"
        return super().__repr__()[:-1] + f" kind={self.kind}>"

    def cancel(self) -> bool:
        """Cancel the task; return True if it will not deliver a result.

        A pending task is cancelled as in the standard library. A task running in a process
        is stopped too: its worker is killed and replaced, and this returns True. A task
        running in a thread cannot be stopped that way and this returns False.
        """
        with self._lock:
            stop, stop_with = self._hx_stop, self._hx_stop_with
            if stop is None and stop_with is not None:
                stop = functools.partial(stop_with, self)
            if self._state == RUNNING and stop is not None:
                self._hx_stop = self._hx_stop_with = None
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._hx_waiters or ():
                    waiter.add_cancelled(self)
                if self._cond is not None:
                    self._cond.notify_all()
            else:
                stop = None
        if stop is None:
            with self._lock:  # the stdlib's cancel, without building a Condition to notify
                if self._state != PENDING:
                    return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
                self._state = CANCELLED
                if self._cond is not None:
                    self._cond.notify_all()
            self._invoke_callbacks()
            # Done for wait() and as_completed() at once, not when a lane pulls the task: one
            # sent ahead to a busy worker may never be pulled again (its reply is dropped).
            self.set_running_or_notify_cancel()
            return True
        stop()
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """As in the standard library; a future already cancelled and notified returns False."""
        with self._lock:
            state = self._state
            if state == PENDING:
                self._state = RUNNING
                return True
            if state == CANCELLED_AND_NOTIFIED:
                return False
            if state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._hx_waiters or ():
                    waiter.add_cancelled(self)
                return False  # cancel() notified the condition already
        logger.critical("Future %s in unexpected state: %s", id(self), state)
        raise RuntimeError("Future in unexpected state")

    def settle(self, ok: bool, value: Any) -> None:
        """Resolve with a result or an exception unless it was already resolved or cancelled."""
        with self._lock:
            if self._state in _DONE:
                return
            if self._hx_stop is not None or self._hx_before_wait is not None:
                self._hx_stop = self._hx_before_wait = None
            if ok:
                self._result = value
            else:
                self._exception = value
            self._state = FINISHED
            for waiter in self._hx_waiters or ():
                if ok:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            if self._cond is not None:
                self._cond.notify_all()
        if self._hx_callbacks or self._hx_inline:
            self._invoke_callbacks()

    def done(self) -> bool:
        """Return True if the future was cancelled or finished running."""
        with self._lock:
            if self._hx_born != _lifecycle._generation and self._state not in _DONE:
                orphaned(self)  # inherited through os.fork() unfinished: it fails here
            return self._state in _DONE

    def result(self, timeout: float | None = None) -> T:
        """As in the standard library: the result, or raise the call's exception.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: not done within ``timeout`` seconds.
        """
        if self._hx_before_wait is not None:  # a lane may fetch the result in this thread
            timeout = self._hx_before_wait(timeout)  # (a process reply: see _process/_direct)
        try:
            with self._lock:
                since = self._wait(timeout) if self._state != FINISHED else 0.0
                exc: Any = self._exception
                if exc is not None and type(exc) is not Deferred:
                    raise exc
                result: Any = self._result if exc is None else exc
            if type(result) is Deferred:  # rebuilt outside the lock: done() never waits
                ok, result = self._rebuilt(result, timeout, since)
                if not ok:
                    raise result
            value: T = result
            return value
        finally:
            self = None  # type: ignore[assignment]  # no cycle with the raised exception

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As in the standard library: the call's exception, or None (raises as ``result``)."""
        with self._lock:
            since = self._wait(timeout) if self._state != FINISHED else 0.0
            exc: Any = self._exception
            result = self._result
        if Deferred in (type(result), type(exc)):  # a result, or an exception, to rebuild
            ok, value = self._rebuilt(exc if type(exc) is Deferred else result, timeout, since)
            return None if ok else value
        error: BaseException | None = exc
        return error

    def _rebuilt(self, deferred: Deferred, timeout: float | None, since: float) -> Outcome:
        # Rebuilt once by its first reader, kept in place; ``timeout`` counts from ``since``.
        ok, value = deferred.get(timeout, since)
        with self._lock:
            held: object = self._exception
            if deferred is self._result or deferred is held:
                self._result, self._exception = (value, None) if ok else (None, value)
        return ok, value

    def _wait(self, timeout: float | None) -> float:  # lock held, not finished: as the stdlib
        if self._hx_born != _lifecycle._generation and self._state not in _DONE:
            return orphaned(self)  # inherited through os.fork(): the parent's work
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            raise concurrent.futures.CancelledError()
        since = 0.0 if timeout is None else time.monotonic()
        cond = self._cond  # not the property: it takes the lock held here
        if cond is None:
            cond = self._cond = threading.Condition(self._lock)
        wait_long(cond.wait, timeout)  # inf or 1e12 too (the stdlib's raises OverflowError)
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            raise concurrent.futures.CancelledError()
        if self._state != FINISHED:
            raise concurrent.futures.TimeoutError()
        return since  # when it began (0.0 without a timeout): a rebuild waits what is left

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """As in the standard library: ``fn(future)`` once done (now if it is done)."""
        with self._lock:
            if self._hx_born != _lifecycle._generation and self._state not in _DONE:
                orphaned(self)  # inherited unfinished: asyncio.wrap_future ends too
            if self._state not in _DONE or getattr(self._hx_callbacks, "handed", False):
                if self._hx_callbacks is None:  # (handed: a runner runs it after the
                    self._hx_callbacks = []  # callbacks added before, 15g's G1)
                self._hx_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            logging.getLogger("concurrent.futures").exception(
                "exception calling callback for %r", self
            )

    def _hx_add_inline(self, fn: Callable[[Future[T]], object]) -> None:
        """A library's callback (a split batch, a lease): runs first, in the settling thread."""
        with self._lock:
            if self._state not in _DONE:
                self._hx_inline = [*(self._hx_inline or ()), fn]  # rare: one or two a future
                return
        self._run_callbacks([fn])

    def _invoke_callbacks(self) -> None:
        # Called once the future is done (by settle, cancel and the stdlib's setters).
        if self._hx_inline:
            self._run_callbacks(self._hx_inline)
        if self._hx_callbacks:
            if _service and threading.get_ident() in _service and _hand_over is not None:
                _hand_over(self)
            else:
                self._run_callbacks(self._hx_callbacks)

    def _run_callbacks(self, callbacks: list[Callable[[Future[T]], object]] | None) -> None:
        # The stdlib's loop, with the fault point, and BaseException caught too: a callback
        # that raises SystemExit (or is hit by a stray asynchronous exception) must neither
        # end the thread that runs it nor keep the next callbacks from running.
        for callback in callbacks or ():
            try:
                callback(self)
                if _faults.ACTIVE:  # as if this callback raised (or stalled) as it ended
                    _faults.hit("future.callback")
            except BaseException as exc:
                main = threading.current_thread() is threading.main_thread()
                if isinstance(exc, KeyboardInterrupt) and main:
                    raise  # Ctrl-C stops the program, not just this callback
                # On the stdlib's logger, as the stdlib does: unconfigured, it reaches stderr
                # ("hybridexec" has a NullHandler); filters set up for concurrent.futures work.
                logging.getLogger("concurrent.futures").exception(
                    "exception calling callback for %r", self
                )

    def is_pending(self) -> bool:
        """Return True while the task has not started and was not cancelled."""
        return self._state == PENDING


def split_batch(task: Task, kind: str, ahead: list[Outcome] | None = None) -> list[Task]:
    """A batch's items as tasks of one item each, whose outcomes settle the batch's future.

    Lanes use it when a batch's worker died: each item goes again alone, so only the culprit
    fails. ``ahead``: the outcomes of the batch's first items, known already (they get no task).
    The batch's future settles once every single has; cancelling it cancels the singles (their
    lane stops a running one); a single cancelled (a shutdown dropped it) cancels the batch.
    """
    parent, items = task.future, task.items
    known = list(ahead or ())
    task.split_at = len(known)  # the item that was running (the others after it had not run)
    outcomes: list[Outcome | None] = [*known, *[None] * (len(items) - len(known))]
    remaining = [len(items) - len(known)]
    lock = threading.Lock()
    singles: list[Task] = []
    for index in range(len(known), len(items)):

        def done(fut: concurrent.futures.Future[Any], index: int = index) -> None:
            if fut.cancelled():
                parent.cancel()
                return
            exc = fut.exception()
            outcome: Outcome = (False, exc) if exc is not None else fut.result()[0]
            with lock:
                outcomes[index] = outcome
                remaining[0] -= 1
                finished = remaining[0] == 0
            if finished:
                parent.settle(True, list(outcomes))

        future: Future[Any] = Future(kind=kind)
        future._hx_add_inline(done)  # delivers results: never behind a user callback
        singles.append(Task(task.fn, [items[index]], future, batch=True, timeout=task.timeout))

    def stop_singles() -> None:
        for single in singles:
            single.future.cancel()

    parent._hx_stop = stop_singles
    return singles
