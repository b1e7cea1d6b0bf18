"""The Executor: validates each call, routes it to a lane, owns the lanes."""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import _lifecycle
from ._callbacks import drain
from ._futures import Future
from ._lazy import loaded
from ._process import usable_cpus
from ._router import Router
from ._routing import (
    NOT_GIVEN,
    Classifier,
    LearningClassifier,
    NotGiven,
    Options,
    check_classifier,
    check_count,
    check_kind,
    check_timeout,
    checked_options,
    resolve_counts,
)
from ._shm import DEFAULT_THRESHOLD, check_threshold, cleanup_shared_memory
from ._views import (
    ExecutorOptions,
    executor_stats,
    explain_call,
    leave_block,
)

if TYPE_CHECKING:  # the actor modules load when an actor is made
    from typing_extensions import Self

    from ._actors import ActorKind, ActorRef, OnError
    from ._routing import Explanation

P = ParamSpec("P")
R = TypeVar("R")


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
        max_memory_per_child: Replace a worker whose resident memory is over this after a task.
        idle_timeout: Seconds an idle worker (thread or process) lives; None keeps worker
            processes until shutdown and threads for 10 s.
        initializer: Called with ``initargs`` in every new worker process and thread. If it
            raises, its lane is broken, as the standard library's pools break: its queued
            tasks and later submits fail with ``BrokenExecutorError``.
        initargs: Arguments for ``initializer``.
        kind: The lane for calls that no option, hint or rule places: ``"auto"`` asks the
            classifier; ``"thread"`` or ``"process"`` switch it off (``"process"``: a call
            that cannot be pickled fails with ``SerializationError``, not run on a thread).
        classifier: Decides the lane for ``"auto"`` calls that no hint or rule settles;
            default: a ``LearningClassifier`` that measures each function (see
            ``docs/routing.md``).
        shm_threshold: numpy arrays of at least this many bytes (default 1 MiB) passed to or
            returned from process tasks travel through shared memory; None switches it off.
        backend_options: With ``backend``: keyword arguments for ``distributed.LocalCluster``
            (when one is started), ``distributed.Client`` (with an address) or ``ray.init``.
        remote: With ``backend``: ``"process"`` (default) sends the work routed to
            processes to the cluster and keeps I/O-bound work on local threads; ``"all"``
            sends every task to the cluster (``async def`` functions excepted: they run on
            the executor's local event loop).
        max_workers: As in the standard pools: at most this many tasks at once in each lane
            (``max_threads`` and ``max_processes``, when given, win for their lane).
        mp_context: As in ``ProcessPoolExecutor``: a ``multiprocessing`` context whose start
            method the worker processes use (same as ``start_method=``).
        thread_name_prefix: As in ``ThreadPoolExecutor``: the lane's threads are named
            ``<prefix>_<n>`` (default ``hybridexec-thread-<n>``).

    Raises:
        ValueError: a worker count below 1, an unknown ``kind``, ``start_method``,
            ``backend`` or ``remote``.
        TypeError: a worker count that is not an int.
        BackendUnavailableError: the backend's extra (``hybridexec[dask]``, ``[ray]``) is not
            installed.

    .. versionadded:: 0.1
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
        max_workers: int | None = None,
        mp_context: Any = None,
        thread_name_prefix: str | None = "",
    ) -> None:
        max_threads, max_processes = resolve_counts(max_threads, max_processes, max_workers)
        if mp_context is not None:  # ProcessPoolExecutor(mp_context=): its start method
            method = mp_context.get_start_method()
            if start_method not in (None, method):
                raise ValueError("give start_method or mp_context, not both")
            start_method = method
        self._max_workers: int = max_workers or max_processes or usable_cpus()  # (dask reads it)
        check_count("max_tasks_per_child", max_tasks_per_child)
        check_count("max_memory_per_child", max_memory_per_child)
        check_timeout(idle_timeout, "idle_timeout")  # None passes
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        # ---- distributed backend (issue 7, see _backends/): checked before any lane starts
        if backend is not None:
            from ._backends import RemoteAll, check_remote, open_lane  # for a backend only

            check_remote(backend, remote)
            if remote == "all" and classifier is None and kind == "auto":
                classifier = RemoteAll()  # every call goes to the cluster: nothing to measure
        elif backend_options is not None or remote != "process":
            raise ValueError("backend_options and remote apply only with a backend")
        self._options = Options()
        default_kind = check_kind(kind)
        if classifier is None and default_kind == "auto":
            classifier = LearningClassifier()
        check_classifier(classifier)
        lane_options = {
            "max_threads": max_threads,
            "max_processes": max_processes,
            "start_method": start_method,
            "max_tasks_per_child": max_tasks_per_child,
            "max_memory_per_child": max_memory_per_child,
            "idle_timeout": idle_timeout,
            "initializer": initializer,
            "initargs": initargs,
            "thread_name_prefix": "" if thread_name_prefix is None else str(thread_name_prefix),
            "shm_threshold": check_threshold(shm_threshold),
        }
        remote_lane = open_lane(backend, backend_options, remote) if backend is not None else None
        self._router = Router(
            lane_options=lane_options,
            default_kind=default_kind,
            classifier=classifier,
            remote=remote_lane,
        )
        self._shutdown_lock = threading.Lock()
        cleanup_shared_memory()  # segments left by processes that were SIGKILLed
        # Dropped without shutdown(), it still lets its workers go; at exit _lifecycle's hooks do.
        weakref.finalize(self, self._router.release).atexit = False

    @property
    def _closed(self) -> bool:
        return self._router.closed

    @property
    def _broken(self) -> str | bool:  # as the standard pools have it: False, or why
        return self._router.broken()

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

        A task on a thread or the event loop runs in a copy of the caller's ``contextvars``
        context as it was at ``submit`` (as ``asyncio.to_thread`` does); a task in a process
        runs in the worker's own context (a context does not cross processes).

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
        """
        router = self._router  # a call routed before goes by the express path, one frame less
        future = router.plans.submit_express(router, fn, args, kwargs, self._options)
        return future or router.submit(fn, args, kwargs, self._options)

    @overload
    def map(
        self, fn: Callable[..., Coroutine[Any, Any, R]], *iterables: Iterable[Any],
        timeout: float | None = None, chunksize: int = 1, buffersize: int | None = None,
        limit: int | None = None,
    ) -> Iterator[R]: ...  # fmt: skip
    @overload
    def map(
        self, fn: Callable[..., R], *iterables: Iterable[Any], timeout: float | None = None,
        chunksize: int = 1, buffersize: int | None = None, limit: int | None = None,
    ) -> Iterator[R]: ...  # fmt: skip
    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        limit: int | None = None,
    ) -> Iterator[Any]:
        """Like ``builtins.map`` but concurrent; results come back in order.

        As in the standard library, every call is submitted at once (in chunks of
        ``chunksize`` calls) unless ``buffersize`` bounds the chunks submitted and not yet
        yielded: then the input is read as results are consumed, so an endless or huge iterable
        is fine. ``timeout`` bounds the whole iteration. A subclass that overrides ``submit``
        sees every call go through it, as the standard library documents.

        ``limit`` (hybridexec's): at most that many calls of this map at once (a chunk counts
        ``chunksize``; a call timed out on a thread, until its code returns), the input read
        as calls finish. A call not sent (no descriptor, thread or process) raises in place.

        Raises:
            TypeError: ``fn`` is not callable, or ``buffersize`` or ``limit`` is not an int.
            ValueError: ``chunksize``, ``buffersize`` or ``limit`` below 1, or ``chunksize``
                above ``limit``.
            TimeoutError: (while iterating) results not ready within ``timeout``.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, self._options, limit)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work and release the workers.

        Args:
            wait: Wait for running (and, unless cancelled, pending) tasks to finish.
            cancel_futures: Cancel tasks that have not started.
        """
        router = self._router
        with self._shutdown_lock:  # cancelled first: a map that sees closed reads it (15f's F3)
            router.cancelled, router.closed = router.cancelled or cancel_futures, True
        actors = loaded("hybridexec._actors", wait=True)  # with the first actor (waited for)
        if actors is not None:  # the actors it spawned
            actors.stop_actors(router, drain=not cancel_futures, wait=False)
        router.shutdown(wait=False, cancel_futures=cancel_futures, background=not wait)
        if wait:
            if actors is not None:
                actors.stop_actors(router, drain=not cancel_futures, wait=True)
            router.shutdown(wait=True, cancel_futures=cancel_futures)
            # The done-callbacks of what ended here have run, as in the standard library.
            drain(owners=router.service_owners())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        leave_block(self, exc_type is not None and issubclass(exc_type, KeyboardInterrupt))

    # ---- hybridexec additions -------------------------------------------------------------
    def options(
        self,
        *,
        kind: str = "auto",
        timeout: float | NotGiven | None = NOT_GIVEN,
        max_memory: int | None = None,
    ) -> ExecutorOptions:
        """Return a view of this executor that applies these options to each call.

        Example: ``ex.options(kind="process", timeout=2.0).submit(fn, x)``. ``max_memory`` (0.5):
        bytes a call may add to its worker's memory, or it fails with ``MemoryLimitError``.
        ``timeout=None`` means no timeout, even for a function with an ``@hx.task`` timeout
        (or under a view with one); left out, the timeout under it applies.

        Raises:
            ValueError: a bad value (TypeError: a wrong type), or ``max_memory`` on a thread.
        """
        return ExecutorOptions(self, checked_options(kind, timeout, max_memory, self._options))

    def terminate_workers(self) -> None:
        """Shut down without waiting and SIGTERM every worker process; running tasks cancel."""
        self.shutdown(wait=False, cancel_futures=True)
        self._router.processes.terminate_workers()

    def kill_workers(self) -> None:
        """Shut down without waiting and SIGKILL every worker process; running tasks cancel."""
        self.shutdown(wait=False, cancel_futures=True)
        self._router.processes.kill_workers()

    def stats(self) -> dict[str, Any]:
        """Counts per lane, process-lane events, CPU slots and the routing decision table.

        Returns:
            ``submitted`` (tasks per lane, as routed at submit), ``moved`` (tasks that late
            binding moved before they started, by ``"from->to"`` lane: ``thread``, ``cpu``,
            ``process``), ``threads`` and ``processes`` (workers alive), ``process_lane``
            (workers started, crashes, kills), ``slots`` (the CPU slots: ``total``, held by
            ``processes`` and by ``threads``, ``lent``, ``waiting``) and ``decisions``: one
            row per function the classifier knows (lane, measured figures, calls, reason).
        """
        return executor_stats(self._router)

    def explain(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Explanation:
        """Return where a call of ``fn`` goes now and why, with the measured figures.

        Nothing runs and nothing is learned. ``str()`` of the result reads as a sentence.

        Args:
            fn: The function.
            *args: Arguments of a typical call (they select the argument-size bucket; without
                them, the bucket with the most calls).
            **kwargs: Keyword arguments of a typical call.

        Returns:
            The lane, the reason, GIL fraction, CPU/wall, call counts and the CPU slots now.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
        return explain_call(self._router, self._options, fn, args, kwargs)

    @property
    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now."""
        return self._router.processes.worker_pids()

    def _map(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        opts: Options,
        limit: int | None = None,
    ) -> Iterator[R]:
        from ._execmap import executor_map  # loaded with the first map

        plain = type(self).submit is Executor.submit
        return executor_map(self, plain, fn, iterables, timeout, chunksize, buffersize, opts, limit)

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

        Process actors use this executor's start method; ``shutdown()`` stops the actors
        (drains their mailboxes unless ``cancel_futures``; waits for them if ``wait``).

        Raises:
            RuntimeError: the executor was shut down.

        .. versionadded:: 0.1
        """
        if self._closed:
            raise RuntimeError("cannot spawn actors after shutdown")
        from ._actors import spawn_actor  # the actor modules load with the first actor

        _lifecycle.starting_thread()  # the helpers forked first, while it is safe
        return spawn_actor(
            cls,
            args,
            kwargs,
            kind=kind,
            mailbox_size=mailbox_size,
            max_restarts=max_restarts,
            on_error=on_error,
            start_method=self._router.processes.start_method,
            owner=self._router,
        )
