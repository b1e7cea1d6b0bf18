"""The Ray lane: tasks run as Ray tasks.

Submit: ``_run_ray.options(name=token).remote(token, payload, *shared)``; large arguments go
through ``ray.put`` once. Results: ``ObjectRef.future()`` settles the hybridexec future from a
done-callback.

Cancel and timeout use ``ray.cancel(ref, force=True)``: a queued task is dropped, a running one
has its worker process killed (Ray starts a new one), so even code blocked in C stops. Ray does
not tell the client when a task starts, so a timeout counts from the moment the task is handed
to Ray (queueing time included); on a cluster with free slots the two are the same.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from typing import Any

import ray as _ray

from .._callbacks import serve
from .._futures import Task
from ._lane import Entry, RemoteLane
from ._wire import run_call

logger = logging.getLogger("hybridexec")

# ray is only partly annotated: seen as Any here, checked by the tests instead.
ray: Any = _ray

INIT_DEFAULTS: dict[str, Any] = {"include_dashboard": False}


def _run_ray(token: str, payload: bytes, *shared: Any) -> Any:
    return run_call(token, payload, shared, None)


def open_lane(target: Any, options: dict[str, Any], remote_all: bool) -> RayLane:
    """Start or join a Ray runtime and return its lane.

    Args:
        target: None, or a Ray address such as ``"ray://host:10001"``.
        options: Keyword arguments for ``ray.init``.
        remote_all: Send every task to the cluster, not only process work.
    """
    owns = not ray.is_initialized()
    if owns:
        kwargs = {**INIT_DEFAULTS, **options}
        if target is not None:
            kwargs["address"] = target
        ray.init(**kwargs)
    elif options or target is not None:
        raise ValueError("Ray is initialized already: backend_options and address do not apply")
    return RayLane(owns_runtime=owns, remote_all=remote_all)


class RayLane(RemoteLane):
    """Runs tasks on Ray."""

    kind = "ray"

    def __init__(self, *, owns_runtime: bool, remote_all: bool) -> None:
        super().__init__(remote_all=remote_all)
        self._owns_runtime = owns_runtime
        self._remote_fn = ray.remote(_run_ray)

    @property
    def width(self) -> int:
        """CPUs in the Ray cluster now."""
        return int(ray.cluster_resources().get("CPU", 1)) or 1

    def _put(self, obj: Any) -> Any:
        return ray.put(obj)

    def _send(self, token: str, task: Task, payload: Any, handles: list[Any]) -> Any:
        ref = self._remote_fn.options(name=token).remote(token, payload, *handles)
        if task.timeout is not None:
            self._started(token, None)  # Ray does not report starts: count from now
        ref.future().add_done_callback(functools.partial(serve(self._on_done, self), token))
        return ref

    def _on_done(self, token: str, done: concurrent.futures.Future[Any]) -> None:
        try:
            outcomes = done.result()
        except BaseException as exc:  # TaskCancelledError, WorkerCrashedError, ...
            self._fail(token, exc)
        else:
            self._complete(token, outcomes)

    def _abort(self, entries: list[Entry]) -> None:
        for entry in entries:
            try:
                ray.cancel(entry.handle, force=True)
            except Exception:
                logger.debug("ray.cancel(%s) failed", entry.token, exc_info=True)

    def _close_engine(self) -> None:
        if self._owns_runtime:
            ray.shutdown()
