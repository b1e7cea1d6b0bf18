"""The Dask lane: tasks run on a ``distributed`` cluster.

Submit: ``client.submit(_run_dask, token, topic, payload, *shared, key=token, pure=False)``.
Every call gets its own key (Dask would otherwise merge identical calls) named after the
user's function, so the dashboard reads well; the user's arguments are inside ``payload``.

Results: one collector thread iterates a ``distributed.as_completed`` and fetches the results
of every finished batch with one ``client.gather``, then settles the futures.

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

from .._callbacks import serve
from .._exceptions import BrokenExecutorError
from .._futures import Task
from ._lane import Entry, RemoteLane
from ._wire import interrupt, run_call

logger = logging.getLogger("hybridexec")

# distributed is only partly annotated: seen as Any here, checked by the tests instead.
distributed: Any = _distributed

ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
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
        cluster = distributed.LocalCluster(**{**CLUSTER_DEFAULTS, **options})
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    return DaskLane(client, cluster, owns_client=True, remote_all=remote_all)


class DaskLane(RemoteLane):
    """Runs tasks on a Dask cluster through a ``distributed.Client``."""

    kind = "dask"

    def __init__(self, client: Any, cluster: Any, *, owns_client: bool, remote_all: bool) -> None:
        super().__init__(remote_all=remote_all)
        self.client = client
        self._cluster = cluster
        self._owns_client = owns_client
        self._topic = ""
        self._ac = distributed.as_completed(loop=client.loop)
        self._cond = threading.Condition()
        self._closing = False
        self._collector = threading.Thread(
            target=serve(self._collect, self), name="hybridexec-dask-collector", daemon=True
        )
        self._collector.start()

    @property
    def width(self) -> int:
        """Worker threads in the cluster now."""
        return sum(self.client.nthreads().values()) or 1

    # ---- RemoteLane hooks -------------------------------------------------------------------
    def _put(self, obj: Any) -> Any:
        return self.client.scatter(obj, hash=False)

    def _send(self, token: str, task: Task, payload: Any, handles: list[Any]) -> Any:
        topic = ""
        if task.timeout is not None:
            topic = self._start_topic()
        future = self.client.submit(
            _run_dask, token, topic, payload, *handles, key=token, pure=False
        )
        with self._cond:
            self._ac.add(future)
            self._cond.notify()
        return future

    def _abort(self, entries: list[Entry]) -> None:
        # Workers first: a call queued on a worker must not start once its key is released.
        tokens = [entry.token for entry in entries]
        where = {entry.where for entry in entries}
        workers = None if None in where else sorted(w for w in where if w is not None)
        self.client.run(_interrupt_all, tokens, workers=workers, on_error="ignore")
        self.client.cancel([entry.handle for entry in entries])

    def _close_engine(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._collector.join()
        if self._topic:
            try:
                self.client.unsubscribe_topic(self._topic)
            except Exception:
                pass  # the client is closed already
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

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

    def _collect(self) -> None:
        ac = self._ac
        while True:
            with self._cond:
                while ac.is_empty() and not self._closing:
                    self._cond.wait()
                if ac.is_empty():
                    return
            try:
                batch = ac.next_batch(block=True)
            except StopIteration:
                continue
            try:
                self._deliver(batch)
            except Exception:  # never let the collector die: futures would hang
                logger.exception("hybridexec: delivering Dask results failed")

    def _deliver(self, batch: list[Any]) -> None:
        finished = [f for f in batch if f.status == "finished"]
        results: list[Any] | None = None
        if finished:
            try:
                results = self.client.gather(finished)
            except Exception:
                results = None  # a result went missing meanwhile: fetch one by one
        if results is not None:
            for future, outcomes in zip(finished, results, strict=True):
                self._complete(future.key, outcomes)
            done = {f.key for f in finished}
            batch = [f for f in batch if f.key not in done]
        for future in batch:
            self._deliver_one(future)

    def _deliver_one(self, future: Any) -> None:
        try:
            outcomes = future.result()
        except (asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
            err = BrokenExecutorError(f"the Dask cluster cancelled the task: {exc}")
            err.__cause__ = exc
            self._fail(future.key, err)
        except BaseException as exc:  # e.g. KilledWorker, or a result that did not pickle
            self._fail(future.key, exc)
        else:
            self._complete(future.key, outcomes)
