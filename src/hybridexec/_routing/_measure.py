"""What the GIL probe measures: the thresholds, and the maths that reads a window's figures.

``Window`` (``_stalls.py``) holds the raw figures of one measured call as the probe thread
(``_probe.py``) collects them; ``Measurement`` turns them into the shares the classifier judges
by. The reasons behind each figure are explained at the top of ``_probe.py``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

PROBE_SLEEP = 0.001
"""Seconds the probe sleeps per cycle; its lateness on waking measures GIL contention."""
STALL_SECONDS = 0.001
"""Seconds the probe holds the GIL (asleep) per cycle, well under the 5 ms switch interval."""
STALL_SLACK = 0.0005
"""A stall longer than ``STALL_SECONDS`` plus this is discarded."""
STALL_INTERVAL_SHARE = 0.3
"""Under a short GIL switch interval (a boost, ``_ticket.py``: 0.5 ms) a stall lasts at most
this share of it, and its slack at most ``2 * STALL_INTERVAL_SHARE`` of it: a thread waiting
for the GIL asks its holder to let go after one interval, so a 1 ms stall beside two Python
threads lost the GIL in its reads, ran long and was discarded (24 of 25 under a boost in 3 runs,
while a second new Python loop was still measured: its verdict then rested on no stall)."""
LATE_NOISE = 0.0002
"""Lateness ignored per wake-up: an idle ``sleep(1 ms)`` on Linux oversleeps 50-150 us."""
EARLY_WINDOW_MAX = 0.05
"""Only windows reporting within this long (first calls, not re-checks) report early (see
``_verdicts.early``)."""
LINGER_SECONDS = 0.05
"""The probe thread exits after this long without an open window."""
MIN_STALL_SECONDS = 0.0005
"""Stall time below which the stall comparison is not trusted (lateness is used instead)."""
IDLE_CPU_RATIO = 0.05
"""A call using less CPU than this share of its wall time waits: it holds no GIL to speak of."""
MIN_STATE_SAMPLES = 1
"""Decisive stalls needed before they decide ``gil_share``. One is telling: GIL-bound code
cannot progress while the probe holds the GIL, and a blocked sample needs the thread to have
run just before and to sleep (not wait for a CPU) during the stall."""
WANT_STATE_SAMPLES = 2
"""A window on a thread that could still run is kept open (up to ``REPORT_CAP``) until it
has this many decisive stalls: on a loaded machine the summed clocks are a poorer guide."""
ACTIVE_RATE = 0.3
"""A control interval in which the thread used this share of a CPU counts as active..."""
PROGRESS_RATE = 0.1
"""...and a stall in which it (or the process) used this share of a CPU as progress."""
BUSY_RATE = 0.5
"""Below this CPU rate outside stalls, the process's clock is compared instead of the thread's."""
HELPED = 1.5
"""Process CPU above this many times the thread's own means other threads do its work."""
QUEUED_SHARE = 0.5
"""A stall in which the thread waited this share of the time on a run queue says nothing."""
OTHERS_LATE = 0.3
"""A probe late by this share of a control interval saw the GIL busy: a thread mostly off the
CPU then may be waiting for it, and the process's progress in the stall is not its own."""
OTHERS_BUSY = 0.3
"""Other threads of the process using this share of a CPU (outside the measured thread) may
have held the GIL the probe waited for: its lateness is not the measured call's then."""
SURE_STALLS = 2
"""Decisive stalls that settle a measurement on their own; with fewer, a measurement that
rests on the summed clocks needs ``SURE_STALL_SECONDS`` of stalls..."""
SURE_STALL_SECONDS = 0.0015
SURE_SPAN = 0.01
"""...and one resting on the probe's lateness alone a window this long (run-queue waits left
out), or one in which the probe waited for the GIL, beyond the thread's run-queue waits, for
half the call's CPU time and at least ``SURE_HELD``."""
SURE_HELD = 0.005
REPORT_CAP = 4.0
"""A window reports after ``report_after`` seconds the thread could run, at most this many
times ``report_after`` of wall time (on a loaded machine the thread gets a CPU part-time)."""

