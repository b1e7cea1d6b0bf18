"""The joblib backend ``"hybridexec"``: joblib's ``Parallel`` (and scikit-learn) on an Executor.

Usage::

    import joblib
    import hybridexec.joblib

    hybridexec.joblib.register()
    with joblib.parallel_config(backend="hybridexec", n_jobs=4):
        search.fit(X, y)  # any code that calls joblib.Parallel

How a ``Parallel`` call maps onto hybridexec:

- **Executor lifetime.** One shared Executor per effective ``n_jobs`` (``max_processes=n_jobs``),
  started by the first ``Parallel`` call that needs it and reused by the later ones, so worker
  processes stay warm across calls (a ``GridSearchCV`` makes several). They are shut down at
  interpreter exit, or by :func:`shutdown`. ``parallel_config(backend="hybridexec",
  executor=ex)`` uses your own Executor instead, whose lifetime stays yours.
- **Routing.** joblib hands over batches of calls. Each batch is split by function and each
  part is submitted as that function (hybridexec looks through ``functools.partial``), so the
  classifier learns and routes every function on its own, and ``@hx.io_bound`` /
  ``@hx.cpu_bound`` on your functions are honoured. ``prefer="threads"`` runs the calls on
  threads (a hint: a ``timeout`` overrides it); ``prefer="processes"`` in processes;
  ``require="sharedmem"`` always on threads.
- **Batching.** joblib's auto-batching sizes the batches from measured durations, as with its
  own process backend. With a ``timeout``, every call is a batch of its own.
- **Timeouts.** ``Parallel(timeout=t)`` gives each call a hybridexec timeout of ``t``: the call
  runs in a process and is killed at its deadline (``TaskTimeoutError``, a ``TimeoutError``).
  joblib keeps a clock of its own, from dispatch: when it runs out first, ``Parallel`` raises
  ``multiprocessing.TimeoutError`` (not a built-in ``TimeoutError``), as with its own backends.
  When joblib gives up on a call (a timeout or any error), the calls still running are
  cancelled, which kills those in processes.
- **Crashes.** A worker that dies fails the calls of its batch with ``WorkerCrashedError``;
  joblib raises it, and the Executor replaces the worker for the next call.
- **Nesting.** A ``Parallel`` call inside a call run by this backend runs on threads, at most
  ``cpu_count // n_jobs`` of them (so one when the outer call uses every CPU: sequentially);
  one level deeper, sequentially. ``backend="hybridexec"`` asked for again inside runs
  sequentially too: no worker starts workers of its own.

joblib is imported only when :func:`register` runs (extra ``hybridexec[joblib]``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import hybridexec as hx

__all__ = ["BACKEND_NAME", "register", "shutdown"]

BACKEND_NAME = "hybridexec"
"""The name ``register()`` gives the backend in joblib."""

Calls = list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]

_lock = threading.Lock()
_executors: dict[int, hx.Executor] = {}
_atexit_registered = False
_registered = False
# Set while this thread runs a batch of ours, in the parent (thread lane) and in workers.
_inside = threading.local()


def register(*, make_default: bool = False) -> None:
    """Register the joblib parallel backend ``"hybridexec"``.

    Args:
        make_default: Also make it joblib's default backend, for ``Parallel`` calls made
            outside any ``parallel_config``.

    Raises:
        BackendUnavailableError: joblib is not installed.

    .. versionadded:: 0.1
    """
    global _registered
    joblib = _import_joblib()
    joblib.register_parallel_backend(BACKEND_NAME, _backend_class(), make_default=make_default)
    _registered = True


def shutdown(wait: bool = True) -> None:
    """Shut down the Executors the backend started (the next ``Parallel`` call starts anew).

    Running calls are awaited when ``wait`` is True; pending ones are cancelled. Executors
    passed in with ``executor=`` are left alone.

    .. versionadded:: 0.1
    """
    with _lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=wait, cancel_futures=True)


def _import_joblib() -> Any:
    try:
        import joblib
    except ImportError as exc:
        raise hx.BackendUnavailableError(
            "the joblib backend needs joblib: pip install 'hybridexec[joblib]'"
        ) from exc
    return joblib


def _shared_executor(n_jobs: int) -> hx.Executor:
    global _atexit_registered
    with _lock:
        executor = _executors.get(n_jobs)
        if executor is None:
            # n_jobs bounds the calls running at once, as joblib means it: on threads too
            # (13h's H3: 12 calls routed to threads all ran at once with n_jobs=2).
            executor = _executors[n_jobs] = hx.Executor(max_processes=n_jobs, max_threads=n_jobs)
            if not _atexit_registered:
                atexit.register(shutdown)
                _atexit_registered = True
        return executor


def _depth() -> int:
    depth: int = getattr(_inside, "depth", 0)
    return depth


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_UNWRAP_MAX = 16
"""Wrappers looked through at most, in ``_function_of``."""


def _function_of(fn: Callable[..., Any]) -> object:
    """The function under partials, wrappers and bound methods: calls of it go in one task.

    A wrapper is what ``functools.wraps`` or ``update_wrapper`` made (``__wrapped__``):
    scikit-learn's ``delayed`` wraps every call's function in a new object of its own (it
    carries the caller's configuration), which must not cost joblib's batching. Each call
    still runs its own callable; only the grouping looks through them.
    """
    target: Any = fn
    for _ in range(_UNWRAP_MAX):  # bounded: a mock's __wrapped__ is a new mock every time
        if isinstance(target, functools.partial):
            target = target.func
            continue
        inner = getattr(target, "__wrapped__", None)
        if inner is None or not callable(inner):
            break
        target = inner
    return getattr(target, "__func__", target)


class _Batch(functools.partial[list[Any]]):
    """Calls of one function run as one task: ``_Batch(fn, threads)(calls)``.

    A partial of the function, so hybridexec routes, learns and reads hints as for ``fn``
    itself; called with the list of ``(fn, args, kwargs)`` (an argument, so large numpy arrays
    in it travel through shared memory), it runs them in order with joblib configured for
    nested calls: ``threads`` threads at most.
    """

    nested_threads: int

    def __new__(cls, fn: Callable[..., Any], nested_threads: int) -> _Batch:
        self = super().__new__(cls, fn)
        self.nested_threads = nested_threads
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Batch, (self.func, self.nested_threads))

    def __call__(self, /, *args: Any, **kwargs: Any) -> list[Any]:
        (calls,) = args
        joblib = _import_joblib()
        if not _registered:  # in a worker process: code asking for the backend runs serially
            register()
        depth = _depth()
        _inside.depth = depth + 1
        try:
            with joblib.parallel_config(backend=_nested_backend(self.nested_threads)):
                return [fn(*a, **kw) for fn, a, kw in calls]
        finally:
            _inside.depth = depth


def _nested_backend(threads: int) -> Any:
    """The joblib backend of Parallel calls made inside our calls (nesting level 1)."""
    parallel = _import_joblib().parallel
    if threads <= 1:
        return parallel.SequentialBackend(nesting_level=1)
    return _capped_threads_class()(threads, nesting_level=1)


@functools.cache
def _capped_threads_class() -> type:
    base: Any = _import_joblib().parallel.ThreadingBackend

    class CappedThreadingBackend(base):  # type: ignore[misc]
        """joblib's threading backend with at most ``cap`` threads, whatever n_jobs says."""

        def __init__(self, cap: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.cap = cap

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            return min(int(super().effective_n_jobs(n_jobs)), self.cap)

    return CappedThreadingBackend


@functools.cache
def _backend_class() -> type:
    parallel = _import_joblib().parallel
    batching: Any = parallel.AutoBatchingMixin
    base: Any = parallel.ParallelBackendBase

    class HybridExecBackend(batching, base):  # type: ignore[misc]
        """joblib's view of hybridexec: one instance per ``parallel_config`` or Parallel."""

        supports_retrieve_callback = True
        supports_timeout = True
        supports_return_generator = True
        supports_sharedmem = True  # require="sharedmem" runs the calls on threads
        uses_threads = False
        default_n_jobs = -1  # all CPUs, as loky

        def __init__(
            self,
            nesting_level: int | None = None,
            inner_max_num_threads: int | None = None,
            executor: hx.Executor | None = None,
            **backend_kwargs: Any,
        ) -> None:
            super().__init__(
                nesting_level=nesting_level,
                inner_max_num_threads=inner_max_num_threads,
                **backend_kwargs,
            )
            self._own_executor = executor
            self._executor: hx.Executor | None = None
            self._submit: Any = None
            self._n_jobs = 1
            self._timeout: float | None = None
            self._running: set[concurrent.futures.Future[Any]] = set()
            self._running_lock = threading.Lock()

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None or _depth() > 0:
                return 1  # inside one of our calls: no workers of workers
            if n_jobs < 0:
                return max(_cpu_count() + 1 + n_jobs, 1)
            return int(n_jobs)

        def configure(
            self,
            n_jobs: int = 1,
            parallel: Any = None,
            prefer: str | None = None,
            require: str | None = None,
            **kwargs: Any,
        ) -> int:
            n_jobs = self.effective_n_jobs(n_jobs)
            if n_jobs == 1:
                raise parallel_module().FallbackToBackend(
                    parallel_module().SequentialBackend(nesting_level=self.nesting_level)
                )
            self.parallel = parallel
            self._n_jobs = n_jobs
            self._timeout = getattr(parallel, "timeout", None)  # None: @hx.task's applies
            self._executor = executor = self._own_executor or _shared_executor(n_jobs)
            kind = "auto"
            if require == "sharedmem" or (prefer == "threads" and self._timeout is None):
                kind = "thread"
            elif prefer == "processes":
                kind = "process"
            given: dict[str, Any] = {} if self._timeout is None else {"timeout": self._timeout}
            self._submit = executor.options(kind=kind, **given).submit
            return n_jobs

        def compute_batch_size(self) -> int:
            if self._timeout is not None:
                return 1  # the timeout applies to each call, each in a task of its own
            return int(super().compute_batch_size())

        def submit(self, func: Any, callback: Any = None) -> concurrent.futures.Future[Any]:
            future = self._submit_batch(func)
            if callback is not None:
                future.add_done_callback(callback)
            return future

        def _submit_batch(self, batch: Any) -> concurrent.futures.Future[Any]:
            threads = max(1, _cpu_count() // self._n_jobs)
            items = getattr(batch, "items", None)
            if items is None:  # not a joblib BatchedCalls: one opaque call
                return self._track(self._submit(batch))
            # One part per function: bound methods of different objects, or partials of one
            # function, are one function to the router and go in one part.
            groups: dict[int, tuple[Callable[..., Any], list[int], Calls]] = {}
            for index, (fn, args, kwargs) in enumerate(items):
                group = groups.setdefault(id(_function_of(fn)), (fn, [], []))
                group[1].append(index)
                group[2].append((fn, args, kwargs))
            parts = [
                (indices, self._track(self._submit(_Batch(fn, threads), calls)))
                for fn, indices, calls in groups.values()
            ]
            if len(parts) == 1:
                return parts[0][1]
            return _gather(parts, len(items))

        def _track(self, future: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
            with self._running_lock:
                self._running.add(future)
            future.add_done_callback(self._untrack)
            return future

        def _untrack(self, future: concurrent.futures.Future[Any]) -> None:
            with self._running_lock:
                self._running.discard(future)

        def retrieve_result_callback(self, future: concurrent.futures.Future[Any]) -> Any:
            return future.result()

        def abort_everything(self, ensure_ready: bool = True) -> None:
            # Cancelling a running process task kills its worker; the Executor replaces it,
            # so the backend is ready for the next call either way.
            with self._running_lock:
                running = list(self._running)
            for future in running:
                future.cancel()

        def terminate(self) -> None:
            self.reset_batch_stats()

        def get_nested_backend(self) -> tuple[Any, int | None]:
            # Only used for calls joblib runs itself; our tasks set the nested backend in
            # _Batch. Threads for the first level of nesting, then sequential.
            level = (self.nesting_level or 0) + 1
            if level > 1:
                return parallel_module().SequentialBackend(nesting_level=level), None
            return _nested_backend(max(1, _cpu_count() // self._n_jobs)), None

    HybridExecBackend.__module__ = __name__
    return HybridExecBackend


def parallel_module() -> Any:
    """``joblib.parallel`` (imported lazily)."""
    return _import_joblib().parallel


def _gather(
    parts: list[tuple[list[int], concurrent.futures.Future[Any]]], size: int
) -> concurrent.futures.Future[Any]:
    """One future for a batch submitted as several parts: results in the batch's order.

    The first part to fail (or be cancelled) fails the whole. The parts are tracked by the
    backend on their own, so aborting cancels each of them.
    """
    whole: concurrent.futures.Future[Any] = concurrent.futures.Future()
    whole.set_running_or_notify_cancel()
    results: list[Any] = [None] * size
    remaining = [len(parts)]
    lock = threading.Lock()

    def done(indices: list[int], future: concurrent.futures.Future[Any]) -> None:
        try:
            values = future.result()
        except BaseException as exc:
            with lock:
                if whole.done():
                    return
                whole.set_exception(exc)
            return
        with lock:
            if whole.done():
                return
            for index, value in zip(indices, values, strict=True):
                results[index] = value
            remaining[0] -= 1
            if remaining[0] == 0:
                whole.set_result(results)

    for indices, future in parts:
        future.add_done_callback(functools.partial(done, indices))
    return whole
