"""Measured first calls and the CPU slots (issue 15: mixed workloads against the oracle).

Several new functions measured at once on threads used to hold a slot each: Python threads
take turns on one GIL, yet the processes waited until the measurements ended. They share one
slot now. No clock: the measured calls spin until the test opens their gate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import hybridexec
from hybridexec._process._threadlimits import usable_cpus

from .conftest import wait_until
from .helpers import sleep_then

SLOTS = max(usable_cpus(), 2)  # an executor's slots: the cores, or max_processes=2 if more


def _spinner(index: int) -> Callable[[str], int]:
    """A new function per index (its own verdict to learn): a Python loop until ``gate``."""

    def spin(gate: str) -> int:
        turns = 0
        while not os.path.exists(gate):
            for _ in range(1000):
                turns += 1
        return turns

    spin.__qualname__ = spin.__name__ = f"spin_{index}"
    return spin


@pytest.mark.timeout(90)
def test_process_work_runs_while_several_new_functions_are_measured(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    with hybridexec.Executor(max_processes=2) as ex:
        ex.options(kind="process").submit(sleep_then, 0.0).result(timeout=30)  # a warm worker
        measured = [ex.submit(_spinner(i), str(gate)) for i in range(SLOTS)]
        try:
            assert wait_until(lambda: all(f.running() for f in measured), 20)
            assert all(f.kind == "thread" for f in measured)  # each is a first call, measured
            # They run Python on one GIL: together they keep one core busy, and hold one slot.
            assert ex.stats()["slots"]["threads"] == 1
            assert ex.options(kind="process").submit(sleep_then, 0.0, 7).result(timeout=30) == 7
            assert not any(f.done() for f in measured)
        finally:
            gate.touch()
        for f in measured:  # each ends once its gate opens (on a loaded machine it may have
            assert f.result(timeout=30) >= 0  # started spinning only then: 0 turns)
        assert wait_until(lambda: ex.stats()["slots"]["threads"] == 0, 10)
