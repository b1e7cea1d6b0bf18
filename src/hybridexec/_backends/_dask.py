"""The Dask lane: tasks run on a ``distributed`` cluster.

Submit: ``client.submit(_run_dask, token, topic, payload, *shared, key=token, pure=False)``.
Every call gets its own key (Dask would otherwise merge identical calls) named after the
user's function, so the dashboard reads well; the user's arguments are inside ``payload``.

Results: each call is watched by a coroutine on the client's event loop that awaits its
``gather`` (concurrent gathers go out as one request) and hands the outcome to one collector
thread, which settles the futures. Nothing waits on a call from a thread: a call whose result
was lost with its worker is computed again by Dask while the others are delivered, and a call
that keeps killing its workers ends with Dask's ``KilledWorker``: run again once under a new
key if it is a single call (``RemoteLane._retry_single``), since Dask blames a worker's death
on every task the worker held, queued or just finished. A batch of several items
whose worker died is run again item by item (``RemoteLane._retry_one_by_one``), so only the
culprit fails: at the first death when the lane hears of it (the scheduler's ``remove-worker``
event, on its ``all`` topic unless the client has a handler there already), else once Dask
gives up on the batch. Fewer deaths matter: a LocalCluster closes for good a nanny whose
worker is away when its ``lost-worker-timeout`` (15 s) after a death runs out.

Timeouts count from the moment the call starts on a worker: a task with a timeout reports its
start through a Dask event topic (``Worker.log_event``); the deadline then runs on the lane's
control thread. Cancel and timeout release the Dask key (a call still queued never runs) and
interrupt a running call with an asynchronous exception in its worker thread
(``client.run``), best effort: Python code stops at its next bytecode, a call blocked in C
runs on until it returns, and its worker thread stays busy until then. Dask cannot kill a
running task without restarting the worker, which would lose the other tasks on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import uuid
from typing import Any

import dask.config
import distributed as _distributed

from .. import _lifecycle
from .._callbacks import serve
from .._exceptions import BrokenExecutorError, SerializationError
from .._futures import Task
from ._lane import Entry, RemoteLane
from ._wire import interrupt, run_call

logger = logging.getLogger("hybridexec")

# distributed is only partly annotated: seen as Any here, checked by the tests instead.
distributed: Any = _distributed

ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
CLUSTER_TOPIC = "all"  # the scheduler logs a worker's removal here
DIED = object()  # an outcome: a worker died while it had this batch
CALL_BOUND = 30.0
"""Seconds a blocking call into ``distributed`` may take (a dead or stuck peer never answers)."""
CLUSTER_DEFAULTS: dict[str, Any] = {
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": "127.0.0.1:0",
    "worker_dashboard_address": "127.0.0.1:0",
}


def _run_dask(token: str, topic: str, payload: bytes, *shared: Any) -> Any:
    on_start = None
    if topic:

        def on_start() -> None:
            worker = distributed.get_worker()
            worker.log_event(topic, [token, worker.address])

    return run_call(token, payload, shared, on_start)


def _interrupt_all(tokens: list[str]) -> int:
    return sum(interrupt(token) for token in tokens)


def open_lane(target: Any, options: dict[str, Any], remote_all: bool) -> DaskLane:
    """Connect to (or start) a cluster and return its lane.

    Args:
        target: None (``DASK_SCHEDULER_ADDRESS`` or a new local cluster), a scheduler
            address, or a ``distributed.Client``.
        options: Keyword arguments for ``LocalCluster`` when one is started, else for
            ``Client`` when connecting to an address; none with a client.
        remote_all: Send every task to the cluster, not only process work.
    """
    _lifecycle.run_first_at_exit()  # before distributed's close_clusters (imported now)
    cluster = None
    if isinstance(target, distributed.Client):
        if options:
            raise ValueError("backend_options cannot apply to a Client that already exists")
        return DaskLane(target, None, owns_client=False, remote_all=remote_all)
    address = target
    if address is None:  # the variable is read now; dask's config only at its import
        address = os.environ.get(ADDRESS_VARIABLE) or dask.config.get("scheduler-address", None)
    if address:
        client = distributed.Client(address, set_as_default=False, **options)
    else:
        defaults = dict(CLUSTER_DEFAULTS)
        if options.get("processes") is False and "protocol" not in options:
            del defaults["host"]  # in one process: inproc://, which listens on no address
        cluster = distributed.LocalCluster(**{**defaults, **options})
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    return DaskLane(client, cluster, owns_client=True, remote_all=remote_all)


def _ignore_event(event: Any) -> None:
    """What a closed lane leaves as a topic's handler (events still on their way)."""


