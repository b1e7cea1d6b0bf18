"""A caller that reads its own reply sums the call's figures for the router (issue 17).

On the direct path (``_process/_direct.py``) the caller handles its reply; the figures of
calls with number arguments are summed and given every ``CALLER_SUM`` replies (a function
not seen since the last gift at once), the rest at the manager's next turn: none is lost,
none is counted twice, and they go in fewer gifts than calls.
"""

from __future__ import annotations

from typing import Any

import hybridexec
from hybridexec._process._direct import CALLER_SUM

from .helpers import square


def test_round_trips_give_every_calls_figures_once_in_fewer_gifts() -> None:
    gifts: list[int] = []
    ex = hybridexec.Executor(max_processes=1)
    try:
        lane = ex._router.processes
        hook = lane._timing_hook

        def counting(task: Any, elapsed: float, cpu: float) -> None:
            if task.fn is square:
                gifts.append(len(task.items))
            if hook is not None:
                hook(task, elapsed, cpu)

        lane._timing_hook = counting
        target = ex.options(kind="process")
        calls = 8 * CALLER_SUM
        for x in range(calls):  # one at a time: each a round trip
            assert target.submit(square, x).result(timeout=60) == x * x
    finally:
        ex.shutdown(wait=True)  # the manager's last turn gives what is left
    assert sum(gifts) == calls
    assert 1 <= len(gifts) < calls
