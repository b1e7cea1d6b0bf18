"""The manager thread: the only code that touches worker pipes and sentinels.

It sleeps in ``multiprocessing.connection.wait`` on the wake-up pipe, every worker's pipe and
every worker's sentinel, with the nearest deadline as timeout: no polling loop. On each wake it
runs commands from other threads, reads replies, reaps dead workers, enforces deadlines,
dispatches pending tasks to idle workers (starting workers as needed) and retires workers that
are idle too long, too old or too big.
"""

from __future__ import annotations

import concurrent.futures
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
    WorkerCrashedError,
    signal_name,
)
from .._futures import Future, Outcome, Task
from .._serialize import loads, unpack_exception
from .._shm_janitor import cleanup_shared_memory
from ._messages import STOP, Reply, encode_call
from ._util import DEFAULT_GRACE, signal_tree
from ._worker import unwrap, worker_main

if TYPE_CHECKING:
    from ._pool import ProcessLane

logger = logging.getLogger("hybridexec")

IDLE, BUSY, RETIRING, DYING = "idle", "busy", "retiring", "dying"


class WorkerRecord:
    """What the manager knows about one worker process."""

    __slots__ = (
        "conn",
        "idle_since",
        "kill_at",
        "pid",
        "process",
        "sentinel",
        "state",
        "task",
        "tasks_done",
    )

    def __init__(self, process: Any, conn: Any) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.task: Task | None = None
        self.state = IDLE
        self.tasks_done = 0
        self.idle_since = time.monotonic()
        self.kill_at: float | None = None


