"""Futures and the unit of work that lanes run.

``Future`` is a ``concurrent.futures.Future`` that also records where it ran (``kind``) and can
be cancelled while running when its lane can stop the work (a process worker is killed).

A ``Task`` is one call, or a batch of calls of the same function. A batch resolves its single
future to a list of ``Outcome`` pairs so that one failing item never hides the others.
"""

from __future__ import annotations

import concurrent.futures
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

T = TypeVar("T")

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
            return super().cancel()
        stop()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

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
        self._invoke_callbacks()  # type: ignore[attr-defined]

    def is_pending(self) -> bool:
        """Return True while the task has not started and was not cancelled."""
        return self._state == PENDING


class Task:
    """One call or a batch of calls, with the future that reports how it ended."""

    __slots__ = ("batch", "deadline", "elapsed", "fn", "future", "items", "payload", "timeout")

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

    def start_clock(self) -> None:
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout

    def run_here(self) -> None:
        """Run the call(s) in the current thread and resolve the future."""
        fn = self.fn
        started = time.perf_counter()
        if not self.batch:
            args, kwargs = self.items[0]
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # SystemExit in a task must not end the worker
                self.elapsed = time.perf_counter() - started
                self.future.settle(False, exc)
                return
            self.elapsed = time.perf_counter() - started
            self.future.settle(True, result)
            return
        outcomes = run_items(fn, self.items)
        self.elapsed = time.perf_counter() - started
        self.future.settle(True, outcomes)


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
