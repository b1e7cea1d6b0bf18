"""What the GIL probe measures: the figures of one window and the maths that reads them.

``Window`` holds the raw figures of one measured call as the probe thread (``_probe.py``)
collects them; ``Measurement`` turns them into the shares the classifier judges by. The reasons
behind each figure are explained at the top of ``_probe.py``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._sched import ThreadSched

PROBE_SLEEP = 0.001
"""Seconds the probe sleeps per cycle; its lateness on waking measures GIL contention."""
STALL_SECONDS = 0.001
"""Seconds the probe holds the GIL (asleep) per cycle, well under the 5 ms switch interval."""
STALL_SLACK = 0.0005
"""A stall longer than ``STALL_SECONDS`` plus this is discarded."""
LATE_NOISE = 0.0002
"""Lateness ignored per wake-up: an idle ``sleep(1 ms)`` on Linux oversleeps 50-150 us."""
EARLY_IDLE_SECONDS = 0.004
"""A first-call window whose thread used almost no CPU this long reports early: it waits."""
EARLY_IDLE_CPU_RATIO = 0.05
"""'Almost no CPU': below this share of the window's wall time."""
EARLY_WINDOW_MAX = 0.05
"""Only windows reporting within this long (first calls, not re-checks) report early."""
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
REPORT_CAP = 4.0
"""A window reports after ``report_after`` seconds the thread could run, at most this many
times ``report_after`` of wall time (on a loaded machine the thread gets a CPU part-time)."""

clock_of: Callable[[int], int] | None = getattr(time, "pthread_getcpuclockid", None)
perf_counter = time.perf_counter


@functools.cache
def _gil_holding_sleep() -> Callable[[float], None] | None:
    # ctypes.PyDLL calls foreign functions without releasing the GIL. Made on first use:
    # importing ctypes costs ~1 ms, and only the probe stalls.
    import ctypes

    try:
        usleep = ctypes.PyDLL(None).usleep
    except (OSError, AttributeError):
        return None
    usleep.argtypes = [ctypes.c_uint]
    usleep.restype = ctypes.c_int

    def sleep(seconds: float) -> None:
        usleep(int(seconds * 1e6))

    return sleep


def _spin(seconds: float) -> None:
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


def stall_sleep(seconds: float) -> None:
    """Sleep ``seconds`` holding the GIL (a spin where ``usleep`` cannot be called so)."""
    (_gil_holding_sleep() or _spin)(seconds)


