"""``Executor.map`` with ``chunksize=1``: calls of a computing function run in groups.

The standard library's ``map`` submits one task per call, and so does ours by default; for
a storm of tiny calls the lane's per-task costs (a task, a queue hand-off, a thread's loop)
are most of the time (issue 17). Where nothing observable changes, consecutive calls share one
lane task, a ``Group``, and each still has its own future, started and settled as that call
runs and ends: results come in order, each as soon as its call ended; an exception stays at
its position; a call cancelled (the iterator closed, ``shutdown(cancel_futures=True)``) is
skipped; each call runs in its own copy of the submitter's context.

Grouped only when every call is read at once anyway (no ``buffersize``, no ``limit``: the
standard library reads the whole input there too), the function's calls were seen to keep a
CPU busy (the thread lane's profile: more threads could not run them sooner, see
``_threads.py``), and each call is one the express path would send to the growing thread lane
(``Plans.entry``). A group is at most ``GROUP_MAX`` calls and leaves at least
``GROUPS_PER_CPU`` groups per usable CPU, so the calls still spread over the CPUs. A
function waiting on I/O, or not measured yet, goes call by call: each may need its own thread.
A group runs where it was sent (no late binding: its calls are measured as they run).
"""

from __future__ import annotations

import collections
import contextvars
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._futures import Future, Outcome, Task
from ._process import usable_cpus

if TYPE_CHECKING:
    from ._router import Router
    from ._routing import Classifier, Options
    from ._threads import ThreadLane

GROUP_MAX = 32
"""Calls in one group at most."""
GROUPS_PER_CPU = 8
"""Groups per usable CPU at least: a map of few calls is not grouped."""
RELEASE_AFTER = 0.02
"""A group whose running call took this long (its calls are tiny) lets its other calls go."""

Submitted = tuple[Future[Any], bool, int]


class Group(Task):
    """Calls of one function run by one lane task, each settling its own future.

    The task's own future is the library's: cancelled (a shutdown cancelling what is queued)
    it cancels the calls not started; failed (the lane's error) it fails them.
    """

    __slots__ = ("calls", "classifier", "lane", "ran", "timer")

    def __init__(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[Future[Any], tuple[Any, ...]]],
        classifier: Classifier | None,
        lane: ThreadLane,
    ) -> None:
        super().__init__(fn, [(calls[0][1], {})], Future("thread"))
        self.calls = collections.deque(calls)  # taken one by one: by its thread, or released
        self.classifier = classifier
        self.lane = lane
        self.ran = 0
        self.timer: list[Any] | None = None  # the timer entry of the next look (_stuck)
        self.future._hx_add_inline(self._ended)

    def call(self) -> Outcome:
        """Run the calls in order in this thread, each settling its future as it ends."""
        fn, context, calls, first = self.fn, self.context, self.calls, self.items[0][0]
        assert context is not None  # set by submit_group before the lane has it
        started, cpu = time.perf_counter(), time.thread_time()
        self._arm(-1)
        try:
            while calls:
                try:
                    future, args = calls.popleft()
                except IndexError:  # released meanwhile
                    break
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled: skipped, as a cancelled task is
                try:
                    value, ok = context.copy().run(fn, *args), True
                except BaseException as exc:  # SystemExit in one call must not end the others
                    value, ok = exc, False
                future.settle(ok, value)
                del value
                self.ran += 1
        finally:
            if self.timer is not None:
                self.lane.timers.cancel(self.timer)
        self.elapsed = time.perf_counter() - started
        if self.classifier is not None and self.ran:
            try:
                cpu = time.thread_time() - cpu
                self.classifier.record(fn, "thread", self.elapsed, cpu, calls=self.ran, args=first)
            except Exception:  # a broken classifier must not fail calls that ended
                pass
        return True, None

    def _stuck(self, seen: int) -> None:
        # On the lane's timer thread, every RELEASE_AFTER while the group runs: a call that
        # ran that long may wait for a later call of the same map (15c's C3); the calls not
        # started leave the group, each a task of its own, as the standard library has them.
        if self.ran != seen and self.calls:
            self._arm(self.ran)
            return
        while True:
            try:
                future, args = self.calls.popleft()
            except IndexError:
                return
            task = Task(self.fn, [(args, {})], future)
            task.context = self.context.copy() if self.context is not None else None
            try:
                self.lane.submit(task)
            except Exception as exc:  # shut down meanwhile: it fails in its place
                if future.set_running_or_notify_cancel():
                    future.settle(False, exc)

    def _arm(self, seen: int) -> None:
        look = functools.partial(self._stuck, seen)
        try:
            self.timer = self.lane.timers.call_at(time.monotonic() + RELEASE_AFTER, look)
        except RuntimeError:  # no timer thread (a thread limit): the calls stay grouped
            self.timer = None

    def _ended(self, future: Future[Any]) -> None:
        # The group's future is done: after its calls ran (nothing left), or cancelled or
        # failed before or while they ran (the calls not started follow it).
        error = None if future.cancelled() else future.exception()
        while self.calls:
            try:
                call, _ = self.calls.popleft()
            except IndexError:
                break
            if error is None:
                call.cancel()
            elif call.set_running_or_notify_cancel():
                call.settle(False, error)


