"""The CPU-slot governor: one budget of cores shared by the process lane and CPU-heavy threads.

An executor has ``total`` CPU slots: the usable cores, or ``max_processes`` when that was set
higher (the user asked for that many processes at once). Who holds one:

- a worker process while it runs calls (from the call that makes it busy to the reply that
  leaves it idle: calls sent ahead to it share its slot); the manager thread (or a submit on the
  process lane's direct path) takes the slot before it hands a call to an idle worker
  (``take_process``, never blocking), and the manager reports the busy workers before each
  dispatch and each sleep (``sync``);
- a thread of the capped CPU lane while it runs a task judged CPU-heavy (GIL-free C code that
  keeps its thread on a CPU; any CPU work on a free-threaded build with the GIL off): it
  waits for a slot before it starts the task (``acquire``);
- a measured first call, on the growing lane, for as long as it runs: it takes one at once,
  without waiting (``hold``), since nobody knows yet what it is; the measured calls running at
  once share that one slot (Python threads take turns on one GIL).

Waiting work takes no slot: I/O-bound thread work never asks for one (the growing lane still
starts a thread for every blocking task). A holder seen waiting rather than computing (its
thread made no progress, neither running nor waiting for a CPU, for ``LEND_AFTER``: it blocks
on a lock, on I/O, on the future of another task) *lends* its slot: whoever waits for a slot
may take it. That is also what keeps nested work from deadlocking: a CPU task that waits for
another task's result frees its slot for that task. (CPU-heavy work submitted by a task that
holds a slot does not even wait: it runs on its parent's slot, see ``_binding.py``.)

Processes and threads share the budget first come, first served: when processes hold every
slot a CPU-heavy thread task waits, and a process task waits (in the manager's queue) while
threads hold them. A slot given back goes to the request that has waited longest (the
process lane counts as one request while it holds work back), so a stream of work on one
side never starves the other.

BLAS/OpenMP pools count too. A worker process starts with its share of the cores
(``_process/_threadlimits.py``); in this process, while ``h`` threads hold slots, each BLAS
call gets the cores not held by processes divided by ``h`` (at least 1): the count is set when
a thread takes a slot and put back when the last one gives its slot back (``LocalPools``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sized
from typing import Any

from .._process import LocalPools, local_pools, usable_cpus
from ._sched import queued_seconds, running_now

LOOK_SECONDS = 0.02
"""While someone waits for a slot, the holders' CPU clocks are read this often."""
IDLE_RATE = 0.1
"""A holder that ran (or waited for a CPU) less than this share of the time between two looks
made no progress..."""
LEND_AFTER = 0.2
"""...and one that made none for this long waits: it lends its slot. Long, because a thread
waiting for the GIL (behind a thread the loaded machine does not run) looks the same for a
while, and lending is a way out of a deadlock, not a way to run more at once."""

_clock_of: Callable[[int], int] | None = getattr(time, "pthread_getcpuclockid", None)


class _Holder:
    """A thread that holds a slot, and its clocks at the last look (none before the first)."""

    __slots__ = ("clock", "idle", "measured", "moved", "ran", "seen", "tid")

    def __init__(self, ident: int, *, measured: bool = False) -> None:
        self.measured = measured  # a measured first call: they share one slot (``hold``)
        clock: int | None = None
        if _clock_of is not None:
            try:
                clock = _clock_of(ident)
            except OSError:
                clock = None
        self.clock = clock
        self.tid = threading.get_native_id()  # called on the holder's own thread
        self.ran: float | None = None  # CPU time plus run-queue wait at the last look
        self.seen = self.moved = 0.0  # the last look; the last look that saw progress
        self.idle = False

    def busy_time(self) -> float | None:
        """Seconds the thread ran or was runnable (waiting for a CPU) since it began."""
        if self.clock is None:
            return None
        try:
            cpu = time.clock_gettime(self.clock)
        except OSError:  # the thread is gone
            return None
        # a thread starved of a CPU by a loaded machine does not wait: it is not idle
        return cpu + (queued_seconds(self.tid) or 0.0)


