"""The GIL probe: measures how one call on a thread uses the CPU and the GIL.

A call being learned runs on a thread inside a *window*. While any window is open, one helper
thread (the probe) repeats a two-step cycle:

1. **Lateness**: it sleeps ``PROBE_SLEEP`` (1 ms) and measures how late it wakes. Waking needs
   the GIL: while another thread holds it, the probe waits about one switch interval (5 ms);
   when the GIL is free it is late by about 0.1 ms. Lateness over time is the share of time
   *someone* held the GIL (``gil_busy``). Not read while the interval is below
   ``LATE_INTERVAL_MIN`` (a boost, ``_ticket.py``, or the application's own setting).
2. **Stall**: it holds the GIL for ``STALL_SECONDS`` (less under a short switch interval:
   ``stall_length``) and reads the CPU clock of each measured
   thread (``time.pthread_getcpuclockid``) before and after. A thread that needs the GIL
   cannot run during the stall; C code that released the GIL (hashlib, zlib, numpy) keeps
   running. Comparing the thread's CPU rate during stalls with its rate outside them tells
   which share of its CPU work needs the GIL (``gil_share``), whatever else runs: contention
   from other threads or processes slows both rates alike. The stall sleeps in C with the GIL
   held (``usleep`` called through ``ctypes.PyDLL``, which keeps the GIL) rather than spinning:
   a spinning probe would take a core from the measured thread on a loaded machine and make
   GIL-free code look GIL-bound. A stall that took much longer than asked (the probe lost the
   GIL or its CPU in between) is discarded.

On a loaded machine a thread may not get a CPU during a 1 ms stall, so summed CPU clocks are
noisy there. Each stall that follows a control interval in which the thread ran is therefore
also judged on its own, with the thread's scheduler state read at its end from
``/proc/self/task/<tid>/stat`` (the GIL still held):

- the thread (or, for a thread mostly off the CPU, the process) used CPU during the stall:
  GIL-free work, since GIL-bound code cannot run then;
- it used none and sleeps ("S"): it is blocked, on the GIL (it was running just before);
- it used none but is runnable ("R"): it merely lacked a CPU; the sample is dropped (a
  first verdict for processes that rests on summed clocks with such stalls is in doubt);
- the last stall of a call found it blocked and the call returned at once: GIL-free C code
  taking the GIL back to return; that stall is left out.

Where enough samples are decisive, ``gil_share`` is the share of blocked samples; else the
summed clocks decide.

A call whose thread is mostly off the CPU (numpy hands its work to BLAS threads; a Python
function waits for the GIL behind others) says little by its own CPU clock: then the process's
CPU clock is compared instead: GIL-free work anywhere in the process continues during stalls.

Neither signal alone is enough: CPU time over wall time cannot tell GIL-holding from GIL-free C
code, and under contention four GIL-bound threads each read about 0.26 CPU/wall, like I/O. The
lateness alone cannot tell which thread held the GIL.

A window reports once: when its call returns, or from the probe thread once it has been open
``report_after`` seconds (the submitters waiting for a verdict do not wait for a long call to
end; the probe stops sampling it then). A first call's window reports sooner when its call
clearly waits or runs GIL-free C code (``_verdicts.early``) or clearly holds the GIL
(``held_early``: a Python loop is known after one or two cycles). Without
``pthread_getcpuclockid`` (macOS) there are no stalls and no early reports: the lateness
alone is used.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

from .. import _lifecycle
from ._measure import (
    EARLY_WINDOW_MAX,
    LATE_NOISE,
    LINGER_SECONDS,
    OTHERS_BUSY,
    PROBE_SLEEP,
    REPORT_CAP,
    STALL_INTERVAL_SHARE,
    STALL_SECONDS,
    STALL_SLACK,
    WANT_STATE_SAMPLES,
    Measurement,
    perf_counter,
)
from ._sched import PROBE_THREAD, ThreadSched, clock_of, gil_futex, gil_known, stall_sleep
from ._stalls import Cycle, Window, unblock_end
from ._verdicts import early, unsure, verdict

LATE_INTERVAL_MIN = 0.002
"""Below this GIL switch interval (seconds) the probe's lateness says nothing; it is not read."""
EARLY_HELD_SECONDS = 0.005
"""A first call found holding the GIL reports after it could run this long (``held_early``):
one probe cycle (1 ms asleep, most of a 5 ms switch interval waiting for the GIL, the stall)
on a quiet machine. At 8 ms it took two cycles, 14-16 ms: the calls waiting for the verdict,
a burst's other loops, started that much later (issue 15's fresh pure-CPU row)..."""
EARLY_HELD_STALLS = 1
"""...and this many stalls found it blocked on the GIL, none running (one is telling: GIL-bound
code cannot run while the probe holds the GIL, and GIL-free C code sleeps on the GIL only as
it returns)..."""
EARLY_HELD_LATE = 0.7
"""...and the probe, waking, waited for the GIL this share of a switch interval at least (its
own waits for a CPU left out), other Python threads idle: a second sign, apart from the
stall, that this call holds the GIL until made to let go. (A probe that waits a whole
interval reads 4.0-5.1 ms late of 5: the wake-up noise and its own run-queue wait are left
out; at 0.8 a one-cycle verdict missed by a few microseconds now and then. GIL-free code
keeps it waiting 0.1-0.2 ms.)"""


