"""Scheduling of the lane's calls: which worker gets each pending task, and how many at once.

A mixin of the manager thread (``_manager.py``), over ``Supervision``; runs on that thread only.

Pipelining. A worker that answers a call and then waits for the next one idles a full round
trip (reply read, next call written) between calls; for tiny calls that is most of its time.
So a few calls may be sent ahead to a busy worker, under these rules:

- idle workers first, then a new worker (while under ``max_processes``), and only then a busy
  one: calls never queue behind others while a worker could start them now;
- only calls of functions measured short (``PIPELINE_SECONDS`` per call, from the times the
  workers report) go ahead, and only behind calls that are short too: a long call would hold
  up the ones behind it. As many calls in flight per worker as make ``AHEAD_SECONDS`` of
  expected work (two at least, ``MAX_AHEAD`` at most): a call waits behind at most about that
  much; a function never measured yet gets one at a time;
- a call with a timeout is never sent ahead nor followed: its clock starts as it is sent, and
  its worker may be killed at the deadline;
- what waits in a worker's call pipe stays under half the pipe's capacity, so the manager's
  write never blocks on a busy worker (which could be blocked writing a reply to us).

Several calls for one worker go out in one write (one frame each: the worker's reader takes
them all in one read), and every call still ends on its own future. How a call waiting in a
worker ends when its future is cancelled, and what a crash does to the calls behind the one
running: see ``_manager.py`` and ``_supervision.py``.
"""

from __future__ import annotations

import functools
import heapq
import logging
import signal
import weakref
from concurrent.futures._base import PENDING, RUNNING
from typing import TYPE_CHECKING, Any

from .. import _faults
from .._exceptions import BrokenExecutorError
from .._futures import Future, Task
from ._crashes import Crashes
from ._frames import FramesWriteError, write_frames
from ._group import first_cost, frame_of
from ._supervision import BUSY, IDLE, WorkerRecord

if TYPE_CHECKING:
    import itertools

logger = logging.getLogger("hybridexec")

PIPELINE_SECONDS = 0.002
"""Calls measured shorter than this may be sent to a worker that is still busy."""

AHEAD_SECONDS = 0.002
"""Expected work in flight per worker (the call running included) that sets how deep calls go
ahead. Deep, because the worker's reply and the manager's next write cost tens of microseconds
each: 5,000 tiny calls took 23k/s four deep, 48k/s 64 deep (2 cores, 2 workers)."""

MAX_AHEAD = 1024
"""At most this many calls in flight per worker (the one running included): deferred calls
travel many to a frame (``_group.py``), so a worker is fed in few writes."""

_NUMBERS = frozenset({int, float, complex})  # the router keys a call by their types alone
_NO_FUTURE: Future[Any] = Future("process")  # of the batches that carry summed figures


class _Stopper:
    """Stops a running call's task, given its future (``Future._hx_stop_with``).

    It holds the manager weakly: a future kept after its executor went keeps nothing of it.
    """

    __slots__ = ("manager",)

    def __init__(self, manager: Scheduling) -> None:
        self.manager = weakref.ref(manager)

    def __call__(self, future: Future[Any]) -> None:
        manager = self.manager()
        if manager is not None:
            manager._stop_future(future)


