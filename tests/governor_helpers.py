"""Module-level functions for the governor and late-binding tests (picklable by reference)."""

from __future__ import annotations

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
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
    else:
        time.sleep(seconds)
    return start, time.time()


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