class GilProbe:
    """The helper thread that measures GIL contention while windows are open.

    One probe serves every executor of the process (what it measures is process-wide); its
    thread starts with the first window and exits ``LINGER_SECONDS`` after the last closes.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._windows: list[Window] = []
        self._thread: threading.Thread | None = None
        self._cycle_start = 0.0
        self._expected: float | None = None  # when the probe should wake; None: it is awake
        self._retired: list[int] = []  # stat fds of closed windows; the probe closes them

    def open(
        self,
        report_after: float | None = None,
        on_report: Callable[[Measurement], None] | None = None,
        early: bool = False,
    ) -> Window:
        """Open a window on the calling thread; call ``close`` from the same thread.

        Args:
            report_after: Seconds after which the probe thread reports a partial measurement
                to ``on_report`` and stops sampling; ``close`` then returns None.
            on_report: Receives that partial measurement, on the probe thread.
            early: A first call's window: it reports as soon as it clearly runs GIL-free C
                code (``_verdicts.early``), not only as soon as it clearly waits.
        """
        clock = None
        if clock_of is not None:
            try:
                clock = clock_of(threading.get_ident())
            except OSError:
                clock = None
        if self._thread is None:
            # Found here, before the call starts, not by the probe thread: there it contends
            # for the GIL with the measured call (a Python loop lets go once per switch
            # interval), and its thread start, pipe write and /proc reads took 8-47 ms of
            # the first window on 2 loaded cores (the verdict came 45-95 ms in, not 25).
            gil_futex()
        window = Window(clock, report_after, on_report, early)
        start = None
        with self._cond:
            self._windows.append(window)
            if self._thread is None:
                self._cycle_start = window.t_open
                self._expected = window.t_open
                self._thread = start = threading.Thread(
                    target=self._run, name=PROBE_THREAD, daemon=True
                )
            elif self._expected is None and len(self._windows) == 1:
                self._cycle_start = self._expected = window.t_open
                self._cond.notify()
        if start is not None:
            # Started with the lock let go: the new thread takes it at once, and had it to
            # wait for it, it would wait for the GIL after, beside the measured call (a
            # Python loop lets go once per switch interval): the first stall 5 ms later.
            start.start()
        return window

    def close(self, window: Window) -> Measurement | None:
        """Close ``window`` on the measured thread.

        Returns:
            The whole call's figures, or None if the probe reported the window already.
        """
        cpu = time.thread_time() if window.clock is None else (window.read_cpu() or 0.0)
        now = perf_counter()
        with self._cond:
            if window.closed:
                return None
            window.closed = True
            self._windows.remove(window)
            self._retire(window)
            expected = self._expected
            if (
                expected is not None
                and now > expected + LATE_NOISE
                and sys.getswitchinterval() >= LATE_INTERVAL_MIN
            ):
                # The probe should have woken and has not: it waits for the GIL right now.
                window.late += now - max(expected, window.t_open)
                window.span += now - max(self._cycle_start, window.t_open)
            unblock_end(window, cpu)
        return window.measurement(now, cpu, complete=True)

    def forget_after_fork(self) -> None:
        """In a forked child: the probe thread and the measured calls were the parent's."""
        fds = [fd for w in self._windows for fd in w.detach()] + self._retired
        self.__init__()  # type: ignore[misc]  # a fresh lock: the parent's may be held
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        own = ThreadSched(threading.get_native_id(), syscall=False)
        gil_futex()  # found already by open(), unless that failed (tried a few times)
        try:
            self._loop(own)
        finally:
            for fd in own.detach():
                os.close(fd)

    def _loop(self, own: ThreadSched) -> None:
        fresh = True  # the thread's first wake: its run-queue wait since it began is known
        while True:
            self._close_retired()
            with self._cond:
                if not self._windows:
                    self._expected = None
                    self._cond.wait(LINGER_SECONDS)
                    if not self._windows:
                        self._thread = None
                        fds, self._retired = self._retired, []
                        for fd in fds:
                            os.close(fd)
                        return
                    woken = True
                else:
                    # A fresh thread: open() set when it was due (a sort that held the GIL
                    # from its start kept it from running: that wait is lateness, and was
                    # lost here, so 1 sorted of 10 read 75% GIL-free beside a CPU hog).
                    woken = self._expected is not None
                if not woken:
                    windows = list(self._windows)
                    start = perf_counter()
                    self._cycle_start = start
                    self._expected = start + PROBE_SLEEP
            if woken:
                # Woken (or started) by open(), which set the expected wake to its own open
                # time: the wake-up itself is a lateness sample.
                self._account(perf_counter(), (own.waited() or 0.0) if fresh else 0.0)
                fresh = False
                continue
            fresh = False
            # Control interval: the GIL is free for others, as it is outside any stall.
            ctrl0 = [w.read_cpu() for w in windows]
            runq0 = [w.read_runq() for w in windows]
            proc0 = process_cpu()
            own0 = own.waited()
            time.sleep(PROBE_SLEEP)
            woke = perf_counter()
            own1 = own.waited()
            # Time the probe itself sat on a run queue after its timer fired is a busy
            # machine, not a busy GIL: it is not lateness.
            own_q = own1 - own0 if own0 is not None and own1 is not None else 0.0
            late = self._account(woke, own_q)
            if clock_of is None:
                continue
            # Stall: the GIL is held (asleep in C), only GIL-free work can progress. Timed
            # from before the clock reads: losing the GIL there shows as a long stall.
            stall, slack = stall_length()
            stall_start = perf_counter()
            ctrl1 = [w.read_cpu() for w in windows]
            runq1 = [w.read_runq() for w in windows]
            proc1 = process_cpu()
            stall_sleep(stall)
            states = [w.sched.runnable() for w in windows]
            gils = [
                w.sched.on_gil() if s is False else None
                for w, s in zip(windows, states, strict=True)
            ]
            runq2 = [w.read_runq() for w in windows]
            proc2 = process_cpu()
            ctrl2 = [w.read_cpu() for w in windows]
            stall_stop = perf_counter()
            own2 = own.waited()
            # The probe keeps the GIL while it waits for a CPU (a loaded machine): that wait
            # is still a stall. A longer one means it lost the GIL: not a clean stall.
            lost = own2 - own1 if own1 is not None and own2 is not None else 0.0
            if stall_stop - stall_start - max(0.0, lost) <= stall + slack:
                sample = Cycle(stall_start - start, stall_stop - stall_start, late)
                sample.proc_ctrl, sample.proc_stall = proc1 - proc0, proc2 - proc1
                rows = zip(
                    windows, ctrl0, ctrl1, ctrl2, runq0, runq1, runq2, states, gils, strict=True
                )
                with self._cond:
                    for w, c0, c1, c2, r0, r1, r2, state, gil in rows:
                        if w.closed or c0 is None or c1 is None or c2 is None:
                            continue
                        queued = (
                            None if r0 is None or r1 is None or r2 is None else (r1 - r0, r2 - r1)
                        )
                        sample.add(w, max(0.0, c1 - c0), c2, max(0.0, c2 - c1), queued, state, gil)
            self._report_due(windows)

    def _retire(self, window: Window) -> None:
        # With the lock held. The probe may be reading the fds right now: it closes them later.
        self._retired.extend(window.detach())

    def _close_retired(self) -> None:
        with self._cond:
            fds, self._retired = self._retired, []
        for fd in fds:
            os.close(fd)

    def _account(self, woke: float, queued: float) -> float:
        # Lateness of one wake-up, shared by every window open at the time; ``queued`` is
        # the time the probe waited for a CPU meanwhile. Returns the wake-up's lateness.
        with self._cond:
            expected = self._expected if self._expected is not None else woke
            cycle_start = self._cycle_start
            self._expected = None
            if sys.getswitchinterval() < LATE_INTERVAL_MIN:
                # A GIL holder lets go too soon for lateness to tell (a boost, _ticket): no
                # sign either way (infinite: a stall of a thread off the CPU is not judged).
                return float("inf")
            for w in self._windows:
                late = woke - max(expected, w.t_open) - LATE_NOISE - max(0.0, queued)
                w.late += max(0.0, late)
                w.span += max(0.0, woke - max(cycle_start, w.t_open))
        return max(0.0, woke - expected - LATE_NOISE - max(0.0, queued))

    def _report_due(self, windows: list[Window]) -> None:
        now = perf_counter()
        for w in windows:
            if w.report_after is None:
                continue
            elapsed = now - w.t_open
            # Run-queue time is the machine's, not the call's: the window lasts until the
            # thread could have run ``report_after`` seconds (within a cap on wall time).
            runnable = elapsed - (w.read_runq() or 0.0)
            undecided = w.stalls_blocked + w.stalls_free < WANT_STATE_SAMPLES
            if (runnable < w.report_after or (undecided and clock_of is not None)) and (
                elapsed < REPORT_CAP * w.report_after
            ):
                # A short (first-call) window says so now if its call clearly waits or runs
                # GIL-free C code (``early``); the submitters waiting for the verdict go on.
                if w.report_after > EARLY_WINDOW_MAX:
                    continue
                cpu = w.read_cpu()
                if cpu is None or not (
                    early(w, cpu - w.cpu_open, runnable) or held_early(w, now, cpu, runnable)
                ):
                    continue
            else:
                cpu = w.read_cpu()
            with self._cond:
                if w.closed or cpu is None:
                    continue
                w.closed = True
                self._windows.remove(w)
                self._retire(w)
                m = w.measurement(now, cpu, complete=False)
            if w.on_report is not None:
                w.on_report(m)


