"""Late binding, and what the thread lanes ask before and after they run a task.

**Late binding.** A task routed by a verdict of the classifier carries that ``Decision``
(``Task.route``), whose ``source`` is the classifier's entry for the call's key: its
``decision`` is always the newest verdict. When a lane is about to *start* the task (a thread
of a thread lane took it from the queue; the process manager is about to dispatch it) and
the newest verdict names another lane, the task moves there instead, at the back of that
lane's queue. O(1) per task: one identity check while the verdict has not changed. What was
sent to a worker already (pipelined calls included) has started; a call that cannot be
pickled for a process runs where it is. The lanes: ``"process"``, the growing thread lane
``"thread"`` (waiting work), the capped CPU thread lane ``"cpu"`` (CPU-heavy thread work).

A queued call also picks up a re-check that feedback asked for while every call was queued
already (``LearningClassifier.recheck_now``): the first one to start is measured, so a
verdict can change, and the calls behind it move, while no new call is submitted.

**Gates.** Each thread lane has a ``Gate``: ``admit`` (late binding; on the CPU lane, wait for
a CPU slot; a measured call takes one at once) and ``leave`` (give the slot back). See
``_governor.py`` for the slots.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._futures import Call, Future, Items, Outcome, Task
from ._governor import Governor
from ._rules import Classifier, Decision, Probe
from ._sched import queued_seconds

if TYPE_CHECKING:
    from .._process import ProcessLane
    from .._threads import ThreadLane

logger = logging.getLogger("hybridexec")


def lane_of(decision: Decision) -> str:
    """The lane a decision sends work to: ``"process"``, ``"cpu"`` or ``"thread"``."""
    if decision.kind == "process":
        return "process"
    return "cpu" if decision.cpu_heavy else "thread"


class Binding:
    """Late binding for the lanes of one executor, and their CPU slots."""

    def __init__(
        self,
        governor: Governor,
        threads: ThreadLane,
        cpu_threads: ThreadLane,
        processes: ProcessLane,
        classifier: Classifier | None,
    ) -> None:
        self.governor = governor
        self.processes = processes
        self.threads = {"thread": threads, "cpu": cpu_threads}
        self.recheck: Callable[[Any], Probe | None] | None = getattr(
            classifier, "recheck_now", None
        )
        self.moved: dict[str, int] = {}
        self._lock = threading.Lock()
        threads.gate = Gate(self, "thread", wait=False)
        cpu_threads.gate = Gate(self, "cpu", wait=True)
        cpu_threads.spare, cpu_threads.spare_max = governor.lending, threads.max_threads
        processes.slots = governor
        processes.relocate = self.from_process
        governor.on_free = processes.wake

    def submit_cpu(self, task: Task) -> None:
        """Queue CPU-heavy thread work on the capped lane, where it waits for a CPU slot.

        Work submitted by a task that holds a slot itself runs on the growing lane instead,
        on its parent's slot: the parent usually waits for it, and on the capped lane it
        could wait behind its parent forever.
        """
        if self.governor.holds():
            task.route = None  # late binding must not move it back behind its parent
            self.threads["thread"].submit(task)
        else:
            self.threads["cpu"].submit(task)

    def newer(self, task: Task) -> Decision | None:
        """The newest verdict for ``task`` if it changed since the task was routed."""
        routed = task.route
        current = getattr(routed.source, "decision", None)  # a custom source may lack it
        if current is routed or not isinstance(current, Decision):
            return None
        task.route = current
        return current if task.future.is_pending() else None

    def from_thread(self, task: Task, here: str) -> bool:
        """On a thread lane, before ``task`` starts: True when it moved to another lane."""
        current = self.newer(task)
        if current is None or lane_of(current) == here:
            return False
        return self._move(task, lane_of(current), here)

    def from_process(self, task: Task) -> bool:
        """On the manager thread, ``task`` first in the queue: True when it left the queue.

        Taken from the queue first, then sent: never in two lanes' queues at once.
        """
        try:
            return self._from_process(task)
        except Exception:  # a bug here must not fail the manager's turn: the task stays
            logger.exception("late binding failed for %r", task)
            task.route = None
            return False

    def _from_process(self, task: Task) -> bool:
        current = self.newer(task)
        if current is None or lane_of(current) == "process":
            return False
        lane = self.processes
        if not lane.withdraw(task):
            return True  # cancelled by a shutdown meanwhile: the manager looks again
        if not self._move(task, lane_of(current), "process"):
            lane.put_back(task)
        return True

    def _move(self, task: Task, there: str, here: str) -> bool:
        future = task.future
        kind = "process" if there == "process" else "thread"
        was = future.kind
        try:
            if there == "process":
                self.processes.prepare(task)  # pickled here, on the lane's thread
                future.kind = kind
                self.processes.submit(task)
            else:
                if task.context is None:  # a process task: it gets a context of its own
                    task.context = contextvars.Context()
                future.kind = kind
                self.threads[there].submit(task)
        except Exception as exc:  # cannot be pickled, lane shut down: it runs where it is
            logger.debug("late binding: %r stays on the %s lane (%r)", task.fn, here, exc)
            future.kind = was
            task.route = None
            if kind == "process":
                task.payload = None
            return False
        with self._lock:
            step = f"{here}->{there}"
            self.moved[step] = self.moved.get(step, 0) + 1
        return True

    def stats(self) -> dict[str, int]:
        """Tasks moved by late binding, by ``"from->to"`` lane."""
        with self._lock:
            return dict(self.moved)


class Gate:
    """What a thread lane asks before it starts a task (``admit``) and after (``leave``)."""

    __slots__ = ("binding", "lane", "slots", "wait")

    def __init__(self, binding: Binding, lane: str, *, wait: bool) -> None:
        self.binding = binding
        self.lane = lane
        self.slots = binding.governor
        self.wait = wait  # the CPU lane: a task waits for a slot

    def admit(self, task: Task) -> bool:
        """Before ``task`` starts on this lane's thread: False when it moved elsewhere."""
        try:
            return self._admit(task)
        except Exception:  # a bug here must not end the lane's thread: the task runs here
            logger.exception("the thread lane's gate failed for %r", task)
            return True

    def _admit(self, task: Task) -> bool:
        routed = task.route is not None
        binding = self.binding
        if routed and binding.from_thread(task, self.lane):
            return False
        if self.wait:
            if not self.slots.acquire(task.future.cancelled):
                return True  # cancelled while it waited: the lane sees it and drops it
            if routed and task.route is not None and binding.from_thread(task, self.lane):
                self.slots.release()  # its verdict changed while it waited
                return False
        if not isinstance(task, TimedTask):
            return True
        if routed and task.probe is None and binding.recheck is not None:
            task.probe = binding.recheck(task.route.source)
        if task.probe is not None and not self.wait:
            self.slots.hold()  # a measured call: a slot for as long as it runs
        return True

    def leave(self) -> None:
        """After the task ran: give back this thread's slot, if it holds one."""
        self.slots.release()


