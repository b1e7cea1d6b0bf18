"""What a worker's death does to the call it was running: a mixin of the manager thread.

A call that was running when its worker died fails alone with ``WorkerCrashedError`` (or
``MemoryLimitError`` when its ``max_memory`` ended it); a batch that was running is run again
one item at a time, so that only the item that kills its worker fails. The calls sent behind
the running one had not started: ``_supervision.py`` sends them again.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import _exceptions
from .._exceptions import signal_name
from .._futures import Task, split_batch
from .._serialize import loads
from ._frames import HEADER_SIZE
from ._group import seal
from ._memory import crash_error
from ._rebuild import failure, rebuild_outcomes, unpickle_error
from ._supervision import Supervision, WorkerRecord
from ._wire import encode_call

logger = logging.getLogger("hybridexec")


class Crashes(Supervision):
    """How the call a dead worker was running ends."""

    def _settle_group(
        self, tasks: list[Task], values: list[Any], oks: Any, seconds: list[float]
    ) -> Any:
        raise NotImplementedError  # _replies: a group's calls settled from their outcomes

    def _from_ring(self, worker: WorkerRecord) -> str | None:
        """Settle the group calls the dead ``worker`` finished and had not answered.

        They are its first calls without a reply, recorded in its ring (``_ring.py``); the
        items a batch recorded there are kept with those that came ahead (``_take_records``).
        Returns what the ring tells of the first call left: ``"running"`` (it was running;
        the calls after it never started), ``"unstarted"`` (its group never began), or None
        (no ring, no group: not known).
        """
        tasks = worker.tasks
        head = tasks[0] if tasks else None
        group = None if head is None else head.group
        if head is not None and group is None:
            _take_records(head, worker)  # a batch's items it recorded, before the ring closes
        got = None if worker.ring is None or group is None else worker.ring.read()
        if got is None or group is None:
            return None
        token, first, records = got
        if token != group[2]:
            return "unstarted"  # the worker begins a group by writing its number
        skip = (group[1] - group[0]) - first  # records of calls answered already: skipped
        if not 0 <= skip <= len(records):
            return None
        finished: list[Task] = []
        values, oks, seconds = [], [], []
        for record in records[skip:]:
            if not tasks or tasks[0].group is not group:
                break
            finished.append(tasks.popleft())
            value, packed, elapsed = loads(record)
            values.append(value if packed is None else failure(packed))
            oks.append(packed is None)
            seconds.append(elapsed)
        worker.tasks_done += len(finished)
        self.lane.stats["tasks_done"] += len(finished)
        self._settle_group(finished, values, oks, seconds)
        if not tasks or tasks[0].group is None:
            return None
        return "running" if tasks[0].group is group else "unstarted"  # (a group after it)

    def _on_crash(
        self, task: Task, worker: WorkerRecord, exitcode: int | None, ring: str | None
    ) -> None:
        group = task.group
        if group is not None and (ring == "unstarted" or (ring is None and group[0] > 1)):
            # It went in one frame with others that had no reply yet either (_group.py): which
            # one killed the worker is not known (or its ring says none of them started). Each
            # goes again alone, first in line (they are at the head of the queue already, in
            # order), so only a culprit fails.
            logger.info(
                "worker pid %d died (exit code %s) with a group of %d calls unanswered; "
                "sending them again one by one",
                worker.pid,
                exitcode,
                group[0],
            )
            pending = self.lane.pending
            for other in list(pending):  # a snapshot: shutdown() may clear it meanwhile
                if other.group is not group:
                    break
                seal(other)
            seal(task)
            pending.appendleft(task)
            return
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
        err = crash_error(task.fn, exitcode) or _exceptions.WorkerCrashedError(  # max_memory?
            message, exitcode=exitcode, pid=worker.pid
        )
        if task.batch:
            task.future.settle(True, [(False, err)])
        else:
            task.future.settle(False, err)

    def _split(self, task: Task) -> None:
        # The items whose outcomes came ahead of the reply (_worker: a batch's first outcomes
        # go every FLUSH_SECONDS) keep them: they ran; only the others run again.
        ahead = getattr(task, "ahead", None)  # rebuilt here: the batch settles from them
        singles = split_batch(task, "process", ahead and rebuild_outcomes(ahead)[1])
        for single in singles:
            single.payload = encode_call(task.fn, single.items, True)
            single.size = len(single.payload) + HEADER_SIZE
        self.lane.pending.extendleft(reversed(singles))


def _take_records(task: Task, worker: WorkerRecord) -> None:
    """Keep the outcomes of the items of ``task`` its dead worker recorded (``_ring.py``).

    They join those that came ahead: those items ran, and do not run again.
    """
    mark = getattr(task, "mark", 0)
    got = None if not mark or worker.ring is None else worker.ring.read()
    if got is None or got[0] != mark:
        return  # no ring, or the batch never began
    ahead = getattr(task, "ahead", None) or []
    skip = len(ahead) - got[1]  # records of items that came ahead already: skipped
    if not 0 <= skip <= len(got[2]):
        return
    for record in got[2][skip:]:
        try:
            ok, value = loads(record)
        except BaseException as exc:  # it ran: its result will not rebuild here (a reply's
            ok, value = False, unpickle_error(exc)  # would not either); never run again
        else:
            value = value if ok else failure(value)
        ahead.append((ok, value))
    task.ahead = ahead
