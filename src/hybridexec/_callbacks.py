"""The callback threads: done-callbacks of futures settled on the library's service threads.

A service thread (the process lane's manager, a deadline timer, the executor's event loop, a
remote lane's collector, an actor's supervisor) settles the futures of many callers. Were it to
run their done-callbacks itself, a slow one would hold up every other result, timeout and crash
of its lane, and one that submits to the same lane and waits would wait forever. Such a thread
only settles the future (``result()``, ``wait()`` and ``as_completed()`` wake at once) and hands
it over here (``Future._invoke_callbacks``); the callbacks run on a runner thread of this module.

Order: futures in the order they were handed over, each future's callbacks in the order they
were added, one future at a time, as on the standard library's single management thread. A
callback still running after ``STUCK`` seconds stops holding the others: another runner takes
the next future, up to ``MAX_RUNNERS`` threads in all (daemons, started when needed; a second
one waits beside the first as soon as two futures queue up, to notice a stuck one; a runner
with nothing to do for ``IDLE_EXIT`` seconds ends). Only when all of them are stuck do later
callbacks wait.

``drain()`` waits for the callbacks handed over so far (``Executor.shutdown(wait=True)``); at
interpreter exit it waits at most ``EXIT_WAIT`` seconds. In a forked child the queue (the
parent's futures) is dropped and runners start afresh.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import Any, ParamSpec, TypeVar

from . import _futures, _lifecycle

P = ParamSpec("P")
R = TypeVar("R")

STUCK = 0.2  # seconds a callback may run before the next future goes to another runner
MAX_RUNNERS = 8
EXIT_WAIT = 1.0  # seconds interpreter exit waits for queued callbacks
IDLE_EXIT = 0.5  # seconds a runner waits for work before its thread ends


class _Runner:
    __slots__ = ("ident", "owner", "seq", "since")

    def __init__(self) -> None:
        self.ident: int | None = None
        self.seq = 0  # the future it runs the callbacks of (0: none)
        self.owner: object = None  # what settled that future (see serve)
        self.since = 0.0  # when it started on that future


class _State:
    """Everything a fork replaces (the lock may be held by a thread that is gone)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.queue: deque[tuple[int, Any, object]] = deque()  # (seq, future, owner)
        self.runners: list[_Runner] = []
        self.idle = 0  # runners waiting for work
        self.drainers = 0  # threads in drain()
        self.draining: set[int] = set()  # their idents
        self.handed = 0  # futures handed over so far (their seq)


_state = _State()


def serve(fn: Callable[P, R], owner: object = None) -> Callable[P, R]:
    """Wrap the main function of a service thread: the futures it settles are handed over.

    The done-callbacks of futures settled (or cancelled) while ``fn`` runs run on the
    callback threads instead of this one. ``owner`` (a lane) is what ``drain(owners)`` names
    to wait for these callbacks only.
    """

    @functools.wraps(fn)
    def served(*args: P.args, **kwargs: P.kwargs) -> R:
        ident = threading.get_ident()
        if ident in _futures._service:  # already serving (a nested call)
            return fn(*args, **kwargs)
        _futures._service[ident] = owner
        try:
            return fn(*args, **kwargs)
        finally:
            _futures._service.pop(ident, None)

    return served


@contextlib.contextmanager
def serving(owner: object) -> Iterator[None]:
    """The current thread serves ``owner`` for a while (``serve``'s rule, for a block).

    A lane cancelling its queued tasks in ``shutdown(cancel_futures=True)``: their callbacks
    run on the callback threads, not in the caller (15c's C1: 0.5 s callbacks made a
    ``shutdown(wait=False)`` take 4 s); ``shutdown(wait=True)`` still waits for them.
    """
    ident = threading.get_ident()
    if ident in _futures._service:
        yield
        return
    _futures._service[ident] = owner
    try:
        yield
    finally:
        _futures._service.pop(ident, None)


class _Handed(list):  # type: ignore[type-arg]
    """A future's callbacks handed over and not all run: one added now runs after them."""

    handed = True


def _run_handed(future: _futures.Future[Any]) -> None:
    """Run ``future``'s callbacks handed over, and those added meanwhile, in their order."""
    done = 0
    while True:
        with future._lock:
            callbacks = future._hx_callbacks or []
            batch = callbacks[done:]
            if not batch:  # all run: one added from now on runs at once, in the adding thread
                future._hx_callbacks = list(callbacks)
                return
        future._run_callbacks(batch)
        done += len(batch)


