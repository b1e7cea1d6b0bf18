"""Timeouts the OS and ``threading`` can take, whatever seconds a user gave.

``poll()``/``epoll()`` take at most 2**31 - 1 ms (24.8 days) and lock waits at most
``threading.TIMEOUT_MAX``; beyond that they raise ``OverflowError`` (``inf`` included), and a
``Thread.join`` that raised it leaves the thread marked as ended on CPython 3.11-3.12. Every
wait whose length comes from a user (a task's timeout, ``idle_timeout``, ``join(timeout)``,
``result(timeout)``) goes through here: a loop that recomputes its sleep caps one sleep at
``MAX_WAIT`` (``capped``), and a one-shot wait is cut into such pieces (``wait_long``).

Deadlines: a thread task with a timeout is interrupted at its deadline by an asynchronous
exception (``_deadlines``), which CPython raises only when the thread runs bytecode again; a
thread blocked in a lock's acquire never does. So in a thread that runs such a task, the
library's own waits (``wait_long``, and through it a hybridexec future's ``result()`` and
``exception()``, a join; ``wait_futures``, its maps' waits) end a piece at the deadline, then
wait in pieces of ``DEADLINE_SLICE``: the interruption lands there (17b's B2). A wait the
library does not make (a foreign lock, ``concurrent.futures.wait`` called by the task's code)
is not cut: the interruption comes when it returns.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

MAX_WAIT = 1_000_000.0
"""The longest single sleep, in seconds (11.6 days): below every OS and ``threading`` limit."""


def capped(seconds: float) -> float:
    """``seconds`` for one sleep of a loop that wakes, finds nothing due, and sleeps again."""
    return seconds if seconds <= MAX_WAIT else MAX_WAIT


DEADLINE_SLICE = 0.01
"""Seconds of each piece of a wait, past its thread's deadline, until the interruption lands."""
DEADLINE_GRACE = 0.002
"""Seconds a wait's piece lasts past the deadline: the deadline's timer interrupts meanwhile."""

_deadlines: dict[int, float] = {}  # thread ident: the deadline of the task it runs (monotonic)


def enter_deadline(deadline: float) -> float | None:
    """Cut this thread's waits at ``deadline`` (its task's); returns what ``leave`` restores."""
    me = threading.get_ident()
    outer = _deadlines.get(me)  # a task with a deadline inside another one's (inline)
    _deadlines[me] = deadline if outer is None or deadline < outer else outer
    return outer


def leave_deadline(outer: float | None) -> None:
    """Undo ``enter_deadline`` in this thread: ``outer`` is what it returned."""
    if outer is None:
        _deadlines.pop(threading.get_ident(), None)
    else:
        _deadlines[threading.get_ident()] = outer


def _piece(left: float | None) -> float | None:
    """The next piece of a wait with ``left`` seconds to go (None: no end) in this thread."""
    deadline = _deadlines.get(threading.get_ident()) if _deadlines else None
    if deadline is None:
        return left if left is None else capped(left)
    until = deadline - time.monotonic()
    piece = capped(until + DEADLINE_GRACE) if until > 0 else DEADLINE_SLICE
    return piece if left is None or piece < left else left


def wait_futures(
    fs: Iterable[concurrent.futures.Future[Any]],
    timeout: float | None = None,
    return_when: str = concurrent.futures.ALL_COMPLETED,
) -> concurrent.futures._base.DoneAndNotDoneFutures[Any]:
    """``concurrent.futures.wait`` (``FIRST_COMPLETED`` or ``ALL_COMPLETED``) of the library.

    In ``wait_long``'s pieces: they end at this thread's task deadline (see the module
    docstring) and last at most ``MAX_WAIT`` seconds, so ``timeout`` may be ``inf``.
    """
    outcome: list[concurrent.futures._base.DoneAndNotDoneFutures[Any]] = []

    def piece(seconds: float | None) -> bool:
        outcome[:] = [concurrent.futures.wait(fs, seconds, return_when)]
        done, not_done = outcome[0]
        return not not_done or (bool(done) and return_when != concurrent.futures.ALL_COMPLETED)

    wait_long(piece, timeout)
    return outcome[0]


