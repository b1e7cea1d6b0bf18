"""Supervision of the lane's workers: start, retire, reap, replace and kill them.

A mixin of the manager thread (``_manager.py``): the methods here run on that thread only.

A worker is signalled and reaped only through its ``Child`` handle (``_handle.py``, shared with
process actors): through a pidfd, and its process group only before the reap, so nothing here
ever signals a recycled pid.

A worker that cannot start (EAGAIN from fork at a container's ``pids.max``, EMFILE making its
pipe) fails no task: starts are retried with a short backoff (a longer one while other workers
run the tasks: the lane degrades to the workers it has), and only when no worker could be
started for ``START_GIVE_UP`` seconds while none is alive do the waiting tasks fail (a
``BrokenExecutorError`` with the start error as its cause). The lane stays open and starts
workers again as soon as it can.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from .. import _faults
from .._exceptions import BrokenExecutorError, TaskTimeoutError
from .._futures import Task
from .._shm import cleanup_shared_memory, remove_made_by
from ._frames import FrameReader, pipe_budget, write_frame
from ._handle import Child
from ._rebuild import discard
from ._ring import RingFile, carry
from ._supervise import START_BACKOFF, START_GIVE_UP
from ._threadlimits import thread_limit_env
from ._wire import STOP
from ._worker import worker_main

if TYPE_CHECKING:
    from ._lane import ProcessLane

logger = logging.getLogger("hybridexec")

IDLE, BUSY, RETIRING, DYING = "idle", "busy", "retiring", "dying"

RETIRE_GRACE = 0.5
"""Seconds a worker told to stop may take to exit before it is killed (a thread it was left
with can hold it up); short, since exit waits for it (I5)."""


SERVED_BACKOFF = (1.0, 4.0)
"""The same while other workers are alive to run the waiting tasks."""


class WorkerRecord:
    """What the manager knows about one worker process.

    ``tasks`` are the calls sent and not yet answered, in the order sent: the worker answers
    them in that order and writes each answer before it starts the next call, so the first
    is the one running (or about to), and the others have not started.
    """

    __slots__ = (
        "budget",
        "child",
        "conns",
        "drop_at",
        "expired",
        "fd",
        "idle_since",
        "kill_at",
        "pid",
        "reader",
        "retire_why",
        "rfd",
        "ring",
        "sentinel",
        "state",
        "tasks",
        "tasks_done",
    )

    def __init__(self, child: Child, requests: Any, replies: Any, ring: RingFile | None) -> None:
        self.child = child  # signalled and reaped only through it: never a recycled pid
        self.ring = ring  # the group calls it finished and has not answered (_ring.py)
        self.conns = (requests, replies)  # they own the descriptors: closed in _forget
        self.fd: int = requests.fileno()  # calls go out here, raw frames
        self.rfd: int = replies.fileno()  # replies come back here
        self.reader = FrameReader(self.rfd)
        self.budget = pipe_budget(self.fd)
        self.pid: int = child.pid
        self.sentinel: int = child.sentinel
        self.tasks: deque[Task] = deque()
        self.state = IDLE
        self.tasks_done = 0
        self.idle_since = time.monotonic()
        self.kill_at: float | None = None
        self.drop_at: float | None = None  # the running call was stopped: killed at this time
        self.retire_why: str | None = None  # retired once the calls in flight are answered
        # The running call's deadline passed: it fails with this once the worker is gone.
        self.expired: BaseException | None = None

    @property
    def task(self) -> Task | None:
        """The call running in the worker (or about to run), or None."""
        return self.tasks[0] if self.tasks else None


class Supervision:
    """Worker processes of one lane, as the manager thread keeps them."""

    lane: ProcessLane
    workers: dict[int, WorkerRecord]
    by_object: dict[Any, WorkerRecord]
    grace: float
    starting: Any
    start_error: BaseException | None
    failing_since: float | None
    gave_up: bool
    retry_at: float
    backoff: float

    def _handle_reply(self, worker: WorkerRecord, data: bytes) -> None:
        raise NotImplementedError  # the manager reads replies

    def _handle_frames(self, worker: WorkerRecord) -> None:
        """Handle every whole reply buffered from ``worker`` (a large one is read to its end)."""
        reader = worker.reader
        while True:
            try:
                data = reader.next_frame()
            except (EOFError, OSError):
                self.by_object.pop(worker.rfd, None)  # it died mid-reply: its sentinel tells
                return
            if data is None:
                return
            if worker.expired is not None:
                # The timed-out call's reply, written before the kill landed: the call fails
                # with its timeout as its worker is reaped (a timed call goes alone).
                if not reader.flagged:
                    discard(data)
                continue
            self._handle_reply(worker, data)

    def _poll_replies(self, worker: WorkerRecord) -> None:
        """Read and handle the replies ``worker`` has written so far, without blocking."""
        try:
            while worker.rfd in self.by_object and wait([worker.rfd], 0):
                try:
                    worker.reader.fill()
                finally:
                    self._handle_frames(worker)
        except (EOFError, OSError):
            self.by_object.pop(worker.rfd, None)

    def _from_ring(self, worker: WorkerRecord) -> str | None:
        raise NotImplementedError  # _crashes: the calls a dead worker finished

    def _on_crash(
        self, task: Task, worker: WorkerRecord, exitcode: int | None, ring: str | None
    ) -> None:
        raise NotImplementedError  # scheduling fails the task or runs a batch's items again

    def _replace(self) -> None:
        # Heal at once after a crash or a kill, so the next task does not wait for a start.
        live = sum(1 for w in self.workers.values() if w.state in (IDLE, BUSY))
        if not self.lane.shutting_down and live < self.lane.max_processes:
            self._start_worker()

    def _start_worker(self) -> WorkerRecord | None:
        """Start a worker (through the lane's context: the fork server by default)."""
        now = time.monotonic()
        if now < self.retry_at:
            if self._live() or self.retry_at - now <= START_BACKOFF[1]:
                return None  # the last start failed: retried when the backoff ends
            # The workers that served the queue while starts failed are gone: try now, and
            # the waiting tasks get a fresh START_GIVE_UP window.
            self.failing_since = now
        lane = self.lane
        ctx = lane.context
        server = lane.start_method == "forkserver"
        conns: list[Any] = []
        ring = None
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.pipe")
            ring = RingFile.create()
            if ring is not None:
                conns.append(carry(os.dup(ring.fd)))
            # Two one-way pipes (the one framing, raw descriptors): calls, then replies. The
            # Connection objects only carry the descriptors to the child and own them here.
            conns.extend(ctx.Pipe(duplex=False))  # (worker reads calls, we write them)
            conns.extend(ctx.Pipe(duplex=False))  # (we read replies, worker writes them)
            calls_r, calls_w, replies_r, replies_w = conns[-4:]
            self.starting = [calls_w, replies_r]  # closed by forget_after_fork in the child
            args = (
                calls_r,
                replies_w,
                lane.lifeline_r,
                lane.initializer,
                lane.report_memory,
                # Under forkserver the kernel's parent-death signal comes from the
                # forkserver, which exits a little after us: the lifeline thread first kills
                # the worker's children, and the signal still stops a worker stuck in C
                # holding the GIL. Under spawn and fork it would fire at the same instant
                # as the lifeline and orphan the worker's children, so the lifeline alone
                # guards those.
                server,
                _faults.snapshot(),
                # processes x BLAS/OpenMP threads <= cores (issue 15)
                thread_limit_env(lane.max_processes),
                conns[0] if ring is not None else None,
            )
            process = ctx.Process(  # type: ignore[attr-defined]
                target=worker_main,
                args=args,
                name=f"{lane.name}-worker",
            )
            if _faults.ACTIVE:
                _faults.hit("lane.start")
            _descriptors_to_spare()  # (multiprocessing's own pipes leak at EMFILE, any method)
            process.start()
        except Exception as exc:  # EAGAIN, EMFILE, ENOMEM...: transient, retried (I6)
            self.starting = None
            for conn in conns:
                conn.close()
            if ring is not None:
                ring.close()
            self._start_failed(exc)
            return None
        self.starting = None
        for conn in (*conns[:-4], calls_r, replies_w):  # the child's ends
            conn.close()
        if self.failing_since is not None:
            logger.warning("hybridexec: worker processes start again")
        self.failing_since = self.start_error = None
        self.gave_up = False
        worker = WorkerRecord(Child(process), calls_w, replies_r, ring)
        self.workers[worker.pid] = worker
        self.by_object[worker.rfd] = worker
        self.by_object[worker.sentinel] = worker
        lane.stats["workers_started"] += 1
        logger.debug("started worker pid %d (%s)", worker.pid, lane.start_method)
        return worker

    def _start_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.failing_since is None:  # a daemonic process never may: no retries (15a's A6)
            # Once waiting tasks failed, and no start succeeded since, the next tasks get a
            # short window, not a full one each: a map sending waves of calls (limit=) would
            # wait START_GIVE_UP per wave while nothing can start.
            window = START_BACKOFF[1] if self.gave_up else START_GIVE_UP
            self.failing_since = now - START_GIVE_UP + window * ("daemonic" not in str(exc))
            self.backoff = START_BACKOFF[0]
            if not self.gave_up:
                logger.warning("hybridexec: could not start a worker process (%r); retrying", exc)
        else:
            self.backoff *= 2
        # While workers serve the queue, starts are retried seldom: a failed start can take
        # the manager most of a second (a fork server that died of EAGAIN is started again, a
        # new interpreter, only to die of it again), and the lane runs on the workers it has.
        low, high = SERVED_BACKOFF if self._live() else START_BACKOFF
        self.backoff = min(max(self.backoff, low), high)
        self.start_error = exc
        self.retry_at = now + self.backoff

    def _live(self) -> int:
        return sum(1 for w in self.workers.values() if w.state in (IDLE, BUSY))

    def _starts_given_up(self) -> BaseException | None:
        """The error that waiting tasks fail with now that starts failed too long, or None."""
        since = self.failing_since
        if since is None or self._live() or time.monotonic() - since < START_GIVE_UP:
            return None
        exc = self.start_error
        self.failing_since = None  # tasks submitted later get a fresh (short) window
        self.gave_up = True
        daemonic = "daemonic" in str(exc)  # given up at once (15a's A6)
        why = f"could be started for {START_GIVE_UP:g} s"
        why = "can be started in a daemonic process" if daemonic else why
        logger.error("hybridexec: no worker process %s (%r); failing waiting tasks", why, exc)
        err = BrokenExecutorError(f"no worker process {why}: {exc!r}")
        err.__cause__ = exc
        return err

    def _retire(self, worker: WorkerRecord, why: str) -> None:
        logger.debug("retiring worker pid %d: %s", worker.pid, why)
        worker.state = RETIRING
        worker.kill_at = time.monotonic() + RETIRE_GRACE  # a worker that lingers is killed
        try:
            write_frame(worker.fd, STOP)  # after the calls in flight: they are answered first
        except OSError:
            pass

    def _reap(self, worker: WorkerRecord) -> None:
        # A worker may have answered calls just before it died: read every reply first, so
        # that the first call left without one is exactly the one it was running. Then the
        # children it left behind go, before the join frees its group's id (Child.reap).
        self._poll_replies(worker)
        exitcode = worker.child.reap(kill_group=True, timeout=1.0)  # its sentinel fired
        ring = self._from_ring(worker)  # the group calls it finished get their outcomes
        self._forget(worker)
        tasks, worker.tasks = list(worker.tasks), deque()
        task = tasks[0] if tasks else None
        if worker.state == DYING or task is not None or exitcode != 0:
            # A worker killed or crashed with a large result in flight leaves its segment
            # behind (named for this process, marked as its): remove it now, not at exit.
            remove_made_by(worker.pid)
            cleanup_shared_memory()  # and those of its own (a SharedArray it made)
        # The calls behind the running one never started: they are sent again, first in line.
        again = [t for t in tasks[1:] if not t.future.done()]
        self.lane.pending.extendleft(reversed(again))
        if task is not None and not task.future.done() and worker.expired is not None:
            task.future.settle(False, worker.expired)  # now that its code is stopped (_expire)
            self._replace()
        elif task is not None and not task.future.done():
            self.lane.stats["crashes"] += 1
            self._on_crash(task, worker, exitcode, ring)
            self._replace()
        elif task is not None or again or worker.state == DYING:
            self._replace()
        elif worker.state not in (RETIRING, DYING):
            logger.info("idle worker pid %d exited (exit code %s)", worker.pid, exitcode)

    def _forget(self, worker: WorkerRecord) -> None:
        self.workers.pop(worker.pid, None)
        self.by_object.pop(worker.rfd, None)
        self.by_object.pop(worker.sentinel, None)
        for conn in worker.conns:
            conn.close()
        if worker.ring is not None:
            worker.ring.close()
        worker.child.close()

    def abandon(self) -> None:
        """The manager thread could not start: kill and reap the workers started for it (I3)."""
        for w in list(self.workers.values()):
            self._signal(w, signal.SIGKILL)
            w.child.reap(kill_group=True, timeout=1.0)
            self._forget(w)

    def _signal(self, worker: WorkerRecord, sig: int) -> None:
        """Signal a worker the manager still owns, and its process group (see ``Child``)."""
        worker.child.signal(sig)

    def _expire(self, worker: WorkerRecord, task: Task) -> None:
        """The deadline of the call ``worker`` runs passed: kill the worker, fail the call.

        The call fails when the worker is reaped, not before: a caller that sees its
        ``TaskTimeoutError`` knows that the call's code runs no more (no side effect after).
        """
        timeout = f"{task.timeout:g} s timeout"
        worker.expired = TaskTimeoutError(
            f"task exceeded its {timeout}; worker pid {worker.pid} was killed"
        )
        self._kill(worker, f"task exceeded its {timeout}")

    def _kill(self, worker: WorkerRecord, why: str, sig: int = signal.SIGTERM) -> None:
        if worker.state == DYING:
            return
        logger.info("killing worker pid %d: %s", worker.pid, why)
        self.lane.stats["kills"] += 1
        worker.state = DYING
        worker.kill_at = time.monotonic() + self.grace
        self._signal(worker, sig)


def _descriptors_to_spare() -> None:
    """Raise ``OSError`` (EMFILE) unless a worker's start can get its descriptors.

    multiprocessing connects to the fork server and only then makes the new process's two
    pipes: out of descriptors there, it hangs up mid-request, and the fork server dies of it
    (taking every worker it forked along: their parent-death signal). Under fork and spawn,
    its first pipe leaks when the second cannot be made. Failing here instead is a start
    failure like any other: retried with a backoff (I6).
    """
    first = os.pipe()
    try:
        second = os.pipe()  # (EMFILE here: the first pipe still closes)
        try:
            os.close(os.dup(first[0]))
        finally:
            os.close(second[0])
            os.close(second[1])
    finally:
        os.close(first[0])
        os.close(first[1])
