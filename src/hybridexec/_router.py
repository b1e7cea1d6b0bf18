"""The router: picks a lane for each call and hands the task to it; owns the lanes.

The public front (``_executor.py``) validates what the user passed and asks the router; ``map``
(``_mapping.py``) asks it too, once per batch. Precedence of the routing rules is described in
``_routing/_rules.py``; the router adds what needs the lanes: a callable that cannot be pickled
for a process falls back to threads (unless a process was asked for), ``async def`` functions
go to the executor's event loop, and the distributed backend takes the work routed to
processes.

A task run in this process (thread lanes, the event loop) runs in a copy of the ``contextvars``
context its submitter had at ``submit`` (as ``asyncio.to_thread`` does), not a process task.

Interpreter exit (``finish_at_exit``, in ``_lifecycle``'s ``LANES`` phase, after the default
executor's hook, before the process lanes' one): the lanes of executors left open or dropped
finish their queued and running work, as the standard library's pools do at exit. Work the library
chose to run on a thread (a measured first call) is waited for at most ``EXIT_BOUND`` seconds.
After Ctrl-C nothing is waited for here.

Free-threaded builds with the GIL off route every call to threads (they run Python in
parallel): CPU work the router sends there for that reason, and calls the classifier judged
CPU-heavy (GIL-free C code), run on a second thread lane capped at the usable CPUs, where each
waits for one of the executor's CPU slots (``_routing/_governor.py``), not on the growing one
(256 threads of CPU work would only thrash). Calls marked ``@io_bound``, and functions seen to
wait (CPU below half of their wall time on that lane), use the growing lane. A task routed by
the classifier follows its newest verdict until it starts (``_routing/_binding.py``).

In the child of an ``os.fork()`` the lanes are the parent's (``_lifecycle`` marked them
foreign): the router builds fresh ones on its next use, so an executor inherited by a forked
child (a preforking server, a ``fork``-started worker) works there as a new one.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _lifecycle
from ._asyncio import LoopLane, is_async_callable, run_coroutine
from ._decisions import Plans, Sampler
from ._exceptions import SerializationError
from ._futures import Future, Items, Task
from ._lazy import loaded
from ._process import MemoryLimited, ProcessLane, usable_cpus
from ._routing import (
    Binding,
    Classifier,
    Decision,
    Governor,
    Options,
    Waits,
    WouldWait,
    fn_key,
    hints_of,
    no_waiting,
)
from ._threads import ThreadLane

if TYPE_CHECKING:
    from ._backends import RemoteLane
    from ._deferred import Deferrals

logger = logging.getLogger("hybridexec")

EXIT_BOUND = 1.0
"""Seconds interpreter exit waits for work the library chose to run on a thread (I5)."""

# Every lane a router built, weakly: a lane whose executor was dropped lives on while its
# threads (or its manager thread) still run queued work, and exit waits for that work too.
_lanes: weakref.WeakSet[ThreadLane | ProcessLane | LoopLane] = weakref.WeakSet()
_lanes_lock = threading.Lock()


def finish_at_exit() -> None:
    """At exit: every lane finishes its queued and running work (see the module docstring)."""
    if _lifecycle.interrupted():
        return  # Ctrl-C: the user asked to stop; threads are daemons, workers got SIGINT
    with _lanes_lock:
        lanes = list(_lanes)
    for lane in lanes:  # all at once first: each lane's workers finish in parallel
        lane.shutdown(wait=False, cancel_futures=False)
    bound = EXIT_BOUND
    for lane in lanes:
        if isinstance(lane, ThreadLane):
            bound -= lane.join_at_exit(max(0.0, bound))
        else:
            lane.shutdown(wait=True)


def _forget_lanes_after_fork() -> None:
    global _lanes, _lanes_lock  # the parent's: nothing inherited is waited for here
    _lanes_lock, _lanes = threading.Lock(), weakref.WeakSet()


_lifecycle.on_fork(_forget_lanes_after_fork)


class Router:
    """The lanes of one executor and the rules that pick one for each call."""

    def __init__(
        self,
        *,
        lane_options: dict[str, Any],
        default_kind: str,
        classifier: Classifier | None,
        remote: RemoteLane | None,
    ) -> None:
        self.lane_options = lane_options
        self.default_kind = default_kind
        self.classifier = classifier
        self.remote = remote
        self.closed = self.cancelled = False  # shut down; with cancel_futures (a map's error)
        self.deferrals: Deferrals | None = None  # calls waiting for a verdict, made when needed
        self._closer: threading.Thread | None = None  # stops the lanes for shutdown(wait=False)
        self.counts: dict[str, int] = {"thread": 0, "process": 0}
        self._counts_lock = threading.Lock()  # "+= 1" on a dict item is not atomic sans GIL
        # Decisions reused, and the classifier's timing sampled (_decisions.py).
        self.plans, self.sampler = Plans(classifier, default_kind, remote is None), Sampler()
        self._build_lanes()
        # Registered before the process lanes' own hook: first, queued work is not cancelled.
        _lifecycle.on_exit(_lifecycle.LANES, finish_at_exit)

    def _build_lanes(self) -> None:
        opts = self.lane_options
        self.generation = _lifecycle.generation()
        common = {key: opts[key] for key in ("idle_timeout", "initializer", "initargs")}
        prefix = opts.get("thread_name_prefix", "")
        self.threads = ThreadLane(opts["max_threads"], thread_name_prefix=prefix, **common)
        # The capped lane of the free-threaded builds (module docstring): no thread until used.
        cap = min(usable_cpus(), self.threads.max_threads)
        self.cpu_threads = ThreadLane(cap, name="hybridexec-cpu", **common)
        self.waits = Waits()
        self.processes = ProcessLane(
            opts["max_processes"],
            start_method=opts["start_method"],
            max_tasks_per_child=opts["max_tasks_per_child"],
            max_memory_per_child=opts["max_memory_per_child"],
            idle_timeout=opts["idle_timeout"],
            initializer=opts["initializer"],
            initargs=opts["initargs"],
            shm_threshold=opts["shm_threshold"],
            early_helpers=self.default_kind != "thread",  # no helper forked ahead for it
        )
        self.lanes: dict[str, ThreadLane | ProcessLane] = {
            "thread": self.threads,
            "process": self.processes,
        }
        if self.classifier is not None:
            # Weakly: the manager thread keeps the lane alive, and the lane must not keep the
            # router alive, or an executor dropped without shutdown() would never be freed.
            self.processes._timing_hook = _weak_method(self.record_process_timing)
        # CPU slots: the cores, or max_processes if set higher (docs/routing.md, the governor).
        self.slots = Governor(max(usable_cpus(), self.processes.max_processes))
        self.binding = Binding(
            self.slots, self.threads, self.cpu_threads, self.processes, self.classifier
        )
        self.loop = LoopLane()
        with _lanes_lock:
            _lanes.update((self.threads, self.cpu_threads, self.processes, self.loop))

    def service_owners(self) -> list[object]:
        """What the service threads of these lanes serve (``_callbacks.serve``'s owners)."""
        lanes = (self.processes, self.threads.timers, self.cpu_threads.timers, self.loop)
        return [*lanes, self.remote] if self.remote is not None else list(lanes)

    def broken(self) -> str | bool:
        """Why the executor can no longer run work (a lane's initializer failed), or False."""
        for lane in (self.threads, self.processes):
            if lane.broken is not None:
                return f"the {lane.kind} lane is broken: {lane.broken!r}"
        return False

    def check_fork(self) -> None:
        """Build fresh lanes if this process is a forked child of the one that built them."""
        if self.generation != _lifecycle.generation():
            logger.debug("executor used in a forked child: starting fresh lanes")
            self._build_lanes()

    def shutdown(self, wait: bool, cancel_futures: bool, background: bool = False) -> None:
        # background: shutdown(wait=False) from the user, who does not wait; neither does this
        self.closed = True
        if self.generation != _lifecycle.generation():
            return  # the lanes are the parent's: nothing here to stop
        if self._closer is not None and self._closer.is_alive():  # a shutdown(wait=False)'s
            if wait:
                self._closer.join()
        elif background and self.deferrals is not None:  # off the caller's time if need be
            self._closer = self.deferrals.stop_later(self._stop_lanes, cancel_futures)
        else:
            self._stop_lanes(cancel_futures)
        if self.remote is not None:  # distributed backend
            self.remote.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            for lane in (self.threads, self.cpu_threads, self.processes, self.loop):
                lane.shutdown(wait=True)

    def _stop_lanes(self, cancel_futures: bool) -> None:
        if self.deferrals is not None:  # calls waiting for a verdict go to their lanes first
            (self.deferrals.cancel if cancel_futures else self.deferrals.flush)()
        for lane in (self.threads, self.cpu_threads, self.processes, self.loop):
            lane.shutdown(wait=False, cancel_futures=cancel_futures)

    def join_at_exit(self, bound: float) -> None:
        # At a normal exit (not after Ctrl-C), after shutdown(wait=False): wait for process,
        # loop and thread work; work the library chose to put on a thread at most ``bound`` s.
        if self.generation != _lifecycle.generation():
            return
        self.processes.shutdown(wait=True)
        self.loop.shutdown(wait=True)
        bound -= self.threads.join_at_exit(bound)
        self.cpu_threads.join_at_exit(max(0.0, bound))

    def release(self) -> None:
        # Dropped without shutdown(): the workers (and cluster) go once its queued work ran,
        # as a dropped stdlib pool's (``hx.Executor().submit(fn).result()`` drops it); so do
        # the actors it spawned (they are owned by the router: 15b's B5).
        if self.generation == _lifecycle.generation():
            if actors := loaded("hybridexec._actors", wait=True):
                actors.stop_actors(self, drain=True, wait=False)
            self._stop_lanes(cancel_futures=False)
            if self.remote is not None:  # a cluster it started goes once its calls ended
                self.remote.shutdown(wait=False, cancel_futures=False)

    def record_process_timing(self, task: Task, elapsed: float, cpu: float) -> None:
        # Called on the process lane's manager thread for each finished task.
        classifier = self.classifier
        if classifier is None or not task.items:
            return
        calls = len(task.items) if task.batch else 1
        try:
            classifier.record(task.fn, "process", elapsed, cpu, calls=calls, args=task.items[0][0])
        except Exception:  # a broken classifier must not stop the manager thread
            logger.exception("the classifier failed to record a finished task")

    def decide(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> tuple[Decision, Options]:  # options, hints, rules, classifier
        return self.plans.decide(fn, args, kwargs, opts)

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> Future[Any]:
        future = self.plans.submit_express(self, fn, args, kwargs, opts)
        if future is not None:  # a plain call already routed to the thread lane
            return future
        if is_async_callable(fn) and self.async_on_loop(fn, opts):
            return self.submit_async(fn, args, kwargs, opts)
        try:
            with no_waiting():  # a call of a function being learned: placed once its verdict is in
                decision, opts = self.decide(fn, args, kwargs, opts)
        except WouldWait:
            future = self.defer(fn, args, kwargs, opts)
            if future is not None:
                return future
            decision, opts = self.decide(fn, args, kwargs, opts)
        return self.submit_task(fn, [(args, kwargs)], decision, opts.timeout, batch=False)[0]

    def defer(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> Future[Any] | None:
        """Queue the call until its function's verdict (``_deferred.py``); None: not possible."""
        if self.closed:
            raise _lifecycle.closed_error()
        if self.deferrals is None:
            from ._deferred import Deferrals

            with self._counts_lock:  # one per executor, whichever submitter comes first
                self.deferrals = self.deferrals or Deferrals(self)
        return self.deferrals.add(fn_key(fn), fn, args, kwargs, opts)

    def async_on_loop(self, fn: Callable[..., Any], opts: Options) -> bool:
        # An async def runs on the executor's loop unless a lane was chosen for it (or a
        # max_memory, a process); then it runs there under asyncio.run (see _submit_task).
        hinted = hints_of(fn)
        chosen = opts.kind if opts.kind != "auto" else (hinted.kind if hinted else "auto")
        return chosen == "auto" and opts.max_memory is None and not (hinted and hinted.max_memory)

    def submit_async(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> Future[Any]:
        if self.closed:
            raise _lifecycle.closed_error()
        self.check_fork()
        timeout = opts.merged(hints_of(fn)).timeout  # a timeout given as None: not the hint's
        self.count("async")
        # call_soon_threadsafe's handle copies this context: the coroutine runs in a copy.
        return self.loop.submit(fn, args, kwargs, timeout or None)

    def submit_task(
        self,
        fn: Callable[..., Any],
        items: Items,
        decision: Decision,
        timeout: float | None,
        *,
        batch: bool,
        stops: bool = True,
        future: Future[Any] | None = None,
        context: contextvars.Context | None = None,
    ) -> tuple[Future[Any], Task]:
        if (self.closed or _lifecycle.exited) and future is None:  # given: a deferred call's
            raise _lifecycle.closed_error()
        if self.generation != _lifecycle.generation():
            self.check_fork()
        probe = decision.probe
        if probe is not None and not probe.claim():
            # map() reuses one decision: only its first task is measured; the others ask
            # again (while the function is being learned, that waits for the verdict).
            decision, _ = self.decide(fn, items[0][0], items[0][1], Options())
            probe = decision.probe
            if probe is not None and not probe.claim():
                probe = None
        kind = "thread" if probe is not None else decision.kind
        future = Future(kind) if future is None else future  # given: a deferred call's
        future.kind = kind
        if is_async_callable(fn):
            fn = functools.partial(run_coroutine, fn)
        fn = fn if decision.max_memory is None else MemoryLimited(fn, decision.max_memory)
        task = Task(fn, items, future, batch=batch, timeout=timeout, stops=stops)
        remote = self.remote  # distributed backend (issue 7): process work, or all, goes there
        if remote is not None and probe is None and remote.takes(kind):
            try:
                remote.submit(task)
            except SerializationError as exc:
                if self.refuse_unpicklable(fn, exc, decision, future):
                    return future, task
                kind = "thread"
            else:
                self.count(remote.kind)
                return future, task
        if kind == "process":
            try:
                self.processes.prepare(task)
            except SerializationError as exc:
                if self.refuse_unpicklable(fn, exc, decision, future):
                    return future, task
                kind = "thread"
        if kind == "thread" and self.classifier is not None and timeout is None:
            # Timed where it runs: the classifier learns from (a sample of) thread tasks.
            task = self.sampler.timed(task, self.classifier, decision, probe)
        # A measured first call runs where the user did not ask: exit waits for it briefly.
        task.chosen = probe is not None
        if kind == "thread":  # a copy: O(1), and what the task sets stays its own
            task.context = contextvars.copy_context() if context is None else context
        if logger.isEnabledFor(logging.DEBUG):  # the arguments cost a lookup per submit
            logger.debug("%s -> %s: %s", getattr(fn, "__qualname__", fn), kind, decision.reason)
        self.count(kind)
        if decision.source is not None and probe is None and kind == decision.kind:
            task.route = decision  # late binding: it follows newer verdicts until it starts
        try:
            if kind == "thread" and decision.cpu_heavy:
                self.binding.submit_cpu(task)  # it holds a CPU slot while it runs (governor)
            elif kind == "thread" and not (probe or decision.explicit) and self.cpu_capped(fn):
                future._hx_add_inline(functools.partial(self.waits.learn, fn_key(fn), task))
                self.binding.submit_cpu(task)
            else:
                self.lanes[kind].submit(task)
        except BaseException:  # refused (a limit, a shutdown): a claimed measurement is not
            getattr(probe, "abandon", lambda: None)()  # made, the next call may be (14a's A1)
            raise
        return future, task

    def cpu_capped(self, fn: Callable[..., Any]) -> bool:
        """True for a call the GIL-off rule sent to threads that is not known to wait."""
        check = sys.__dict__.get("_is_gil_enabled")  # getattr() would raise inside: 1 us
        if check is None or check():
            return False
        hinted = hints_of(fn)
        io_bound = hinted is not None and hinted.kind == "thread"
        return not io_bound and not self.waits.by_key.get(fn_key(fn), False)

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` tasks sent to ``kind`` (what ``stats()["submitted"]`` shows)."""
        with self._counts_lock:
            self.counts[kind] = self.counts.get(kind, 0) + n

    @staticmethod
    def refuse_unpicklable(
        fn: Callable[..., Any], exc: SerializationError, decision: Decision, future: Future[Any]
    ) -> bool:
        """Fail ``future`` if its lane was asked for explicitly; else let it fall to threads."""
        if decision.explicit:
            future.set_running_or_notify_cancel()
            future.settle(False, exc)
            return True
        logger.debug("%r cannot be pickled (%s): running it on a thread", fn, exc)
        future.kind = "thread"
        return False


def _weak_method(method: Callable[..., None]) -> Callable[..., None]:
    ref = weakref.WeakMethod(method)
    return lambda *args: None if (target := ref()) is None else target(*args)
