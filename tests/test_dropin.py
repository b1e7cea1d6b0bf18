"""What code written for concurrent.futures expects of an executor, through the public API."""

from __future__ import annotations

import gc
import itertools
import signal
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import hybridexec as hx
from tests import helpers


class Box:
    """A result that can be weakly referenced."""

    def __init__(self, value: int) -> None:
        self.value = value


def boxed(x: int) -> Box:
    return Box(x)


def test_max_workers_caps_both_lanes_and_is_readable() -> None:
    with hx.Executor(max_workers=3) as ex:
        assert ex._max_workers == 3  # read by dask's threaded scheduler
        assert ex.stats()["threads"] <= 3
        assert list(ex.options(kind="process").map(helpers.square, range(6))) == [
            x * x for x in range(6)
        ]
        assert len(ex.worker_pids) <= 3


def test_max_workers_gives_way_to_the_lane_caps() -> None:
    with hx.Executor(max_workers=8, max_processes=1) as ex:
        ex.options(kind="process").submit(helpers.square, 2).result(timeout=30)
        assert len(ex.worker_pids) == 1
        assert ex._max_workers == 8


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_below_one_is_a_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        hx.Executor(max_workers=bad)


def test_map_of_no_iterable_is_empty(ex: hx.Executor) -> None:
    assert list(ex.map(helpers.square)) == []


def test_map_of_several_iterables_stops_at_the_shortest(ex: hx.Executor) -> None:
    assert list(ex.map(pow, [2, 3, 4], [5, 6], chunksize=2)) == [32, 729]


def test_map_with_buffersize_reads_an_endless_iterable_lazily(ex: hx.Executor) -> None:
    it = ex.options(kind="thread").map(helpers.square, itertools.count(), buffersize=4)
    assert [next(it) for _ in range(20)] == [x * x for x in range(20)]
    del it  # the rest of the buffer is cancelled


def test_map_with_buffersize_submits_no_more_than_it_holds(ex: hx.Executor) -> None:
    pulled: list[int] = []

    def source() -> Any:
        for x in range(100):
            pulled.append(x)
            yield x

    it = ex.options(kind="thread").map(helpers.square, source(), buffersize=3)
    assert len(pulled) == 3  # submitted at map() time, as many as the buffer holds
    assert next(it) == 0
    assert len(pulled) == 4
    assert next(it) == 1
    assert len(pulled) == 5
    del it


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_map_refuses_a_bad_buffersize(ex: hx.Executor, value: Any, error: type) -> None:
    with pytest.raises(error, match="buffersize"):
        ex.map(helpers.square, [1], buffersize=value)


def test_map_submits_everything_before_iteration_without_buffersize(ex: hx.Executor) -> None:
    # Code that calls map() for its side effects and never iterates still runs every call.
    pulled: list[int] = []

    def source() -> Any:
        for x in range(10):
            pulled.append(x)
            yield x

    it = ex.options(kind="thread").map(helpers.square, source())
    assert pulled == list(range(10))
    assert list(it) == [x * x for x in range(10)]


class CountingExecutor(hx.Executor):
    """A subclass that counts submits, as tracing and context-carrying wrappers do."""

    submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> hx.Future[Any]:
        type(self).submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_map_goes_through_an_overridden_submit() -> None:
    with CountingExecutor(kind="thread") as ex:
        assert list(ex.map(helpers.square, range(7))) == [x * x for x in range(7)]
    assert CountingExecutor.submitted == 7


def test_map_iterator_lets_go_of_consumed_results(ex: hx.Executor) -> None:
    # The thread lane's own retention is tested in test_guarantees.py (issue 13, defect 12).
    it = ex.options(kind="process").map(boxed, range(3))
    first = next(it)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None
    assert [b.value for b in it] == [1, 2]


def test_crash_signal_is_a_signals_member() -> None:
    err = hx.WorkerCrashedError("died", exitcode=-signal.SIGSEGV, pid=1)
    assert err.signal == signal.SIGSEGV
    assert isinstance(err.signal, signal.Signals)
    assert hx.WorkerCrashedError("exited", exitcode=3).signal is None
