"""The lane's replies: how each call's reply (or a group's) ends its future.

A mixin of the manager thread (``_manager.py``), over ``Scheduling``; a caller reading its own
reply (``_direct.py``) runs it too, one at a time. Replies come in the order the calls were
sent: a call's reply answers the first call without one, a group's reply (``_group.py``) the
first ``count`` of them.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from .. import _faults
from .._futures import Outcome, Task
from .._serialize import loads
from ._group import split_reply
from ._memory import went_over
from ._outcomes import Pickled
from ._rebuild import (
    deferred,
    deferred_batch,
    deferred_outcomes,
    discard,
    exception_of,
    failed,
    failure,
    unpickle_error,
)
from ._schedule import Scheduling
from ._supervision import BUSY, IDLE, WorkerRecord
from ._worker import AHEAD, INIT_FAILED

logger = logging.getLogger("hybridexec")

_ALL_OK = itertools.repeat(True)  # a group's calls when none failed


class Replies(Scheduling):
    """Reading worker pipes and settling futures from what they say."""

    def _break(self, exc: BaseException) -> None:
        raise NotImplementedError  # the manager breaks the lane

    def _check_head(self, worker: WorkerRecord) -> None:
        raise NotImplementedError  # the manager times a cancelled running call

    def _receive(self, worker: WorkerRecord) -> None:
        try:
            worker.reader.fill()  # one read: every reply that came in since the last one
        except (EOFError, OSError):
            # The worker is exiting: stop watching its pipe; its sentinel tells how it ended.
            self.by_object.pop(worker.rfd, None)
        self._handle_frames(worker)

    def _handle_reply(self, worker: WorkerRecord, data: bytes) -> None:
        if not worker.tasks:
            return  # stray: nothing was sent that this could answer
        if worker.reader.flagged:  # a group's reply
            self._handle_group(worker, data)
            return
        task = worker.tasks.popleft()
        worker.drop_at = None
        worker.tasks_done += 1
        lane = self.lane
        lane.stats["tasks_done"] += 1
        if task.future.done():  # settled already (timed out) or cancelled while it waited
            discard(data)  # its large results' segments go now, not at our exit
            self._after_task(worker, None)
            return
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.unpickle_reply")
            raw, elapsed, cpu, rss = loads(data)
            whole = raw if type(raw) is Pickled else None  # a batch's results, pickled whole
            outcomes: list[Outcome] = (
                []
                if whole is not None
                else [
                    (True, value) if ok and type(value) is not Pickled else _failure(ok, value)
                    for ok, value in raw
                ]
            )
        except BaseException as exc:  # the task's own failure (SystemExit from a __reduce__
            # included): never the manager's, never lost
            err = unpickle_error(exc)
            elapsed = cpu = 0.0
            rss = None
            outcomes = [(False, err)] * (len(task.items) if task.batch else 1)
            whole = None
        if (
            task.batch
            and whole is None
            and rss != INIT_FAILED
            and len(outcomes) < len(task.items) - len(getattr(task, "ahead", None) or ())
        ):
            # Fewer outcomes than calls: the worker could not unpickle the batch (14b B1).
            # Each call goes again alone, first in line: only a culprit fails, in its place.
            self._split(task)
            self._after_task(worker, rss)
            return
        task.elapsed = elapsed
        # The future first: its waiter wakes while the figures below are recorded.
        if whole is not None:  # every call returned (_outcomes.set_apart): its reader rebuilds
            ahead = getattr(task, "ahead", None)
            count = len(task.items) - len(ahead or ())
            task.future.settle(*deferred_batch(whole, ahead, count))
        elif task.batch:
            ahead = getattr(task, "ahead", None)
            task.future.settle(*deferred_outcomes(ahead + outcomes if ahead else outcomes))
        else:
            ok, value = outcomes[0]
            if ok and type(value) is Pickled:
                ok, value = deferred(value)
            task.future.settle(ok, value if ok else failed(value))
        if went_over(task.fn, outcomes):  # a MemoryError can leave C libraries in a poor state
            worker.retire_why = "a call went over its max_memory"
        if rss == INIT_FAILED:
            if outcomes and not outcomes[0][0]:
                # As ProcessPoolExecutor does: a failing initializer breaks the lane; what is
                # queued fails and later submits raise BrokenExecutorError (cause chained).
                error = exception_of(outcomes[0][1])
                logger.critical("hybridexec: a worker initializer failed: %r", error)
                self._break(error)
                return
        else:
            self._record_cost(task, elapsed)
            self._record_timing(task, elapsed, cpu)
        self._after_task(worker, rss)

    def _handle_ahead(self, worker: WorkerRecord, data: Any, count: int) -> None:
        """The next ``count`` outcomes of the batch running: kept until its reply, or its end."""
        task = worker.tasks[0] if worker.tasks else None
        if task is None or task.future.done():
            discard(data)
            return
        try:
            outcomes = [
                (True, value) if ok and type(value) is not Pickled else _failure(ok, value)
                for ok, value in loads(data)[0]
            ]
        except BaseException as exc:  # those items fail, each in its place
            outcomes = [(False, unpickle_error(exc))] * count
        task.ahead = [*getattr(task, "ahead", ()), *outcomes]

    def _handle_group(self, worker: WorkerRecord, data: bytes) -> None:
        """A reply to the first ``count`` calls in flight, sent in one frame (``_group.py``)."""
        count, rest = split_reply(data)
        queue = worker.tasks
        if count & AHEAD:  # the first outcomes of the batch running, ahead of its reply
            self._handle_ahead(worker, rest, count ^ AHEAD)
            return
        tasks = [queue.popleft() for _ in range(min(count, len(queue)))]
        worker.drop_at = None
        worker.tasks_done += len(tasks)
        self.lane.stats["tasks_done"] += len(tasks)
        oks: Any = _ALL_OK
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.unpickle_reply")
            values, failures, seconds, cpu, rss = loads(rest)  # type: ignore[arg-type]
        except BaseException as exc:  # those calls fail, each on its own future
            err = unpickle_error(exc)
            values, oks = [err] * len(tasks), [False] * len(tasks)
            seconds, cpu, rss = [0.0] * len(tasks), 0.0, None
        else:
            if failures:
                oks = [index not in failures for index in range(len(values))]
                for index, packed in failures.items():
                    values[index] = failure(packed)
        timings = self._settle_group(tasks, values, oks, seconds)
        if rss == INIT_FAILED and oks is not _ALL_OK and not oks[0]:
            error = exception_of(values[0])
            logger.critical("hybridexec: a worker initializer failed: %r", error)
            self._break(error)
            return
        if rss != INIT_FAILED:
            self._record_figures(timings, seconds, cpu)
        self._after_task(worker, rss)

    def _settle_group(
        self, tasks: list[Task], values: list[Any], oks: Any, seconds: list[float]
    ) -> dict[tuple[int, Any], list[Any]]:
        """Settle a group's calls; their figures summed by function and argument types.

        One pass: a storm of tiny calls pays this per call, and each task is read once, while
        it is in the cache. Its function and arguments are read before its future is settled.
        Returns ``(id(fn), argument types) -> [a task, seconds, calls]``.
        """
        timings: dict[tuple[int, Any], list[Any]] = {}
        last: Any = None  # the entry of the call before, and its function and argument type
        last_fn = last_kind = None
        for task, value, ok, elapsed in zip(tasks, values, oks, seconds, strict=False):
            fn, args = task.fn, task.args
            if fn is last_fn and len(args) == 1 and type(args[0]) is last_kind:
                last[1] += elapsed  # a run of calls alike: no key to make
                last[2] += 1
            else:
                kind = type(args[0]) if len(args) == 1 else tuple(map(type, args))
                last = timings.get((id(fn), kind))
                if last is None:
                    last = timings[id(fn), kind] = [task, elapsed, 1]
                else:
                    last[1] += elapsed
                    last[2] += 1
                last_fn, last_kind = fn, kind
            group = task.group  # (short: a stray reply)
            if group is not None:
                group[0] -= 1
            if ok and type(value) is Pickled:
                ok, value = deferred(value)
            elif not ok:
                value = failed(value)
            task.elapsed = elapsed
            task.future.settle(ok, value)  # a call cancelled while it waited: its value goes
        return timings

    def _record_figures(
        self, timings: dict[tuple[int, Any], list[Any]], seconds: list[float], cpu: float
    ) -> None:
        """Give the router and the costs a group's figures, summed by ``_settle_group``."""
        costs: dict[int, list[Any]] = {}
        share = cpu / (sum(seconds) or 1.0)  # the CPU time, shared as the wall time was
        for task, elapsed, calls in timings.values():
            self._record_timing(task, elapsed, elapsed * share, calls)
            cost = costs.get(id(task.fn))
            if cost is None:
                costs[id(task.fn)] = [task.fn, elapsed, calls]
            else:
                cost[1] += elapsed
                cost[2] += calls
        for fn, elapsed, calls in costs.values():
            self._note_cost(fn, elapsed / calls)

    def _after_task(self, worker: WorkerRecord, rss: int | None) -> None:
        lane = self.lane
        if worker.state != BUSY:
            return  # retiring or dying: it takes nothing more
        if rss == INIT_FAILED:
            worker.retire_why = "its initializer failed"
        elif lane.max_tasks_per_child is not None and worker.tasks_done >= lane.max_tasks_per_child:
            worker.retire_why = "max_tasks_per_child reached"
        elif (
            lane.max_memory_per_child is not None
            and rss is not None
            and (rss > lane.max_memory_per_child)
        ):
            worker.retire_why = f"resident memory {rss >> 20} MiB over max_memory_per_child"
        if worker.tasks:
            self._check_head(worker)
        elif worker.retire_why is not None:
            self._retire(worker, worker.retire_why)  # once the calls sent ahead are answered
        else:
            worker.state = IDLE
            worker.idle_since = time.monotonic()


def _failure(ok: bool, value: Any) -> Outcome:
    """An outcome as it arrived: its exception rebuilt unless that runs user code (``failure``).

    Else a ``PackedError`` for its reader; a result pickled alone stays so.
    """
    return (ok, value) if ok else (False, failure(value))
