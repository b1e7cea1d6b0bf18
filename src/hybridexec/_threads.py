"""The thread lane: a pool sized for blocking work.

The standard library caps a thread pool at ``min(32, cpu + 4)``: far too small for I/O (200
sleeps of 20 ms take 0.7 s on six threads). Work that reaches this lane mostly blocks or
releases the GIL, so a task wakes an idle thread (the last gone idle) or starts one, up to
``max_threads`` (256 by default); a thread leaves after ``idle_timeout`` seconds idle. But more
threads than CPUs cannot run a function seen to compute (CPU time half its calls' wall time or
more: read on its first calls, then one in 64) any sooner: while as many threads as usable
CPUs run work that is not waiting, its task wakes or starts none (the threads at work take
it without a wake-up). Should they stop taking tasks (a call blocks after all), one wakes or
starts after ``STALL_SECONDS``; while they take tasks that check looks twice as late each
time (up to ``STALL_MAX``), and ends once nothing moves (a look takes the GIL).

Threads cannot be killed. A task with a timeout fails at its deadline, and its thread is
interrupted at the next bytecode boundary with an asynchronous exception (best effort: code
blocked in C sees it only when it returns to Python); busy until it really ended (``late_end``
tells a map's limit when); marked ended *before* its future is settled, so a deadline never
reaches the done-callbacks.

Interpreter exit: lane threads are daemons. ``join_at_exit`` (the router's exit hook, as the
stdlib's ``_python_exit``) waits for the user's thread work, queued or running, then briefly
for work the library chose to run here (a measured first call), naming what still runs.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _faults, _lifecycle
from ._callbacks import serving
from ._deadlines import Running, TaskInterrupted
from ._deadlines import Timers as Timers  # for the remote lanes
from ._deadlines import interrupt_thread as interrupt_thread  # for actors, remote calls
from ._exceptions import BrokenExecutorError
from ._futures import FRESH_CONTEXT, Future, Task
from ._process import usable_cpus
from ._profiles import Profile, Profiles, name_of
from ._waits import acquire_long, ending_thread, join_thread, thread_alive

DEFAULT_MAX_THREADS = 256
DEFAULT_IDLE_TIMEOUT = 10.0
STALL_SECONDS, STALL_MAX = 0.01, 0.08  # the stall check's first and longest interval

logger = logging.getLogger("hybridexec")


class ThreadLane:
    """A growing and shrinking pool of threads for blocking work."""

    kind = "thread"

    def __init__(
        self,
        max_threads: int | None = None,
        *,
        idle_timeout: float | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        name: str = "hybridexec",
        thread_name_prefix: str = "",
    ) -> None:
        self.max_threads = max_threads or DEFAULT_MAX_THREADS
        # ThreadPoolExecutor's naming, "<prefix>_<n>", when the user gave a prefix.
        self._thread_name = f"{thread_name_prefix}_" if thread_name_prefix else f"{name}-thread-"
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self._initializer, self._initargs, self._name = initializer, initargs, name
        # Appended under _lock, taken without it (deque: thread-safe appends and pops).
        self._queue: collections.deque[Task | None] = collections.deque()
        self._lock = threading.Lock()
        self._idle: list[Any] = []  # the wake locks of idle threads, last idle last (_lock)
        self._threads: set[threading.Thread] = set()
        self._busy: dict[threading.Thread, Task] = {}  # threads running library-chosen work
        self._waiting = 0  # threads running a task not known to compute (under _lock)
        self._cpus = usable_cpus()
        self.profiles = Profiles()  # code object -> what its calls do
        self.submitted = 0  # tasks counted by submit (the express path's; under _lock)
        self._taken = 0  # tasks taken so far (progress, for the stall check; unlocked)
        self._stall_check = False  # a stall check is scheduled (under _lock)
        self._closed = self._joined_at_exit = False
        self._start_error: BaseException | None = None  # why the last thread did not start
        self.timers = Timers(f"{name}-thread-deadlines")  # settles timed-out tasks' futures
        self._serial = itertools.count()
        self.broken: BaseException | None = None  # the initializer's error, as in the stdlib
        self.gate: Any = None  # set by the router: what a thread asks before and after a task
        self.spare: Callable[[], bool] | None = None  # the capped CPU lane's: _check_stall
        self.spare_max = 0

    @property
    def size(self) -> int:  # the number of threads alive now
        return len(self._threads)

    def submit(self, task: Task, profile: Any = False, *, counted: int = 0) -> None:
        """Queue a task; start a thread for it unless one is idle or it would not help.

        ``profile``: ``profiles.of(task.fn)`` if known; ``counted``: calls to add to ``submitted``.

        Raises:
            RuntimeError: the lane was shut down.
        """
        task.profile = profile = self.profiles.of(task.fn) if profile is False else profile
        if not self._threads:  # about to start this process's first thread, perhaps
            _lifecycle.starting_thread()
        with self._lock:
            if self.broken is not None:
                raise _broken_error(self.broken)
            if self._closed or _lifecycle.exited:
                raise _lifecycle.closed_error()
            self._queue.append(task)
            self.submitted += counted
            threads = len(self._threads)
            computing = threads - len(self._idle) - self._waiting  # threads at work, on a CPU
            if profile is not None and profile.computes and computing >= self._cpus:
                # CPUs all busy: the threads at work take it next (no wake-up per task).
                if not self._stall_check:
                    self._arm_stall_check()
                return
            if self._idle:
                self._idle.pop().release()  # the last thread gone idle: its cache is warm
                return
            if threads >= self.max_threads:
                if self.spare is not None or task.chosen:  # its threads may all block (D5),
                    self._arm_stall_check()  # or wait for this measured call (15c's C6)
                return
            if not self._start_thread():
                self._refused(task)

    def _start_thread(self) -> bool:
        """Start one more thread (lock held); False if the system refused one (a limit)."""
        thread = ending_thread(self._work, f"{self._thread_name}{next(self._serial)}")
        self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": threads or memory at a limit
            self._threads.discard(thread)
            self._start_error = exc
            return False
        return True

    def _refused(self, task: Task) -> None:
        # No thread could start for ``task`` (lock held): threads alive take it when one is
        # free (the stall check tries again); with none it is withdrawn and the submit fails.
        if self._threads:
            logger.warning("hybridexec: cannot start a thread (%s); queued", self._start_error)
            self._arm_stall_check()
            return
        task.future.cancel()
        err = RuntimeError(f"cannot start a thread to run this task: {self._start_error}")
        raise err from self._start_error

    def _arm_stall_check(self, after: float = STALL_SECONDS) -> None:  # with the lock held
        if not self._stall_check:  # no timer thread (a thread limit): threads at work take it
            check = functools.partial(self._check_stall, self._taken, after)
            self._stall_check = self.timers.try_call_at(time.monotonic() + after, check)

    def _check_stall(self, taken: int, after: float) -> None:
        """Wake or start a thread if tasks were declined one and none was taken since."""
        with self._lock:
            self._stall_check = False
            if self._closed or self.broken is not None:
                return
            if self._taken != taken:  # progress: look again later, less often
                self._arm_stall_check(min(2 * after, STALL_MAX))
                return
            if not self._queue:
                return
            if self._idle:
                self._idle.pop().release()
            elif len(self._threads) < self.max_threads or self._past_cap():
                self._start_thread()
            self._arm_stall_check()  # work is still queued: look again soon

    def _past_cap(self) -> bool:
        # At the cap: the capped CPU lane starts one more while a slot's holder lends it (it
        # blocks: D5); the other one for a measured first call queued behind busy threads
        # (they may wait for it: 15c's C6), one past ``max_threads`` at most.
        if self.spare is not None:
            return len(self._threads) < self.spare_max and self.spare()
        queued = itertools.islice(self._queue, 64)
        return len(self._threads) <= self.max_threads and any(t and t.chosen for t in queued)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; optionally cancel what has not started; optionally wait."""
        with self._lock:
            self._closed = True
            dropped = self._drain() if cancel_futures else []
            self._stop_threads()
            if not (threads := list(self._threads)):
                self.timers.close(wait=False)
        inline = threading.current_thread() in threads  # here, as the stdlib: its shutdown
        with contextlib.nullcontext() if inline else serving(self.timers):  # joins us (G2)
            for task in dropped:  # unlocked: a callback may shut down (C2); on callback
                if task.future.cancel():  # threads (C1); waiters notified (wait())
                    task.future.set_running_or_notify_cancel()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    join_thread(thread)  # a Ctrl-C leaves it running and joinable (< 3.13)
            self.timers.close()

    def _work(self) -> None:
        me, born = threading.current_thread(), _lifecycle.generation()
        try:
            if self._initializer is not None:
                self._initializer(*self._initargs)
        except BaseException as exc:
            self._break(exc)
            with self._lock:
                self._threads.discard(me)
            return
        take, lock, queued = self._queue.popleft, self._lock, self._queue
        while True:
            try:
                task = take()  # the next task at once, without going idle between tasks
            except IndexError:
                with lock:
                    if queued:  # appended since (under the lock): take it
                        continue
                    wake = threading.Lock()
                    wake.acquire()
                    self._idle.append(wake)  # a submit releases it to wake this thread
                if not acquire_long(wake, self.idle_timeout):  # idle_timeout inf: never leave
                    with lock:
                        if wake in self._idle:  # not woken meanwhile: leave
                            self._idle.remove(wake)
                            self._threads.discard(me)
                            return
                continue
            if task is None:
                with lock:
                    self._threads.discard(me)
                    if self._closed and not self._threads:  # the last: no deadline to keep
                        self.timers.close(wait=False)  # (shut down without wait: 15b's B1)
                return
            self._taken += 1
            # Late binding, CPU slots (_routing/_binding.py); quick: no newer verdict, no slot
            gate, route = self.gate, task.route  # to wait for, not measured (the common case)
            newer = route is not None and getattr(route.source, "decision", None) is not route
            quick = gate is None or not (gate.wait or newer or type(task) is not Task)
            if quick or gate.admit(task):  # admit False: the task moved to another lane
                try:
                    self._run(task, me)
                except BaseException as exc:  # a lane bug or a refused timer thread (never
                    # the task's): the task fails rather than stay running for ever.
                    logger.exception("the thread lane failed running %r", task)
                    task.future.settle(False, exc)
                _lifecycle.exit_if_forked(born)  # a child the task forked ends here
                if not quick:
                    gate.leave()
            del task, route  # an idle thread must not keep them (callable, arguments) alive

    def join_at_exit(self, bound: float) -> float:
        """At interpreter exit: wait for running work, bounded for work the library chose.

        The user's thread work, running or queued before shutdown, is waited for as long as
        it runs (as in the standard library); work the library chose to run on a thread (a
        measured first call) at most ``bound`` seconds more, then a warning names it and the
        interpreter exits anyway (daemon threads). A second call returns at once.

        Returns:
            The seconds of ``bound`` used (the next lane gets the rest: one bound for all).
        """
        if self._joined_at_exit:
            return 0.0
        self._joined_at_exit, me = True, threading.current_thread()
        deadline: float | None = None
        while True:
            with self._lock:
                busy = dict(self._busy)
                alive = [t for t in self._threads if t is not me and thread_alive(t)]
            if not alive:
                return 0.0 if deadline is None else bound - max(0.0, deadline - time.monotonic())
            users = [t for t in alive if t not in busy or not busy[t].chosen]
            if users:  # in slices: a thread between tasks may turn to library-chosen work
                join_thread(users[0], 0.1)
                continue
            deadline = time.monotonic() + bound if deadline is None else deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning(
                    "hybridexec: exiting while %s still runs on a thread the library chose "
                    "(it cannot be killed); give it a timeout or kind='process' to stop it",
                    ", ".join(sorted({name_of(task.fn) for task in busy.values()})),
                )
                return bound
            join_thread(alive[0], remaining)

    def _break(self, exc: BaseException) -> None:
        """The initializer raised: fail the queued tasks, refuse submits (as the stdlib does)."""
        # Logged where ThreadPoolExecutor users look: CRITICAL on concurrent.futures.
        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=exc)
        with self._lock:
            self.broken = self.broken or exc
            tasks = self._drain()
            self._stop_threads()  # the other threads leave too
        for task in tasks:
            if task.future.set_running_or_notify_cancel():
                task.future.settle(False, _broken_error(exc))
            task.release()

    def _drain(self) -> list[Task]:
        tasks: list[Task] = []  # every queued task (lock held)
        while self._queue:  # threads take tasks meanwhile (without the lock)
            with contextlib.suppress(IndexError):
                if (task := self._queue.popleft()) is not None:
                    tasks.append(task)
        return tasks

    def _stop_threads(self) -> None:
        """One stop per thread, and every idle thread woken to take its stop (lock held)."""
        self._queue.extend([None] * len(self._threads))
        while self._idle:
            self._idle.pop().release()

    def _run(self, task: Task, me: threading.Thread) -> None:
        future, profile = task.future, task.profile
        if task.context is FRESH_CONTEXT:  # its submitter's context was empty (see there)
            task.context = FRESH_CONTEXT.copy()  # a new empty one
        waits = profile is None or not profile.computes  # counted as such while it runs
        chosen = task.chosen  # join_at_exit needs to know only where the library's work runs
        if chosen:
            self._busy[me] = task  # before the future says running
        if waits:
            with self._lock:
                self._waiting += 1
        try:
            if future.set_running_or_notify_cancel():
                sample = profile is not None and profile.sample()
                if sample or task.timeout is not None or _faults.ACTIVE:
                    self._call(task, future, profile if sample else None)
                elif type(task) is Task and not task.batch and future._hx_inline is None:
                    # The common case, inline: one call in its context, untimed.
                    context = task.context
                    try:
                        if context is None:
                            value, ok = task.fn(*task.args, **task.kwargs), True
                        else:
                            value, ok = context.run(task.fn, *task.args, **task.kwargs), True
                    except BaseException as exc:  # SystemExit must not end the thread
                        value, ok = exc, False
                    future.settle(ok, value)
                else:  # no deadline, no fault, no CPU reading
                    future.settle(*task.call())
        finally:
            if chosen:
                self._busy.pop(me, None)
            if waits:
                with self._lock:
                    self._waiting -= 1
            task.release()

    def _call(self, task: Task, future: Future[Any], profile: Profile | None) -> None:
        running: Running | None = None
        if task.timeout is not None:
            task.start_clock()
            running = Running(future, task.timeout, threading.get_ident())
            assert task.deadline is not None
            running.arm(self.timers, task.deadline)
        cpu, ok, value = -1.0, False, None
        try:
            try:
                if _faults.ACTIVE:
                    _faults.hit("thread.before_call")
                cpu = time.thread_time() if profile is not None else -1.0  # its CPU time read
                ok, value = task.call()
                if profile is not None:
                    cpu = time.thread_time() - cpu
            except TaskInterrupted:
                raise
            except BaseException as exc:  # a fault injected before the call: it fails
                ok, value = False, exc
            # Finished before settling: a deadline passing from here on is ignored, and
            # no interruption can reach the done-callbacks that settle() runs.
            timed_out = running is not None and running.finish()
        except TaskInterrupted:
            # The deadline's interruption landed outside the call (raised once; settled).
            timed_out = True
            if running is not None:
                running.finish()
        if cpu >= 0 and profile is not None:
            profile.add(task.elapsed, cpu)
        if not timed_out:
            future.settle(ok, value)
        elif running is not None:
            running.returned()  # failed at its deadline, its code ends only now (late_end)


def _broken_error(cause: BaseException) -> BaseException:
    err = BrokenExecutorError(
        f"a thread initializer raised {cause!r}: the thread lane is not usable anymore"
    )
    err.__cause__ = cause
    return err