def process_cpu() -> float:
    """CPU seconds of the process but the probe thread's own (its reads of ``/proc``).

    The process's progress in a stall stands for a measured thread mostly off the CPU (BLAS
    helpers doing its work); the probe's own reads in it (0.1-0.2 ms of CPU) are not that.
    """
    return time.process_time() - time.thread_time()


def stall_length() -> tuple[float, float]:
    """Seconds the next stall holds the GIL, and the slack past which it is discarded.

    ``STALL_SECONDS`` and ``STALL_SLACK``, or shorter under a short switch interval (see
    ``STALL_INTERVAL_SHARE``): the stall must end before a thread waiting for the GIL makes
    the probe let go, or every stall beside two Python threads is lost.
    """
    interval = sys.getswitchinterval()
    stall = min(STALL_SECONDS, STALL_INTERVAL_SHARE * interval)
    return stall, min(STALL_SLACK, 2 * STALL_INTERVAL_SHARE * interval)


def held_early(w: Window, now: float, cpu: float, runnable: float) -> bool:
    """Whether a first call's window reports now because its call clearly holds the GIL.

    A Python loop sent to processes is known after a few probe cycles; its window need not
    run its course (``WINDOW_SECONDS``) while the calls submitted with it wait for the
    verdict. It reports once it could run ``EARLY_HELD_SECONDS``, was found blocked in
    ``EARLY_HELD_STALLS`` stalls and never running in one, and its figures so far settle a
    process verdict on their own (the same judgement as at the window's end).
    """
    if not w.early or runnable < EARLY_HELD_SECONDS:
        return False
    if w.stalls_blocked < EARLY_HELD_STALLS or w.stalls_free:
        return False
    if gil_known() and not w.stalls_gil:
        return False  # blocked, but asleep on something else than the GIL
    m = w.measurement(now, cpu, complete=False)
    # Under a short interval (a boost) lateness is not read: the window runs its course.
    interval = max(sys.getswitchinterval(), LATE_INTERVAL_MIN)
    if m.late < EARLY_HELD_LATE * interval or m.others_busy >= OTHERS_BUSY:
        return False  # the probe was not kept waiting for the GIL, or not by this call
    return unsure(m, first=True) is None and verdict(m)[0] == "process"


PROBE = GilProbe()
_lifecycle.on_fork(PROBE.forget_after_fork)
"""The process-wide probe."""
