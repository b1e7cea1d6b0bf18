"""Deadlines of thread work: the one async-raise helper, the timer thread, a running record.

The thread lane (``_threads.py``) fails a task with a timeout at its deadline and interrupts its
thread with an asynchronous exception; thread actors and remote calls use the same helper.

The interruption is best effort (code blocked in C sees it only when it returns to Python), so
a task can fail with ``TaskTimeoutError`` while its code still runs: the future then carries a
second one, ``late_end(future)``, done when that code really returns. A map's ``limit`` counts
the call until then (``_mapitems.Slots``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._callbacks import serve
from ._exceptions import TaskTimeoutError
from ._futures import Future
from ._waits import capped, enter_deadline, leave_deadline


class TaskInterrupted(BaseException):
    """Raised asynchronously inside a thread whose task passed its deadline.

    Raised again, 0.1 s later then less and less often, while the task's code still runs:
    code that catches every exception (asyncio's event loop logs one raised in a callback
    and runs on) or ``BaseException`` does not keep a task running for ever.
    """


def interrupt_thread(ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` asynchronously in the thread ``ident`` at its next bytecode boundary.

    The one async-raise helper of the package (thread-lane deadlines, thread actors' kill,
    remote calls). With None, a pending (not yet raised) exception is withdrawn.
    """
    import ctypes  # on first use: ~1 ms that an executor without deadlines never pays

    obj = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), obj)


class Running:
    """A task running on a thread with a deadline, as seen by the deadline timer.

    Holds the future and the timeout only, and drops the future when the task ends: the
    timer's heap keeps this record until the deadline passes, and must not keep the result.
    """

    __slots__ = (
        "again",
        "done",
        "ended",
        "future",
        "ident",
        "interrupted",
        "lock",
        "outer",
        "thread",
        "timeout",
        "timer",
        "timers",
    )

    def __init__(self, future: Future[Any], timeout: float, ident: int) -> None:
        self.future: Future[Any] | None = future
        self.timeout = timeout
        self.ident = ident
        self.thread = threading.current_thread()  # made in the thread that runs the task
        self.lock = threading.Lock()
        self.done = False
        self.interrupted = False
        self.again = 0.0  # seconds until the interruption is raised again (0: not yet raised)
        self.ended: concurrent.futures.Future[None] | None = None  # see late_end()
        self.timers: Timers | None = None
        self.timer: list[Any] | None = None
        self.outer: float | None = None  # the deadline this thread's waits had before (_waits)

    def arm(self, timers: Timers, deadline: float) -> None:
        """Have ``timers`` call ``on_deadline`` at ``deadline`` unless the call ends first.

        Called in the task's thread: its waits on the library's futures end a piece there,
        so that the interruption lands in them (``_waits``, 17b's B2).
        """
        self.timers = timers
        self.timer = timers.call_at(deadline, functools.partial(on_deadline, self, timers))
        self.outer = enter_deadline(deadline)

    def alive(self) -> bool:
        """Whether the task's thread still runs (an ident alone may be reused)."""
        return self.thread.ident == self.ident and self.thread.is_alive()

    def finish(self) -> bool:
        """Mark the call ended (in its own thread); return True if the deadline came first.

        Once this returns, no interruption is pending for the thread or can come later.
        """
        if self.timer is not None:  # armed: the thread's waits are no longer cut
            leave_deadline(self.outer)
        while True:
            try:
                with self.lock:
                    self.done = True
                    self.future = None
                    if self.interrupted:
                        interrupt_thread(self.ident, None)  # withdraw it if not yet raised
                        return True
                break
            except TaskInterrupted:
                # Raised between the call's end and the withdrawal: the timer settled the
                # future already. Loop to withdraw under the lock (nothing else is pending).
                continue
        if self.timers is not None and self.timer is not None:  # ended first: its record
            self.timers.cancel(self.timer)  # goes now, not at the deadline (15b's B4)
        return False

    def returned(self) -> None:
        """The call's code returned (in its own thread), after ``finish()``: its late end."""
        ended, self.ended = self.ended, None
        if ended is not None:
            ended.set_result(None)


def late_end(future: Future[Any]) -> concurrent.futures.Future[None] | None:
    """The late end of a done ``future``: done when its call's code really returns.

    None unless the call timed out on a thread and its code still runs.
    """
    ended = future._hx_ended
    return None if ended is None or ended.done() else ended


