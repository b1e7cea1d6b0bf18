"""The manager thread: reads every worker pipe, watches the sentinels, keeps the bookkeeping.

It is the only code that reads worker pipes and changes a worker's records, save one exception:
before it sleeps, while no call is in flight, it offers its idle workers to submits, which may
write one call each to them under the lane's lock, and whose callers may then read its reply
(the direct path, ``_direct.py``); it takes them back under that lock as it wakes.

It sleeps in ``epoll`` on the wake-up pipe, every worker's reply pipe and sentinel, with the
nearest deadline as timeout: no polling loop. On each wake it runs commands from other threads,
reads replies, reaps dead workers, enforces deadlines, dispatches pending tasks (to idle workers
first, starting workers as needed, then a few calls ahead to busy ones: ``_schedule.py``) and
retires workers that are idle too long, too old or too big. At shutdown it keeps turning
(``kill_workers()`` is served at once) until the last worker it told to stop has exited.

A turn that raises (a transient ``OSError`` from ``poll()``, a bug) fails no task by itself:
the turn is retried after a short pause. Only when turns keep failing for ``TURN_GIVE_UP``
seconds are the tasks in flight and queued failed (``BrokenExecutorError``, cause chained) and
the workers killed; the lane stays open. Every path that fails queued tasks takes the lane's
lock, so a racing ``submit`` is either refused or served, never lost.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from .. import _callbacks, _faults
from .._exceptions import BrokenExecutorError
from .._futures import Future, Task
from .._waits import capped
from . import _child
from ._direct import Direct
from ._supervise import DEFAULT_GRACE, START_GIVE_UP
from ._supervision import BUSY, DYING, IDLE, WorkerRecord

if TYPE_CHECKING:
    from ._lane import ProcessLane

logger = logging.getLogger("hybridexec")

TURN_GIVE_UP = 1.0
"""Seconds of failing manager turns after which the work in flight fails (the lane lives on)."""
RELOCATE_LOOK = 0.05
"""Seconds between two looks at the queue's head while it waits for a worker: a routed call
follows a new verdict of its key (late binding), which nothing signals to this thread."""
DROP_GRACE = 0.05
"""Seconds a worker may go on running a call that was cancelled while it waited in the worker
(a short call, or it would not have been sent ahead) before the worker is killed."""


BOOTSTRAPPING = (
    "An attempt has been made to start a process lane in a worker process before it has "
    "finished its bootstrapping phase: the worker imports your script (as __mp_main__) and "
    "its unguarded top level ran there again. Put the code that starts work under\n\n"
    "    if __name__ == '__main__':\n\n"
    "(the same rule as multiprocessing's; see docs/getting-started.md)."
)


IMPORTING = (
    "A process lane cannot start in a worker process while it unpickles a task: a module "
    "imported for it (the task's function's) starts process work at its top level, and every "
    "worker would import it again, without end. Start that work from a function, not at import."
)


class Manager(Direct, threading.Thread):
    """Moves work to workers and results back; one per process lane."""

    def __init__(self, lane: ProcessLane) -> None:
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            raise RuntimeError(BOOTSTRAPPING)  # a worker runs an unguarded script's top level
        if _child.unpickling == threading.get_ident():  # a worker imports a task's module,
            # which starts process work at import (14a A3)
            raise RuntimeError(IMPORTING)
        super().__init__(name=f"{lane.name}-process-manager", daemon=True)
        self.ended = threading.Event()
        self.lane = lane
        self.workers: dict[int, WorkerRecord] = {}  # by pid
        self.by_object: dict[Any, WorkerRecord] = {}  # conn and sentinel -> worker
        self.deadlines: list[tuple[float, int, Task]] = []
        self.seq = itertools.count()
        self.grace = DEFAULT_GRACE
        self.starting: Any = None  # the parent's pipe ends of a worker being started
        # Worker starts that fail (see Supervision._start_worker) and turns that fail.
        self.start_error: BaseException | None = None
        self.failing_since: float | None = None
        self.gave_up = False  # waiting tasks failed, and no start succeeded since
        self.retry_at = 0.0
        self.backoff = 0.0
        self.turns_failing_since: float | None = None
        self._init_schedule()
        self._init_direct()

    def forget_after_fork(self) -> None:
        """In a forked child: close this side's worker pipes; the workers are the parent's."""
        conns = [conn for w in self.workers.values() for conn in w.conns]
        if self.starting is not None:
            conns.extend(self.starting)
        for conn in conns:
            try:
                conn.close()
            except OSError:
                pass
        for w in self.workers.values():  # their rings and pidfds too (no lock: it may be held)
            if w.ring is not None:
                w.ring.close()
            pidfd, w.child.pidfd, w.child.reaped = w.child.pidfd, None, True
            if pidfd is not None:
                os.close(pidfd)
        self.close_poller()
        self.workers.clear()
        self.by_object.clear()

    # ---- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            _callbacks.serve(self._loop, self.lane)()  # done-callbacks run on the callback threads
        except BaseException as exc:  # never leave a future unresolved
            logger.exception("hybridexec process manager failed; the process lane is broken")
            self._break(exc)
        finally:
            self.lane.close_pipes()
            self.close_poller()
            self.ended.set()  # join_thread() waits for this (a Ctrl-C-proof join)

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
        # Descriptors are numbers: one closed by a reap in this round may come back at once
        # as a new worker's. Each ready number is matched with the worker it had at the wait.
        watched: dict[Any, WorkerRecord] = dict(self.by_object)
        wake_r = lane.wake_r
        self._watch(wake_r, watched)
        self._before_sleep()  # from here until _reclaim, no worker is touched on this thread
        try:
            ready = self._wait(timeout)
        finally:
            self._reclaim()  # waits for the callers reading replies (see _direct.py)
        for obj in ready:
            if obj == wake_r:
                lane.drain_wakeups()
                continue
            owner = self.by_object.get(obj)
            if owner is None or owner is not watched.get(obj):
                continue  # reaped by an earlier object in this round
            if obj == owner.rfd and self._stale(owner):
                continue  # a caller took the reply meanwhile
            if obj == owner.rfd:
                self._receive(owner)
            else:
                self._reap(owner)
        self._flush_timings()
        self._enforce_times()
        return False

    def _turn_failed(self, exc: Exception) -> None:
        self._reclaim()
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
                    for task in w.tasks:
                        task.future.settle(False, err)
                    self._kill(w, "the manager kept failing", sig=signal.SIGKILL)
            finally:
                self._fail_pending(err)
        try:  # pause a little (a submit wakes it): a failing turn must not spin
            if wait([self.lane.wake_r], 0.01):
                # Drained, or a wake-up byte left from before the failure would end every
                # later pause at once (the loop spun ~100k turns a second).
                self.lane.drain_wakeups()
        except Exception:
            pass

    def _fail_pending(self, err: BaseException) -> None:
        lane = self.lane
        with lane._lock:  # a submit racing this is refused or served, never lost
            tasks = list(lane.pending)
            lane.pending.clear()
        for task in tasks:
            if self._claim(task):
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
            if self.lane.pending[0].route is not None:  # late binding: a verdict that changes
                times.append(time.monotonic() + RELOCATE_LOOK)  # wakes no one, so look again
            if self.retry_at > time.monotonic():
                times.append(self.retry_at)  # the next start (a backoff outlives a give-up)
            if self.failing_since is not None:
                times.append(self.failing_since + START_GIVE_UP)  # waiting tasks fail then
        idle_timeout = self.lane.idle_timeout
        for w in self.workers.values():
            if w.kill_at is not None:
                times.append(w.kill_at)
            if w.drop_at is not None:
                times.append(w.drop_at)
            if idle_timeout is not None and w.state == IDLE:
                times.append(w.idle_since + idle_timeout)
        if not times:
            return None
        return capped(max(0.0, min(times) - time.monotonic()))  # a deadline 1e12 s away

    def _deadline_live(self, task: Task) -> bool:
        return not task.future.done() and any(w.task is task for w in self.workers.values())

    # ---- commands from other threads ------------------------------------------------------
    def _run_commands(self) -> None:
        commands = self.lane.commands
        while commands:
            name, arg = commands.popleft()
            if name == "stop-task":
                for w in list(self.workers.values()):
                    if any(task.future is arg for task in w.tasks):
                        # Its future is cancelled already. Running (the first in flight, after
                        # the replies written so far): the worker goes. Waiting behind another
                        # call: in a group, marked so that the worker skips it (_ring.py);
                        # else its reply will be dropped, and if it starts, it gets DROP_GRACE.
                        self._poll_replies(w)
                        self._mark_cancelled(w, arg)
                        self._check_head(w)
            elif name == "kill-all":
                sig, done = arg
                try:
                    for w in list(self.workers.values()):
                        for task in w.tasks:  # all of them are running as their futures see it
                            task.future.cancel()
                        self._kill(w, "terminate/kill requested", sig=sig)
                finally:
                    done.set()

    def _mark_cancelled(self, worker: WorkerRecord, future: Future[Any]) -> None:
        """Mark a grouped call waiting in ``worker`` cancelled in its ring: it never starts."""
        tasks = list(worker.tasks)
        place = next((i for i, t in enumerate(tasks) if t.future is future), 0)
        group = tasks[place].group if place else None  # (the first is running, or next)
        if group is None or worker.ring is None:
            return
        start = next(i for i, t in enumerate(tasks) if t.group is group)
        worker.ring.cancel(group[2], group[1] - group[0] + place - start)

    def _stop_future(self, future: Future[Any]) -> None:
        future._hx_before_wait = None  # its caller does not read the reply: it may not come
        self.lane.command("stop-task", future)  # False once the manager is gone: nothing to stop

    def _check_head(self, worker: WorkerRecord) -> None:
        """Kill a worker whose running call was stopped, after DROP_GRACE (see stop-task)."""
        head = worker.task
        if head is None or not head.future.done() or worker.state == DYING:
            worker.drop_at = None
        elif worker.drop_at is None:
            worker.drop_at = time.monotonic() + DROP_GRACE

    # ---- deaths, kills, deadlines ---------------------------------------------------------
    def _enforce_times(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, _, task = heapq.heappop(self.deadlines)  # not the one of a send that
            for w in list(self.workers.values()):  # failed: the call went again, a new clock
                if w.task is task and not task.future.done() and deadline == task.deadline:
                    self._expire(w, task)  # settled once the worker is gone
        idle_timeout = self.lane.idle_timeout
        for w in list(self.workers.values()):
            if w.drop_at is not None and w.drop_at <= now:
                w.drop_at = None
                self._kill(w, "a call it ran was cancelled")
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
        self._reclaim()
        for w in list(self.workers.values()):
            for task in w.tasks:
                task.future.settle(False, err)
            w.tasks.clear()
            self._signal(w, signal.SIGKILL)
        self._fail_pending(err)
        for w in list(self.workers.values()):
            w.child.reap(kill_group=True, timeout=1.0)
            self._forget(w)
