"""The manager's sleep and the direct path: a caller sends its call, and reads its own reply.

A mixin of the manager thread (``_manager.py``), over ``Scheduling``. The rules, in the order a
round trip meets them (docs/architecture.md, "The direct path"):

1. Before it sleeps, and only while no call is in flight, the manager offers its idle workers
   (``lane.ready``, under the lane's lock). It sleeps in ``epoll`` on the wake-up pipe and on
   every worker's reply pipe and sentinel; the registrations change only when workers come or
   go (``_watch``), so another thread may change one while the manager sleeps.
2. A submit that finds a worker offered takes it under the lane's lock, records the call as the
   manager would and writes the frame itself (``send_direct``). The worker is now *lent*: in
   ``lane.lent``, with the offer's epoch.
3. The caller that then waits for that future (``result()``, through the future's
   ``_hx_before_wait``) may read the reply itself (``read_reply``): under the lane's
   lock, and only while the worker is lent in the current epoch, it takes the worker's read
   token (``lane.reading``) and turns the reply pipe off in the manager's epoll. So the reply
   wakes the caller alone: no wake-up of the manager, no hand-off of the GIL between threads.
   It waits at most ``READ_BOUND`` seconds, in ``poll`` on the reply pipe and the sentinel
   (the GIL released); it handles the reply exactly as the manager does (one caller at a time,
   done-callbacks handed to the callback threads), then turns the pipe back on and gives the
   token back. A worker left idle is offered again at once, while the manager still sleeps.
4. As it wakes, the manager closes the epoch (``_reclaim``): no offer or token is taken from
   then on, it waits for the tokens out (each is held at most ``READ_BOUND`` plus the handling
   of one reply), and takes the lent workers back. A reply that nobody read (no caller
   waited: done-callbacks, ``wait()``, ``as_completed()``; a caller gave up or was
   interrupted) is in the pipe, or in the worker's buffer: the manager reads it as any other.
   A pipe that was ready as the manager woke is read only if it still is: a caller may have
   taken the reply meanwhile.

A crash, a cancel, a kill or a shutdown is the manager's, as for any call: a caller reading a
worker that dies sees its sentinel and gives the token back; the manager, woken by the same
sentinel, reaps it once the token is back. Calls with a timeout, large calls and calls to a
lane with an initializer (a failing one breaks the lane: the manager's business) never go this
way; without ``epoll`` a caller never reads replies (the manager does).
"""

from __future__ import annotations

import functools
import math
import select
import signal
import threading
import time
from typing import Any

from .. import _callbacks, _faults
from .._exceptions import BrokenExecutorError
from .._futures import Task
from .._waits import surely
from ._frames import HEADER_SIZE, write_frame
from ._group import seal
from ._replies import Replies
from ._schedule import PIPELINE_SECONDS
from ._supervision import BUSY, IDLE, WorkerRecord

CALLER_SUM = 16
"""Replies handled by callers between two gifts of their summed figures to the router (those
of a function not seen since the last go at once): one gift per call cost ~10% of a round trip
(issue 17)."""
READ_BOUND = 0.01
"""Seconds a caller waits for its reply in the worker's pipe before it leaves it to the manager
(the manager, if it wakes meanwhile, waits this long at most for the pipe back)."""

_EPOLL: Any = getattr(select, "epoll", None)
_IN = select.POLLIN
_ABSENT = object()