class TimedTask(Task):
    """A thread task that reports its wall and CPU time to the classifier when it ends.

    With a probe, the whole task runs inside the probe's measurement window.
    """

    __slots__ = ("classifier", "probe")

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Items | Call,
        future: Future[Any],
        classifier: Classifier,
        probe: Probe | None,
        *,
        batch: bool = False,
        timeout: float | None = None,
    ) -> None:
        super().__init__(fn, items, future, batch=batch, timeout=timeout)
        self.classifier = classifier
        self.probe = probe

    @classmethod
    def like(cls, task: Task, classifier: Classifier, probe: Probe | None) -> TimedTask:
        """``task`` (its calls, future and ``batch``, ``stops``) timed for ``classifier``."""
        timed = cls(task.fn, task.items, task.future, classifier, probe, batch=task.batch)
        timed.stops = task.stops
        return timed

    def call(self) -> Outcome:
        """Run the calls here, report the figures, and return how they ended."""
        cpu_started = time.thread_time()
        started = time.perf_counter()
        probe, self.probe = self.probe, None  # one measurement; the task keeps no probe
        if probe is None:
            outcome = Task.call(self)
        else:
            box: list[Outcome] = []
            probe.run(lambda: box.append(Task.call(self)))
            outcome = box[0]
        elapsed = time.perf_counter() - started
        cpu = time.thread_time() - cpu_started
        calls = len(self.items) if self.batch else 1
        try:
            self.classifier.record(self.fn, "thread", elapsed, cpu, calls=calls, args=self.args)
        except Exception:  # a broken classifier must not kill the worker thread
            logger.exception("the classifier failed to record a finished task")
        return outcome


class Waits:
    """Which functions wait (I/O) rather than compute, as seen on the capped CPU lane.

    For the free-threaded builds with the GIL off, where the router sends every call that is
    not known to wait to the capped lane (see ``_router.py``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[tuple[str, str], bool] = {}
        # lane thread -> its CPU clock and run-queue wait after its last task
        self.cpu_seen: dict[int, tuple[float, float]] = {}

    def learn(self, key: tuple[str, str], task: Task, future: Future[Any]) -> None:
        # In the lane thread that ran the task (it settles the future): the CPU that thread
        # used since its previous task ended is this task's (it slept on an empty queue
        # meanwhile), and so is the time it waited for a CPU (a busy machine): that time is
        # not waiting of its own. A thread's first task has no reading before it: not judged.
        if future.cancelled() or task.elapsed <= 0:
            return
        ident, now = threading.get_ident(), time.thread_time()
        queued = queued_seconds() or 0.0
        with self.lock:
            last, self.cpu_seen[ident] = self.cpu_seen.get(ident), (now, queued)
            if last is not None:
                if len(self.by_key) > 4096:  # bounded: functions made on the fly
                    self.by_key.clear()
                could_run = max(task.elapsed - (queued - last[1]), 1e-9)
                self.by_key[key] = (now - last[0]) < 0.5 * could_run


def fn_key(fn: Callable[..., Any]) -> tuple[str, str]:
    """``(module, qualname)`` of a callable, looking through partials."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return (getattr(fn, "__module__", "") or "", getattr(fn, "__qualname__", "") or repr(fn))
