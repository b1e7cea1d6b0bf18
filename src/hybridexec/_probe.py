"""The GIL probe: measures how one call on a thread uses the CPU and the GIL.

A call being learned runs on a thread inside a *window*. While any window is open, one helper
thread (the probe) repeats a two-step cycle:

1. **Lateness**: it sleeps ``PROBE_SLEEP`` (1 ms) and measures how late it wakes. Waking needs
   the GIL: while another thread holds it, the probe waits about one switch interval (5 ms);
   when the GIL is free it is late by about 0.1 ms. Lateness over time is the share of time
   *someone* held the GIL (``gil_busy``).
2. **Stall**: it holds the GIL for ``STALL_SECONDS`` and reads the CPU clock of each measured
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
- it used none but is runnable ("R"): it merely lacked a CPU; the sample is dropped.

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
end; the probe stops sampling it then). Without ``pthread_getcpuclockid`` (macOS) there are no
stalls and no early reports: the lateness alone is used.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
MIN_STATE_SAMPLES = 3
"""Decisive stalls needed before they decide ``gil_share``."""
ACTIVE_RATE = 0.3
"""A control interval in which the thread used this share of a CPU counts as active..."""
PROGRESS_RATE = 0.1
"""...and a stall in which it (or the process) used this share of a CPU as progress."""
BUSY_RATE = 0.5
"""Below this CPU rate outside stalls, the process's clock is compared instead of the thread's."""

_clock_of: Callable[[int], int] | None = getattr(time, "pthread_getcpuclockid", None)
perf_counter = time.perf_counter


def _gil_holding_sleep() -> Callable[[float], None] | None:
    # ctypes.PyDLL calls foreign functions without releasing the GIL.
    try:
        usleep = ctypes.PyDLL(None).usleep
    except (OSError, AttributeError):
        return None
    usleep.argtypes = [ctypes.c_uint]
    usleep.restype = ctypes.c_int

    def sleep(seconds: float) -> None:
        usleep(int(seconds * 1e6))

    return sleep


def _gil_holding_pread() -> Callable[[int, Any, int, int], int] | None:
    try:
        pread = ctypes.PyDLL(None).pread
    except (OSError, AttributeError):
        return None
    pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
    pread.restype = ctypes.c_ssize_t
    return pread


_pread = _gil_holding_pread()
_STAT_BUFFER = 512


def _spin(seconds: float) -> None:
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


_stall_sleep = _gil_holding_sleep() or _spin


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
        late: Seconds the probe woke late while the window was open (GIL busy).
        span: Seconds of probe sleep cycles the lateness was measured over.
        complete: True when the window covered the whole call.
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

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds per wall second of the measured thread."""
        return self.cpu / self.wall if self.wall > 0 else 0.0

    @property
    def gil_busy(self) -> float | None:
        """Share of the window during which some thread held the GIL; None if not measured."""
        if self.span <= 0:
            return None
        return min(1.0, self.late / self.span)

    @property
    def gil_share(self) -> float:
        """Share of the call's CPU work that needs the GIL (0: GIL-free C code or waiting)."""
        if self.cpu <= IDLE_CPU_RATIO * self.wall:
            return 0.0
        decisive = self.stalls_blocked + self.stalls_free
        if decisive >= MIN_STATE_SAMPLES:
            return self.stalls_blocked / decisive
        if self.stall_wall >= MIN_STALL_SECONDS and self.ctrl_wall > 0:
            ctrl_cpu, stall_cpu = self.ctrl_cpu, self.stall_cpu
            if ctrl_cpu / self.ctrl_wall < BUSY_RATE and self.proc_ctrl_cpu > ctrl_cpu:
                ctrl_cpu, stall_cpu = self.proc_ctrl_cpu, self.proc_stall_cpu
            ctrl_rate = ctrl_cpu / self.ctrl_wall
            if ctrl_rate > 0:
                stall_rate = stall_cpu / self.stall_wall
                return 1.0 - min(1.0, max(0.0, stall_rate / ctrl_rate))
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

        Time off the CPU is either waiting (I/O, sleep) or waiting for the GIL. The GIL wait
        is estimated from what the probe saw: the CPU time the call would have used during
        the probe's stalls, and the share of the remaining off-CPU time the GIL was busy.
        """
        held = self.gil_seconds
        if held <= 0:
            return 0.0
        share = self.gil_share
        off_cpu = max(0.0, self.wall - self.cpu)
        outside_wall = self.wall - self.stall_wall
        outside_rate = (self.cpu - self.stall_cpu) / outside_wall if outside_wall > 0 else 0.0
        stalled = min(off_cpu, share * self.stall_wall * min(1.0, outside_rate))
        busy = self.gil_busy or 0.0
        waited = min(off_cpu, stalled + busy * (off_cpu - stalled))
        running = max(held, self.wall - waited, 1e-9)
        return min(1.0, held / running)


class Window:
    """One measured call, as seen by the probe. Made by ``GilProbe.open``."""

    __slots__ = (
        "clock",
        "closed",
        "cpu_open",
        "ctrl_cpu",
        "ctrl_wall",
        "late",
        "on_report",
        "proc_ctrl_cpu",
        "proc_open",
        "proc_stall_cpu",
        "report_after",
        "span",
        "stall_cpu",
        "stall_wall",
        "stalls_blocked",
        "stalls_free",
        "stat_fd",
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
        self.stall_wall = self.stall_cpu = self.proc_stall_cpu = 0.0
        self.ctrl_wall = self.ctrl_cpu = self.proc_ctrl_cpu = 0.0
        self.late = self.span = 0.0
        self.stalls_blocked = self.stalls_free = 0
        self.stat_fd: int | None = None
        if _pread is not None and clock is not None:
            try:
                path = f"/proc/self/task/{threading.get_native_id()}/stat"
                self.stat_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.stat_fd = None
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

    def runnable(self) -> bool | None:
        """Whether the measured thread is runnable now; read without releasing the GIL."""
        fd = self.stat_fd
        if fd is None or _pread is None:
            return None
        buf = ctypes.create_string_buffer(_STAT_BUFFER)
        n = _pread(fd, buf, _STAT_BUFFER, 0)
        if n <= 0:
            return None
        data = buf.raw[:n]
        end = data.rfind(b")")  # the thread name may hold spaces and parentheses
        if end < 0 or end + 2 >= n:
            return None
        return data[end + 2 : end + 3] == b"R"

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
        )


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
    ) -> Window:
        """Open a window on the calling thread; call ``close`` from the same thread.

        Args:
            report_after: Seconds after which the probe thread reports a partial measurement
                to ``on_report`` and stops sampling; ``close`` then returns None.
            on_report: Receives that partial measurement, on the probe thread.
        """
        clock = None
        if _clock_of is not None:
            try:
                clock = _clock_of(threading.get_ident())
            except OSError:
                clock = None
        window = Window(clock, report_after, on_report)
        with self._cond:
            self._windows.append(window)
            if self._thread is None:
                self._cycle_start = window.t_open
                self._expected = window.t_open
                self._thread = threading.Thread(
                    target=self._run, name="hybridexec-gil-probe", daemon=True
                )
                self._thread.start()
            elif self._expected is None and len(self._windows) == 1:
                self._cycle_start = self._expected = window.t_open
                self._cond.notify()
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
            if expected is not None and now > expected + LATE_NOISE:
                # The probe should have woken and has not: it waits for the GIL right now.
                window.late += now - max(expected, window.t_open)
                window.span += now - max(self._cycle_start, window.t_open)
        return window.measurement(now, cpu, complete=True)

    def _run(self) -> None:
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
                    woken = False
                    windows = list(self._windows)
                    start = perf_counter()
                    self._cycle_start = start
                    self._expected = start + PROBE_SLEEP
            if woken:
                # Woken by open(), which set the expected wake to its own open time: the
                # wake-up itself is a lateness sample.
                self._account(perf_counter())
                continue
            # Control interval: the GIL is free for others, as it is outside any stall.
            ctrl0 = [w.read_cpu() for w in windows]
            proc0 = time.process_time()
            time.sleep(PROBE_SLEEP)
            woke = perf_counter()
            self._account(woke)
            if _clock_of is None:
                continue
            # Stall: the GIL is held (asleep in C), only GIL-free work can progress. Timed
            # from before the clock reads: losing the GIL there shows as a long stall.
            stall_start = perf_counter()
            ctrl1 = [w.read_cpu() for w in windows]
            proc1 = time.process_time()
            _stall_sleep(STALL_SECONDS)
            states = [w.runnable() for w in windows]
            proc2 = time.process_time()
            ctrl2 = [w.read_cpu() for w in windows]
            stall_stop = perf_counter()
            if stall_stop - stall_start <= STALL_SECONDS + STALL_SLACK:
                # Else the probe lost the GIL or its CPU meanwhile: not a clean stall.
                ctrl_wall, stall_wall = stall_start - start, stall_stop - stall_start
                proc_ctrl, proc_stall = proc1 - proc0, proc2 - proc1
                samples = zip(windows, ctrl0, ctrl1, ctrl2, states, strict=True)
                with self._cond:
                    for w, c0, c1, c2, state in samples:
                        if w.closed or c0 is None or c1 is None or c2 is None:
                            continue
                        ctrl, stall = max(0.0, c1 - c0), max(0.0, c2 - c1)
                        if ctrl >= ACTIVE_RATE * ctrl_wall:
                            used = proc_stall if ctrl < BUSY_RATE * ctrl_wall else stall
                            if used >= PROGRESS_RATE * stall_wall:
                                w.stalls_free += 1
                            elif state is False:
                                w.stalls_blocked += 1
                        w.ctrl_wall += ctrl_wall
                        w.ctrl_cpu += ctrl
                        w.proc_ctrl_cpu += max(0.0, proc_ctrl)
                        w.stall_wall += stall_wall
                        w.stall_cpu += stall
                        w.proc_stall_cpu += max(0.0, proc_stall)
            self._report_due(windows)

    def _retire(self, window: Window) -> None:
        # With the lock held. The probe may be reading the fd right now: it closes it later.
        if window.stat_fd is not None:
            self._retired.append(window.stat_fd)
            window.stat_fd = None

    def _close_retired(self) -> None:
        with self._cond:
            fds, self._retired = self._retired, []
        for fd in fds:
            os.close(fd)

    def _account(self, woke: float) -> None:
        # Lateness of one wake-up, shared by every window open at the time.
        with self._cond:
            expected = self._expected if self._expected is not None else woke
            cycle_start = self._cycle_start
            self._expected = None
            for w in self._windows:
                w.late += max(0.0, woke - max(expected, w.t_open) - LATE_NOISE)
                w.span += max(0.0, woke - max(cycle_start, w.t_open))

    def _report_due(self, windows: list[Window]) -> None:
        now = perf_counter()
        for w in windows:
            if w.report_after is None:
                continue
            elapsed = now - w.t_open
            if elapsed < w.report_after:
                # A short (first-call) window on a thread that has hardly run: it waits (I/O,
                # sleep, a lock). Say so now; the submitters waiting for the verdict go on.
                if w.report_after > EARLY_WINDOW_MAX or elapsed < EARLY_IDLE_SECONDS:
                    continue
                cpu = w.read_cpu()
                if cpu is None or cpu - w.cpu_open > EARLY_IDLE_CPU_RATIO * elapsed:
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


PROBE = GilProbe()
"""The process-wide probe."""
