"""The client side of a remote lane: hand tasks to an engine, settle, cancel, time out.

``RemoteLane`` holds what Dask and Ray lanes share; see ``_wire.py`` for what travels and
``_dask.py`` / ``_ray.py`` for the engines. One control thread (a ``Timers``) runs deadlines
and the engine calls that cancel work, so ``Future.cancel()`` never waits for a round trip.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import time
import uuid
import weakref
from typing import Any

from .. import _lifecycle
from .._exceptions import BrokenExecutorError, HybridExecError
from .._futures import Outcome, Task, split_batch
from .._process import MemoryLimited
from .._shm import Copies, Share
from .._threads import Timers
from ._wire import LARGE_BYTES, encode, extract_large, outcomes_to_future, timeout_error

logger = logging.getLogger("hybridexec")

RETRY_ITEMS_MAX = 64
"""A batch of more items than this that failed as a whole (it would not unpickle on the
worker, its callable usually) is not run again item by item: each item fails with its error."""


class Entry:
    """A task handed to the engine and not yet settled."""

    __slots__ = ("handle", "retried", "shared", "stopped", "task", "token", "where")

    def __init__(self, token: str, task: Task) -> None:
        self.token = token
        self.task = task
        self.handle: Any = None  # the engine's future or reference, once sent
        self.shared: list[Share[Any]] = []  # copies of large objects this task holds a share of
        self.where: str | None = None  # the worker running it, when the engine told us
        self.retried = False  # the second run of a call (``_retry_single``)
        self.stopped = False


def _cancel_at_exit() -> None:
    """After Ctrl-C nothing waits for running work: cancel what runs on clusters (13h's H2).

    Before the engine's own exit hook closes them (``run_first_at_exit``): a cluster closed
    with a call running waits for it (Dask's nanny: 4 s, then it kills the worker).
    """
    if _lifecycle.interrupted():
        for lane in list(_open_lanes):
            lane.shutdown(wait=False, cancel_futures=True)


_open_lanes: weakref.WeakSet[RemoteLane] = weakref.WeakSet()
_lifecycle.on_exit(_lifecycle.LANES, _cancel_at_exit)


class RemoteLane:
    """A lane whose workers belong to an engine; the executor treats it as a local lane.

    Subclasses implement ``_put`` (send one object to the engine's store), ``_send`` (submit a
    packed call), ``_abort`` (cancel sent calls and stop those running where possible) and
    ``_close_engine``; they call ``_complete``/``_fail`` when a call ends and ``_started``
    when they learn that it started.

    A future is marked running as soon as its task is handed to the engine: the engine's
    queue is not visible from here, so ``cancel()`` always goes through ``_stop``.
    """

    kind = "remote"

    def __init__(self, *, remote_all: bool) -> None:
        _open_lanes.add(self)
        self.remote_all = remote_all
        self.stats: dict[str, int] = {"tasks": 0, "cancelled": 0, "timeouts": 0, "shared": 0}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._share_lock = threading.Lock()
        self._inflight: dict[str, Entry] = {}
        self._shared: Copies[Any] = Copies()  # engine handles of large objects in flight
        self._aborts: list[Entry] = []
        self._closed = False
        self._torn_down = False
        self._teardown_lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._timers = Timers(f"hybridexec-{self.kind}-control")
        self._prefix = uuid.uuid4().hex[:16]  # task keys: unique per lane, cheap per task
        self._serial = itertools.count()
        self._retries: collections.deque[tuple[str, bytes, list[Any]]] = collections.deque()
        self._retrying = False  # a second run (``_retry_single``) is in flight

    # ---- what the executor calls ------------------------------------------------------------
    def takes(self, kind: str) -> bool:
        """Return True when a task routed to ``kind`` runs on the cluster."""
        return self.remote_all or kind == "process"

    def submit(self, task: Task) -> None:
        """Hand a task to the engine; its future is running from now on.

        Raises:
            SerializationError: the call cannot be pickled (nothing was sent).
            RuntimeError: the lane was shut down.
            ValueError: the task has a ``max_memory`` (its limit would bind a whole engine
                worker, whose other tasks run on its threads).
        """
        if type(task.fn) is MemoryLimited:
            raise ValueError("max_memory is not supported on a distributed backend")
        items, large = extract_large(task.items)
        payload = encode(task, items)
        if self._closed or _lifecycle.exited:
            raise _lifecycle.closed_error()
        self._launch(task, payload, large)

    def _launch(self, task: Task, payload: bytes, large: list[Any], *, retry: bool = False) -> bool:
        # Returns whether the call went in flight (it may have failed to send since).
        name = getattr(task.fn, "__name__", None) or type(task.fn).__name__
        token = f"{name}-{self._prefix}-{next(self._serial)}"
        future = task.future
        future.kind = self.kind
        future._hx_stop = functools.partial(self._stop, token, None)
        if retry:  # running already; a cancel before the line above stopped the first run
            if future.done():
                return False
        elif not future.set_running_or_notify_cancel():
            return False
        entry = Entry(token, task)
        entry.retried = retry
        with self._lock:
            self._inflight[token] = entry
            self.stats["tasks"] += 1
        try:
            handles = [self._share(obj, entry) for obj in large]
            sent: Any = payload if len(payload) < LARGE_BYTES else self._put(payload)
            handle = self._send(token, task, sent, handles)
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, HybridExecError):
                # The engine refused it (a client closed, a cluster gone): as the calls in
                # flight then fail, not with one of the engine's own errors (13h's H5).
                broken = BrokenExecutorError(f"the {self.kind} cluster refused the call: {exc!r}")
                broken.__cause__, exc = exc, broken
            self._fail(token, exc)
            return True
        with self._lock:
            entry.handle = handle
            if not entry.stopped:
                return True
        self._queue_abort(entry)  # cancelled while it was being sent
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; optionally cancel every unfinished task; optionally wait.

        The engine's queue is not visible, so ``cancel_futures`` cancels every task not
        finished yet, running ones included. Whatever the executor started (a local cluster,
        a Ray runtime) is stopped once the last task has ended.
        """
        with self._lock:
            self._closed = True
            entries = list(self._inflight.values()) if cancel_futures else []
        for entry in entries:
            entry.task.future.cancel()
        if wait:
            self._wait_idle_and_tear_down()
            reaper = self._reaper
            if reaper is not None and reaper is not threading.current_thread():
                reaper.join()
            return
        with self._lock:
            if self._reaper is None and not self._torn_down:
                self._reaper = threading.Thread(
                    target=self._wait_idle_and_tear_down,
                    name=f"hybridexec-{self.kind}-shutdown",
                    daemon=True,
                )
                self._reaper.start()

    # ---- for subclasses ---------------------------------------------------------------------
    def _put(self, obj: Any) -> Any:
        raise NotImplementedError

    def _send(self, token: str, task: Task, payload: Any, handles: list[Any]) -> Any:
        raise NotImplementedError

    def _abort(self, entries: list[Entry]) -> None:
        raise NotImplementedError

    def _close_engine(self) -> None:
        raise NotImplementedError

    def _started(self, token: str, where: str | None) -> None:
        """The call ``token`` started (on worker ``where``): its timeout counts from now."""
        with self._lock:
            entry = self._inflight.get(token)
            if entry is None:
                return
            entry.where = where
        timeout = entry.task.timeout
        if timeout is not None:
            self._timers.call_at(time.monotonic() + timeout, functools.partial(self._expire, token))

    def _complete(self, token: str, outcomes: list[Outcome]) -> None:
        if len(outcomes) == 1 and not outcomes[0][0] and self._retry_one_by_one(token, whole=True):
            return  # one failure for a batch: it would not unpickle there (14e's E8)
        entry = self._pop(token)
        if entry is not None:
            outcomes_to_future(entry.task, outcomes)

    def _fail(self, token: str, exc: BaseException) -> None:
        entry = self._pop(token)
        if entry is not None:
            entry.task.future.settle(False, exc)

    def _retry_one_by_one(self, token: str, *, whole: bool = False) -> bool:
        """Run the items of the batch ``token`` again, one call each: its worker died in it.

        Or (``whole``) it failed as a whole: it would not unpickle in the worker. Which
        item is the culprit is not known: alone, only it fails (with the engine's error), as
        on the local process lane. The new calls are in flight before the batch leaves, so a
        shutdown waiting for the lane to be idle waits for them too.

        Returns:
            False when ``token`` is not a batch of several items still in flight, or one of
            more than ``RETRY_ITEMS_MAX`` that failed as a whole (every item fails then).
        """
        with self._lock:
            entry = self._inflight.get(token)
            if entry is None or not entry.task.batch or len(entry.task.items) < 2:
                return False
            if whole and len(entry.task.items) > RETRY_ITEMS_MAX:
                return False  # one task per item of a map failing whole costs ms each (14g G6)
        task = entry.task
        why = "failed as a whole" if whole else "lost its worker"
        logger.info("a %s batch of %d %s; retrying one by one", self.kind, len(task.items), why)
        singles = split_batch(task, self.kind)
        for single in singles:
            try:
                items, large = extract_large(single.items)
                payload = encode(single, items)
            except BaseException as exc:
                single.future.set_running_or_notify_cancel()
                single.future.settle(False, exc)
                continue
            self._launch(single, payload, large)  # even after shutdown(): it waits for these
        self._pop(token)
        return True

    def _retry_single(self, token: str) -> bool:
        """Run the single call ``token`` again under a new key, once: it may be innocent.

        For an engine that blames a worker's death on every call the worker held (Dask's
        ``KilledWorker`` counts the calls queued on it, and the call that finished just before
        the culprit when its report died with the worker): such a verdict on a single call is
        not precise. The call runs once more; a second run is never run again, so a culprit
        runs twice and then keeps the verdict. Second runs go one at a time: two of them never
        travel together again. The first run stays in flight until its second is sent, so a
        shutdown waits for it.

        Returns:
            False when ``token`` is not a single call in flight that did not run twice already.
        """
        with self._lock:
            entry = self._inflight.get(token)
            if entry is None or entry.retried:
                return False
            if entry.task.batch and len(entry.task.items) > 1:
                return False
        try:
            items, large = extract_large(entry.task.items)
            payload = encode(entry.task, items)
        except BaseException:  # it was encoded once: keep the engine's verdict then
            return False
        with self._lock:
            self._retries.append((token, payload, large))
        self._next_retry()
        return True

    def _next_retry(self) -> None:
        while True:
            with self._lock:
                if self._retrying or not self._retries:
                    return
                token, payload, large = self._retries.popleft()
                entry = self._inflight.get(token)
                self._retrying = entry is not None
            if entry is None:
                continue  # cancelled while it waited
            logger.info("a %s call was blamed for a worker's death: run again", self.kind)
            if not self._launch(entry.task, payload, large, retry=True):
                with self._lock:
                    self._retrying = False
            self._pop(token)  # the first run, once the second is in flight

    # ---- internals --------------------------------------------------------------------------
    def _pop(self, token: str) -> Entry | None:
        with self._lock:
            entry = self._inflight.pop(token, None)
            if entry is None:
                return None
            self._release(entry)
            if not self._inflight:
                self._idle.notify_all()
            if entry.retried:
                self._retrying = False
        if entry.retried:
            self._next_retry()
        return entry

    def _share(self, obj: Any, entry: Entry) -> Any:
        # One copy per object while tasks that use it are in flight; dropped after the last.
        # Only an object that cannot have changed since is sent once (I2: no stale data).
        with self._share_lock:
            with self._lock:
                share = self._shared.find(obj)
                if share is not None:
                    entry.shared.append(share)
                    return share.copy
            handle = self._put(obj)
            with self._lock:
                entry.shared.append(self._shared.add(obj, handle))
                self.stats["shared"] += 1
            return handle

    def _release(self, entry: Entry) -> None:
        # Called with self._lock held.
        for share in entry.shared:
            self._shared.release(share)
        entry.shared = []

    def _stop(self, token: str, error: BaseException | None) -> None:
        # Future.cancel() (error None: the future is cancelled already) or a deadline.
        with self._lock:
            entry = self._inflight.get(token)
            if entry is None:
                return
            entry.stopped = True
            self.stats["cancelled" if error is None else "timeouts"] += 1
            sent = entry.handle is not None
        if sent:  # else submit() sees ``stopped`` once it has sent the call, and aborts it
            self._queue_abort(entry)
        self._pop(token)
        if error is not None:
            entry.task.future.settle(False, error)

    def _expire(self, token: str) -> None:
        with self._lock:
            entry = self._inflight.get(token)
        if entry is not None:
            self._stop(token, timeout_error(entry.task, f"a {self.kind} worker"))

    def _queue_abort(self, entry: Entry) -> None:
        # Engine calls may block for a round trip: they run on the control thread, batched.
        with self._lock:
            self._aborts.append(entry)
            first = len(self._aborts) == 1
        if first:
            self._timers.call_at(time.monotonic(), self._flush_aborts)

    def _flush_aborts(self) -> None:
        with self._lock:
            batch, self._aborts = self._aborts, []
        if batch:
            try:
                self._abort(batch)
            except Exception:
                logger.exception("cancelling %d task(s) on %s failed", len(batch), self.kind)

    def _wait_idle_and_tear_down(self) -> None:
        with self._idle:
            while self._inflight:
                self._idle.wait()
        with self._teardown_lock:
            if self._torn_down:
                return
            # The control thread runs the aborts queued so far, then stops.
            done = threading.Event()
            self._timers.call_at(time.monotonic(), done.set)
            done.wait()
            self._timers.close()
            try:
                self._close_engine()
            finally:
                self._torn_down = True
