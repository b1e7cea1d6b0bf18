"""Two new Python loops measured at once both go to processes (issue 15, item 2).

The first of two new functions measured together to get its verdict ("process") switches the
GIL switch interval to 0.5 ms for the rest of its measured call (``_ticket.py``'s boost). The
probe's 1 ms stalls then lost the GIL to the waiting Python threads, ran long and were
discarded: the second function's verdict rested on no stall and read "it mostly waits (CPU
49%)", "90% of it GIL-free C code" or stayed unlearned, in 10 of 20 fresh runs. A stall now
fits in the switch interval (``_probe.stall_length``).
"""

from __future__ import annotations

import sys

import pytest

import hybridexec as hx

N = 3_000_000
"""Loop length: about 0.2-0.4 s per call on the development machine."""


def loop_a(n: int) -> int:
    """A pure-Python loop (holds the GIL throughout)."""
    total = 0
    for i in range(n):
        total += i
    return total


def loop_b(mode: str, n: int) -> int:
    """An argument-dependent function, called in its Python-loop mode here."""
    if mode != "cpu":
        return 0
    total = 0
    for i in range(n):
        total ^= i
    return total


def _verdicts() -> list[str]:
    # A fresh executor: both functions new; two calls of each submitted at once.
    with hx.Executor(max_processes=2) as ex:
        futures = [ex.submit(loop_a, N), ex.submit(loop_b, "cpu", N)]
        futures += [ex.submit(loop_a, N), ex.submit(loop_b, "cpu", N)]
        for f in futures:
            f.result(timeout=60)
        return [str(ex.explain(loop_a, N)), str(ex.explain(loop_b, "cpu", N))]


@pytest.mark.timeout(120)
def test_two_new_python_loops_measured_together_both_go_to_processes() -> None:
    # A verdict read beside other measured calls is a sample: 6 right runs before 2 wrong.
    # Before the stall fitted the boosted interval 40-50% of the runs had a wrong verdict
    # (load 2-6: this fails ~85% of the time); after, 2 runs in 156 (fails ~1 in 200).
    right, wrong = 0, []
    while right < 6:
        got = _verdicts()
        if all(" -> process:" in v for v in got):
            right += 1
        else:
            wrong.append(got)
            assert len(wrong) < 2, wrong


def test_a_stall_fits_in_a_short_switch_interval() -> None:
    from hybridexec._routing._measure import STALL_SECONDS, STALL_SLACK
    from hybridexec._routing._probe import stall_length

    saved = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert stall_length() == (STALL_SECONDS, STALL_SLACK)
        sys.setswitchinterval(0.000499)  # the boost's
        stall, slack = stall_length()
        assert stall + slack < 0.000499
    finally:
        sys.setswitchinterval(saved)
