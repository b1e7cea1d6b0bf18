"""Futures and the unit of work that lanes run.

``Future`` is a ``concurrent.futures.Future`` that also records where it ran (``kind``) and can
be cancelled while running when its lane can stop the work (a process worker is killed).

A ``Task`` is one call, or a batch of calls of the same function. A batch resolves its single
future to a list of ``Outcome`` pairs so that one failing item never hides the others. A task
for a thread carries a copy of its submitter's ``contextvars`` context and runs in it.

Done-callbacks run one by one; one that raises (or is interrupted) is logged and the others
still run, so a lane thread or the process manager that settles a future never dies of a
user's callback.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any, Generic, TypeVar

from . import _faults

T = TypeVar("T")

logger = logging.getLogger("hybridexec")

Outcome = tuple[bool, Any]
"""``(True, value)`` or ``(False, exception)``: how one item of a batch ended."""

Items = list[tuple[tuple[Any, ...], dict[str, Any]]]


class Future(concurrent.futures.Future[T], Generic[T]):
    """A ``concurrent.futures.Future`` that knows where it ran.

    Attributes:
        kind: ``"thread"`` or ``"process"`` (or a backend name): the lane the task went to.
    """

    kind: str

    def __init__(self, kind: str = "thread") -> None:
        super().__init__()
        self.kind = kind
        # Set by a lane while the task runs somewhere it can be stopped; returns True if the
        # lane accepted to stop the work.
        self._hx_stop: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" kind={self.kind}>"

    def cancel(self) -> bool:
        """Cancel the task; return True if it will not deliver a result.

        A pending task is cancelled as in the standard library. A task running in a process
        is stopped too: its worker is killed and replaced, and this returns True. A task
        running in a thread cannot be stopped that way and this returns False.
        """
        with self._condition:
            if self._state == RUNNING and self._hx_stop is not None:
                stop = self._hx_stop
                self._hx_stop = None
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
            else:
                stop = None
        if stop is None:
            if not super().cancel():
                return False
            # Seen as done by wait() and as_completed() at once, not only when a lane pulls the
            # task: a task sent ahead to a busy worker may never be pulled again (its reply is
            # dropped), and waiters must not wait for that.
            self.set_running_or_notify_cancel()
            return True
        stop()
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """As in the standard library; a future already cancelled and notified returns False."""
        with self._condition:
            if self._state == CANCELLED_AND_NOTIFIED:
                return False
        return super().set_running_or_notify_cancel()

    def settle(self, ok: bool, value: Any) -> None:
        """Resolve with a result or an exception unless it was already resolved or cancelled."""
        with self._condition:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
                return
            self._hx_stop = None
            if ok:
                self._result = value
            else:
                self._exception = value
            self._state = FINISHED
            for waiter in self._waiters:
                if ok:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def _invoke_callbacks(self) -> None:
        # The stdlib's loop, with the fault point, and BaseException caught too: a callback
        # that raises SystemExit (or is hit by a stray asynchronous exception) must neither
        # end the thread that settles futures nor keep the next callbacks from running.
        for callback in self._done_callbacks:  # type: ignore[attr-defined]
            try:
                callback(self)
                if _faults.ACTIVE:  # as if this callback raised (or stalled) as it ended
                    _faults.hit("future.callback")
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt) and _in_main_thread():
                    raise  # Ctrl-C stops the program, not just this callback
                logger.exception("exception calling callback for %r", self)

    def is_pending(self) -> bool:
        """Return True while the task has not started and was not cancelled."""
        return self._state == PENDING


class Task:
    """One call or a batch of calls, with the future that reports how it ended."""

    __slots__ = (
        "batch",
        "chosen",
        "computes",
        "context",
        "deadline",
        "elapsed",
        "fn",
        "future",
        "items",
        "payload",
        "timeout",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Items,
        future: Future[Any],
        *,
        batch: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.items = items
        self.future = future
        self.batch = batch
        self.timeout = timeout
        self.deadline: float | None = None
        self.payload: bytes | None = None  # pickled call, for the process lane
        self.elapsed = 0.0  # seconds the call(s) took where they ran
        # True when the library, not the user, chose the lane: interpreter exit waits for
        # such work on a thread only a short while (it cannot be killed; see ThreadLane).
        self.chosen = False
        # Set by the thread lane: the function is known to compute rather than wait.
        self.computes = False
        # The submitter's context (a copy), for a task run in this process: set by the router
        # for thread tasks only (a context does not cross processes).
        self.context: contextvars.Context | None = None

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
                args, kwargs = self.items[0]
                try:
                    if context is None:
                        return True, fn(*args, **kwargs)
                    return True, context.run(fn, *args, **kwargs)
                except BaseException as exc:  # SystemExit in a task must not end the worker
                    return False, exc
            if context is not None:  # each item sees what the previous ones set, as in a loop
                fn = functools.partial(context.run, fn)
            return True, run_items(fn, self.items)
        finally:
            self.elapsed = time.perf_counter() - started

    def release(self) -> None:
        """Let go of the callable, the arguments and the pickled call: the task has ended.

        What ran must not outlive its future being done (I3): a finished task may stay
        referenced a while (a worker thread's loop, a ``map``'s bookkeeping, a timer).
        """
        self.fn = _released
        self.items = []
        self.payload = None
        self.context = None  # its values may be large, and are the submitter's


def run_items(fn: Callable[..., Any], items: Items) -> list[Outcome]:
    """Run each item, capturing its result or exception."""
    outcomes: list[Outcome] = []
    append = outcomes.append
    for args, kwargs in items:
        try:
            append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # SystemExit in one item must not lose the batch
            append((False, exc))
    return outcomes


def _released(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the callable of a finished task (see ``Task.release``)."""
    raise RuntimeError("this task has ended: its callable was released")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