@dataclass(frozen=True)
class Measurement:
    """What one window saw of one call (or of its first ``report_after`` seconds).

    Attributes:
        wall: Seconds the window was open.
        cpu: CPU seconds the measured thread used meanwhile.
        stall_wall: Seconds the probe held the GIL (stalls) while the window was open.
        stall_cpu: CPU seconds the measured thread used during those stalls.
        proc_cpu: CPU seconds the whole process used while the window was open.
        proc_stall_cpu: CPU seconds the whole process used during the stalls.
        ctrl_wall: Seconds of the control intervals (the probe asleep, GIL free) paired with
            the stalls; each starts, like a stall, right after the probe woke.
        ctrl_cpu: CPU seconds the measured thread used during the control intervals.
        proc_ctrl_cpu: CPU seconds the whole process used during the control intervals.
        stalls_blocked: Decisive stalls (after an active control interval) in which the
            thread used no CPU and slept: blocked on the GIL.
        stalls_free: Decisive stalls in which the thread (or the process) used CPU.
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
    late: float = 0.0
    span: float = 0.0
    complete: bool = True
    runq: float = 0.0
    ctrl_runq: float = 0.0
    stall_runq: float = 0.0

    @property
    def run_wall(self) -> float:
        """Seconds the measured thread could have run: the wall time less its run-queue wait.

        Time spent runnable without a CPU says nothing about the call (a busy machine, not
        the function): every ratio below is taken over this, not over the wall time.
        """
        return max(self.cpu, self.wall - self.runq)

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
        if self.cpu <= IDLE_CPU_RATIO * self.run_wall:
            return 0.0
        decisive = self.stalls_blocked + self.stalls_free
        if decisive >= MIN_STATE_SAMPLES:
            return self.stalls_blocked / decisive
        stall_run = self.stall_wall - self.stall_runq
        ctrl_run = self.ctrl_wall - self.ctrl_runq
        if stall_run >= MIN_STALL_SECONDS and ctrl_run > 0:
            # Capped: the kernel books a run-queue wait when it ends, sometimes in the
            # interval after the one it fell in.
            ctrl_rate = min(1.0, self.ctrl_cpu / ctrl_run)
            stall_rate = min(1.0, self.stall_cpu / stall_run)
            if ctrl_rate < BUSY_RATE and self.proc_ctrl_cpu > HELPED * self.ctrl_cpu:
                # Mostly off the CPU while other threads of the process work: its work is
                # on them (BLAS helpers), and their progress during stalls is its own.
                ctrl_rate = self.proc_ctrl_cpu / self.ctrl_wall
                stall_rate = self.proc_stall_cpu / self.stall_wall
            if ctrl_rate > 0:
                share = 1.0 - min(1.0, max(0.0, stall_rate / ctrl_rate))
                # Few stalls fell inside the call when C code held the GIL without ever letting
                # the probe in (a long sort): the probe's lateness says more then.
                busy = self.gil_busy
                return share if busy is None or busy <= share else busy
        busy = self.gil_busy
        if busy is not None:
            return busy
        return 1.0 if self.cpu_ratio >= 0.5 else 0.0  # no probe figure at all: guess from CPU

    @property
    def gil_seconds(self) -> float:
        """Seconds of the window the measured call held the GIL."""
        return self.cpu * self.gil_share

    @property
    def gil_fraction(self) -> float:
        """Share of the call's running time (not counting waits for the GIL) holding the GIL.

        Time off the CPU, run-queue waits left out, is either waiting (I/O, sleep) or waiting
        for the GIL. The GIL wait is estimated from what the probe saw: the CPU time the call
        would have used during the probe's stalls, and the share of the remaining off-CPU
        time the GIL was busy.
        """
        held = self.gil_seconds
        if held <= 0:
            return 0.0
        share = self.gil_share
        run_wall = self.run_wall
        off_cpu = max(0.0, run_wall - self.cpu)
        outside_wall = run_wall - max(0.0, self.stall_wall - self.stall_runq)
        outside_rate = (self.cpu - self.stall_cpu) / outside_wall if outside_wall > 0 else 0.0
        stalled = min(off_cpu, share * self.stall_wall * min(1.0, outside_rate))
        busy = self.gil_busy or 0.0
        waited = min(off_cpu, stalled + busy * (off_cpu - stalled))
        running = max(held, run_wall - waited, 1e-9)
        return min(1.0, held / running)


class Window:
    """One measured call, as seen by the probe. Made by ``GilProbe.open``."""

    __slots__ = (
        "clock",
        "closed",
        "cpu_open",
        "ctrl_cpu",
        "ctrl_runq",
        "ctrl_wall",
        "late",
        "on_report",
        "proc_ctrl_cpu",
        "proc_open",
        "proc_stall_cpu",
        "report_after",
        "runq_close",
        "runq_open",
        "sched",
        "span",
        "stall_cpu",
        "stall_runq",
        "stall_wall",
        "stalls_blocked",
        "stalls_free",
        "t_open",
    )

    def __init__(
        self,
        clock: int | None,
        report_after: float | None,
        on_report: Callable[[Measurement], None] | None,
    ) -> None:
        self.clock = clock
        self.report_after = report_after
        self.on_report = on_report
        self.closed = False  # reported already, by close() or by the probe
        self.stall_wall = self.stall_cpu = self.proc_stall_cpu = self.stall_runq = 0.0
        self.ctrl_wall = self.ctrl_cpu = self.proc_ctrl_cpu = self.ctrl_runq = 0.0
        self.late = self.span = 0.0
        self.stalls_blocked = self.stalls_free = 0
        self.sched = ThreadSched(threading.get_native_id())
        self.runq_open = self.sched.waited() or 0.0
        self.runq_close: float | None = None  # read before the handles are let go
        self.cpu_open = self.read_cpu() or 0.0
        self.proc_open = time.process_time()
        self.t_open = perf_counter()

    def read_cpu(self) -> float | None:
        """The measured thread's CPU clock, from any thread; None if it cannot be read."""
        if self.clock is None:
            return None
        try:
            return time.clock_gettime(self.clock)
        except OSError:  # the thread is gone
            return None

    def read_runq(self) -> float | None:
        """The measured thread's run-queue wait since the window opened; None if unknown."""
        if self.runq_close is not None:
            return self.runq_close
        waited = self.sched.waited()
        return None if waited is None else max(0.0, waited - self.runq_open)

    def runnable(self) -> bool | None:
        """Whether the measured thread is runnable now; read without releasing the GIL."""
        return self.sched.runnable()

    def detach(self) -> list[int]:
        """Take the last run-queue figure, then give up the handles (see ``ThreadSched``)."""
        self.runq_close = self.read_runq()
        return self.sched.detach()

    def measurement(self, now: float, cpu: float, complete: bool) -> Measurement:
        return Measurement(
            wall=now - self.t_open,
            cpu=max(0.0, cpu - self.cpu_open),
            stall_wall=self.stall_wall,
            stall_cpu=self.stall_cpu,
            proc_cpu=max(0.0, time.process_time() - self.proc_open),
            proc_stall_cpu=self.proc_stall_cpu,
            ctrl_wall=self.ctrl_wall,
            ctrl_cpu=self.ctrl_cpu,
            proc_ctrl_cpu=self.proc_ctrl_cpu,
            stalls_blocked=self.stalls_blocked,
            stalls_free=self.stalls_free,
            late=self.late,
            span=self.span,
            complete=complete,
            runq=self.read_runq() or 0.0,
            ctrl_runq=self.ctrl_runq,
            stall_runq=self.stall_runq,
        )
