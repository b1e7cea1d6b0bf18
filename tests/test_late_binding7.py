"""Measurements in doubt must not hold a burst on the old lane (issue 15, round 7).

A measured call whose figures the classifier cannot trust yet (too few probe samples, a busy
machine) used to be followed by a second measured call on a thread, and a third: a burst of
two Python loops ran both on threads, and the wave after a function turned into a Python
loop had two or three calls on threads. The doubt is forced here (``Measurement.doubt``), as
a loaded machine gives it; the probe's samples stay real, so a try whose samples show
nothing decisive is made again with a fresh executor (at most ``TRIES``); before the change
no try could pass.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import hybridexec

from .governor_helpers import shifting

TRIES = 4


@pytest.fixture
def doubtful(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """While ``doubtful[0]`` is True, every measurement says it cannot be trusted yet."""
    from hybridexec._routing import _measure

    real = _measure.Measurement.doubt
    on = [False]

    def doubt(self: Any) -> str | None:
        return "forced by the test" if on[0] else real.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(_measure.Measurement, "doubt", property(doubt))
    return on


def _row(ex: hybridexec.Executor, fn: Any) -> dict[str, Any]:
    name = f"{fn.__module__}.{fn.__qualname__}"
    rows = [r for r in ex.stats()["decisions"] if r["function"] == name]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


@pytest.mark.timeout(120)
def test_a_burst_of_python_loops_in_doubt_goes_to_processes_at_once(
    doubtful: list[bool],
) -> None:
    doubtful[0] = True
    seen = []
    for _ in range(TRIES):
        with hybridexec.Executor(max_processes=2) as ex:
            futures = [ex.submit(shifting, 1, 0.15) for _ in range(3)]
            for f in futures:
                f.result(timeout=30)
            kinds = [f.kind for f in futures]
            explanation = ex.explain(shifting, 1, 0.15)
            seen.append((kinds, explanation.reason))
            if kinds[1:] == ["process", "process"]:
                # Only the measured call ran on a thread; the verdict says it is provisional.
                assert kinds[0] == "thread"
                assert explanation.kind == "process"
                assert "in processes meanwhile" in explanation.reason
                row = _row(ex, shifting)
                assert row["kind"] == "process"
                assert row["per_lane"] == {"thread": 1, "process": 2}
                return
    pytest.fail(f"the calls waiting for a verdict in doubt stayed on threads: {seen}")


@pytest.mark.timeout(120)
def test_a_function_turning_into_a_python_loop_moves_in_the_next_wave(
    doubtful: list[bool],
) -> None:
    # Learned asleep (threads); then waves of 4 loops. The first wave cannot know; its
    # figures hold the next wave for a re-check measured on one of its calls, whose figures
    # are in doubt: judged on them, not on a second and third call measured on threads.
    seen = []
    for _ in range(TRIES):
        doubtful[0] = False
        with hybridexec.Executor(max_processes=2) as ex:
            deadline = time.monotonic() + 10
            while not ex.explain(shifting, 0, 0.02).learned:
                assert time.monotonic() < deadline
                ex.submit(shifting, 0, 0.02).result(timeout=10)
            if ex.explain(shifting, 0, 0.02).kind != "thread":
                seen.append("sleep not learned for threads")
                continue
            doubtful[0] = True
            waves = []
            for _ in range(3):
                futures = [ex.submit(shifting, 1, 0.03) for _ in range(4)]
                for f in futures:
                    f.result(timeout=30)
                waves.append("".join(f.kind[0] for f in futures))
            seen.append("|".join(waves))
            if waves[0] == "tttt" and waves[1] == "tppp":
                assert waves[2] == "pppp"
                assert ex.explain(shifting, 1, 0.03).kind == "process"
                assert _row(ex, shifting)["changes"] == 1
                return
    pytest.fail(f"lanes per wave: {seen}")