class Direct(Replies):
    """The manager's sleep, the offers of idle workers and the callers' own reads."""

    def _init_direct(self) -> None:
        self.epoll: Any = _EPOLL() if _EPOLL is not None else None
        self.poller = select.poll()  # without epoll
        self.polled: dict[int, Any] = {}  # descriptor -> its owner, as registered
        self.recheck: list[WorkerRecord] = []  # lent during the last sleep
        self.offered = False  # workers were offered before the last sleep (see _reclaim)
        self.books = threading.Lock()  # callers handle their replies one at a time
        self.caller_replies = 0  # handled by callers (under books), see CALLER_SUM
        self.caller_keys: set[Any] = set()  # the figures' keys at their last gift
        self.handle_served = _callbacks.serve(self._handle_reply, self.lane)

    def close_poller(self) -> None:
        if self.epoll is not None:
            self.epoll.close()

    # ---- the manager's sleep ------------------------------------------------------------------
    def _watch(self, wake_r: int, watched: dict[Any, WorkerRecord]) -> None:
        """Register what the manager sleeps on: changes only when a worker comes or goes.

        A descriptor number may come back as another worker's (a reap, then a start): it is
        registered again, since it names another pipe now.
        """
        want: dict[int, Any] = dict(watched)
        want[wake_r] = None
        if want == self.polled:
            return
        epoll = self.epoll
        if epoll is None:
            self.poller = select.poll()
            for fd in want:
                self.poller.register(fd, _IN)
        else:
            old = self.polled
            for fd, owner in old.items():
                if want.get(fd, _ABSENT) is not owner:
                    self._unregister(fd)
            for fd, owner in want.items():
                if old.get(fd, _ABSENT) is not owner:
                    try:
                        epoll.register(fd, _IN)
                    except FileExistsError:
                        epoll.modify(fd, _IN)
        self.polled = want

    def _unregister(self, fd: int) -> None:
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already (the kernel dropped it), or never registered

    def _forget(self, worker: WorkerRecord) -> None:
        # Off the epoll before the descriptors close: a forked worker may hold a copy of a
        # pipe, which would keep it registered under a number that is not ours any more.
        for fd in (worker.rfd, worker.sentinel):
            if self.polled.pop(fd, None) is worker and self.epoll is not None:
                self._unregister(fd)
        super()._forget(worker)

    def _wait(self, timeout: float | None) -> list[int]:
        """The registered descriptors that are ready, within ``timeout`` seconds."""
        if self.lane.slots is not None:  # while work waits for a slot, a holder may lend one
            timeout = self.lane.slots.timeout(timeout)
        if self.epoll is not None:
            return [fd for fd, _ in self.epoll.poll(-1 if timeout is None else timeout)]
        ms = None if timeout is None else math.ceil(timeout * 1000)
        return [fd for fd, _ in self.poller.poll(ms)]

    def _stale(self, worker: WorkerRecord) -> bool:
        """Whether the reply pipe of ``worker``, ready as the manager woke, is empty now.

        Only for a worker lent during that sleep: its caller may have taken the reply.
        """
        if worker not in self.recheck:
            return False
        probe = select.poll()
        probe.register(worker.rfd, _IN)
        return not probe.poll(0)

    # ---- offers and their end -----------------------------------------------------------------
    def _before_sleep(self) -> None:
        """Before the manager sleeps: let submits write straight to the idle workers.

        Only while nothing is in flight: in a stream of submits, the manager's batches
        (several calls per write, calls sent ahead) are cheaper than one write per call.
        """
        lane = self.lane
        if lane.slots is not None:  # idle workers' CPU slots come back (the governor)
            lane.slots.sync(self.workers.values(), BUSY, lane.pending)
        if lane.pending or lane.shutting_down:
            return
        ready: list[WorkerRecord] = []
        for w in self.workers.values():
            if w.tasks:
                return
            if w.state == IDLE and w.retire_why is None:
                ready.append(w)
        if ready:
            with lane._lock:
                if not lane.pending and not lane.shutting_down:
                    lane.ready = ready
                    self.offered = True

    def _reclaim(self) -> None:
        """After the manager's sleep: end the offers and take the lent workers back.

        Then the writes that failed there are settled, and the replies a caller left in a
        worker's buffer handled.
        """
        lane = self.lane
        if not self.offered:
            # Nothing offered, so nothing lent, failed or given back: the lane's lock is not
            # taken (in a stream, a submit holds it often; waiting for it here would hand the
            # GIL to that thread and back on every turn).
            self.recheck = []
            return
        self.offered = False
        with lane._lock:
            lane.ready = []
            lent: list[WorkerRecord] = []
            if lane.lent:
                lane.epoch += 1  # no caller takes a token from here on
                while lane.reading:
                    lane.returned.wait()
                lent = list(lane.lent)
                lane.lent.clear()
            failed, lane.send_failures = lane.send_failures, []
        self.recheck = lent
        for worker, task, exc in reversed(failed):  # each goes first in line: in their order
            self._send_failed(worker, [task], exc, 0)  # the one frame did not all go
        for worker in lent:
            if worker.rfd in self.by_object and worker.reader.has_frame():
                self._handle_frames(worker)  # a caller was interrupted as it handled it

    # ---- the direct path ------------------------------------------------------------------------
    def send_direct(self, task: Task) -> bool:
        """Send ``task`` to an offered idle worker from the submitting thread; False if none.

        Runs in the caller's thread under the lane's lock, while the manager sleeps. A write
        that fails is settled by the manager.
        """
        lane = self.lane
        if not lane.ready or task.timeout is not None:
            return False
        payload = seal(task)  # nothing in flight: the call goes alone
        if payload is None:
            return False
        worker = lane.ready[-1]
        if len(payload) + HEADER_SIZE > worker.budget or not lane.take_slot():
            return False
        lane.ready.pop()
        if not self._claim(task):
            lane.ready.append(worker)
            if lane.slots is not None:
                lane.slots.untake_process()  # the worker stays idle: its slot goes back
            return True  # cancelled meanwhile: it ends as such
        self._assign(worker, task)
        lane.lent[worker] = lane.epoch
        cost = self._cost(task)
        # Its reply comes soon: its caller may read it, and the worker expects the next call
        # at once (the frame's flag: it watches its pipe a moment after a tiny call).
        soon = (
            cost is not None
            and cost <= PIPELINE_SECONDS
            and self.epoll is not None
            and lane.initializer is None
        )
        try:
            if _faults.ACTIVE:
                _faults.hit("lane.send")
            write_frame(worker.fd, payload, soon)
        except BaseException as exc:  # settled by the manager (a closed pipe: the call goes
            # again); interrupted (Ctrl-C), the frame may be half written: the call fails
            failed = exc if isinstance(exc, OSError) else InterruptedError("write interrupted")
            lane.send_failures.append((worker, task, failed))
            lane._wake_locked()
            if failed is exc:
                return True
            raise
        if soon:
            task.future._hx_before_wait = functools.partial(self.read_reply, worker, task)
        return True

    def read_reply(self, worker: WorkerRecord, task: Task, timeout: float | None) -> float | None:
        """In a caller about to wait for ``task``: read its reply from ``worker`` if it may.

        Returns what is left of ``timeout``; the future is settled if the reply came.
        """
        lane = self.lane
        task.future._hx_before_wait = None  # once
        if timeout is not None and timeout <= 0:
            return timeout
        taken = handled = False  # (a Ctrl-C may land anywhere: the token always goes back)
        started = time.monotonic()
        try:
            with lane._lock:
                if (
                    lane.lent.get(worker) != lane.epoch
                    or worker in lane.reading
                    or task.future.done()
                    or not worker.tasks
                    or worker.tasks[0] is not task
                ):
                    return timeout
                taken = True  # first: given back (the manager's watch restored) whatever comes
                try:
                    self.epoll.modify(worker.rfd, 0)  # the reply wakes this thread alone
                except (OSError, ValueError):  # not registered, or the manager has ended
                    return timeout
                lane.reading.add(worker)
            handled = self._read_own(worker, task, min(READ_BOUND, timeout or READ_BOUND))
        finally:
            if taken:
                surely(self._give_back, worker, handled)
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        return timeout

    def _read_own(self, worker: WorkerRecord, task: Task, bound: float) -> bool:
        """Wait up to ``bound`` seconds for the reply; handle it. False: left to the manager."""
        reader = worker.reader
        probe = select.poll()
        probe.register(worker.rfd, _IN)
        probe.register(worker.sentinel, _IN)
        deadline = time.monotonic() + bound
        while True:
            try:
                data = reader.next_frame()
            except (EOFError, OSError):
                return False  # it died mid-reply: the manager reaps it
            except BaseException:  # Ctrl-C: what was read of the pipe may be lost
                self._desynchronized(worker)
                raise
            if data is not None:
                break
            ready = probe.poll(math.ceil(max(0.0, deadline - time.monotonic()) * 1000))
            if not any(fd == worker.rfd for fd, _ in ready):
                return False  # no reply in time, or it died: the manager's
            try:
                reader.fill()
            except (EOFError, OSError):
                return False
            except BaseException:
                self._desynchronized(worker)
                raise
        try:
            with self.books:
                self.handle_served(worker, data)
                self.caller_replies = n = self.caller_replies + 1
                # Given as the manager would at its turn's end: it sleeps through the stream
                if n % CALLER_SUM == 0 or not self.caller_keys.issuperset(self.timings):
                    self.caller_keys = set(self.timings)  # a new function's go at once
                    self._flush_timings()
        except BaseException:
            self._repair(worker, task, data)
            raise
        return True

    def _desynchronized(self, worker: WorkerRecord) -> None:
        """Ctrl-C as the caller read the pipe: a reply may be half taken.

        The worker goes (its call fails with this error): no later reply is matched to the
        wrong call.
        """
        worker.expired = BrokenExecutorError("interrupted (Ctrl-C) as its reply was read")
        worker.child.signal(signal.SIGKILL)

    def _repair(self, worker: WorkerRecord, task: Task, data: bytes) -> None:
        """The caller was interrupted (Ctrl-C) as it handled its reply: leave it whole.

        Not taken yet, the reply goes back to the worker's buffer for the manager; taken, the
        call ends (with that error if it was not settled yet) and the worker is idle again.
        """
        if worker.tasks and worker.tasks[0] is task:
            reader = worker.reader
            reader.buf = len(data).to_bytes(HEADER_SIZE, "big") + data + reader.buf[reader.pos :]
            reader.pos = 0
        else:
            task.future.settle(False, BrokenExecutorError("interrupted as its reply was read"))
            if worker.state == BUSY and not worker.tasks:
                worker.state = IDLE
                worker.idle_since = time.monotonic()
        self.lane.wake()

    def _give_back(self, worker: WorkerRecord, handled: bool) -> None:
        lane = self.lane
        with lane._lock:
            try:
                self.epoll.modify(worker.rfd, _IN)
            except (OSError, ValueError):
                pass  # gone from the epoll: the manager forgot it, or will
            lane.reading.discard(worker)
            if lane.lent.get(worker) != lane.epoch:
                lane.returned.notify_all()  # the manager is awake and waits for it
            elif not handled:
                pass  # the reply, or the sentinel, wakes the manager
            elif (
                worker.state == IDLE
                and not lane.pending
                and not lane.shutting_down
                and worker.retire_why is None
                and worker not in lane.ready  # (given back twice: surely)
            ):
                if lane.slots is not None:
                    lane.slots.untake_process()  # idle again: its slot goes back
                lane.ready.append(worker)  # offered again: the next call goes direct
            elif not lane._wake_pending:
                lane._wake_locked()  # retiring (a deadline to keep), or work waits