perf_counter = time.perf_counter


class Measurement(NamedTuple):
    """What one window saw of one call (or of its first ``report_after`` seconds).

    A named tuple rather than a frozen dataclass: made in 0.3 ms instead of ~2 ms (and
    ``dataclasses`` not imported, ~2-7 ms), on the path of the first call of the first
    function an executor measures.

    Attributes:
        wall: Seconds the window was open.
        cpu: CPU seconds the measured thread used meanwhile.
        stall_wall: Seconds the probe held the GIL (stalls) while the window was open.
        stall_cpu: CPU seconds the measured thread used during those stalls.
        proc_cpu: CPU seconds the whole process used while the window was open.
        others_cpu: CPU seconds the other Python threads (not the probe's) used meanwhile.
        proc_stall_cpu: CPU seconds the process used during the stalls, the probe's own
            thread left out (``_probe.process_cpu``).
        ctrl_wall: Seconds of the control intervals (the probe asleep, GIL free) paired with
            the stalls; each starts, like a stall, right after the probe woke.
        ctrl_cpu: CPU seconds the measured thread used during the control intervals.
        proc_ctrl_cpu: CPU seconds the process (the probe left out) used in the control intervals.
        stalls_blocked: Decisive stalls (after an active control interval) in which the
            thread used no CPU and slept: blocked on the GIL.
        stalls_free: Decisive stalls in which the thread (or the process) used CPU.
        stalls_own: Free stalls in which the thread itself ran: no other thread fakes those.
        stalls_queued: Stalls that ended with the thread runnable and idle: no sign.
        stalls_gil: Stalls at whose end the thread slept on the GIL (``_sched``), active
            before or not; ``stalls_io``: those at whose end it slept on anything else.
        stalls_end: Blocked stalls left out as the call returning (``_stalls.unblock_end``).
        late: Seconds the probe woke late while the window was open (GIL busy), not counting
            the time the probe itself waited for a CPU.
        span: Seconds of probe sleep cycles the lateness was measured over.
        complete: True when the window covered the whole call.
        runq: Seconds the measured thread was runnable but had no CPU (another process, or
            other threads, used every core): neither running nor waiting.
        ctrl_runq: The part of ``runq`` that fell in the control intervals.
        stall_runq: The part of ``runq`` that fell in the stalls.
    """

    wall: float
    cpu: float
    stall_wall: float = 0.0
    stall_cpu: float = 0.0
    proc_cpu: float = 0.0
    proc_stall_cpu: float = 0.0
    ctrl_wall: float = 0.0
    ctrl_cpu: float = 0.0
    proc_ctrl_cpu: float = 0.0
    stalls_blocked: int = 0
    stalls_free: int = 0
    stalls_queued: int = 0
    stalls_own: int = 0
    stalls_gil: int = 0
    stalls_io: int = 0
    stalls_end: int = 0
    late: float = 0.0
    span: float = 0.0
    complete: bool = True
    runq: float = 0.0
    ctrl_runq: float = 0.0
    stall_runq: float = 0.0
    calls: int = 1
    others_cpu: float = 0.0

    def merged(self, other: Measurement) -> Measurement:
        """These figures and ``other``'s, summed: one measurement of several calls."""
        sums = {name: getattr(self, name) + getattr(other, name) for name in _SUMMED}
        return Measurement(**sums, complete=self.complete and other.complete)

    @property
    def call_wall(self) -> float:
        """Seconds per measured call."""
        return self.wall / self.calls

    @property
    def call_cpu(self) -> float:
        """CPU seconds per measured call."""
        return self.cpu / self.calls

    @property
    def others_busy(self) -> float:
        """CPUs' worth of work the process's other Python threads did while the window was open.

        Only they can have held the GIL: threads of C libraries (BLAS helpers, still spinning
        after a matrix product) cannot, and are left out.
        """
        return self.others_cpu / self.wall if self.wall > 0 else 0.0

    @property
    def own_busy(self) -> float | None:
        """The part of ``gil_busy`` the measured thread can have caused.

        Another thread holding the GIL makes the probe late just the same: the CPU other
        threads used in the window is taken off (a thread runs while it holds the GIL).
        """
        busy = self.gil_busy
        return None if busy is None else max(0.0, busy - self.others_busy)

    @property
    def doubt(self) -> str | None:
        """Why ``gil_share`` cannot be trusted yet, or None when it can.

        Too few samples (a short call), or samples that other threads may have caused (the
        probe's lateness while other threads ran).
        """
        if self.cpu <= IDLE_CPU_RATIO * (self.run_wall - self.gil_waited):
            return None
        if self.stalls_blocked + self.stalls_free >= SURE_STALLS:
            return None
        decisive = self.stalls_blocked + self.stalls_free
        if self.stalls_end and not decisive and not self._held_while_running():
            # Its one decisive stall came as it returned: a GIL-free C call taking the GIL
            # back, or a Python loop that ended just then (it is left out; nothing is left).
            # C code that held the GIL all along (json.loads) kept the probe waiting: settled.
            return "its only decisive stall came as it returned"
        clocks = self._clock_share() is not None
        if clocks and self.stall_wall - self.stall_runq >= SURE_STALL_SECONDS:
            return None
        if self.stalls_blocked + self.stalls_free >= MIN_STATE_SAMPLES:
            # Other threads cannot make the thread itself run while the probe holds the GIL.
            own = self.stalls_own > 0 and self.stalls_blocked == 0
            return None if own or self.others_busy < OTHERS_BUSY else "one stall sample under load"
        if self.run_wall < SURE_SPAN and not self._held_while_running():
            # A longer window the probe hardly sampled is telling on its own: something held
            # the GIL all along (other Python threads are looked at next).
            return f"too short to sample ({self.run_wall * 1e3:.1f} ms)"
        if self.others_busy >= OTHERS_BUSY and (self.gil_busy or 0.0) >= OTHERS_LATE:
            return f"other threads used {self.others_busy:.0%} of a CPU meanwhile"
        return None

    def _held_while_running(self) -> bool:
        # The probe waited for the GIL, beyond the measured thread's own waits for a CPU (a
        # thread preempted while it holds the GIL keeps the probe waiting too: that is a busy
        # machine), for half the call's CPU time: GIL-holding C code that never let the probe
        # in (json.loads beside a CPU hog: 10 ms of CPU over 25 ms, 15 of them on a run
        # queue; the probe 24 ms late). Not when other threads may have held the GIL.
        held = self.late - self.runq
        return held >= max(0.5 * self.cpu, SURE_HELD) and self.others_busy < OTHERS_BUSY

    @property
    def run_wall(self) -> float:
        """Seconds the measured thread could have run: the wall time less its run-queue wait.

        Time spent runnable without a CPU says nothing about the call (a busy machine, not
        the function): every ratio below is taken over this, not over the wall time.
        """
        return max(self.cpu, self.wall - self.runq)

    @property
    def gil_waited(self) -> float:
        """Seconds of ``run_wall`` off the CPU waiting for the GIL, as the stalls found it.

        Each stall's end that found the thread asleep tells on what: the GIL or anything else
        (``_sched.ThreadSched.on_gil``); its time off the CPU is split in that proportion.
        Zero where that is not known.
        """
        asleep = self.stalls_gil + self.stalls_io
        if not asleep:
            return 0.0
        return max(0.0, self.run_wall - self.cpu) * self.stalls_gil / asleep

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds per second the measured thread could run (run-queue waits left out)."""
        run = self.run_wall
        return self.cpu / run if run > 0 else 0.0

    @property
    def gil_busy(self) -> float | None:
        """Share of the window during which some thread held the GIL; None if not measured."""
        if self.span <= 0:
            return None
        return min(1.0, self.late / self.span)

    @property
    def gil_share(self) -> float:
        """Share of the call's CPU work that needs the GIL (0: GIL-free C code or waiting)."""
        if self.cpu <= IDLE_CPU_RATIO * (self.run_wall - self.gil_waited):
            return 0.0
        decisive = self.stalls_blocked + self.stalls_free
        if decisive >= MIN_STATE_SAMPLES:
            return self.stalls_blocked / decisive
        share = self._clock_share()
        busy = self.own_busy
        if share is not None:
            # Few stalls fell inside the call when C code held the GIL without ever letting
            # the probe in (a long sort): the probe's lateness says more then, the part other
            # threads may have caused left out.
            return share if busy is None or busy <= share else busy
        if busy is not None:
            return busy
        # No probe figure at all: guess from its CPU while it was not waiting for the GIL.
        return 1.0 if self.cpu >= 0.5 * (self.run_wall - self.gil_waited) else 0.0

    def _clock_share(self) -> float | None:
        # The stall comparison of summed CPU clocks, or None where it says nothing.
        stall_run = self.stall_wall - self.stall_runq
        ctrl_run = self.ctrl_wall - self.ctrl_runq
        if stall_run < MIN_STALL_SECONDS or ctrl_run <= 0:
            return None
        # Capped: the kernel books a run-queue wait when it ends, sometimes in the interval
        # after the one it fell in.
        ctrl_rate = min(1.0, self.ctrl_cpu / ctrl_run)
        stall_rate = min(1.0, self.stall_cpu / stall_run)
        if ctrl_rate < BUSY_RATE and self.proc_ctrl_cpu > HELPED * self.ctrl_cpu:
            busy = self.gil_busy
            if (busy is not None and busy >= OTHERS_BUSY) or self.stalls_gil > self.stalls_io:
                # Mostly off the CPU while other threads work and hold the GIL (the probe
                # woke late, or it was found asleep on the GIL more than on anything else:
                # lateness is not read under a boost): it may be waiting for them, and their
                # progress in stalls is not its own (a Python loop measured beside another
                # and beside GIL-free C threads read 100% GIL-free in the oracle's mixed row).
                return None
            # Mostly off the CPU while other threads of the process work, the GIL mostly
            # free: its work is on them (BLAS helpers), their progress in stalls is its own.
            ctrl_rate = self.proc_ctrl_cpu / self.ctrl_wall
            stall_rate = self.proc_stall_cpu / self.stall_wall
        if ctrl_rate <= 0:
            return None
        return 1.0 - min(1.0, max(0.0, stall_rate / ctrl_rate))

    @property
    def gil_seconds(self) -> float:
        """Seconds the measured call held the GIL (per call, over several measured calls)."""
        return self.call_cpu * self.gil_share

    @property
    def gil_fraction(self) -> float:
        """Share of the call's running time (not counting waits for the GIL) holding the GIL.

        Time off the CPU, run-queue waits left out, is either waiting (I/O, sleep) or waiting
        for the GIL. The GIL wait is estimated from what the probe saw: the CPU time the call
        would have used during the probe's stalls, and the share of the remaining off-CPU
        time the GIL was busy.
        """
        held = self.cpu * self.gil_share  # over all the measured calls, like run_wall
        if held <= 0:
            return 0.0
        share = self.gil_share
        run_wall = self.run_wall
        off_cpu = max(0.0, run_wall - self.cpu)
        outside_wall = run_wall - max(0.0, self.stall_wall - self.stall_runq)
        outside_rate = (self.cpu - self.stall_cpu) / outside_wall if outside_wall > 0 else 0.0
        stalled = min(off_cpu, share * self.stall_wall * min(1.0, outside_rate))
        busy = self.gil_busy or 0.0
        if busy >= OTHERS_BUSY:
            # The GIL was busy and other threads ran: a GIL-bound call off the CPU waits for
            # them, and the probe (which waits for the GIL too) sees only part of it.
            busy = max(busy, min(1.0, self.others_busy))
        waited = max(self.gil_waited, min(off_cpu, stalled + busy * (off_cpu - stalled)))
        running = max(held, run_wall - waited, 1e-9)
        return min(1.0, held / running)


_SUMMED = tuple(name for name in Measurement._fields if name != "complete")