class Scheduling(Crashes):
    """Dispatch of pending tasks to workers, with pipelining of short calls."""

    deadlines: list[tuple[float, int, Task]]
    seq: itertools.count[int]

    def _init_schedule(self) -> None:
        # Seconds per call, by function, as the workers measured them: by id, with a weak
        # reference that removes the entry when the function goes, so a function is not kept
        # alive by its figures (I3). A lookup allocates nothing (a WeakKeyDictionary makes a
        # weak reference per lookup, and the dispatch looks up several times per task).
        self.costs: dict[int, list[Any]] = {}  # id(fn) -> [weakref to fn, seconds per call]
        # The figures of this turn's calls for the router, summed by function and argument
        # types: (id(fn), types) -> [fn, args, calls, elapsed, cpu] (see _record_timing).
        self.timings: dict[tuple[int, tuple[type, ...]], list[Any]] = {}
        # Cancelling a running task kills its worker (for a batch: the whole batch, which only
        # happens when a map is abandoned); one waiting in the worker is dropped. One stopper
        # for every future (their _hx_stop_with): no object made per call.
        self.stop_with = _Stopper(self)

    def _forget_cost(self, key: int, ref: weakref.ref[Any]) -> None:
        entry = self.costs.get(key)
        if entry is not None and entry[0] is ref:  # not a later function with the same id
            self.costs.pop(key, None)

    def _stop_future(self, future: Future[Any]) -> None:
        raise NotImplementedError  # the manager queues a command

    # ---- figures ----------------------------------------------------------------------------
    def _record_cost(self, task: Task, elapsed: float) -> None:
        self._note_cost(task.fn, elapsed / max(1, len(task.items)))

    def _note_cost(self, fn: Any, per_call: float) -> None:
        entry = self.costs.get(id(fn))
        if entry is None or entry[0]() is not fn:
            try:
                ref = weakref.ref(fn, functools.partial(self._forget_cost, id(fn)))
            except TypeError:  # not weakly referenceable (a builtin): never sent ahead
                return
            self.costs[id(fn)] = [ref, per_call]
            return
        old = entry[1]
        # A moving average that rises fast and falls slowly: a few long calls are enough to
        # stop sending calls ahead, one preempted call on a busy machine is not.
        entry[1] = old + (0.5 if per_call > old else 0.2) * (per_call - old)

    def _record_timing(self, task: Task, elapsed: float, cpu: float, calls: int = 1) -> None:
        """Give the router a call's figures; on the manager's thread, summed over the turn.

        A stream's tiny calls would each cost the router as much as the call itself: calls of
        one function whose arguments are numbers only (the router tells them apart by their
        types alone) are summed and given at the end of the manager's turn as one batch's
        figures, as ``map`` batches give theirs (a caller handling its own reply sums them too:
        it gives them every ``CALLER_SUM`` replies, see ``_direct.py``). Others go at once.
        """
        if not task.batch and not task.kwargs:
            args = task.args
            kinds = tuple(map(type, args))
            if _NUMBERS.issuperset(kinds):
                key = (id(task.fn), kinds)
                entry = self.timings.get(key)
                if entry is None:
                    self.timings[key] = [task.fn, args, calls, elapsed, cpu]
                else:
                    entry[2] += calls
                    entry[3] += elapsed
                    entry[4] += cpu
                return
        if calls > 1:  # calls of one function with arguments of the same types
            task = Task(task.fn, [(task.args, task.kwargs)] * calls, _NO_FUTURE, batch=True)
        self._give_timing(task, elapsed, cpu)

    def _flush_timings(self) -> None:
        """Give the router the figures summed during this turn (the functions go with them)."""
        timings, self.timings = self.timings, {}
        for fn, args, calls, elapsed, cpu in timings.values():
            self._give_timing(Task(fn, [(args, {})] * calls, _NO_FUTURE, batch=True), elapsed, cpu)

    def _give_timing(self, task: Task, elapsed: float, cpu: float) -> None:
        try:
            self.lane.record_timing(task, elapsed, cpu)
        except Exception:  # the router's figures must not lose the task
            logger.exception("hybridexec: recording a task's timing failed")

    def _cost(self, task: Task) -> float | None:
        """Expected seconds of ``task`` in a worker; None when unknown or never short."""
        if task.timeout is not None:
            return None
        fn = task.fn
        entry = self.costs.get(id(fn))
        if entry is None or entry[0]() is not fn:
            return None
        per_call: float = entry[1]
        return per_call * len(task.items) if task.batch else per_call  # (no list for one call)

    # ---- dispatch ---------------------------------------------------------------------------
    def _claim(self, task: Task) -> bool:
        """Mark a pending task running; False when it was cancelled (or ended) meanwhile.

        A task sent again after its worker died is running already, as its future sees it.
        """
        future = task.future
        if future.is_pending():
            return future.set_running_or_notify_cancel()
        return not future.done()

    def _dispatch(self) -> None:
        if self.lane.slots is not None:  # idle workers' CPU slots come back (the governor)
            self.lane.slots.sync(self.workers.values(), BUSY, self.lane.pending)
        pending = self.lane.pending
        batches: dict[WorkerRecord, list[Task]] = {}
        # Bytes waiting behind the running call in each busy worker (-1: a call in flight
        # is not short, nothing goes ahead of it), figured once per dispatch, not per task.
        room: dict[WorkerRecord, int] = {}
        while pending:
            try:
                # shutdown(cancel_futures=True) drains the deque from another thread.
                task = pending[0]
            except IndexError:
                break
            if task.future.cancelled():  # dropped with no worker or CPU slot taken (that slot
                got = pending.popleft() if pending else None  # came back a turn later only)
                if got is task:
                    self._claim(task)  # False: the future's waiters hear it is cancelled
                elif got is not None:  # shutdown(cancel_futures=True) took it meanwhile
                    pending.appendleft(got)
                continue
            if task.route is not None and self.lane.relocate(task):  # late binding: it moved
                continue
            worker = self._idle_worker()
            ahead = worker is None
            if worker is None:
                worker = self._busy_worker(task, room)
                if worker is None:
                    break
            try:
                got = pending.popleft()
            except IndexError:
                break
            if got is not task:  # shutdown(cancel_futures=True) took it meanwhile: look again
                pending.appendleft(got)
                continue
            if not self._claim(task):
                continue
            self._assign(worker, task)
            if not ahead:
                room.pop(worker, None)  # a call of any length: figured again if needed
            elif room.get(worker, -1) >= 0:
                room[worker] += first_cost(task)
            batch = batches.get(worker)
            if batch is None:  # (setdefault would make a list per task)
                batch = batches[worker] = []
            batch.append(task)
            if task.wire is not None and pending:
                self._follow(worker, task, room, batch)
        for worker, tasks in batches.items():
            self._send(worker, tasks)

    def _follow(
        self, worker: WorkerRecord, task: Task, room: dict[WorkerRecord, int], batch: list[Task]
    ) -> None:
        """Send the deferred calls of ``task``'s function queued right behind it along with it.

        The rules of ``_busy_worker`` for the whole run at once (one look at the workers for
        all of them): short calls only, as deep as ``AHEAD_SECONDS`` of work, within the pipe's
        budget; and at most an equal share of the queue per worker, so that the other workers
        get theirs.
        """
        cost = self._cost(task)
        if cost is None or cost > PIPELINE_SECONDS or worker.retire_why is not None:
            return
        lane = self.lane
        pending = lane.pending
        depth = max(2, min(MAX_AHEAD, int(AHEAD_SECONDS / max(cost, 1e-6))))
        count = min(depth - len(worker.tasks), len(pending) // lane.max_processes + 1)
        if lane.max_tasks_per_child is not None:
            count = min(count, lane.max_tasks_per_child - worker.tasks_done - len(worker.tasks))
        ahead = room.get(worker)
        if ahead is None:
            ahead = room[worker] = self._ahead(worker)
        if ahead < 0:
            return
        budget, fn, stop = worker.budget, task.fn, self.stop_with
        tasks, popleft, sent = worker.tasks, pending.popleft, batch.append
        while count > 0:
            try:
                following = popleft()
            except IndexError:  # (shutdown(cancel_futures=True) may empty it meanwhile)
                break
            if (
                following.fn is not fn
                or following.wire is None
                or following.route is not None
                or ahead + following.size > budget
            ):
                pending.appendleft(following)  # the run ends here: it waits its turn
                break
            count -= 1
            future = following.future  # _claim, inline
            with future._lock:
                claimed = future._state == PENDING
                if claimed:
                    future._state = RUNNING
            if not claimed and not self._claim(following):
                continue  # cancelled meanwhile (or sent again after its worker died: running)
            tasks.append(following)  # _assign, for a call without a timeout
            future._hx_stop_with = stop
            ahead += following.size
            sent(following)
        room[worker] = ahead

    def _idle_worker(self) -> WorkerRecord | None:
        slot = self.lane.take_slot  # a CPU slot for a worker about to turn busy (the governor)
        for w in self.workers.values():
            if w.state == IDLE:
                return w if slot() else None
        live = sum(1 for w in self.workers.values() if w.state in (IDLE, BUSY))
        if live >= self.lane.max_processes or not slot():
            return None
        return self._start_worker()

    def _busy_worker(self, task: Task, room: dict[WorkerRecord, int]) -> WorkerRecord | None:
        """The busy worker with the fewest calls in flight that may take ``task`` ahead."""
        cost = self._cost(task)
        if cost is None or cost > PIPELINE_SECONDS or not task.size:
            return None
        depth = max(2, min(MAX_AHEAD, int(AHEAD_SECONDS / max(cost, 1e-6))))
        limit = self.lane.max_tasks_per_child
        size = first_cost(task)
        best: WorkerRecord | None = None
        for w in self.workers.values():
            if (
                w.state != BUSY
                or w.retire_why is not None
                or len(w.tasks) >= depth
                or (best is not None and len(w.tasks) >= len(best.tasks))
                or (limit is not None and w.tasks_done + len(w.tasks) >= limit)
            ):
                continue
            ahead = room.get(w)
            if ahead is None:
                ahead = room[w] = self._ahead(w)
            if ahead >= 0 and ahead + size <= w.budget:
                best = w
        return best

    def _ahead(self, worker: WorkerRecord) -> int:
        """Bytes of the calls waiting behind the running one; -1 if one in flight is not short."""
        ahead = 0
        for index, t in enumerate(worker.tasks):
            cost = self._cost(t)
            if cost is None or cost > PIPELINE_SECONDS:
                return -1
            if index:  # the first one is read, or being read (a group: an upper bound)
                ahead += t.size
        return ahead

    def _assign(self, worker: WorkerRecord, task: Task) -> None:
        worker.tasks.append(task)
        worker.state = BUSY
        task.start_clock()  # only a call sent to an idle worker has a timeout: it starts now
        if task.deadline is not None:
            heapq.heappush(self.deadlines, (task.deadline, next(self.seq), task))
        task.future._hx_stop_with = self.stop_with  # see _init_schedule

    def _send(self, worker: WorkerRecord, tasks: list[Task]) -> None:
        # Deferred calls next to each other go in one frame (a group, see _group.py).
        frames: list[bytes] = []
        sent: list[Task] = []
        ends: list[int] = []  # for each frame, how many of ``sent`` went with it and before
        start = 0
        while start < len(tasks):
            frame, end = frame_of(tasks, start)
            if end - start > 1:
                self.lane.stats["groups"] += 1
            if frame is not None:
                frames.append(frame)
                sent.extend(tasks[start:end])
                ends.append(len(sent))
            start = end
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.send")  # as a write that fails before its first byte
            write_frames(worker.fd, frames)
        except OSError as exc:
            self._send_failed(worker, sent, exc, 0)
        except FramesWriteError as err:
            whole = err.whole(frames)
            self._send_failed(worker, sent, err.error, ends[whole - 1] if whole else 0)

    def _send_failed(
        self, worker: WorkerRecord, tasks: list[Task], exc: OSError, whole: int
    ) -> None:
        """A write of ``tasks`` to ``worker`` failed with ``exc`` once ``whole`` of them went."""
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            # The worker's end of the pipe is closed: it died, or is dying. The calls that
            # went whole stay with it, as calls sent to any worker that dies: the first may
            # have started, it fails as a crash, and the ones behind it go again as it is
            # reaped. The calls that did not go whole never reached it (a worker starts a
            # call only once it has read all of it): they go again now, first in line.
            unsent = tasks[whole:]
            for task in unsent:
                if task in worker.tasks:
                    worker.tasks.remove(task)
            self.lane.pending.extendleft(reversed(unsent))
            self._kill(worker, "its call pipe is closed", sig=signal.SIGKILL)
            return
        # Another error: the calls may be half written. These tasks fail and the worker goes
        # (I6). The calls sent to it before are settled when it is reaped, as after any kill.
        err = BrokenExecutorError(f"the task could not be sent to its worker: {exc!r}")
        err.__cause__ = exc
        for task in tasks:
            if task in worker.tasks:
                worker.tasks.remove(task)
            task.future.settle(False, err)
        self._kill(worker, "a call could not be sent to it", sig=signal.SIGKILL)