def hand_over(future: _futures.Future[Any]) -> None:
    """Queue ``future`` so that a runner runs its callbacks (``_run_handed``)."""
    with future._lock:
        future._hx_callbacks = _Handed(future._hx_callbacks or ())
    s = _state
    owner = _futures._service.get(threading.get_ident())
    with s.lock:
        s.handed += 1
        s.queue.append((s.handed, future, owner))
        if s.idle:
            s.cond.notify_all() if len(s.runners) > 1 else s.cond.notify()
            return
        if len(s.runners) >= MAX_RUNNERS or _start_runner(s) or s.runners:
            return  # all busy: the first that is done takes it
        s.queue.pop()
    _run_handed(future)  # no runner at all: here, as before


def _start_runner(s: _State) -> bool:
    """One more runner (lock held); False if no thread could start (a thread limit)."""
    runner = _Runner()
    s.runners.append(runner)
    try:
        thread = threading.Thread(target=_run, args=(s, runner), name="hybridexec-callbacks")
        thread.daemon = True
        thread.start()
    except BaseException:  # refused: never fail the service thread
        s.runners.remove(runner)
        return False
    return True


def _run(s: _State, me: _Runner) -> None:
    me.ident = threading.get_ident()
    with s.lock:
        while True:
            idle_since = None
            while True:
                now = time.monotonic()
                if s.queue:
                    # Only one future at a time, unless every busy runner is stuck.
                    idle_since = None
                    latest = max((r.since for r in s.runners if r.seq), default=None)
                    if latest is None or now - latest >= STUCK:
                        break
                    timeout = latest + STUCK - now
                elif idle_since is None:
                    idle_since, timeout = now, IDLE_EXIT
                elif now - idle_since >= IDLE_EXIT:
                    s.runners.remove(me)  # no thread lingers in a process that is done
                    return
                else:
                    timeout = idle_since + IDLE_EXIT - now
                s.idle += 1
                try:
                    s.cond.wait(timeout)
                finally:
                    s.idle -= 1
            me.seq, future, me.owner = s.queue.popleft()
            me.since = time.monotonic()
            if s.queue and not s.idle and len(s.runners) < MAX_RUNNERS:
                _start_runner(s)  # one to watch for this one getting stuck (15f's F5)
            s.lock.release()
            try:
                _run_handed(future)  # it logs what a callback raises
            finally:
                future = None
                s.lock.acquire()
                me.seq, me.owner = 0, None
                if s.drainers:
                    s.cond.notify_all()


def drain(timeout: float | None = None, owners: Collection[object] | None = None) -> bool:
    """Wait until the callbacks of every future handed over so far have run.

    With ``owners``, only those of futures that these owners' service threads settled (an
    executor's lanes): a callback of another executor that never returns must not hold up
    this one's shutdown. A runner calling this (a callback that shuts an executor down) does
    not wait for itself. At interpreter exit the wait is bounded by ``EXIT_WAIT``. Returns
    False on timeout.
    """
    if _lifecycle.exiting():
        timeout = EXIT_WAIT if timeout is None else min(timeout, EXIT_WAIT)
    deadline = None if timeout is None else time.monotonic() + timeout
    s = _state
    me = threading.get_ident()
    with s.lock:
        target = s.handed
        s.drainers += 1
        s.draining.add(me)
        try:
            while True:
                mine = [i for i in s.queue if i[0] <= target and (owners is None or i[2] in owners)]
                if not mine and not any(  # not a runner draining too: two callbacks that
                    0 < r.seq <= target  # shut down would wait for each other (15f's F4)
                    and r.ident not in s.draining
                    and (owners is None or r.owner in owners)
                    for r in s.runners
                ):
                    return True
                now = time.monotonic()
                stuck = all(r.seq and now - r.since >= STUCK for r in s.runners)
                if mine and owners is not None and not s.idle and stuck:  # (15f's F6)
                    # Every runner busy (another executor's callbacks stuck): this executor's
                    # wait here, so they run here (15c's C7), one future at a time.
                    s.queue.remove(mine[0])
                    s.lock.release()
                    try:
                        _run_handed(mine[0][1])
                    finally:
                        s.lock.acquire()
                    continue
                left = STUCK if deadline is None else min(STUCK, deadline - time.monotonic())
                if left <= 0:
                    return False
                s.cond.wait(left)  # and look again: runners may all be stuck by then
        finally:
            s.drainers -= 1
            s.draining.discard(me)


def _drain_at_exit() -> None:
    drain(EXIT_WAIT)


def _after_fork() -> None:
    global _state
    _state = _State()  # the parent's futures are the parent's; its runners are not here
    _futures._service.clear()  # only the forking thread lives, and it serves nothing here


_futures._hand_over = hand_over
_lifecycle.on_fork(_after_fork)
_lifecycle.on_exit(_lifecycle.ACTORS, _drain_at_exit)
