"""The thread lane: a pool sized for blocking work.

The standard library caps a thread pool at ``min(32, cpu + 4)``, which is right for CPU work
and far too small for I/O: 200 sleeps of 20 ms take 0.7 s on six threads. Work that reaches this
lane either releases the GIL or blocks (the router sends GIL-bound Python work to processes), so
the lane starts a thread whenever a task arrives and no thread is idle, up to ``max_threads``
(256 by default), and lets a thread go after ``idle_timeout`` seconds without work.

Threads cannot be killed. A task with a timeout fails at its deadline, and its thread is
interrupted at the next bytecode boundary with an asynchronous exception (best effort: code
blocked in C sees it only when it returns to Python). The thread counts as busy until it has
really finished.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ._exceptions import TaskTimeoutError
from ._futures import Task

DEFAULT_MAX_THREADS = 256
DEFAULT_IDLE_TIMEOUT = 10.0


class TaskInterrupted(BaseException):
    """Raised asynchronously inside a thread whose task passed its deadline."""


def interrupt_thread(ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` asynchronously in the thread ``ident`` at its next bytecode boundary.

    The one async-raise helper of the package (thread-lane deadlines, thread actors' kill,
    remote calls). With None, a pending (not yet raised) exception is withdrawn.
    """
    obj = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), obj)


class _Running:
    """A task running on a thread, as seen by the deadline timer."""

    __slots__ = ("done", "ident", "interrupted", "lock", "task")

    def __init__(self, task: Task, ident: int) -> None:
        self.task = task
        self.ident = ident
        self.lock = threading.Lock()
        self.done = False
        self.interrupted = False


class Timers:
    """One daemon thread that calls functions at deadlines (monotonic clock)."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._name = name

    def call_at(self, deadline: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, wait: bool = True) -> None:
        """Stop the timer thread; pending calls are dropped (their tasks ended or will end)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap:
                        delay = self._heap[0][0] - time.monotonic()
                        if delay <= 0:
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            fn()


class ThreadLane:
    """A growing and shrinking pool of threads for blocking work."""

    kind = "thread"

    def __init__(
        self,
        max_threads: int | None = None,
        *,
        idle_timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        name: str = "hybridexec",
    ) -> None:
        self.max_threads = max_threads or DEFAULT_MAX_THREADS
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self._initializer = initializer
        self._initargs = initargs
        self._name = name
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one permit per idle thread
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._timers = Timers(f"{name}-thread-deadlines")
        self._serial = itertools.count()
        self.tasks_started = 0

    @property
    def size(self) -> int:
        """The number of threads alive now."""
        return len(self._threads)

    def submit(self, task: Task) -> None:
        """Queue a task; start a thread for it when no thread is idle.

        Raises:
            RuntimeError: the lane was shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put(task)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-thread-{next(self._serial)}", daemon=True
                )
                self._threads.add(thread)
                thread.start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; optionally cancel what has not started; optionally wait."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        task = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if task is not None and task.future.cancel():
                        # Notify waiters, or wait()/as_completed() never see it as done.
                        task.future.set_running_or_notify_cancel()
            for _ in range(len(self._threads)):
                self._queue.put(None)
            threads = list(self._threads)
            if not self._threads:
                self._timers.close(wait=False)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
            self._timers.close()

    def _work(self) -> None:
        me = threading.current_thread()
        try:
            if self._initializer is not None:
                self._initializer(*self._initargs)
        except BaseException as exc:
            self._fail_queue_after_init_error(exc)
            with self._lock:
                self._threads.discard(me)
            return
        while True:
            try:
                task = self._queue.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    # Leave only if no submitter counted on us being idle meanwhile.
                    if self._idle.acquire(blocking=False):
                        self._threads.discard(me)
                        return
                continue
            if task is None:
                with self._lock:
                    self._threads.discard(me)
                return
            self._run(task)
            self._idle.release()

    def _fail_queue_after_init_error(self, exc: BaseException) -> None:
        from ._exceptions import BrokenExecutorError

        try:
            task = self._queue.get_nowait()
        except queue.Empty:
            return
        if task is not None and task.future.set_running_or_notify_cancel():
            err = BrokenExecutorError(f"the thread initializer raised {exc!r}")
            err.__cause__ = exc
            task.future.settle(False, err)

    def _run(self, task: Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        self.tasks_started += 1
        running: _Running | None = None
        try:
            if task.timeout is not None:
                task.start_clock()
                running = _Running(task, threading.get_ident())
                assert task.deadline is not None
                self._timers.call_at(task.deadline, functools.partial(_on_deadline, running))
            task.run_here()
        except TaskInterrupted:
            pass  # the future already holds TaskTimeoutError
        finally:
            if running is not None:
                try:
                    with running.lock:
                        running.done = True
                        if running.interrupted:
                            interrupt_thread(running.ident, None)
                except TaskInterrupted:
                    pass  # raised between the task's end and the lock: already handled


def _on_deadline(running: _Running) -> None:
    task = running.task
    with running.lock:
        if running.done:
            return
        running.interrupted = True
        task.future.settle(
            False, TaskTimeoutError(f"task exceeded its {task.timeout:g} s timeout in a thread")
        )
        interrupt_thread(running.ident, TaskInterrupted)
