"""Module-level functions for the governor and late-binding tests (picklable by reference)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def shifting(cpu: int, seconds: float) -> tuple[float, float]:
    """A Python loop (``cpu`` true) or a sleep; one key for both (ints count by type).

    The loop runs until its thread has used ``seconds`` of CPU: on a loaded machine it takes
    longer, but never looks like waiting. Returns the wall-clock interval it ran in
    (comparable across processes).
    """
    start = time.time()
    if cpu:
        # Python bytecode between clock reads: a read per loop turn spent most of the call in
        # the clock's system call (with the GIL held), which a loaded probe misread as C code.
        end = time.thread_time() + seconds
        total = 0
        while time.thread_time() < end:
            for i in range(2000):
                total += i
    else:
        time.sleep(seconds)
    return start, time.time()


def spin_until_exists(path: str) -> None:
    """A Python loop (it keeps its CPU and its slot) until the file ``path`` exists.

    The test says when it ends, whatever the load; it gives up after 60 seconds.
    """
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {path} never opened")


BARRIERS: dict[str, threading.Barrier] = {}
"""Barriers by name: ``meet``'s arguments stay picklable, as a process task's must be."""


def meet(barrier: str, value: Any) -> Any:
    """Return ``value`` once ``BARRIERS[barrier].parties`` calls are in here at once.

    A thread task: the calls prove they ran side by side without a clock, since one left
    waiting for a thread or a slot leaves the others at the barrier until its timeout
    (``threading.BrokenBarrierError``).
    """
    BARRIERS[barrier].wait()
    return value


class Gauge:
    """Counts the calls running at once in this process; keeps the peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


GAUGE = Gauge()


def numpy_chunk(data: Any) -> tuple[float, float]:
    """GIL-free C work (a numpy sort) that keeps its thread on a CPU; counted by ``GAUGE``."""
    import numpy as np

    with GAUGE:
        start = time.time()
        np.sort(data)
        return start, time.time()
