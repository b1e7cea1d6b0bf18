"""The manager thread: the only code that touches worker pipes and sentinels.

It sleeps in ``multiprocessing.connection.wait`` on the wake-up pipe, every worker's pipe and
every worker's sentinel, with the nearest deadline as timeout: no polling loop. On each wake it
runs commands from other threads, reads replies, reaps dead workers, enforces deadlines,
dispatches pending tasks to idle workers (starting workers as needed) and retires workers that
are idle too long, too old or too big. At shutdown it keeps turning (commands such as
``kill_workers()`` are served at once) until the last worker it told to stop has exited.

A turn that raises (a transient ``OSError`` from ``wait()``, a bug) fails no task by itself:
the turn is retried after a short pause. Only when turns keep failing for ``TURN_GIVE_UP``
seconds are the tasks in flight and queued failed (``BrokenExecutorError``, cause chained) and
the workers killed; the lane stays open. Every path that fails queued tasks takes the lane's
lock, so a racing ``submit`` is either refused or served, never lost.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import signal
import threading
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from .. import _faults
from .._exceptions import (
    BrokenExecutorError,
    SerializationError,
    TaskTimeoutError,
)
from .._futures import Outcome, Task
from .._serialize import loads, unpack_exception
from ._supervise import DEFAULT_GRACE
from ._supervision import BUSY, IDLE, START_GIVE_UP, Supervision, WorkerRecord
from ._wire import Reply
from ._worker import unwrap

if TYPE_CHECKING:
    from ._lane import ProcessLane

logger = logging.getLogger("hybridexec")

TURN_GIVE_UP = 1.0
"""Seconds of failing manager turns after which the work in flight fails (the lane lives on)."""


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
        # Worker starts that fail (see Supervision._start_worker) and turns that fail.
        self.start_error: BaseException | None = None
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self.backoff = 0.0
        self.turns_failing_since: float | None = None

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
        while True:
            try:
                if _faults.ACTIVE:
                    _faults.hit("lane.loop")
                if self._turn():
                    return
            except Exception as exc:
                self._turn_failed(exc)
            else:
                self.turns_failing_since = None

    def _turn(self) -> bool:
        """One wake-up's work; True when the lane is shut down and every worker has gone."""
        lane = self.lane
        self._run_commands()
        self._dispatch()
        err = self._starts_given_up()
        if err is not None:
            self._fail_pending(err)
        if lane.shutting_down and not lane.pending:
            for w in list(self.workers.values()):
                if w.state == IDLE:
                    self._retire(w, "shutdown")
            if not self.workers:
                return True
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
        return False

    def _turn_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        since = self.turns_failing_since
        if since is None:
            self.turns_failing_since = now
            logger.warning("hybridexec process manager: a turn failed (%r); retrying", exc)
        elif now - since >= TURN_GIVE_UP:
            logger.error(
                "hybridexec process manager: turns failed for %g s (%r); failing the work in "
                "flight and replacing the workers",
                TURN_GIVE_UP,
                exc,
            )
            self.turns_failing_since = None
            err = BrokenExecutorError(f"the process lane's manager kept failing: {exc!r}")
            err.__cause__ = exc
            try:
                for w in list(self.workers.values()):
                    task, w.task = w.task, None
                    if task is not None:
                        task.future.settle(False, err)
                    self._kill(w, "the manager kept failing", sig=signal.SIGKILL)
            finally:
                self._fail_pending(err)
        try:  # pause a little (a submit wakes it): a failing turn must not spin
            wait([self.lane.wake_r], 0.01)
        except Exception:
            pass

    def _fail_pending(self, err: BaseException) -> None:
        lane = self.lane
        with lane._lock:  # a submit racing this is refused or served, never lost
            tasks = list(lane.pending)
            lane.pending.clear()
        for task in tasks:
            if task.future.set_running_or_notify_cancel():
                task.future.settle(False, err)

    def _busy(self) -> bool:
        return any(w.state == BUSY for w in self.workers.values())

    def _next_timeout(self) -> float | None:
        times: list[float] = []
        while self.deadlines and not self._deadline_live(self.deadlines[0][2]):
            heapq.heappop(self.deadlines)
        if self.deadlines:
            times.append(self.deadlines[0][0])
        if self.lane.pending:
            if self.retry_at > time.monotonic():
                times.append(self.retry_at)  # the next start (a backoff outlives a give-up)
            if self.failing_since is not None:
                times.append(self.failing_since + START_GIVE_UP)  # waiting tasks fail then
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
                try:
                    for w in list(self.workers.values()):
                        task = w.task
                        w.task = None
                        if task is not None:
                            task.future.cancel()
                        self._kill(w, "terminate/kill requested", sig=sig)
                finally:
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
        task.future._hx_stop = functools.partial(self._stop_task, task)
        assert task.payload is not None
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.send")
            worker.conn.send_bytes(task.payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker died; its sentinel fires next and fails the task precisely
        except OSError as exc:
            # The call may be half written: this task fails and the worker goes (I6).
            worker.task = None
            err = BrokenExecutorError(f"the task could not be sent to its worker: {exc!r}")
            err.__cause__ = exc
            task.future.settle(False, err)
            self._kill(worker, "a call could not be sent to it", sig=signal.SIGKILL)

    def _stop_task(self, task: Task) -> None:
        self.lane.command("stop-task", task)  # False once the manager is gone: nothing to stop

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
        count = len(task.items) if task.batch else 1
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.unpickle_reply")
            reply = Reply(*loads(data))
            outcomes = [_decode(ok, value) for ok, value in reply.outcomes]
        except Exception as exc:  # the task's own failure: never the manager's, never lost
            cause = exc.__cause__ if isinstance(exc, SerializationError) else exc
            err = SerializationError(f"the task's result could not be unpickled: {exc}")
            err.__cause__ = cause
            reply = Reply([], 0.0, 0.0, None)
            outcomes = [(False, err)] * count
        task.elapsed = reply.elapsed
        try:
            lane.record_timing(task, reply.elapsed, reply.cpu)
        except Exception:  # the router's figures must not lose the task
            logger.exception("hybridexec: recording a task's timing failed")
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
                self._signal(w, signal.SIGKILL)
                w.kill_at = None
            elif (
                idle_timeout is not None and w.state == IDLE and now - w.idle_since >= idle_timeout
            ):
                self._retire(w, f"idle for {idle_timeout:g} s")

    # ---- the end --------------------------------------------------------------------------
    def _break(self, exc: BaseException) -> None:
        lane = self.lane
        err = BrokenExecutorError(f"the process lane broke: {exc!r}")
        err.__cause__ = exc
        with lane._lock:  # from here a submit is refused: nothing queued after this is lost
            lane.broken = exc
        for w in list(self.workers.values()):
            task = w.task
            w.task = None
            if task is not None:
                task.future.settle(False, err)
            self._signal(w, signal.SIGKILL)
        self._fail_pending(err)
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
