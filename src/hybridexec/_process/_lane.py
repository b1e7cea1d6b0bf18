"""The front of the process lane: records work for the manager thread and wakes it.

One exception: while nothing is in flight, a submit writes its call to an idle worker the
sleeping manager offered, and its caller may read the reply (the direct path, ``_direct.py``).
All else that touches a worker is in ``_manager.py``; ``_lifecycle`` calls the hooks below.

At interpreter exit a lane behaves as the standard library's pools do: its queued work is
cancelled, its running work runs to completion, then its workers exit (those that linger are
killed after a short grace). No wait here has a fixed multi-second bound (I5).
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import _faults, _lifecycle
from .._callbacks import serving
from .._exceptions import BrokenExecutorError, SerializationError
from .._futures import Future, Task
from .._shm import DEFAULT_THRESHOLD, Placement
from .._waits import join_thread
from ._group import defer, defer_int, encode_alone
from ._manager import Manager
from ._supervise import _set_preload, get_context, lifeline, preload_in_forkserver
from ._supervision import WorkerRecord
from ._threadlimits import usable_cpus
from ._worker import Initializer

_live_lanes: weakref.WeakSet[ProcessLane] = weakref.WeakSet()
_live_lock = threading.Lock()


def kill_live_lanes() -> None:
    """Stop every process lane still alive in this process.

    Queued work is cancelled; running work runs to completion (as the standard library does
    at exit), unless Ctrl-C ended the program: then the workers are killed at once. Runs at
    interpreter exit (after the default executor finished its running work), and in a worker
    process before it exits, for executors that a task started.
    """
    with _live_lock:
        lanes = list(_live_lanes)
    # After Ctrl-C the user asked to stop: running calls are not waited for (their workers
    # lead process groups of their own, so the terminal's SIGINT never reached them).
    stop = _lifecycle.interrupted()
    for lane in lanes:
        lane.shutdown(wait=False, cancel_futures=True)
        if stop:
            lane._kill_all(signal.SIGKILL)
    for lane in lanes:
        lane.join()


def _forget_lanes_after_fork() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    for lane in list(_live_lanes):
        lane.forget_after_fork()
    _live_lanes.clear()


_lifecycle.on_fork(_forget_lanes_after_fork)


class ProcessLane:
    """A pool of worker processes with one private pipe each."""

    kind = "process"

    def __init__(
        self,
        max_processes: int | None = None,
        *,
        start_method: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        idle_timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        name: str = "hybridexec",
        shm_threshold: int | None = DEFAULT_THRESHOLD,
        early_helpers: bool = True,
    ) -> None:
        self.max_processes = max_processes or usable_cpus()
        self.context = get_context(start_method)
        self.start_method: str = self.context.get_start_method()
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.report_memory = max_memory_per_child is not None
        self.idle_timeout = idle_timeout
        # Pickled as each worker starts, as ProcessPoolExecutor does: initargs that may only
        # be inherited (a multiprocessing.Lock or Queue) travel then.
        self.initializer = Initializer(initializer, initargs) if initializer is not None else None
        self.placement = Placement(shm_threshold)  # large numpy arguments via shared memory
        self.wires: dict[int, tuple[Any, bytes]] = {}  # callables' bytes (see _group.defer)
        self.name = name
        self.pending: deque[Task] = deque()
        self.submitted = 0  # tasks counted by submit (the express path's; under _lock)
        self.commands: deque[tuple[str, Any]] = deque()
        # "groups": frames that carried several calls (_group.py).
        keys = ("workers_started", "tasks_done", "crashes", "kills", "groups")
        self.stats: dict[str, int] = dict.fromkeys(keys, 0)
        self.shutting_down = False
        self.closed = False  # the manager thread has exited: commands are not served
        self.broken: BaseException | None = None
        self._lock = threading.Lock()
        self._manager: Manager | None = None
        self._timing_hook: Callable[[Task, float, float], None] | None = None
        # Set by the router (_routing/_binding.py): the executor's CPU slots (the manager takes
        # one per busy worker) and late binding (a task about to be dispatched whose verdict
        # changed lanes leaves the queue: True).
        self.slots: Any = None
        self.relocate: Callable[[Task], bool] = _stays
        self.wake_r = self.wake_w = -1
        self._wake_pending = False  # a wake-up byte is in the pipe, not yet drained
        # Under the lock: idle workers the sleeping manager lets submits write to (the direct
        # path, see _direct.py), and the writes that failed there, for the manager.
        self.ready: list[WorkerRecord] = []
        self.send_failures: list[tuple[WorkerRecord, Task, OSError]] = []
        # Under the lock: the workers written to that way since the manager slept, with the
        # epoch of that sleep; those a caller reads its reply from (see _direct.py), and the
        # condition the waking manager waits on for them.
        self.lent: dict[WorkerRecord, int] = {}
        self.reading: set[WorkerRecord] = set()
        self.epoch = 0
        self.returned = threading.Condition(self._lock)
        self.foreign = False  # inherited through os.fork(): the parent's, never touched here
        if self.start_method == "forkserver":  # the helpers: see preload_in_forkserver
            _set_preload()  # the worker module joins the user's list now, as it always did
            if early_helpers:  # not for a lane unlikely to run (an executor of kind "thread")
                _lifecycle.before_first_thread(preload_in_forkserver)

    # ---- used by the manager --------------------------------------------------------------
    def drain_wakeups(self) -> None:
        """Empty the wake-up pipe, then let the next submit write to it again.

        In that order: a submit between the two sees the flag still set and does not write,
        and the manager's next turn (which follows) sees its task anyway. Without the lock (a
        stream's submits hold it often): only this thread reads or closes the pipe.
        """
        try:
            os.read(self.wake_r, 4096)  # what is left (a storm of commands) wakes it again
        except BlockingIOError:
            pass
        self._wake_pending = False

    def command(self, name: str, arg: Any = None) -> bool:
        """Queue a command for the manager; False when no manager will ever serve it."""
        with self._lock:
            if self.closed or self._manager is None:
                return False
            self.commands.append((name, arg))
            self._wake_locked()
        return True

    def take_slot(self) -> bool:
        """A CPU slot for a worker about to turn busy (True without a governor); never waits."""
        return self.slots is None or bool(self.slots.take_process())

    def withdraw(self, task: Task) -> bool:
        """Take ``task`` from the head of the queue (late binding); False if it is gone."""
        with self._lock:
            if self.pending and self.pending[0] is task:
                self.pending.popleft()
                return True
        return False

    def put_back(self, task: Task) -> None:
        """Return a task ``withdraw`` took (it could not move) to the head of the queue."""
        with self._lock:
            self.pending.appendleft(task)

    def record_timing(self, task: Task, elapsed: float, cpu: float) -> None:
        if self._timing_hook is not None:
            self._timing_hook(task, elapsed, cpu)

    # ---- the front ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of worker processes alive now."""
        manager = self._manager
        return len(manager.workers) if manager is not None else 0

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes alive now."""
        manager = self._manager
        return list(manager.workers) if manager is not None else []

    def prepare(self, task: Task) -> None:
        """Pickle the call in the caller's thread, or only its callable (see ``_group.py``).

        Raises:
            SerializationError: the callable or an argument cannot be pickled.
        """
        if _faults.ACTIVE:
            _faults.hit("lane.pickle_call")
        if not defer(task, self.placement, self.wires):
            encode_alone(task, self.placement)

    def submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], route: Any
    ) -> Future[Any] | None:
        """Submit one call (``route``: the router's decision); None if it will not pickle.

        Raises:
            RuntimeError: the lane was shut down (BrokenExecutorError: it broke earlier).
        """
        task = Task(fn, (args, kwargs), Future("process"))
        if not (len(args) == 1 and not kwargs and defer_int(task, fn, args[0], self.wires)):
            try:
                self.prepare(task)
            except SerializationError:
                return None
        task.route = route
        self.submit(task, 1)
        return task.future

    def submit(self, task: Task, counted: int = 0) -> None:
        """Queue a prepared task and wake the manager (``counted``: add to ``submitted``).

        Raises:
            RuntimeError: the lane was shut down.
            BrokenExecutorError: the lane broke earlier.
        """
        if task.payload is None and task.wire is None:
            self.prepare(task)
        with self._lock:
            if self.shutting_down or _lifecycle.exited:
                raise _lifecycle.closed_error()
            if self.broken is not None:
                raise BrokenExecutorError(f"the process lane is broken: {self.broken!r}")
            self.submitted += counted
            manager = self._manager
            if manager is None:
                # Started first: if it cannot start (no descriptor or thread left), the call
                # fails here with nothing queued, and the next submit tries again.
                self._start_manager()
                self.pending.append(task)
                self._wake_locked()
            elif not (self.ready and manager.send_direct(task)):
                self.pending.append(task)
                if not self._wake_pending:
                    self._wake_locked()

    def _start_manager(self) -> None:
        """Start the manager thread (under the lock); on failure nothing is left half made."""
        self.lifeline_r = lifeline()[0]
        manager = Manager(self)
        if self.start_method == "forkserver":
            preload_in_forkserver()  # the guardian, forked now if not yet and safe
        wake_r, wake_w = os.pipe()
        try:
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)
            self.wake_r, self.wake_w = wake_r, wake_w
            manager.start()
        except BaseException:
            self.wake_r = self.wake_w = -1
            os.close(wake_r)
            os.close(wake_w)
            manager.abandon()
            raise
        self._manager = manager
        _lifecycle.on_exit(_lifecycle.LANES, kill_live_lanes)
        with _live_lock:
            _live_lanes.add(self)

    def wake(self) -> None:
        """Wake the manager (a CPU slot came free, a command)."""
        with self._lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        # Under the lock: the manager closes the pipe as it exits, and a write to a closed
        # (and perhaps reused) descriptor number must never happen. One write per batch of
        # submits: each write hands the GIL to the manager thread, which is what a storm of
        # submits paid most for; the flag stays set until the manager drains the pipe.
        if self.wake_w >= 0:
            self._wake_pending = True
            try:
                os.write(self.wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # the pipe is full: the manager is awake already

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; the manager finishes running work, then stops the workers."""
        dropped: list[Task] = []
        with self._lock:
            self.shutting_down = True
            if cancel_futures:
                dropped = list(self.pending)
                self.pending.clear()
        # Cancelled outside the lock: a task re-sent after its worker died is running
        # already, and its cancel() asks the manager (through this lock) to stop it.
        with serving(self):  # notified at once, callbacks on the callback threads (15c's C1)
            kept = [task for task in dropped if not task.future.cancel()]
        if kept:  # could not be cancelled (running already): they still run, never lost (I1)
            with self._lock:
                self.pending.extendleft(reversed(kept))
        self.placement.close()  # pooled segments go now, those in use when their tasks end
        self.wake()
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> None:
        manager = self._manager
        if manager is not None and manager is not threading.current_thread():
            join_thread(manager, timeout, manager.ended)  # a Ctrl-C leaves it joinable

    def close_pipes(self) -> None:
        """Called by the manager thread as it exits."""
        if self.slots is not None:  # no worker runs anything for us any more
            self.slots.sync((), None, ())
        with self._lock:
            self.closed = True
            self.ready = []
            self.epoch += 1
            self.lent.clear()
            commands = list(self.commands)
            self.commands.clear()
            if self.wake_r >= 0:
                for fd in (self.wake_r, self.wake_w):
                    os.close(fd)
            self.wake_r = self.wake_w = -1
        for name, arg in commands:  # nobody will serve them: release their waiters
            if name == "kill-all":
                arg[1].set()
        with _live_lock:
            _live_lanes.discard(self)

    def forget_after_fork(self) -> None:
        """In a forked child: the lane is the parent's; close our copies of its pipe ends.

        Only the forking thread exists now: locks are replaced, not taken, and no worker is
        signalled or stopped from here.
        """
        self._lock = threading.Lock()
        self.returned = threading.Condition(self._lock)
        self.lent = {}
        self.reading = set()
        self.foreign = True
        self.broken = RuntimeError(
            "this process lane was inherited through os.fork(); it belongs to the parent"
        )
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.wake_r = self.wake_w = -1
        self.ready = []
        self.send_failures = []
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.forget_after_fork()
        self.pending.clear()
        self.commands.clear()

    def terminate_workers(self) -> None:
        """SIGTERM every worker (and its children); running tasks are cancelled on return."""
        self._kill_all(signal.SIGTERM)

    def kill_workers(self) -> None:
        """SIGKILL every worker (and its children); running tasks are cancelled on return."""
        self._kill_all(signal.SIGKILL)

    def _kill_all(self, sig: int) -> None:
        manager = self._manager
        if self.foreign or manager is None:
            return
        done = threading.Event()
        # The manager serves commands on every turn (shutdown included) and releases them all
        # as it exits: the wait needs no bound of its own.
        if self.command("kill-all", (sig, done)) and manager is not threading.current_thread():
            done.wait()


def _stays(task: Task) -> bool:  # late binding's default: a task stays here
    return False
