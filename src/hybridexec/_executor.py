"""The Executor: validates each call, routes it to a lane, owns the lanes."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar, overload

from typing_extensions import ParamSpec, Self

from ._actors import ActorKind, ActorRef, OnError, spawn_actor, stop_actors
from ._asyncio import LoopLane, is_async_callable, run_coroutine
from ._backends import RemoteLane, check_remote, open_lane
from ._classifier import LearningClassifier
from ._exceptions import SerializationError
from ._futures import Future, Items, Task
from ._process._pool import ProcessLane
from ._routing import (
    Classifier,
    Decision,
    Explanation,
    Options,
    TimedTask,
    check_kind,
    check_timeout,
    hints_of,
    route,
    route_rules,
)
from ._shm_janitor import cleanup_shared_memory
from ._shm_place import DEFAULT_THRESHOLD, check_threshold
from ._threads import ThreadLane
from ._views import ExecutorOptions, results

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("hybridexec")


def _check_count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


class Executor(concurrent.futures.Executor):
    """Runs each task on threads or in processes, wherever it runs best.

    A real ``concurrent.futures.Executor``: ``submit``, ``map``, ``shutdown`` and the context
    manager behave as in the standard library, and every future records where it ran
    (``fut.kind`` is ``"thread"`` or ``"process"``).

    Args:
        max_threads: Cap of the thread lane (default 256); threads start as blocking work
            arrives and exit after ``idle_timeout``.
        max_processes: Worker processes (default: the number of CPUs).
        start_method: ``"forkserver"`` (default on Linux), ``"spawn"`` or ``"fork"``.
        backend: Where process work runs instead of local processes (see
            ``docs/distributed.md``): ``"dask"`` (``DASK_SCHEDULER_ADDRESS``, else a new
            local cluster), a Dask scheduler address (``"tcp://host:8786"``), a
            ``distributed.Client``, ``"ray"`` or a Ray address (``"ray://host:10001"``).
            Futures of remote tasks have ``kind == "dask"`` or ``"ray"``.
        max_tasks_per_child: Replace a worker process after this many tasks.
        max_memory_per_child: Replace a worker process whose resident memory exceeds this
            many bytes after a task.
        idle_timeout: Seconds an idle worker (thread or process) lives; None keeps worker
            processes until shutdown and threads for 10 s.
        initializer: Called with ``initargs`` in every new worker process and thread.
        initargs: Arguments for ``initializer``.
        kind: The lane for calls that no option, hint or rule places: ``"auto"`` asks the
            classifier; ``"thread"`` or ``"process"`` switch the classifier off.
        classifier: Decides the lane for ``"auto"`` calls that no hint or rule settles;
            default: a ``LearningClassifier`` that measures each function (see
            ``docs/routing.md``).
        shm_threshold: numpy arrays of at least this many bytes (default 1 MiB) passed to or
            returned from process tasks travel through shared memory; None switches it off.
        backend_options: With ``backend``: keyword arguments for ``distributed.LocalCluster``
            (when one is started), ``distributed.Client`` (with an address) or ``ray.init``.
        remote: With ``backend``: ``"process"`` (default) sends the work routed to
            processes to the cluster and keeps I/O-bound work on local threads; ``"all"``
            sends every task to the cluster.

    Raises:
        ValueError: a worker count below 1, an unknown ``kind``, ``start_method``,
            ``backend`` or ``remote``.
        TypeError: a worker count that is not an int.
        BackendUnavailableError: the backend's extra (``hybridexec[dask]``, ``[ray]``) is not
            installed.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``backend``, ``backend_options`` and ``remote``.
    """

    def __init__(
        self,
        max_threads: int | None = None,
        max_processes: int | None = None,
        start_method: str | None = None,
        backend: object = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        idle_timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        kind: str = "auto",
        classifier: Classifier | None = None,
        shm_threshold: int | None = DEFAULT_THRESHOLD,
        backend_options: Mapping[str, Any] | None = None,
        remote: str = "process",
    ) -> None:
        max_threads = _check_count("max_threads", max_threads)
        max_processes = _check_count("max_processes", max_processes)
        _check_count("max_tasks_per_child", max_tasks_per_child)
        _check_count("max_memory_per_child", max_memory_per_child)
        if idle_timeout is not None:
            check_timeout(idle_timeout)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        # ---- distributed backend (issue 7, see _backends/): checked before any lane starts
        if backend is not None:
            check_remote(backend, remote)
            if remote == "all" and classifier is None and kind == "auto":
                kind = "process"  # every call goes to the cluster: nothing to measure
        elif backend_options is not None or remote != "process":
            raise ValueError("backend_options and remote apply only with a backend")
        # ---- end distributed backend
        self._options = Options()
        self._default_kind = check_kind(kind)
        if classifier is None and self._default_kind == "auto":
            classifier = LearningClassifier()
        self._classifier = classifier
        self._threads = ThreadLane(
            max_threads,
            idle_timeout=idle_timeout,
            initializer=initializer,
            initargs=initargs,
        )
        self._processes = ProcessLane(
            max_processes,
            start_method=start_method,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            idle_timeout=idle_timeout,
            initializer=initializer,
            initargs=initargs,
            shm_threshold=check_threshold(shm_threshold),
        )
        cleanup_shared_memory()  # segments left by processes that were SIGKILLed
        self._lanes: dict[str, ThreadLane | ProcessLane] = {
            "thread": self._threads,
            "process": self._processes,
        }
        self._shutdown_lock = threading.Lock()
        self._closed = False
        self._counts = {"thread": 0, "process": 0}
        self._remote: RemoteLane | None = None  # distributed backend (issue 7)
        if backend is not None:
            self._remote = open_lane(backend, backend_options, remote)
            weakref.finalize(self, self._remote.shutdown, False, cancel_futures=True)
        if self._classifier is not None:
            # Weakly: the manager thread keeps the lane alive, and the lane must not keep the
            # executor alive, or an executor dropped without shutdown() would never be freed.
            self._processes._timing_hook = _weak_method(self._record_process_timing)
        self._loop = LoopLane()
        # An executor dropped without shutdown() still lets its workers go.
        weakref.finalize(self, _release, self._threads, self._processes, self._loop)

    # ---- the concurrent.futures contract --------------------------------------------------
    @overload
    def submit(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]: ...
    @overload
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]: ...
    def submit(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` and return a future for its result.

        An ``async def`` function runs on the executor's event loop (``kind == "async"``) and
        the future holds what the coroutine returned.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
        """
        return self._submit(fn, args, kwargs, self._options)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[R]:
        """Like ``builtins.map`` but concurrent; results come back in order.

        All items are submitted at once, in chunks of ``chunksize`` calls. ``timeout`` bounds
        the whole iteration, as in the standard library.

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: ``chunksize`` below 1.
            TimeoutError: (while iterating) results not ready within ``timeout``.
        """
        return self._map(fn, iterables, timeout, chunksize, self._options)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work and release the workers.

        Args:
            wait: Wait for running (and, unless cancelled, pending) tasks to finish.
            cancel_futures: Cancel tasks that have not started.
        """
        with self._shutdown_lock:
            self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=cancel_futures)
        self._processes.shutdown(wait=False, cancel_futures=cancel_futures)
        self._loop.shutdown(wait=False, cancel_futures=cancel_futures)
        stop_actors(self, drain=not cancel_futures, wait=wait)  # actors it spawned
        if self._remote is not None:  # distributed backend (issue 7)
            self._remote.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            self._threads.shutdown(wait=True)
            self._processes.shutdown(wait=True)
            self._loop.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    # ---- hybridexec additions -------------------------------------------------------------
    def options(self, *, kind: str = "auto", timeout: float | None = None) -> ExecutorOptions:
        """Return a view of this executor that applies ``kind`` and ``timeout`` to each call.

        Example: ``ex.options(kind="process", timeout=2.0).submit(fn, x)``.

        Raises:
            ValueError: unknown ``kind`` or a timeout that is not positive.
        """
        options = Options(kind=check_kind(kind), timeout=check_timeout(timeout))
        return ExecutorOptions(self, options.merged(self._options))

    def terminate_workers(self) -> None:
        """Shut down without waiting and SIGTERM every worker process; running tasks cancel."""
        self.shutdown(wait=False, cancel_futures=True)
        self._processes.terminate_workers()

    def kill_workers(self) -> None:
        """Shut down without waiting and SIGKILL every worker process; running tasks cancel."""
        self.shutdown(wait=False, cancel_futures=True)
        self._processes.kill_workers()

    def stats(self) -> dict[str, Any]:
        """Counts per lane, process-lane events and the routing decision table.

        Returns:
            ``submitted`` (tasks per lane), ``threads`` and ``processes`` (workers alive),
            ``process_lane`` (workers started, crashes, kills) and ``decisions``: one row per
            function the classifier knows (lane, measured figures, calls, reason).
        """
        table = getattr(self._classifier, "table", None)
        return {
            "submitted": dict(self._counts),
            "threads": self._threads.size,
            "processes": self._processes.size,
            "process_lane": dict(self._processes.stats),
            "decisions": table() if callable(table) else [],
        }

    def explain(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Explanation:
        """Return where a call of ``fn`` goes now and why, with the measured figures.

        Nothing runs and nothing is learned. ``str()`` of the result reads as a sentence.

        Args:
            fn: The function.
            *args: Arguments of a typical call (they select the argument-size bucket);
                without them, the bucket with the most calls is described.
            **kwargs: Keyword arguments of a typical call.

        Returns:
            The lane, the reason in words, the GIL fraction, CPU/wall and call counts.
        """
        decision = route_rules(fn, self._options, self._default_kind)  # reads the hints too
        name = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', fn)}"
        if decision is not None:
            return Explanation(name, decision.kind, decision.reason)
        if self._classifier is None:
            return Explanation(name, "thread", "no hint and no classifier: threads by default")
        explain = getattr(self._classifier, "explain", None)
        if not callable(explain):
            return Explanation(name, "?", "the executor's classifier decides at each call")
        result: Explanation = explain(fn, args if args or kwargs else None)
        return result

    @property
    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now."""
        return self._processes.worker_pids()

    # ---- internals shared with map() and the module-level helpers ------------------------
    def _record_process_timing(self, task: Task, elapsed: float, cpu: float) -> None:
        # Called on the process lane's manager thread for each finished task.
        classifier = self._classifier
        if classifier is None or not task.items:
            return
        calls = len(task.items) if task.batch else 1
        try:
            classifier.record(task.fn, "process", elapsed, cpu, calls=calls, args=task.items[0][0])
        except Exception:  # a broken classifier must not stop the manager thread
            logger.exception("the classifier failed to record a finished task")

    def _decide(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> tuple[Decision, Options]:
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
        hinted = hints_of(fn)
        if hinted is not None:
            opts = opts.merged(hinted)
        return route(fn, args, kwargs, opts, self._classifier, self._default_kind), opts

    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
    ) -> Future[Any]:
        if is_async_callable(fn) and self._async_on_loop(fn, opts):
            return self._submit_async(fn, args, kwargs, opts)
        decision, opts = self._decide(fn, args, kwargs, opts)
        return self._submit_task(fn, [(args, kwargs)], decision, opts.timeout, batch=False)[0]

    # ---- async def: the executor's event loop ----------------------------------------------
    def _async_on_loop(self, fn: Callable[..., Any], opts: Options) -> bool:
        # An async def runs on the executor's loop unless a lane was chosen for it; then it
        # runs there under asyncio.run (see _submit_task).
        hinted = hints_of(fn)
        chosen = opts.kind if opts.kind != "auto" else (hinted.kind if hinted else "auto")
        return chosen == "auto"

    def _submit_async(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> Future[Any]:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        hinted = hints_of(fn)
        timeout = opts.timeout if opts.timeout is not None else (hinted and hinted.timeout)
        self._counts["async"] = self._counts.get("async", 0) + 1
        return self._loop.submit(fn, args, kwargs, timeout or None)

    def _submit_task(
        self,
        fn: Callable[..., Any],
        items: Items,
        decision: Decision,
        timeout: float | None,
        *,
        batch: bool,
    ) -> tuple[Future[Any], Task]:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        probe = decision.probe
        if probe is not None and not probe.claim():
            # map() reuses one decision: only its first task is measured; the others ask
            # again (while the function is being learned, that waits for the verdict).
            decision, _ = self._decide(fn, items[0][0], items[0][1], Options())
            probe = decision.probe
            if probe is not None and not probe.claim():
                probe = None
        kind = "thread" if probe is not None else decision.kind
        future: Future[Any] = Future(kind)
        if is_async_callable(fn):
            fn = functools.partial(run_coroutine, fn)
        task = Task(fn, items, future, batch=batch, timeout=timeout)
        remote = self._remote  # distributed backend (issue 7): process work, or all, goes there
        if remote is not None and probe is None and remote.takes(kind):
            try:
                remote.submit(task)
            except SerializationError as exc:
                if self._refuse_unpicklable(fn, exc, decision, future):
                    return future, task
                kind = "thread"
            else:
                self._counts[remote.kind] = self._counts.get(remote.kind, 0) + 1
                return future, task
        if kind == "process":
            try:
                self._processes.prepare(task)
            except SerializationError as exc:
                if self._refuse_unpicklable(fn, exc, decision, future):
                    return future, task
                kind = "thread"
        if kind == "thread" and self._classifier is not None and timeout is None:
            # Timed where it runs: the classifier learns from every thread task.
            task = TimedTask(
                task.fn, items, future, self._classifier, probe, batch=batch, timeout=timeout
            )
        logger.debug("%s -> %s: %s", getattr(fn, "__qualname__", fn), kind, decision.reason)
        self._counts[kind] += 1
        self._lanes[kind].submit(task)
        return future, task

    @staticmethod
    def _refuse_unpicklable(
        fn: Callable[..., Any], exc: SerializationError, decision: Decision, future: Future[Any]
    ) -> bool:
        """Fail ``future`` if its lane was asked for explicitly; else let it fall to threads."""
        if decision.explicit:
            future.set_running_or_notify_cancel()
            future.settle(False, exc)
            return True
        logger.debug("%r cannot be pickled (%s): running it on a thread", fn, exc)
        future.kind = "thread"
        return False

    def _map(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        opts: Options,
    ) -> Iterator[R]:
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int of at least 1, not {chunksize!r}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        end_time = None if timeout is None else time.monotonic() + timeout
        args_list = list(zip(*iterables))  # noqa: B905 - stops at the shortest, as map does
        futures: list[tuple[Future[Any], bool]] = []
        for start in range(0, len(args_list), chunksize):
            chunk = args_list[start : start + chunksize]
            decision, call_opts = self._decide(fn, chunk[0], {}, opts)
            items: Items = [(args, {}) for args in chunk]
            future, _ = self._submit_task(
                fn, items, decision, call_opts.timeout, batch=chunksize > 1
            )
            futures.append((future, chunksize > 1))
        return results(futures, end_time)

    # ---- actors ---------------------------------------------------------------------------
    def spawn(
        self,
        cls: Callable[..., R],
        /,
        *args: Any,
        kind: ActorKind = "thread",
        mailbox_size: int | None = None,
        max_restarts: int = 0,
        on_error: OnError | None = None,
        **kwargs: Any,
    ) -> ActorRef[R]:
        """Start an actor owned by this executor; arguments as for :func:`hybridexec.spawn`.

        Process actors use this executor's start method. ``shutdown()`` stops the actors
        (draining their mailboxes unless ``cancel_futures``, waiting for them if ``wait``).

        Raises:
            RuntimeError: the executor was shut down.

        .. versionadded:: 0.1
        """
        if self._closed:
            raise RuntimeError("cannot spawn actors after shutdown")
        return spawn_actor(
            cls,
            args,
            kwargs,
            kind=kind,
            mailbox_size=mailbox_size,
            max_restarts=max_restarts,
            on_error=on_error,
            start_method=self._processes.start_method,
            owner=self,
        )


def _weak_method(method: Callable[..., None]) -> Callable[..., None]:
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        target = ref()
        if target is not None:
            target(*args)

    return call


def _release(*lanes: ThreadLane | ProcessLane | LoopLane) -> None:
    for lane in lanes:
        lane.shutdown(wait=False, cancel_futures=True)
