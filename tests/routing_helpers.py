"""Verdicts of a fresh classifier, measured on a thread, for the routing tests."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hybridexec._routing import LearningClassifier
from hybridexec._routing import _verdicts as verdicts
from hybridexec._routing._entry import Entry
from hybridexec._routing._measure import Measurement


def learn(fn: Callable[..., Any], *args: Any) -> tuple[str, str]:
    """Measure calls of ``fn`` on a thread with a fresh classifier until it gives a verdict.

    A measurement in doubt (``Measurement.doubt``) asks for the next call to be measured too,
    at most ``UNSURE_TRIES`` times.

    Returns:
        The verdict's lane and reason.
    """
    clf = LearningClassifier()
    for _ in range(1 + verdicts.UNSURE_TRIES):
        probe = clf.classify(fn, args, {}).probe
        if probe is None:
            break
        assert probe.claim()
        worker = threading.Thread(target=lambda p=probe: p.run(lambda: fn(*args)))
        worker.start()
        worker.join()
    explanation = clf.explain(fn, args)
    assert explanation.learned, explanation
    return explanation.kind, explanation.reason


def first_to(fn: Callable[..., Any], *args: Any, expected: str, right: int, wrong: int) -> None:
    """Fresh measurements until ``right`` agree with ``expected`` (passes) or ``wrong`` do not.

    The machine may be shared and loaded, and a verdict read beside contention is a sample.
    With 90% of single measurements right, 4-before-4 fails 3 runs in 1000; with the 50-75%
    read before the probe blamed a call only for its own thread's work, it failed most runs.
    """
    got: list[tuple[str, str]] = []
    while True:
        got.append(learn(fn, *args))
        hits = sum(kind == expected for kind, _ in got)
        if hits >= right:
            return
        assert len(got) - hits < wrong, got


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """Another process keeping one core busy."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def python_loop(n: int) -> int:
    """A pure-Python loop: holds the GIL for its whole run."""
    total = 0
    for i in range(n):
        total += i * i
    return total


class Recording(LearningClassifier):
    """A LearningClassifier that keeps the measurements its verdicts come from."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Measurement] = []
        self.lock = threading.Lock()

    def _conclude(self, entry: Entry, m: Measurement, recheck: bool) -> None:
        with self.lock:
            self.seen.append(m)
        super()._conclude(entry, m, recheck)