class Timers:
    """One daemon thread that calls functions at deadlines (monotonic clock).

    ``call_at`` returns the entry, which ``cancel`` withdraws: a task that ended before its
    deadline leaves nothing behind (an hour's timeout on 15,000 calls a second kept every
    record for an hour: 15b's B4). Withdrawn entries stay in the heap, emptied, until they
    are due or make up half of it. The thread leaves once the lane that owns it is closed
    and no entry remains (``close(wait=False)`` included: 15b's B1).
    """

    def __init__(self, name: str) -> None:
        self._heap: list[list[Any]] = []  # [deadline, seq, fn or None once withdrawn]
        self._withdrawn = 0
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._name = name

    def call_at(self, deadline: float, fn: Callable[[], None]) -> list[Any]:
        """Call ``fn`` on the timer thread at ``deadline``; the entry is for ``cancel``."""
        with self._cond:
            entry = [deadline, next(self._seq), fn]
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                thread = threading.Thread(
                    target=serve(self._run, self), name=self._name, daemon=True
                )
                try:
                    thread.start()
                except BaseException:  # refused (a thread limit): the caller's call fails,
                    self._heap.remove(entry)  # and its deadline must never fire later
                    heapq.heapify(self._heap)
                    raise
                self._thread = thread
            if self._heap[0] is entry:  # a later deadline: the thread need not wake (and
                self._cond.notify()  # take the GIL) now; a storm arms many
        return entry

    def try_call_at(self, deadline: float, fn: Callable[[], None]) -> bool:
        """``call_at``, or False if the timer thread cannot start (a thread limit)."""
        try:
            self.call_at(deadline, fn)
        except RuntimeError:
            return False
        return True

    def cancel(self, entry: list[Any]) -> None:
        """Withdraw ``entry`` (made by ``call_at``) unless it was called already."""
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._withdrawn += 1
            if self._withdrawn > 32 and 2 * self._withdrawn > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._withdrawn = 0

    def __len__(self) -> int:
        """Entries still to be called (withdrawn ones left out)."""
        with self._cond:
            return len(self._heap) - self._withdrawn

    def close(self, wait: bool = True) -> None:
        """Stop the timer thread; pending calls are dropped (their tasks ended or will end)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap:
                        delay = self._heap[0][0] - time.monotonic()
                        if delay <= 0:
                            break
                        self._cond.wait(capped(delay))  # a later look finds it due
                    else:
                        self._cond.wait()
                if self._closed:
                    self._heap.clear()  # what a closed lane's tasks armed: none will run
                    return
                entry = heapq.heappop(self._heap)
                fn, entry[2] = entry[2], None  # called: a cancel() now is too late (15f's F8)
                if fn is None:
                    self._withdrawn -= 1
                    continue
            try:
                fn()
            except Exception:  # one deadline's failure must not end the thread of all others
                logging.getLogger("hybridexec").exception("a deadline's callback failed")


UNSAFE_PAUSE = 0.005
"""Seconds a deadline's interruption waits, again and again, while its thread is unsafe."""


def on_deadline(running: Running, timers: Timers | None = None) -> None:
    """The deadline of a task running on a thread: fail its future, interrupt its thread.

    Not while the thread is where an exception raised out of nowhere would break state that
    outlives the task (``timers`` given; ``_unsafe``): inside an import (CPython's import
    locks: every later import of that module, in any thread, would hang or fail), or inside
    the library's own code or the standard library's locking code that the task called (a
    ``Condition``'s ``__enter__`` that acquired its lock and did not return yet leaves it
    held for good: every later submit hung; 13c's C2, C3), or starting a thread (13d's D5).
    The future fails at the deadline; the interruption comes once the thread is out (tried
    every ``UNSAFE_PAUSE`` seconds). A thread blocked in a wait of the library's (a
    ``result()`` of its futures, a map's wait) is interrupted there: those waits end a piece
    at the deadline (``_waits``); one blocked in a foreign lock only once that returns.
    """
    with running.lock:
        future = running.future
        if running.done or (future is None and not running.interrupted):
            return
        if future is None and not running.alive():
            return  # its thread ended without finish() (its ident may be another's now)
        if future is not None:  # the deadline itself (not a retry)
            running.interrupted = True
            running.future = None
            # Before the future is done: whoever sees it done sees that its code may still run.
            running.ended = future._hx_ended = concurrent.futures.Future()
        retry = functools.partial(on_deadline, running, timers)
        if not (
            timers is not None
            and _unsafe(running.ident)
            and timers.try_call_at(time.monotonic() + UNSAFE_PAUSE, retry)
        ):
            interrupt_thread(running.ident, TaskInterrupted)
            if timers is not None:
                # Raised again while the code still runs (until finish()): an `except
                # BaseException` or asyncio's loop may have swallowed it (13g's G2).
                running.again = min(2 * running.again, 1.0) if running.again else 0.1
                timers.try_call_at(time.monotonic() + running.again, retry)
    if future is not None:
        # Settled outside the lock: slow done-callbacks must not hold up the thread's finish().
        future.settle(
            False,
            TaskTimeoutError(f"task exceeded its {running.timeout:g} s timeout in a thread"),
        )


_STDLIB = os.path.dirname(threading.__file__) + os.sep
_OURS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_THREADING = _STDLIB + "threading.py"
_WAITS = (_THREADING, _OURS + "_waits.py")
# Where a lock may be taken and not yet guarded (a Condition's __enter__, logging's acquire,
# concurrent.futures.wait taking its futures' locks one by one), or the library's own state
# changes: our code, threading, logging, concurrent.futures.
_LOCKING = (
    _OURS,
    _THREADING,
    _STDLIB + "logging" + os.sep,
    _STDLIB + "concurrent" + os.sep + "futures" + os.sep,
)
# Blocking waits: safe there (Thread.join waits in _wait_for_tstate_lock; 13g's G1); the
# pieces of _waits' waits (17b's B2) hold no lock between two.
_WAITING = (
    "wait",
    "wait_for",
    "wait_long",
    "wait_futures",
    "piece",  # (wait_futures' piece)
    "_piece",
    "acquire_long",
    "join",
    "_wait_for_tstate_lock",
)


def _unsafe(ident: int) -> bool:
    """Whether thread ``ident`` is where an asynchronous exception must not land now.

    Inside an import or a thread's start (anywhere on its stack), or with its innermost
    Python frame in our code, ``threading`` (a ``Condition``'s ``__enter__``) or ``logging``,
    unless that frame is a blocking wait.
    """
    top = sys._current_frames().get(ident)
    frame = top
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib"):
            return True
        if code.co_name == "start" and code.co_filename == _THREADING:
            # Starting a thread: until that thread runs, its state carries this thread's
            # ident, and CPython raises in the newest state of an ident: the new thread would
            # die before it says it started, and this one wait for it for ever (13d's D5).
            return True
        frame = frame.f_back
    if top is None:
        return False
    where = top.f_code.co_filename
    if not where.startswith(_LOCKING):
        return False  # the task's own code, a package or stdlib module it uses, a C call
    return not (where in _WAITS and top.f_code.co_name in _WAITING)
