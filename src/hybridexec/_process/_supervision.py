"""Supervision of the lane's workers: start, retire, reap, replace and kill them.

A mixin of the manager thread (``_manager.py``): the methods here run on that thread only.
A worker's pid is signalled only while the manager still owns it (until it is reaped): after
that the pid may belong to another process, so nothing here falls back to ``os.kill`` on it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from .._exceptions import BrokenExecutorError, WorkerCrashedError, signal_name
from .._futures import Future, Outcome, Task
from .._shm import cleanup_shared_memory
from ._supervise import guard, signal_tree
from ._wire import STOP, encode_call
from ._worker import worker_main

if TYPE_CHECKING:
    from ._lane import ProcessLane

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


class Supervision:
    """Worker processes of one lane, as the manager thread keeps them."""

    lane: ProcessLane
    workers: dict[int, WorkerRecord]
    by_object: dict[Any, WorkerRecord]
    grace: float
    starting: Any

    def _handle_reply(self, worker: WorkerRecord, data: bytes) -> None:
        raise NotImplementedError  # the manager reads replies

    def _replace(self) -> None:
        # Heal at once after a crash or a kill, so the next task does not wait for a start.
        live = sum(1 for w in self.workers.values() if w.state in (IDLE, BUSY))
        if not self.lane.shutting_down and live < self.lane.max_processes:
            self._start_worker()

    def _start_worker(self) -> WorkerRecord | None:
        lane = self.lane
        ctx = lane.context
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.starting = parent_conn  # closed by forget_after_fork in a fork-started worker
        process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                child_conn,
                lane.lifeline_r,
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
            self.starting = None
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
        self.starting = None
        child_conn.close()
        guard(process.pid)  # killed with its tree if this process dies, GIL or not (I4)
        worker = WorkerRecord(process, parent_conn)
        self.workers[worker.pid] = worker
        self.by_object[worker.conn] = worker
        self.by_object[worker.sentinel] = worker
        lane.stats["workers_started"] += 1
        logger.debug("started worker pid %d (%s)", worker.pid, lane.start_method)
        return worker

    def _retire(self, worker: WorkerRecord, why: str) -> None:
        logger.debug("retiring worker pid %d: %s", worker.pid, why)
        worker.state = RETIRING
        worker.kill_at = time.monotonic() + 5.0  # a retiring worker that lingers is killed
        try:
            worker.conn.send_bytes(STOP)
        except OSError:
            pass

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