def wait_long(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """Call ``wait(seconds)`` (True once the awaited thing happened) for up to ``timeout`` s.

    ``timeout`` may be any non-negative number, ``inf`` included (no limit, as None); a
    longer one is waited in pieces of ``MAX_WAIT``, and in a thread whose task has a deadline,
    in pieces that end there (see the module docstring).
    """
    if _deadlines and threading.get_ident() in _deadlines and timeout == timeout:  # not NaN
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            piece = _piece(left)
            if wait(piece):
                return True
            if piece == left:  # the last piece, and it timed out
                return False
    if timeout is None or not timeout > MAX_WAIT:  # NaN too: the wait says what it makes of it
        return wait(timeout)
    deadline = time.monotonic() + timeout  # inf stays inf
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return wait(0)
        if wait(capped(left)):
            return True


def acquire_long(lock: Any, timeout: float) -> bool:
    """``lock.acquire(timeout=timeout)`` for any non-negative ``timeout``, ``inf`` included."""
    if not timeout > MAX_WAIT:
        return bool(lock.acquire(timeout=timeout))
    return wait_long(lambda t: bool(lock.acquire(timeout=-1 if t is None else t)), timeout)


_JOIN_SAFE = sys.version_info >= (3, 13)
"""Before 3.13, a ``Thread.join`` that an exception (Ctrl-C) interrupts marks the thread it
waited for as ended while it still runs (CPython gh-90882's fix had this side effect): later
joins return at once, and interpreter exit no longer waits for it."""


_ends: weakref.WeakKeyDictionary[threading.Thread, threading.Event] = weakref.WeakKeyDictionary()


def ending_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread running ``target()``, whose end ``join_thread`` can wait for safely."""
    ended = threading.Event()

    def run() -> None:
        try:
            target()
        finally:
            ended.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    _ends[thread] = ended
    return thread


def thread_alive(thread: threading.Thread) -> bool:
    """``thread.is_alive()``, true too for one an interrupted join marked ended (< 3.13)."""
    ended = None if _JOIN_SAFE else _ends.get(thread)
    return thread.is_alive() if ended is None else not ended.is_set()


def join_thread(
    thread: threading.Thread, timeout: float | None = None, ended: threading.Event | None = None
) -> bool:
    """``thread.join(timeout)`` that a Ctrl-C cannot break; True once the thread has ended.

    ``ended`` (an event the thread sets as its work ends; ``ending_thread``'s by default) is
    what is waited for before 3.13; only the thread's last steps, microseconds, are joined.
    """
    ended = ended or _ends.get(thread)
    if ended is not None and not _JOIN_SAFE:
        if not _interruptible(ended.wait, timeout):
            return False
        timeout = None

    def join(seconds: float | None) -> bool:
        thread.join(seconds)
        return not thread.is_alive()

    return _interruptible(join, timeout)


SIGNAL_SLICE = 0.1
"""Longest single wait of a join in the main thread (see ``_interruptible``)."""


def _interruptible(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """``wait_long``, in slices of ``SIGNAL_SLICE`` in the main thread.

    A Ctrl-C the kernel hands to another thread of the process only sets CPython's flag;
    the main thread reads it as it runs bytecode, and a wait without a timeout never wakes
    to do so: Ctrl-C was lost in ``shutdown(wait=True)`` (1 run in 15 of a test beside a
    busy machine, the main thread left waiting for good).
    """
    if threading.current_thread() is not threading.main_thread() or not (
        timeout is None or timeout >= SIGNAL_SLICE  # NaN and short waits: as they are
    ):
        return wait_long(wait, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = SIGNAL_SLICE if deadline is None else deadline - time.monotonic()
        if wait(max(0.0, min(SIGNAL_SLICE, left))):
            return True
        if deadline is not None and left <= SIGNAL_SLICE:
            return False


def surely(give_back: Callable[..., None], *args: Any) -> None:
    """Run ``give_back`` to its end even if an interrupt cuts it short, then raise the interrupt.

    An interrupt: whatever is not an ``Exception`` (Ctrl-C's ``KeyboardInterrupt``, the
    exception a thread task's deadline raises in its thread, an actor's kill). Run again when
    interrupted: it is idempotent.
    """
    interrupted: BaseException | None = None
    while True:
        try:
            give_back(*args)
            break
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise
            interrupted = exc
    if interrupted is not None:
        raise interrupted
