"""Calls that wait for their function's first verdict, off the caller's thread.

While the first call of a new function is being measured (``_routing/_classifier.py``), further
calls of it wait for the verdict rather than pile into threads. That wait used to happen inside
``submit``: a loop submitting a mix of new functions stalled at each one for its window (25-100
ms; 276 ms of a 40-call mixed batch that took 40 ms once learned). Now ``submit`` returns the
future at once and the call joins its function's queue here; one placer thread per function
being learned waits for the verdict and hands the calls, in order, to the lane it names (as
``submit`` would have), running them in the ``contextvars`` context their submitter had.

A placer thread is started by the first deferred call of a function, on the submitting
thread, which waits until the new thread runs (``Thread.start``): 0.2 ms on a quiet process,
2-11 ms while measured calls and the probe contend for the GIL (issue 15's fresh GIL-free row,
three functions learned at once). So each placer first starts a *spare* placer, which waits
idle: the next new function's queue is handed to it, and the submitter goes on at once. A
spare ends when no function is being learned any more.

Nothing accepted is lost: ``shutdown``, an executor dropped without it, and interpreter exit
place every queued call first (``flush``), before the lanes stop taking work; a call that cannot
be placed ends with the error that stopped it. A cancelled call is dropped when its turn comes.
In a forked child the queues (the parent's calls) are forgotten.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _lifecycle
from ._futures import Future
from ._routing import Decision, Options, WouldWait, hints_of, no_waiting

if TYPE_CHECKING:
    from ._router import Router

logger = logging.getLogger("hybridexec")

FLUSH_WAIT = 1.0
"""Longest ``flush`` waits for a placer handing a call to its lane (a verdict is not awaited)."""

_Call = tuple[
    Callable[..., Any], tuple[Any, ...], dict[str, Any], Options, Future[Any], contextvars.Context
]

_SHUTTING_DOWN = Decision("thread", "learning: the executor shut down before the verdict")

_all: weakref.WeakSet[Deferrals] = weakref.WeakSet()


class Deferrals:
    """The queued calls of one executor's functions being learned, by function."""

    def __init__(self, router: Router) -> None:
        self._router = weakref.ref(router)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # function key -> calls (under _lock): a key is there while its placer thread runs
        self._queues: dict[object, deque[_Call]] = {}
        self._current: dict[object, _Call] = {}  # the call each placer is placing (under _lock)
        self._placing: set[object] = set()  # placers handing their call to a lane (under _lock)
        self._handoff: deque[object] = deque()  # keys handed to a spare (under _lock)
        self._spares = 0  # idle spare placers (under _lock)
        self._wake = threading.Condition(self._lock)  # a spare: a key to place, or the end
        _all.add(self)

    def add(
        self,
        key: object,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
    ) -> Future[Any] | None:
        """Queue a call; its future, or None if no placer thread could start (then decide)."""
        future: Future[Any] = Future("thread")
        call = (fn, args, kwargs, opts, future, contextvars.copy_context())
        with self._lock:
            queue = self._queues.get(key)
            if queue is not None:
                queue.append(call)
                return future
            self._queues[key] = deque((call,))
            if self._spares:  # an idle spare places this key: no thread start here
                self._spares -= 1
                self._handoff.append(key)
                self._wake.notify()
                return future
            if not self._start(key):  # no thread left: the caller waits for the verdict itself
                del self._queues[key]
                return None
        return future

    def _start(self, key: object | None) -> bool:
        # A placer for ``key``, or (None) a spare; False if no thread could start.
        thread = threading.Thread(
            target=self._placer, args=(key,), name="hybridexec-placer", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            return False
        return True

    def _placer(self, key: object | None) -> None:
        # Place ``key``'s calls, starting a spare first (this thread waits for it to run, not
        # the submitter); then, as a spare, take the next key handed over.
        while True:
            if key is None:
                key = self._next_key()
                if key is None:
                    return
            with self._lock:
                spare = not self._spares and bool(self._queues)
            if spare:
                self._start(None)
            self._run(key)
            key = None

    def _next_key(self) -> object | None:
        # A spare: wait for a key handed over; None once no function is being learned.
        with self._lock:
            if self._spares or not self._queues:
                return None  # another spare waits already, or nothing to wait for
            self._spares += 1
            while not self._handoff:
                if not self._queues:
                    self._spares -= 1
                    return None
                self._wake.wait()
            return self._handoff.popleft()  # add() counted this spare as taken

    def _run(self, key: object) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(key)
                self._current.pop(key, None)
                self._placing.discard(key)
                self._idle.notify_all()
                if not queue:
                    self._queues.pop(key, None)
                    if not self._queues:
                        self._wake.notify_all()  # spares end
                    return
                call = self._current[key] = queue.popleft()
            try:
                self._place(call, key)
            except BaseException:  # SystemExit, say: it ended that call; the placer goes on
                logger.debug("a deferred call ended with a BaseException", exc_info=True)

    def _place(self, call: _Call, key: object | None) -> None:
        """Decide and submit ``call``: a placer's (``key``), or in a hurry (None: shutting down).

        A placer waits for the verdict without holding its call: a ``flush`` meanwhile takes
        the call over (threads meanwhile), and the placer drops it when its wait ends.
        """
        fn, args, kwargs, opts, future, context = call
        if future.cancelled():
            return
        router = self._router()
        try:
            if router is None:
                raise RuntimeError("the executor was collected before the call could start")
            if key is None:  # shutting down: no waiting for a verdict (threads meanwhile)
                try:
                    with no_waiting():
                        decision, opts = router.decide(fn, args, kwargs, opts)
                except WouldWait:
                    hinted = hints_of(fn)
                    opts = opts if hinted is None else opts.merged(hinted)
                    decision = _SHUTTING_DOWN
            else:
                decision, opts = router.decide(fn, args, kwargs, opts)
                with self._lock:
                    if self._current.get(key) is not call:
                        return  # a flush took it over while the verdict was awaited
                    self._placing.add(key)  # a flush waits for this: it is quick
            if future.cancelled():  # while it waited for the verdict
                return
            items = [(args, kwargs)]
            router.submit_task(
                fn, items, decision, opts.timeout, batch=False, future=future, context=context
            )
        except BaseException as exc:  # the call ends with what stopped it, exactly once
            if not future.done():
                future.settle(False, exc)
            if not isinstance(exc, Exception):
                raise

    def stop_later(
        self, stop: Callable[[bool], None], cancel_futures: bool
    ) -> threading.Thread | None:
        """``shutdown(wait=False)``: ``stop(cancel_futures)`` (this, then the lanes) now.

        Done on a thread of its own while calls wait here: placing them takes the GIL many
        times, perhaps beside a measured call holding it (5 ms each time), and the caller
        does not wait. Returns that thread, or None when it was done here.
        """
        with self._lock:
            busy = bool(self._queues)
        if busy:
            thread = threading.Thread(
                target=stop, args=(cancel_futures,), name="hybridexec-shutdown", daemon=True
            )
            try:
                thread.start()
                return thread
            except RuntimeError:  # no thread left: here, then
                pass
        stop(cancel_futures)
        return None

    def flush(self) -> None:
        """Place every queued call now (to threads where no verdict is in yet), before shutdown.

        Calls whose placers still wait for a verdict are taken over too, so this never waits
        for a verdict; it waits only for placers that are handing a call to its lane.
        """
        token = object()  # another flush (at exit, say) waits for these placements too
        calls = self._take(placing=True, token=token)
        try:
            for call in calls:
                self._place(call, None)
        finally:
            with self._lock:
                self._placing.discard(token)
                self._idle.notify_all()
        self._wait_placing()

    def cancel(self) -> None:
        """``shutdown(cancel_futures=True)``: cancel the calls not placed yet."""
        for call in self._take(placing=True):
            call[4].cancel()
        self._wait_placing()  # the lanes cancel what those hand them as they shut down

    def _wait_placing(self) -> None:
        with self._lock:
            self._idle.wait_for(lambda: not self._placing, FLUSH_WAIT)

    def _take(self, placing: bool = False, token: object = None) -> list[_Call]:
        # The queued calls, taken out, and (if asked) those whose placers await a verdict;
        # ``token`` counts as a placer until the caller has placed them.
        with self._lock:
            if token is not None:
                self._placing.add(token)
            calls = [c for q in self._queues.values() for c in q]
            for q in self._queues.values():
                q.clear()
            if placing:
                for key in [k for k in self._current if k not in self._placing]:
                    calls.append(self._current.pop(key))
            return calls

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Condition(self._lock)
        self._queues, self._current, self._placing = {}, {}, set()
        self._handoff, self._spares = deque(), 0


def flush_all() -> None:
    """At interpreter exit (before the lanes stop): every executor's queued calls are placed.

    Not those of an executor already shut down: its own shutdown places or cancels them (the
    default executor's, done in the phase before this one, cancels them: placing them here
    would start them on threads of the exiting program).
    """
    for deferrals in list(_all):
        router = deferrals._router()
        if router is None or router.closed:
            continue
        deferrals.flush()


def _after_fork() -> None:
    for deferrals in list(_all):
        deferrals._forget_after_fork()


_lifecycle.on_fork(_after_fork)
_lifecycle.on_exit(_lifecycle.QUEUED, flush_all)
