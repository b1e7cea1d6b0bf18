"""The manager thread: the only code that touches worker pipes and sentinels.

It sleeps in ``multiprocessing.connection.wait`` on the wake-up pipe, every worker's pipe and
every worker's sentinel, with the nearest deadline as timeout: no polling loop. On each wake it
runs commands from other threads, reads replies, reaps dead workers, enforces deadlines,
dispatches pending tasks to idle workers (starting workers as needed) and retires workers that
are idle too long, too old or too big.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import signal
import threading
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from .._exceptions import (
    BrokenExecutorError,
    SerializationError,
    TaskTimeoutError,
)
from .._futures import Outcome, Task
from .._serialize import loads, unpack_exception
from ._supervise import DEFAULT_GRACE, signal_tree
from ._supervision import BUSY, IDLE, Supervision, WorkerRecord
from ._wire import Reply
from ._worker import unwrap

if TYPE_CHECKING:
    from ._lane import ProcessLane

logger = logging.getLogger("hybridexec")


class Manager(Supervision, threading.Thread):
    """Moves work to workers and results back; one per process lane."""

    def __init__(self, lane: ProcessLane) -> None:
        super().__init__(name=f"{lane.name}-process-manager", daemon=True)
        self.lane = lane
        self.workers: dict[int, WorkerRecord] = {}  # by pid
        self.by_object: dict[Any, WorkerRecord] = {}  # conn and sentinel -> worker
        self.deadlines: list[tuple[float, int, Task]] = []
        self.seq = itertools.count()
        self.grace = DEFAULT_GRACE
        self.starting: Any = None  # the parent's end of the pipe of a worker being started

    def forget_after_fork(self) -> None:
        """In a forked child: close this side's worker pipes; the workers are the parent's."""
        conns = [w.conn for w in self.workers.values()]
        if self.starting is not None:
            conns.append(self.starting)
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass
        self.workers.clear()
        self.by_object.clear()

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never leave a future unresolved
            logger.exception("hybridexec process manager failed; the process lane is broken")
            self._break(exc)
        finally:
            self.lane.close_pipes()

    def _loop(self) -> None:
        lane = self.lane
        while True:
            self._run_commands()
            self._dispatch()
            if lane.shutting_down and not lane.pending and not self._busy():
                self._stop_workers()
                return
            timeout = self._next_timeout()
            objects: list[Any] = [lane.wake_r]
            objects.extend(self.by_object)
            ready = wait(objects, timeout)
            for obj in ready:
                if obj is lane.wake_r:
                    lane.drain_wakeups()
                    continue
                worker = self.by_object.get(obj)
                if worker is None:
                    continue  # reaped by an earlier object in this round
                if obj is worker.conn:
                    self._receive(worker)
                else:
                    self._reap(worker)
            self._enforce_times()

    def _busy(self) -> bool:
        return any(w.state == BUSY for w in self.workers.values())

    def _next_timeout(self) -> float | None:
        times: list[float] = []
        while self.deadlines and not self._deadline_live(self.deadlines[0][2]):
            heapq.heappop(self.deadlines)
        if self.deadlines:
            times.append(self.deadlines[0][0])
        idle_timeout = self.lane.idle_timeout
        for w in self.workers.values():
            if w.kill_at is not None:
                times.append(w.kill_at)
            if idle_timeout is not None and w.state == IDLE:
                times.append(w.idle_since + idle_timeout)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _deadline_live(self, task: Task) -> bool:
        return any(w.task is task for w in self.workers.values())

    # ---- commands from other threads ------------------------------------------------------
    def _run_commands(self) -> None:
        commands = self.lane.commands
        while commands:
            name, arg = commands.popleft()
            if name == "stop-task":
                for w in list(self.workers.values()):
                    if w.task is arg:
                        w.task = None
                        self._kill(w, "its task was cancelled")
            elif name == "kill-all":
                sig, done = arg
                for w in list(self.workers.values()):
                    task = w.task
                    w.task = None
                    if task is not None:
                        task.future.cancel()
                    self._kill(w, "terminate/kill requested", sig=sig)
                done.set()

    # ---- dispatch -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        lane = self.lane
        pending = lane.pending
        while pending:
            worker = self._idle_worker()
            if worker is None:
                return
            try:
                # shutdown(cancel_futures=True) drains the deque from another thread.
                task = pending.popleft()
            except IndexError:
                return
            if not task.future.set_running_or_notify_cancel():
                continue
            self._send(worker, task)

    def _idle_worker(self) -> WorkerRecord | None:
        for w in self.workers.values():
            if w.state == IDLE:
                return w
        live = sum(1 for w in self.workers.values() if w.state in (IDLE, BUSY))
        if live >= self.lane.max_processes:
            return None
        return self._start_worker()

    def _send(self, worker: WorkerRecord, task: Task) -> None:
        worker.task = task
        worker.state = BUSY
        task.start_clock()
        if task.deadline is not None:
            heapq.heappush(self.deadlines, (task.deadline, next(self.seq), task))
        # Cancelling a running task kills its worker (for a batch: the whole batch, which only
        # happens when a map is abandoned).
        task.future._hx_stop = lambda t=task: self.lane.command("stop-task", t)
        assert task.payload is not None
        try:
            worker.conn.send_bytes(task.payload)
        except OSError:
            pass  # the worker died; its sentinel fires next and fails the task precisely

    # ---- replies --------------------------------------------------------------------------
    def _receive(self, worker: WorkerRecord) -> None:
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            # The worker is exiting: stop watching its pipe; its sentinel tells how it ended.
            self.by_object.pop(worker.conn, None)
            return
        self._handle_reply(worker, data)

    def _handle_reply(self, worker: WorkerRecord, data: bytes) -> None:
        task = worker.task
        worker.task = None
        if task is None:
            return  # the task was settled already (timed out or cancelled)
        worker.tasks_done += 1
        lane = self.lane
        lane.stats["tasks_done"] += 1
        try:
            reply = Reply(*loads(data))
        except SerializationError as exc:
            err = SerializationError(f"the task's result could not be unpickled: {exc}")
            err.__cause__ = exc.__cause__
            count = len(task.items) if task.batch else 1
            reply = Reply([(False, err)] * count, 0.0, 0.0, None)
            outcomes = list(reply.outcomes)
        else:
            outcomes = [_decode(ok, value) for ok, value in reply.outcomes]
        task.elapsed = reply.elapsed
        lane.record_timing(task, reply.elapsed, reply.cpu)
        if task.batch:
            task.future.settle(True, outcomes)
        else:
            ok, value = outcomes[0]
            task.future.settle(ok, value)
        self._after_task(worker, reply.rss)

    def _after_task(self, worker: WorkerRecord, rss: int | None) -> None:
        lane = self.lane
        if lane.max_tasks_per_child is not None and worker.tasks_done >= lane.max_tasks_per_child:
            self._retire(worker, "max_tasks_per_child reached")
        elif (
            lane.max_memory_per_child is not None
            and rss is not None
            and (rss > lane.max_memory_per_child)
        ):
            self._retire(worker, f"resident memory {rss >> 20} MiB over max_memory_per_child")
        else:
            worker.state = IDLE
            worker.idle_since = time.monotonic()

    # ---- deaths, kills, deadlines ---------------------------------------------------------
    def _enforce_times(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, task = heapq.heappop(self.deadlines)
            for w in list(self.workers.values()):
                if w.task is task:
                    w.task = None
                    task.future.settle(
                        False,
                        TaskTimeoutError(
                            f"task exceeded its {task.timeout:g} s timeout; "
                            f"worker pid {w.pid} was killed"
                        ),
                    )
                    self._kill(w, f"task exceeded its {task.timeout:g} s timeout")
        idle_timeout = self.lane.idle_timeout
        for w in list(self.workers.values()):
            if w.kill_at is not None and w.kill_at <= now:
                signal_tree(w.pid, signal.SIGKILL)
                w.kill_at = None
            elif (
                idle_timeout is not None and w.state == IDLE and now - w.idle_since >= idle_timeout
            ):
                self._retire(w, f"idle for {idle_timeout:g} s")

    # ---- the end --------------------------------------------------------------------------
    def _stop_workers(self) -> None:
        for w in list(self.workers.values()):
            if w.state == IDLE:
                self._retire(w, "shutdown")
        deadline = time.monotonic() + 5.0
        while self.workers:
            remaining = deadline - time.monotonic()
            sentinels = [w.sentinel for w in self.workers.values()]
            if remaining <= 0:
                for w in list(self.workers.values()):
                    self._kill(w, "did not exit at shutdown", sig=signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                remaining = 5.0
            for s in wait(sentinels, min(remaining, 0.5)):
                worker = self.by_object.get(s)
                if worker is not None:
                    self._reap(worker)
            self._enforce_times()

    def _break(self, exc: BaseException) -> None:
        lane = self.lane
        lane.broken = exc
        err = BrokenExecutorError(f"the process lane broke: {exc!r}")
        err.__cause__ = exc
        for w in list(self.workers.values()):
            task = w.task
            w.task = None
            if task is not None:
                task.future.settle(False, err)
            signal_tree(w.pid, signal.SIGKILL)
        while lane.pending:
            task = lane.pending.popleft()
            if task.future.set_running_or_notify_cancel():
                task.future.settle(False, err)
        for w in list(self.workers.values()):
            w.process.join(1.0)
            self._forget(w)


def _decode(ok: bool, value: Any) -> Outcome:
    if not ok:
        return (False, unpack_exception(value))
    try:
        return (True, unwrap(value))
    except SerializationError as exc:
        err = SerializationError(f"the task's result could not be unpickled: {exc}")
        err.__cause__ = exc.__cause__
        return (False, err)