class Governor:
    """The CPU slots of one executor (see the module documentation).

    Args:
        total: The number of slots.
        pools: This process's BLAS/OpenMP pools (default: ``local_pools()``).
    """

    def __init__(self, total: int, pools: LocalPools | None = None) -> None:
        self.total = max(1, total)
        self.pools = local_pools() if pools is None else pools
        # Found now if a library with a pool is loaded (once per process, ~5 ms): the scan
        # holds the GIL, and later it would fall inside the windows of measured first calls.
        self.pools.prepare()
        self._narrowed = False  # this governor asked the pools for fewer threads
        self._cores = usable_cpus()
        self.processes = 0  # busy worker processes
        self.waiting = 0  # thread tasks waiting for a slot
        self.on_free: Callable[[], None] | None = None  # wakes the process lane's manager
        self._holders: dict[int, _Holder] = {}  # thread ident -> holder
        # Who waits, in order (first come, first served): a ticket per waiting thread task,
        # and one for the process lane while it holds work back for want of a slot.
        self._tickets = itertools.count()
        self._queued: set[int] = set()
        self._process_ticket: int | None = None
        self._cond = threading.Condition(threading.Lock())
        self._looked = 0.0

    # ---- threads ----------------------------------------------------------------------------
    def acquire(self, cancelled: Callable[[], bool]) -> bool:
        """Wait for a slot for the current thread; False if ``cancelled()`` turned True first."""
        ident = threading.get_ident()
        pools = self._prepare()
        with self._cond:
            if self._free() <= self._ahead(None):
                ticket = next(self._tickets)
                self._queued.add(ticket)
                self.waiting += 1
                try:
                    while self._free() <= self._ahead(ticket):
                        if cancelled():
                            return False
                        self._cond.wait(LOOK_SECONDS)
                        self._look()
                finally:
                    self._queued.discard(ticket)
                    self.waiting -= 1
                    self._cond.notify_all()  # the next in line may go now
            self._holders[ident] = _Holder(ident)
            if pools:
                self._fit()
        if pools:
            self.pools.settle()
        return True

    def hold(self) -> None:
        """Take a slot for the current thread now, even over the budget (a measured call).

        The measured calls running at once share one slot: what nobody knows yet is mostly
        Python code, and Python threads take turns on one GIL, so together they keep one core
        busy, not one each. (Counting one each kept the processes waiting, while seven new
        functions were measured at once, for calls that ran one at a time on the GIL.)
        """
        ident = threading.get_ident()
        pools = self._prepare()
        with self._cond:
            self._holders[ident] = _Holder(ident, measured=True)
            if pools:
                self._fit()
        if pools:
            self.pools.settle()

    def holds(self) -> bool:
        """Whether the current thread holds a slot (read without the lock: its own entry)."""
        return threading.get_ident() in self._holders

    def release(self) -> None:
        """Give back the current thread's slot (nothing to do if it holds none)."""
        ident = threading.get_ident()
        if ident not in self._holders:  # the common case on the growing lane: no lock
            return
        with self._cond:
            if self._holders.pop(ident, None) is None:
                return
            if self._narrowed:
                if self._holders:  # fewer holders: more threads each, unless one comes soon
                    self._fit(later=LOOK_SECONDS)
                else:
                    self._narrowed = False
                    self.pools.release(self)
            self._cond.notify_all()
            wake = self.on_free if self._process_ticket is not None else None
        if wake is not None:
            wake()

    def lending(self) -> bool:
        """Whether every thread holding a slot lends it (looked at again) and one is free.

        Asked by the capped CPU lane when its threads all hold slots and stopped taking tasks:
        then one more thread may take the next task (14d's D5: a holder may wait for it). Not
        while any holder computes: it makes progress (14e's E3). A lender that resumes runs
        beside its borrower: over the budget by the spare threads made (docs/routing.md).
        """
        with self._cond:
            self._look()
            holders = self._holders.values()
            idle = bool(holders) and all(h.idle for h in holders)
            return idle and self._free() > self._ahead(None)

    # ---- the process lane's manager ---------------------------------------------------------
    def take_process(self) -> bool:
        """A slot for a worker about to run calls; False (never waits) when none is free."""
        with self._cond:
            ticket = self._process_ticket
            if self._free() <= self._ahead(ticket):
                self._look()
                if self._free() <= self._ahead(ticket):
                    if ticket is None:
                        self._process_ticket = next(self._tickets)
                    return False
            self.processes += 1
            self._process_ticket = None
            return True

    def untake_process(self) -> None:
        """Give back a slot ``take_process`` gave for a worker that stays idle after all."""
        with self._cond:
            self.processes = max(0, self.processes - 1)
            self._cond.notify_all()

    def sync(self, workers: Iterable[Any], busy: object, pending: Sized) -> None:
        """The manager's view before a dispatch or a sleep: who holds a slot.

        Workers whose ``state`` is ``busy`` hold one; the others' slots come back. With
        ``pending`` empty, no process work waits for a slot any more.
        """
        held = sum(1 for w in workers if w.state == busy)
        with self._cond:
            if held < self.processes or (not pending and self._process_ticket is not None):
                self._cond.notify_all()
            self.processes = held
            if not pending:
                self._process_ticket = None

    @property
    def process_waiting(self) -> bool:
        """Whether the process lane holds work back for want of a slot."""
        return self._process_ticket is not None

    def timeout(self, timeout: float | None) -> float | None:
        """The manager's sleep: at most ``LOOK_SECONDS`` while work waits for a slot."""
        if self._process_ticket is None:
            return timeout
        return LOOK_SECONDS if timeout is None else min(timeout, LOOK_SECONDS)

    # ---- figures ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        """``total``, held by ``processes`` and by ``threads``, ``lent``, ``waiting``."""
        with self._cond:
            lent = sum(1 for h in self._holders.values() if h.idle)
            measured = sum(1 for h in self._holders.values() if h.measured)
            return {
                "total": self.total,
                "processes": self.processes,
                "threads": len(self._holders) - measured + min(1, measured),
                "lent": lent,
                "waiting": self.waiting,
            }

    # ---- internals (with the lock held, but _prepare) ----------------------------------------
    def _prepare(self) -> bool:
        """Whether BLAS pools may need narrowing: looked for only once a second holder may come.

        A task alone keeps every BLAS thread (and pays no look: slow the first time).
        """
        if not (self._holders or self.processes or self._narrowed):
            return False
        return self.pools.prepare()

    def _fit(self, later: float = 0.0) -> None:
        """Each BLAS call: the cores the processes do not hold, shared by the holders."""
        free = max(1, self._cores - self.processes)
        self.pools.narrow(self, max(1, free // max(1, len(self._holders))), later)
        self._narrowed = True

    def _ahead(self, ticket: int | None) -> int:
        """Requests waiting longer than ``ticket`` (None: a new one): they go first."""
        waiting = list(self._queued)
        if self._process_ticket is not None:
            waiting.append(self._process_ticket)
        if ticket is None:
            return len(waiting)
        return sum(1 for t in waiting if t < ticket)

    def _free(self) -> int:
        busy = measured = 0
        for holder in self._holders.values():
            if not holder.idle:
                if holder.measured:
                    measured = 1  # they share one slot (``hold``)
                else:
                    busy += 1
        return self.total - self.processes - busy - measured

    def _look(self) -> None:
        """Read the holders' clocks (at most every ``LOOK_SECONDS``): who waits lends.

        Two looks at least: the first one only reads where a holder's clocks stand.
        """
        now = time.monotonic()
        if now - self._looked < LOOK_SECONDS:
            return
        self._looked = now
        for holder in self._holders.values():
            ran = holder.busy_time()
            if ran is None:
                continue  # no per-thread clock here: never lent
            progress = holder.ran is None or ran - holder.ran >= IDLE_RATE * (now - holder.seen)
            if progress or running_now(holder.tid):  # starved of a CPU is not waiting
                holder.moved = now
            holder.idle = now - holder.moved >= LEND_AFTER
            holder.ran, holder.seen = ran, now
