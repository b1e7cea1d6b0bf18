"""A measured call that holds the GIL lets the other threads in sooner once its verdict is in.

While the first call of a GIL-bound function runs on a thread after the probe's early verdict
("processes"), the GIL switch interval is short (``_ticket.SHORT``), so the submitters waiting
for that verdict and the process lane's manager are not held ~5 ms per step; it goes back when
the call returns, and a value the application set is respected.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

import hybridexec
from hybridexec._routing import _ticket

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


def python_loop_seen_interval(seconds: float, set_to: float | None = None) -> tuple[float, float]:
    """Compute in pure Python for ``seconds``; the switch intervals seen at start and end."""
    start = sys.getswitchinterval()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    seen = sys.getswitchinterval()
    if set_to is not None:
        sys.setswitchinterval(set_to)
    return start, seen


def sleeper_seen_interval(seconds: float) -> float:
    time.sleep(seconds)
    return sys.getswitchinterval()


@pytest.fixture
def interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def _first_call(fn: Callable[..., T], *args: Any) -> T:
    with hybridexec.Executor() as ex:
        return ex.submit(fn, *args).result(timeout=30)


def test_gil_bound_first_call_runs_with_a_short_interval_after_its_verdict(interval: None) -> None:
    start, seen = _first_call(python_loop_seen_interval, 0.4)
    assert start == pytest.approx(0.005)
    assert seen == pytest.approx(_ticket.SHORT)
    assert sys.getswitchinterval() == pytest.approx(0.005)  # back once the call returned


def test_the_applications_interval_comes_back(interval: None) -> None:
    sys.setswitchinterval(0.002)
    start, seen = _first_call(python_loop_seen_interval, 0.4)
    assert start == pytest.approx(0.002)
    assert seen == pytest.approx(_ticket.SHORT)
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_an_interval_already_short_is_left_alone(interval: None) -> None:
    sys.setswitchinterval(0.0002)
    _start, seen = _first_call(python_loop_seen_interval, 0.3)
    assert seen == pytest.approx(0.0002)
    assert sys.getswitchinterval() == pytest.approx(0.0002)


@pytest.mark.parametrize("value", [0.003, 0.0005])
def test_an_interval_the_application_sets_meanwhile_is_kept(interval: None, value: float) -> None:
    _start, seen = _first_call(python_loop_seen_interval, 0.4, value)
    assert seen == pytest.approx(_ticket.SHORT, abs=1e-7)
    assert sys.getswitchinterval() == pytest.approx(value, abs=1e-7)


def test_a_waiting_call_does_not_shorten_the_interval(interval: None) -> None:
    seen = _first_call(sleeper_seen_interval, 0.2)
    assert seen == pytest.approx(0.005)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_boosts_nest(interval: None) -> None:
    a, b = _ticket.Boost(), _ticket.Boost()
    a.start()
    b.start()
    assert sys.getswitchinterval() == pytest.approx(_ticket.SHORT)
    a.end()
    assert sys.getswitchinterval() == pytest.approx(_ticket.SHORT)  # b still runs
    b.end()
    assert sys.getswitchinterval() == pytest.approx(0.005)
    ended = _ticket.Boost()
    ended.end()
    ended.start()  # its call returned before the verdict came: nothing to shorten
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_child_forked_during_a_boost_gets_the_usual_interval(interval: None) -> None:
    boost = _ticket.Boost()
    boost.start()
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its interval and leave at once
            os.write(w, repr(sys.getswitchinterval()).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as got:
            seen = float(got.read())
        os.waitpid(pid, 0)
    finally:
        boost.end()
    assert seen == pytest.approx(0.005)
