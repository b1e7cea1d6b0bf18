"""An early verdict for clearly GIL-free C code (issue 15: GIL-free C near stdlib threads).

The first call of a function is measured on a thread and the calls submitted meanwhile wait
for its verdict. A call found running on its own thread while the probe held the GIL, in
``EARLY_FREE_STALLS`` stalls and never blocked, runs GIL-free C code: its window reports at
once (a few ms) instead of after ``WINDOW_SECONDS``, and the waiting calls start on threads.
GIL-bound code cannot run in a stall, so it never reports early as GIL-free (it may as
GIL-bound: ``tests/test_early_verdict.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import hybridexec
from hybridexec._routing import _stalls
from hybridexec._routing import _verdicts as verdicts
from hybridexec._routing._measure import Measurement
from hybridexec._routing._probe import EARLY_HELD_SECONDS, EARLY_HELD_STALLS
from hybridexec._routing._stalls import Window

from .routing_helpers import Recording, python_loop

DATA = bytes(range(256)) * (1 << 18)  # 64 MB: sha256 takes ~40 ms, longer than the window


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _first(fn: Any, args: list[Any]) -> tuple[Measurement, list[str]]:
    clf = Recording()
    with hybridexec.Executor(max_threads=8, max_processes=1, classifier=clf) as ex:
        futures = [ex.submit(fn, a) for a in args]
        for f in futures:
            f.result(timeout=30)
        with clf.lock:
            first = clf.seen[0]
        return first, [f.kind for f in futures]


def test_a_first_sha256_call_reports_its_verdict_early() -> None:
    m, kinds = _first(sha, [DATA] * 4)
    # Reported by the probe while the call went on, long before the window's end.
    assert not m.complete, m
    assert m.run_wall < verdicts.WINDOW_SECONDS, m
    assert m.stalls_own >= verdicts.EARLY_FREE_STALLS, m
    assert m.stalls_blocked == 0, m
    assert verdicts.verdict(m)[0] == "thread"
    assert kinds == ["thread"] * 4


def test_a_python_loop_does_not_report_early_as_gil_free() -> None:
    m, kinds = _first(python_loop, [3_000_000] * 2)
    # Never found running in a stall; it may report early as GIL-bound (``_probe.held_early``:
    # blocked in a stall, after EARLY_HELD_SECONDS it could run), never as GIL-free.
    assert m.complete or m.run_wall >= 0.99 * EARLY_HELD_SECONDS, m
    assert m.complete or m.stalls_blocked >= EARLY_HELD_STALLS, m
    assert m.stalls_own == 0, m
    assert verdicts.verdict(m)[0] == "process"
    assert kinds[1] == "process"


# ---- the rule, on windows fed by hand -----------------------------------------------------------
def _window(early: bool = True) -> Window:
    return Window(None, None, None, early)


def _cycle(w: Window, *, stall_cpu: float, state: bool, ctrl: float = 0.001) -> None:
    # A 1 ms control interval in which the thread ran ``ctrl`` seconds, then a 1 ms stall.
    _stalls.Cycle(0.001, 0.001, 0.0).add(w, ctrl, 1.0, stall_cpu, (0.0, 0.0), state)


def test_two_stalls_the_thread_ran_through_report_early() -> None:
    w = _window()
    _cycle(w, stall_cpu=0.0009, state=True)
    assert not verdicts.early(w, cpu=0.004, runnable=0.0045)  # one is not enough
    _cycle(w, stall_cpu=0.0009, state=True)
    assert w.stalls_own == 2
    assert verdicts.early(w, cpu=0.004, runnable=0.0045)
    assert not verdicts.early(w, cpu=0.001, runnable=0.0045)  # it did not keep a CPU busy
    assert not verdicts.early(w, cpu=0.002, runnable=0.002)  # too soon


def test_a_blocked_stall_or_a_recheck_does_not_report_early() -> None:
    blocked = _window()
    for _ in range(3):
        _cycle(blocked, stall_cpu=0.0009, state=True)
    _cycle(blocked, stall_cpu=0.0, state=False)  # asleep on the GIL: some Python work
    assert blocked.stalls_blocked == 1
    assert not verdicts.early(blocked, cpu=0.008, runnable=0.009)
    recheck = _window(early=False)
    for _ in range(3):
        _cycle(recheck, stall_cpu=0.0009, state=True)
    assert not verdicts.early(recheck, cpu=0.006, runnable=0.007)


def test_progress_of_other_threads_in_a_stall_does_not_report_early() -> None:
    # The thread was mostly off the CPU; the process ran on in the stalls (BLAS helpers, or
    # other threads' C code): free stalls, but not the thread's own.
    w = _window()
    for _ in range(3):
        cycle = _stalls.Cycle(0.001, 0.001, 0.0)
        cycle.proc_stall = 0.001
        cycle.add(w, 0.0002, 1.0, 0.0, (0.0005, 0.0), True)
    assert w.stalls_free == 3
    assert w.stalls_own == 0
    assert not verdicts.early(w, cpu=0.004, runnable=0.006)


def test_one_own_stall_is_not_in_doubt_beside_other_threads() -> None:
    # Other Python threads ran meanwhile (other first calls measured at once): they cannot
    # make the measured thread run while the probe holds the GIL.
    own = Measurement(wall=0.008, cpu=0.006, others_cpu=0.008, stalls_free=1, stalls_own=1)
    assert own.doubt is None
    other = Measurement(wall=0.008, cpu=0.006, others_cpu=0.008, stalls_free=1)
    assert other.doubt == "one stall sample under load"