class Manager(threading.Thread):
    """Moves work to workers and results back; one per process lane."""

    def __init__(self, lane: ProcessLane) -> None:
        super().__init__(name=f"{lane.name}-process-manager", daemon=True)
        self.lane = lane
        self.workers: dict[int, WorkerRecord] = {}  # by pid
        self.by_object: dict[Any, WorkerRecord] = {}  # conn and sentinel -> worker
        self.deadlines: list[tuple[float, int, Task]] = []
        self.seq = itertools.count()
        self.grace = DEFAULT_GRACE

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

    def _replace(self) -> None:
        # Heal at once after a crash or a kill, so the next task does not wait for a start.
        live = sum(1 for w in self.workers.values() if w.state in (IDLE, BUSY))
        if not self.lane.shutting_down and live < self.lane.max_processes:
            self._start_worker()

    def _start_worker(self) -> WorkerRecord | None:
        lane = self.lane
        ctx = lane.context
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        inherited: tuple[int, ...] = ()
        if lane.start_method == "fork":
            inherited = (
                lane.lifeline_w.fileno(),
                lane.wake_r,
                lane.wake_w,
                parent_conn.fileno(),
                *(w.conn.fileno() for w in self.workers.values()),
            )
        process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                child_conn,
                lane.lifeline_r,
                inherited,
                lane.initializer,
                lane.report_memory,
                # Under forkserver the kernel's parent-death signal comes from the forkserver,
                # which exits a little after us: the lifeline thread first kills the worker's
                # children, and the signal still stops a worker stuck in C holding the GIL.
                # Under spawn and fork it would fire at the same instant as the lifeline and
                # orphan the worker's children, so the lifeline alone guards those.
                lane.start_method == "forkserver",
            ),
            name=f"{lane.name}-worker",
        )
        try:
            process.start()
        except Exception as exc:
            parent_conn.close()
            child_conn.close()
            try:
                task: Task | None = lane.pending.popleft()
            except IndexError:  # drained by shutdown meanwhile
                task = None
            if task is not None and task.future.set_running_or_notify_cancel():
                err = BrokenExecutorError(f"could not start a worker process: {exc!r}")
                err.__cause__ = exc
                task.future.settle(False, err)
            return None
        child_conn.close()
        worker = WorkerRecord(process, parent_conn)
        self.workers[worker.pid] = worker
        self.by_object[worker.conn] = worker
        self.by_object[worker.sentinel] = worker
        lane.stats["workers_started"] += 1
        logger.debug("started worker pid %d (%s)", worker.pid, lane.start_method)
        return worker

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

    def _retire(self, worker: WorkerRecord, why: str) -> None:
        logger.debug("retiring worker pid %d: %s", worker.pid, why)
        worker.state = RETIRING
        worker.kill_at = time.monotonic() + 5.0  # a retiring worker that lingers is killed
        try:
            worker.conn.send_bytes(STOP)
        except OSError:
            pass

    # ---- deaths, kills, deadlines ---------------------------------------------------------
    def _reap(self, worker: WorkerRecord) -> None:
        # A worker may have sent its reply just before exiting: read it first.
        if worker.conn in self.by_object:
            try:
                while worker.conn.poll():
                    self._handle_reply(worker, worker.conn.recv_bytes())
            except (EOFError, OSError):
                pass
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        self._forget(worker)
        if worker.state == DYING or exitcode is None or exitcode < 0:
            signal_tree(worker.pid, signal.SIGKILL)  # children left behind go too
        if worker.state == DYING or worker.task is not None or exitcode != 0:
            # A worker killed or crashed with a large result in flight leaves its segment
            # behind (named after its pid, now dead): remove it now, not at the next start.
            cleanup_shared_memory()
        task = worker.task
        if task is not None:
            self.lane.stats["crashes"] += 1
            self._on_crash(task, worker, exitcode)
            self._replace()
        elif worker.state == DYING:
            self._replace()
        elif worker.state not in (RETIRING, DYING):
            logger.info("idle worker pid %d exited (exit code %s)", worker.pid, exitcode)

    def _forget(self, worker: WorkerRecord) -> None:
        self.workers.pop(worker.pid, None)
        self.by_object.pop(worker.conn, None)
        self.by_object.pop(worker.sentinel, None)
        worker.conn.close()
        try:
            worker.process.close()
        except ValueError:
            pass

    def _on_crash(self, task: Task, worker: WorkerRecord, exitcode: int | None) -> None:
        if task.batch and len(task.items) > 1:
            # One item of the batch killed the worker, or something outside did: run the items
            # one by one, so only the culprit fails (it kills its worker a second time).
            logger.info(
                "worker pid %d died (exit code %s) running a batch of %d; retrying one by one",
                worker.pid,
                exitcode,
                len(task.items),
            )
            self._split(task)
            return
        name = signal_name(exitcode)
        how = f"was killed by {name}" if name else f"exited with code {exitcode}"
        message = f"the worker process (pid {worker.pid}) running this task {how}"
        if name == "SIGKILL":
            message += "; if nothing killed it on purpose, memory may have run out (OOM killer)"
        logger.info("%s", message)
        err = WorkerCrashedError(message, exitcode=exitcode, pid=worker.pid)
        if task.batch:
            task.future.settle(True, [(False, err)])
        else:
            task.future.settle(False, err)

    def _split(self, task: Task) -> None:
        parent = task.future
        outcomes: list[Outcome | None] = [None] * len(task.items)
        remaining = [len(task.items)]
        lock = threading.Lock()
        singles: list[Task] = []

        for index, item in enumerate(task.items):

            def done(fut: concurrent.futures.Future[Any], index: int = index) -> None:
                if fut.cancelled():
                    # shutdown(cancel_futures=True) dropped the retries: the batch is cancelled.
                    parent.cancel()
                    return
                if fut.exception() is not None:
                    outcome: Outcome = (False, fut.exception())
                else:
                    outcome = fut.result()[0]
                with lock:
                    outcomes[index] = outcome
                    remaining[0] -= 1
                    finished = remaining[0] == 0
                if finished:
                    parent.settle(True, list(outcomes))

            future: Future[Any] = Future(kind="process")
            future.add_done_callback(done)
            single = Task(task.fn, [item], future, batch=True, timeout=task.timeout)
            single.payload = encode_call(task.fn, [item], True)
            singles.append(single)

        def stop_retries() -> None:
            # Cancelling the batch (an abandoned map) cancels its retries, killing a running one.
            for single in singles:
                single.future.cancel()

        parent._hx_stop = stop_retries
        self.lane.pending.extendleft(reversed(singles))

    def _kill(self, worker: WorkerRecord, why: str, sig: int = signal.SIGTERM) -> None:
        if worker.state == DYING:
            return
        logger.info("killing worker pid %d: %s", worker.pid, why)
        self.lane.stats["kills"] += 1
        worker.state = DYING
        worker.kill_at = time.monotonic() + self.grace
        signal_tree(worker.pid, sig)

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
