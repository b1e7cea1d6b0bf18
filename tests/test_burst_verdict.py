"""A burst of a new Python loop: its process verdict after one probe cycle (issue 15, pure CPU).

Eight calls of a new function submitted at once to a fresh executor: the first is measured on
a thread and the other seven wait for its verdict; on 2 cores the wait is the burst's only
loss (one worker starts that much later and runs four calls). The verdict came after two
probe cycles (14-16 ms on a quiet machine): the probe thread, started while the window's lock
was held, and opening its ``/proc`` handles with ``os.open`` (which lets the GIL go), waited a
switch interval for the GIL beside the Python loop before its first cycle; and one cycle
(about 7 ms) fell short of the 8 ms the early report asked for. Now one cycle suffices.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

import hybridexec
from hybridexec._demo import cpu_work
from hybridexec._routing import _sched, _stalls
from hybridexec._routing._probe import EARLY_HELD_SECONDS, GilProbe, held_early
from hybridexec._routing._stalls import Window

pytestmark = pytest.mark.timeout(120)

LOOP = 1_500_000
"""A Python loop of about 100 ms here."""


def _window_seconds(ex: hybridexec.Executor) -> float | None:
    # The GIL seconds per call the verdict rests on: what the first window saw of the loop;
    # None when the loop was misread (a loaded machine: not what this test is about).
    futures = [ex.submit(cpu_work, LOOP) for _ in range(4)]
    for f in futures:
        f.result(timeout=60)
    explanation = ex.explain(cpu_work)
    if explanation.kind != "process" or explanation.gil_seconds is None:
        return None
    assert [f.kind for f in futures] == ["thread", "process", "process", "process"]
    return explanation.gil_seconds


@pytest.mark.skipif(sys.platform != "linux", reason="the early report needs the probe's stalls")
def test_a_new_loop_is_sent_to_processes_after_one_probe_cycle() -> None:
    # One cycle: 1 ms asleep, a 5 ms switch interval waiting for the GIL, the 1 ms stall; the
    # window saw 5-9 ms of the loop (10-31 ms on main: two cycles, the first a GIL wait late).
    # Under load a cycle may read too little lateness and a second one decides: up to 8
    # fresh executors, two must have decided after one cycle.
    seen: list[float | None] = []
    for _ in range(8):
        with hybridexec.Executor(max_processes=2) as ex:
            seen.append(_window_seconds(ex))
        if sum(s is not None and s < 0.0085 for s in seen) >= 2:
            return
    pytest.fail(f"no verdict after one probe cycle: {seen}")


# ---- the pieces, deterministic ----------------------------------------------------------------
def test_one_cycle_of_a_gil_bound_call_is_enough_to_report() -> None:
    w = Window(None, None, None, True)
    # 1 ms asleep with the thread running, a stall it slept through on the GIL...
    _stalls.Cycle(0.001, 0.001, 0.005).add(w, 0.001, 1.0, 0.0, (0.0, 0.0), False, True)
    # ...and the probe kept waiting for the GIL 4.2 ms of a 5 ms interval (as read at 0.8).
    w.late += 0.84 * sys.getswitchinterval()
    w.span += 0.007
    runnable = 0.0066  # what one cycle lasts, the probe's wake-up included
    assert runnable >= EARLY_HELD_SECONDS
    assert held_early(w, w.t_open + runnable, 0.9 * runnable, runnable)


def test_the_probe_thread_starts_with_the_windows_lock_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = GilProbe()
    held: list[bool] = []
    start = threading.Thread.start

    def spy(self: threading.Thread) -> None:
        if self.name == _sched.PROBE_THREAD:
            free = probe._cond.acquire(blocking=False)
            if free:
                probe._cond.release()
            held.append(not free)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", spy)
    window = probe.open(0.025, None, True)
    probe.close(window)
    assert held, "the probe thread did not start"
    assert not any(held), held  # the probe's (and gil_futex's helper, if it ran)


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
def test_the_probes_handles_are_opened_with_the_gil_held(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object) -> int:
        raise AssertionError("os.open lets the GIL go")

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refused)  # what _sched would call
        sched = _sched.ThreadSched(threading.get_native_id())
    try:
        assert sched.stat_fd is not None
        assert sched.runnable() is True
        assert sched.waited() is not None
    finally:
        for fd in sched.detach():
            os.close(fd)
