"""An outside tester's cases for round 4: shutdown(wait=False) while calls wait for a verdict.

Each test names the defect number of the tester's report in a comment (defect 1 failed before
the fix; defect 2, limit= and thread calls outliving their timeout, is documented instead). They
use the public API only, except where a private knob makes a race deterministic.
"""

from __future__ import annotations

import threading
import time

import pytest

import hybridexec as hx
from hybridexec._routing import _ticket

pytestmark = pytest.mark.timeout(60)


def loop(n: int) -> int:
    """GIL-bound Python work: its calls after the first wait for the first verdict."""
    total = 0
    for i in range(n):
        total += i
    return total


def held(gate: threading.Event, x: int) -> int:
    gate.wait(3.0)
    return x


# ---- defect 1: shutdown(wait=False) blocks while calls wait for a first verdict (I5) ----------


def test_shutdown_without_wait_is_prompt_while_calls_wait_for_a_verdict() -> None:
    # Defect 1. I5: shutdown(wait=False) returns in under 50 ms. Deferrals.flush() waits up to
    # FLUSH_WAIT (1 s) for a placer busy waiting for the verdict; seen 66-815 ms here.
    ex = hx.Executor(max_processes=2)
    futures = [ex.submit(loop, 3_000_000) for _ in range(6)]  # one measured, five deferred
    started = time.perf_counter()
    ex.shutdown(wait=False)
    elapsed = time.perf_counter() - started
    assert [f.result(timeout=30) for f in futures] == [loop(3_000_000)] * 6
    assert elapsed < 0.05, f"shutdown(wait=False) took {elapsed * 1000:.0f} ms"


def test_shutdown_without_wait_is_prompt_while_a_verdict_is_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Defect 1, deterministic: the first call's window reports only when it returns (the
    # private knob test_deferred.py uses), so the placer of the second call is busy waiting.
    monkeypatch.setattr(_ticket, "WINDOW_SECONDS", None)
    gate = threading.Event()
    ex = hx.Executor()
    first = ex.submit(held, gate, 0)
    second = ex.submit(held, gate, 1)
    time.sleep(0.05)  # the placer takes the second call and waits for the verdict
    started = time.perf_counter()
    try:
        ex.shutdown(wait=False)
        elapsed = time.perf_counter() - started
    finally:
        gate.set()
    assert (first.result(timeout=30), second.result(timeout=30)) == (0, 1)
    ex.shutdown(wait=True)
    assert elapsed < 0.05, f"shutdown(wait=False) took {elapsed * 1000:.0f} ms"