def submitter(
    router: Router,
    fn: Callable[..., Any],
    calls: Iterator[tuple[Any, ...]],
    opts: Options,
    chunksize: int,
    buffersize: int | None,
    limit: int | None,
) -> Callable[[], Submitted | None]:
    """``submit_next`` of ``Executor.map`` for ``results()`` (see there).

    Raises:
        RuntimeError: the executor was shut down (what was submitted is cancelled).
    """
    if chunksize == 1 and buffersize is None and limit is None:
        return _grouped(router, fn, calls, opts)

    def submit_chunk() -> Submitted | None:
        chunk = list(itertools.islice(calls, chunksize))
        if not chunk:
            return None
        try:
            future = router.plans.submit_chunk(router, fn, chunk, opts, chunksize > 1)
        except Exception as exc:
            future = _failed(router, fn, chunk, exc)
        return future, chunksize > 1, len(chunk)

    return submit_chunk


def _grouped(
    router: Router, fn: Callable[..., Any], calls: Iterator[tuple[Any, ...]], opts: Options
) -> Callable[[], Submitted | None]:
    # Every call submitted now, in groups where it can.
    todo = list(calls)
    futures: collections.deque[Future[Any]] = collections.deque()
    plans, size = router.plans, min(GROUP_MAX, len(todo) // (usable_cpus() * GROUPS_PER_CPU))
    try:
        i, n = 0, len(todo)
        while i < n:
            args = todo[i]
            entry = plans.entry(router, fn, args, {}, opts) if size > 1 else None
            profile = None if entry is None else entry.profile
            if profile is None or not profile.computes:
                try:
                    futures.append(plans.submit_chunk(router, fn, [args], opts, False))
                except Exception as exc:
                    futures.append(_failed(router, fn, [args], exc))
                i += 1
                continue
            end, j = min(n, i + size), i + 1
            if len(args) == 1:  # the common shape: the calls of one group take the same type
                kind = type(args[0])
                while j < end and len(todo[j]) == 1 and type(todo[j][0]) is kind:
                    j += 1
            else:
                kinds = tuple(map(type, args))
                while j < end and tuple(map(type, todo[j])) == kinds:
                    j += 1
            group: list[tuple[Future[Any], tuple[Any, ...]]] = [
                (Future("thread"), call) for call in todo[i:j]
            ]
            task = Group(fn, group, plans.classifier, router.threads)
            task.context = contextvars.copy_context()
            try:
                router.threads.submit(task, profile, counted=len(group))
            except Exception as exc:  # its calls fail with it, in their places
                error = _failed(router, fn, [args], exc).exception()
                for future, _ in group:
                    future.set_running_or_notify_cancel()
                    future.settle(False, error)
            futures.extend(future for future, _ in group)
            i = j
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    del todo

    def submit_next() -> Submitted | None:
        return (futures.popleft(), False, 1) if futures else None

    return submit_next


def _failed(
    router: Router, fn: Callable[..., Any], calls: list[tuple[Any, ...]], error: Exception
) -> Future[Any]:
    """A future failed with the resource error (EMFILE, EAGAIN...) its submit raised.

    In the calls' place: the iterator raises it in turn, after the results before it, as a
    call's own exception. After a shutdown the submit's ``RuntimeError`` is raised at once.
    """
    if router.closed:
        raise error
    from ._mapitems import failed

    return failed(fn, [(args, {}) for args in calls], "thread", error).future
