"""What the probe collects of one measured call (``Window``), and how it judges each stall.

``Window`` holds the raw figures of one call as the probe thread (``_probe.py``) collects them;
``Cycle`` judges one control interval and stall of the probe for each open window, and
``unblock_end`` leaves out the stall of a GIL-free C call taking the GIL back to return. The
reasons are explained at the top of ``_probe.py``; ``Measurement`` (``_measure.py``) turns the
figures into the shares the classifier judges by.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ._measure import (
    ACTIVE_RATE,
    BUSY_RATE,
    OTHERS_BUSY,
    OTHERS_LATE,
    PROGRESS_RATE,
    QUEUED_SHARE,
    Measurement,
    perf_counter,
)
from ._sched import ThreadSched, others_cpu_since, python_threads_cpu

RETURN_CPU = 0.0003
"""A call that used less CPU than this after a stall that found it blocked was returning."""
GIL_TAIL = 0.5
"""A thread found asleep on the GIL at the end of a stall in which it used less than this share
of the time it could run progressed only on its way to the GIL: blocked, not free."""


class Window:
    """One measured call, as seen by the probe. Made by ``GilProbe.open``."""

    __slots__ = (
        "clock",
        "closed",
        "cpu_open",
        "ctrl_cpu",
        "ctrl_runq",
        "ctrl_wall",
        "early",
        "last_blocked",
        "late",
        "on_report",
        "others",
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
        "stalls_end",
        "stalls_free",
        "stalls_gil",
        "stalls_io",
        "stalls_own",
        "stalls_queued",
        "t_open",
    )

    def __init__(
        self,
        clock: int | None,
        report_after: float | None,
        on_report: Callable[[Measurement], None] | None,
        early: bool = False,
    ) -> None:
        self.clock, self.early = clock, early  # early: a first call, see ``_verdicts.early``
        self.report_after = report_after
        self.on_report = on_report
        self.closed = False  # reported already, by close() or by the probe
        self.stall_wall = self.stall_cpu = self.proc_stall_cpu = self.stall_runq = 0.0
        self.ctrl_wall = self.ctrl_cpu = self.proc_ctrl_cpu = self.ctrl_runq = 0.0
        self.late = self.span = 0.0
        self.stalls_blocked = self.stalls_free = self.stalls_queued = self.stalls_own = 0
        self.stalls_gil = self.stalls_io = self.stalls_end = 0
        self.last_blocked: tuple[float, float, float, float, bool] | None = None  # unblock_end
        self.sched = ThreadSched(threading.get_native_id())
        self.runq_open = self.sched.waited() or 0.0
        self.runq_close: float | None = None  # read before the handles are let go
        self.cpu_open = self.read_cpu() or 0.0
        self.proc_open = time.process_time()
        self.others = python_threads_cpu()
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
            others_cpu=others_cpu_since(self.others),
            proc_stall_cpu=self.proc_stall_cpu,
            ctrl_wall=self.ctrl_wall,
            ctrl_cpu=self.ctrl_cpu,
            proc_ctrl_cpu=self.proc_ctrl_cpu,
            stalls_blocked=self.stalls_blocked,
            stalls_free=self.stalls_free,
            stalls_queued=self.stalls_queued,
            stalls_own=self.stalls_own,
            stalls_gil=self.stalls_gil,
            stalls_io=self.stalls_io,
            stalls_end=self.stalls_end,
            late=self.late,
            span=self.span,
            complete=complete,
            runq=self.read_runq() or 0.0,
            ctrl_runq=self.ctrl_runq,
            stall_runq=self.stall_runq,
        )


class Cycle:
    """One clean control interval + stall of the probe, judged for each open window."""

    __slots__ = ("ctrl_wall", "late", "proc_ctrl", "proc_stall", "stall_wall")

    def __init__(self, ctrl_wall: float, stall_wall: float, late: float) -> None:
        self.ctrl_wall, self.stall_wall, self.late = ctrl_wall, stall_wall, late
        self.proc_ctrl = self.proc_stall = 0.0

    def add(
        self,
        w: Window,
        ctrl: float,
        cpu_end: float,
        stall: float,
        queued: tuple[float, float] | None,
        state: bool | None,
        gil: bool | None = None,
    ) -> None:
        """Add this cycle's figures to ``w`` and judge its stall (with the probe's lock held).

        Args:
            w: The window.
            ctrl: CPU seconds the thread used in the control interval.
            cpu_end: Its CPU clock at the end of the stall.
            stall: CPU seconds it used in the stall.
            queued: Its run-queue seconds in the control interval and in the stall, or None
                where the kernel does not say.
            state: Whether it was runnable at the end of the stall (None: unknown).
            gil: Asleep at the end of the stall: whether on the GIL (None: unknown).
        """
        ctrl_wall, stall_wall = self.ctrl_wall, self.stall_wall
        ctrl_q, stall_q = queued if queued is not None else (0.0, 0.0)
        ctrl_q, stall_q = min(max(0.0, ctrl_q), ctrl_wall), min(max(0.0, stall_q), stall_wall)
        ctrl_run = ctrl_wall - ctrl_q  # the time it could have run
        active = ctrl + ctrl_q >= ACTIVE_RATE * ctrl_wall
        if active or not gil:  # a call still waiting for the GIL to return is still returning
            w.last_blocked = None
        # Asleep at the end of the stall: on the GIL, or on anything else (I/O, a lock).
        # Facts, whatever ran beside: ``Measurement.gil_fraction`` splits the call's time
        # off the CPU between waiting for the GIL and waiting by these.
        w.stalls_gil += gil is True
        w.stalls_io += gil is False
        # Active: it wanted a CPU (ran, or queued for one) for a good part of the interval,
        # so it was not waiting for I/O just before the stall.
        if active:
            # Mostly off the CPU though it could run: its work is on other threads (BLAS
            # helpers), whose progress shows on the process's clock; but only if the probe
            # woke on time (the GIL was free): else it may wait for Python threads holding
            # the GIL, and their GIL-free moments (a socket call) are not its progress.
            own = ctrl >= BUSY_RATE * ctrl_run
            used = stall if own else self.proc_stall
            run = stall_wall - stall_q
            if not own and self.late > OTHERS_LATE * ctrl_wall and not gil:
                pass  # no sign either way
            elif used >= PROGRESS_RATE * run and (not gil or used >= GIL_TAIL * run):
                w.stalls_free += 1  # GIL-bound code cannot progress while the GIL is held
                w.stalls_own += own
            elif gil or (state is False and gil is None and stall_q < QUEUED_SHARE * stall_wall):
                # It ran, then slept on the GIL while the probe held it: blocked. (Some CPU
                # in the stall is its way there: dropping the GIL, or a preemption before
                # it slept. Found asleep, where unknown, it counts too.) A runnable thread
                # merely lacked a CPU (the kernel adds a wait to schedstat only when it
                # ends, so the state at the end of the stall is read too): no sign.
                w.stalls_blocked += 1
                # The probe waited for the GIL before the stall, on an idle enough machine
                # (a holder preempted on a busy one keeps it waiting too): see unblock_end.
                held = self.late >= OTHERS_LATE * ctrl_wall and ctrl_q < QUEUED_SHARE * ctrl_wall
                w.last_blocked = (cpu_end, stall_wall, stall_q, stall, held)
            elif state is True:
                # Runnable but idle: it lacked a CPU (the kernel books that wait only when it
                # ends), or it was preempted on its way to sleep on the GIL. No sign; the
                # summed clocks count the stall all the same (see ``verdicts.unsure``).
                w.stalls_queued += 1
        w.ctrl_wall += ctrl_wall
        w.ctrl_cpu += ctrl
        w.ctrl_runq += ctrl_q
        w.proc_ctrl_cpu += max(0.0, self.proc_ctrl)
        w.stall_wall += stall_wall
        w.stall_cpu += stall
        w.stall_runq += stall_q
        w.proc_stall_cpu += max(0.0, self.proc_stall)


def unblock_end(w: Window, cpu: float) -> None:
    # A call whose last stall found it blocked and that hardly ran after it was returning: a
    # GIL-free C call takes the GIL back to return, and a stall then finds it asleep on the
    # GIL. That says nothing of its work: the stall is left out (with the probe's lock held).
    # Unless the probe waited for the GIL just before while no other Python thread ran and the
    # call got a CPU: it held the GIL then, a Python loop that ended right after the stall.
    last = w.last_blocked
    if last is None or cpu - last[0] > RETURN_CPU:
        return
    _, wall, queued, used, held = last
    if held and others_cpu_since(w.others) < OTHERS_BUSY * (perf_counter() - w.t_open):
        return
    w.stalls_blocked -= 1
    w.stalls_end += 1
    w.stall_wall -= wall
    w.stall_runq -= queued
    w.stall_cpu -= used
    w.last_blocked = None