class DaskLane(RemoteLane):
    """Runs tasks on a Dask cluster through a ``distributed.Client``."""

    kind = "dask"

    def __init__(self, client: Any, cluster: Any, *, owns_client: bool, remote_all: bool) -> None:
        super().__init__(remote_all=remote_all)
        self.client = client
        self._cluster = cluster
        self._owns_client = owns_client
        self._topic = ""
        self._cond = threading.Condition()
        self._ended: list[tuple[str, bool, Any]] = []  # (token, ok, value or exception)
        self._closing = False
        self._batches: set[str] = set()  # batches of several items in flight (on the loop)
        self._deaths = False  # whether this lane hears of worker deaths (``_watch_deaths``)
        self._collector = threading.Thread(
            target=serve(self._collect, self), name="hybridexec-dask-collector", daemon=True
        )
        self._collector.start()

    @property
    def width(self) -> int:
        """Worker threads in the cluster now."""
        return sum(self.client.nthreads(callback_timeout=CALL_BOUND).values()) or 1

    # ---- RemoteLane hooks -------------------------------------------------------------------
    def _put(self, obj: Any) -> Any:
        return self.client.scatter(obj, hash=False, timeout=CALL_BOUND)

    def _send(self, token: str, task: Task, payload: Any, handles: list[Any]) -> Any:
        topic = ""
        if task.timeout is not None:
            topic = self._start_topic()
        future = self.client.submit(
            _run_dask, token, topic, payload, *handles, key=token, pure=False
        )
        several = task.batch and len(task.items) > 1
        if several and not self._deaths:
            self._watch_deaths()
        self.client.loop.add_callback(self._watch, future, several)
        return future

    def _abort(self, entries: list[Entry]) -> None:
        # Workers first: a call queued on a worker must not start once its key is released.
        # Bounded: a worker whose event loop is stuck (a task holding the GIL) may never answer.
        tokens = [entry.token for entry in entries]
        where = {entry.where for entry in entries}
        workers = None if None in where else sorted(w for w in where if w is not None)
        try:
            self.client.run(
                _interrupt_all,
                tokens,
                workers=workers,
                on_error="ignore",
                callback_timeout=CALL_BOUND,  # taken by the client, not passed to the function
            )
        except Exception as exc:  # best effort: the keys are released below all the same
            logger.info("hybridexec: interrupting %d Dask task(s) failed: %r", len(tokens), exc)
        self.client.cancel([entry.handle for entry in entries])

    def _close_engine(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._collector.join()
        for topic in (self._topic, CLUSTER_TOPIC if self._deaths else ""):
            if topic:
                try:
                    self.client.unsubscribe_topic(topic)
                except Exception:
                    pass  # the client is closed already
                # unsubscribe_topic keeps the handler, which keeps this lane alive: a no-op
                # takes its place (popped, an event already on its way made Dask log a
                # "No event handler known" traceback); the next lane replaces it.
                handlers = getattr(self.client, "_event_handlers", None)
                if isinstance(handlers, dict) and topic in handlers:
                    handlers[topic] = _ignore_event
        if self._owns_client:
            self.client.close(timeout=CALL_BOUND)
        if self._cluster is not None:
            self._cluster.close(timeout=CALL_BOUND)

    # ---- internals --------------------------------------------------------------------------
    def _start_topic(self) -> str:
        with self._cond:
            if not self._topic:
                self._topic = f"hybridexec-started-{uuid.uuid4().hex}"
                self.client.subscribe_topic(self._topic, self._on_started)
            return self._topic

    def _on_started(self, event: tuple[float, Any]) -> None:
        # On the client's event loop: only bookkeeping here.
        token, where = event[1]
        self._started(token, where)

    def _watch_deaths(self) -> None:
        # A handler that is there already stays: the client has one per topic (a user's, or
        # another lane's), and Dask's own retries end the batch all the same.
        with self._cond:
            handler = getattr(self.client, "_event_handlers", {}).get(CLUSTER_TOPIC)
            if self._deaths or handler not in (None, _ignore_event):
                return
            self._deaths = True
            self.client.subscribe_topic(CLUSTER_TOPIC, self._on_cluster_event)

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        # On the client's event loop.
        msg = event[1]
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        if msg.get("expected") or not self._batches:
            return
        hit = self._batches.intersection(msg.get("processing-tasks") or ())
        if hit:
            self._batches.difference_update(hit)
            self._hand_over([(token, False, DIED) for token in hit])

    async def _watch(self, future: Any, several: bool) -> None:
        # On the client's event loop, one per call: waits without holding anything up. A result
        # lost with its worker before it was fetched makes the gather wait for Dask to compute
        # it again (or to give up with KilledWorker); it raises the call's error, if any.
        if several:
            self._batches.add(future.key)
        try:
            value = await self.client.gather(future, asynchronous=True)
        except BaseException as exc:  # handed over: the collector decides
            ended = (future.key, False, exc)
        else:
            ended = (future.key, True, value)
        self._batches.discard(future.key)
        self._hand_over([ended])

    def _hand_over(self, ended: list[tuple[str, bool, Any]]) -> None:
        with self._cond:
            first = not self._ended
            self._ended.extend(ended)
            if first:
                self._cond.notify()

    def _collect(self) -> None:
        # Settles futures off the event loop: callbacks, retries and their submits may block.
        while True:
            with self._cond:
                while not self._ended and not self._closing:
                    self._cond.wait()
                if not self._ended:
                    return  # closing, and idle: no entry is waiting for an outcome
                ended, self._ended = self._ended, []
            for token, ok, value in ended:
                try:
                    self._deliver(token, ok, value)
                except BaseException as exc:  # never let the collector die: futures would hang
                    logger.exception("hybridexec: delivering a Dask result failed")
                    self._fail(token, exc)  # (a no-op if the future got its outcome)

    def _deliver(self, token: str, ok: bool, value: Any) -> None:
        if ok:
            self._complete(token, value)
        elif value is DIED:
            # Its items go again one by one now, not after Dask has run it on 3 more workers.
            with self._lock:
                entry = self._inflight.get(token)
            if entry is not None and entry.handle is not None and self._retry_one_by_one(token):
                self._queue_abort(entry)  # Dask sent it to another worker already, maybe
        elif isinstance(value, (asyncio.CancelledError, concurrent.futures.CancelledError)):
            err = BrokenExecutorError(f"the Dask cluster cancelled the task: {value}")
            err.__cause__ = value
            self._fail(token, err)
        elif isinstance(value, TypeError) and "Could not serialize" in str(value):
            # Dask pickles the outcome itself: one that would not pickle fails as on the
            # process lane (13h's H4), not with the engine's TypeError.
            unpicklable = SerializationError(f"the task's result would not pickle: {value}")
            unpicklable.__cause__ = value
            if not self._retry_one_by_one(token, whole=True):  # only its culprit fails (G5)
                self._fail(token, unpicklable)
        elif not (
            isinstance(value, distributed.KilledWorker)
            and (self._retry_one_by_one(token) or self._retry_single(token))
        ):
            self._fail(token, value)  # e.g. KilledWorker, or a result that did not unpickle
