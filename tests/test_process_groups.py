"""Several process calls in one frame (issue 17): each still ends on its own future.

A call of a plain function with a few small plain arguments is pickled by the manager with the
others it sends a worker at once, and the worker answers them in one frame (see
``hybridexec/_process/_group.py``). These go through the public API (``submit`` on a
``kind="process"`` executor with one worker) and check that groups really formed (the lane's
``groups`` count), so that a test cannot pass on the one-call-per-frame path alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridexec import (
    Executor,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from hybridexec._futures import Future, Task
from hybridexec._process._schedule import AHEAD_SECONDS, PIPELINE_SECONDS

from . import helpers
from .conftest import wait_until

pytestmark = pytest.mark.timeout(120)

CALLS = 60


def tiny(x: int) -> int:
    """Short; raises for multiples of 7 (each call ends as itself)."""
    if x % 7 == 3:
        raise ValueError(f"bad {x}")
    return x * 2


def hold_on(x: int, slow: int, seconds: float | str) -> int:
    """Short, but ``seconds`` long for ``x == slow`` (a path: until that file exists)."""
    if x == slow:
        if isinstance(seconds, str):
            helpers.gated(seconds)
        else:
            time.sleep(seconds)
    return x


def exit_on(x: int, bad: int) -> int:
    """Short; kills its worker for ``x == bad`` (as a segfault would)."""
    if x == bad:
        os._exit(7)
    return x


def pid_of(x: int) -> int:
    return os.getpid()


@pytest.fixture
def ex() -> Iterator[Executor]:
    with Executor(max_processes=1) as executor:
        yield executor


def _groups(ex: Executor) -> int:
    return ex._router.processes.stats["groups"]


def _warm(ex: Executor, fn: Any, *args: Any) -> None:
    # A few calls one at a time: the lane learns that ``fn`` is short (calls of a function
    # never measured go alone).
    process = ex.options(kind="process")
    for _ in range(6):
        process.submit(fn, *args).result(timeout=60)


def _in_one_frame(ex: Executor, fn: Any, calls: list[tuple[Any, ...]], gate: Path) -> list[Any]:
    """Submit ``calls`` while the worker is busy, so that they queue and go together."""
    process = ex.options(kind="process")
    _warm(ex, hold_on, 0, -1, 0.0)
    before = _groups(ex)
    busy = process.submit(hold_on, 0, 0, str(gate))  # holds the worker while the calls queue
    futures = [process.submit(fn, *args) for args in calls]
    gate.touch()  # all queued, however slow the machine
    assert busy.result(timeout=60) == 0
    concurrent.futures.wait(futures, timeout=60)
    assert _groups(ex) > before, "the calls did not travel in a group"
    return futures


def test_each_call_of_a_group_ends_on_its_own_future_in_order(ex: Executor, tmp_path: Path) -> None:
    _warm(ex, tiny, 1)
    futures = _in_one_frame(ex, tiny, [(x,) for x in range(CALLS)], tmp_path / "go")
    for x, future in enumerate(futures):
        if x % 7 == 3:
            with pytest.raises(ValueError, match=f"bad {x}$"):
                future.result()
        else:
            assert future.result() == x * 2
        assert future.kind == "process"


def test_a_crash_inside_a_group_fails_only_the_call_that_crashed(
    ex: Executor, tmp_path: Path
) -> None:
    _warm(ex, exit_on, 0, -1)
    futures = _in_one_frame(ex, exit_on, [(x, 25) for x in range(CALLS)], tmp_path / "go")
    for x, future in enumerate(futures):
        if x == 25:
            with pytest.raises(WorkerCrashedError) as info:
                future.result()
            assert info.value.exitcode == 7
        else:
            assert future.result() == x
    # The lane lives on: the next calls run in the replacement worker.
    assert ex.options(kind="process").submit(tiny, 4).result(timeout=60) == 8


def test_cancel_of_a_call_waiting_inside_a_group_cancels_only_it(
    ex: Executor, tmp_path: Path
) -> None:
    process = ex.options(kind="process")
    manager = _warm_short(ex)
    worker = process.submit(pid_of, 0).result(timeout=60)
    before = _groups(ex)
    # The first call holds the worker until the cancel is done (a gate: under load a nap ended
    # first); the calls sent behind it in groups wait in the worker. How many go depends on
    # the measured cost: the test cancels one that is there, once it is.
    gate = tmp_path / "go"
    futures = [process.submit(hold_on, x, 0, str(gate)) for x in range(CALLS)]
    try:
        assert wait_until(lambda: len(_in_worker(manager)) > 1 and _groups(ex) > before, 30)
        victim = _in_worker(manager)[-1]
        assert victim is not futures[0]
        assert victim.cancel()
        assert victim.cancelled()
    finally:
        gate.touch()
    index = futures.index(victim)
    assert [f.result(timeout=60) for i, f in enumerate(futures) if i != index] == [
        x for x in range(CALLS) if x != index
    ]
    assert process.submit(pid_of, 0).result(timeout=60) == worker  # never killed


def _warm_short(ex: Executor) -> Any:
    """Warm ``hold_on`` until the lane sends its calls ahead several deep, in groups.

    Calls go ahead of a running one when measured short (``PIPELINE_SECONDS``), as many as
    make ``AHEAD_SECONDS`` of work: a quarter of that each, and a few go together. A call
    preempted on a loaded machine is measured long; the cost falls back as calls run.
    """
    probe = Task(hold_on, [((), {})], Future())
    for _ in range(50):
        _warm(ex, hold_on, 0, -1, 0.0)
        manager = ex._router.processes._manager
        assert manager is not None
        cost = manager._cost(probe)
        if cost is not None and cost <= min(PIPELINE_SECONDS, AHEAD_SECONDS / 4):
            return manager
    pytest.fail(f"hold_on never measured short: {cost}")


def _in_worker(manager: Any) -> list[Any]:
    """The futures of the calls sent to the lane's workers (the running one first)."""
    return [t.future for w in list(manager.workers.values()) for t in list(w.tasks)]


def test_a_timeout_never_waits_behind_a_group(ex: Executor) -> None:
    # A call with a timeout goes alone (its clock starts as it is sent): the slow call at the
    # head of the group in the worker does not count against it, and the group does not die
    # with it when it times out.
    process = ex.options(kind="process")
    timed = ex.options(kind="process", timeout=0.4)
    _warm(ex, hold_on, 0, -1, 0.0)
    futures = [process.submit(hold_on, x, 0, 0.3) for x in range(CALLS)]
    ok = timed.submit(hold_on, 1, -1, 0.0)
    late = timed.submit(helpers.sleep_then, 5.0)
    after = [process.submit(hold_on, x, -1, 0.0) for x in range(CALLS)]
    assert ok.result(timeout=60) == 1
    with pytest.raises(TaskTimeoutError):
        late.result(timeout=60)
    assert [f.result(timeout=60) for f in futures] == list(range(CALLS))
    assert [f.result(timeout=60) for f in after] == list(range(CALLS))


def test_bad_input_fails_at_the_call_that_caused_it(ex: Executor, tmp_path: Path) -> None:
    process = ex.options(kind="process")
    _warm(ex, helpers.identity, 0)
    # An argument that will not pickle is pickled at submit: that call fails, alone.
    good = [process.submit(helpers.identity, x) for x in range(20)]
    bad = process.submit(helpers.identity, threading.Lock())
    more = [process.submit(helpers.identity, x) for x in range(20)]
    assert isinstance(bad.exception(timeout=60), SerializationError)
    assert [f.result(timeout=60) for f in good + more] == list(range(20)) * 2
    # A result that will not pickle (30), or not unpickle here (40), inside a group fails
    # that call only.
    parent = os.getpid()
    _warm(ex, maybe_unpicklable, 0, parent)
    calls = [(x, parent) for x in range(CALLS)]
    futures = _in_one_frame(ex, maybe_unpicklable, calls, tmp_path / "go")
    for x, future in enumerate(futures):
        if x in (30, 40):
            assert isinstance(future.exception(), SerializationError), x
        else:
            assert future.result() == x


def maybe_unpicklable(x: int, parent: int) -> Any:
    if x == 30:
        return helpers.Unpicklable()
    return helpers.FailsToUnpickleIn(parent) if x == 40 else x


def test_a_group_reply_carries_each_value_and_each_failure_in_its_place() -> None:
    # The worker's side of a group, over a real pipe: values in order, a failure (a call that
    # raised, a result that will not pickle, a callable that will not unpickle) in its own
    # place, and the count of calls answered ahead of the pickled rest.
    from hybridexec._process._frames import FrameReader
    from hybridexec._process._outcomes import unwrap
    from hybridexec._process._worker import _run_group
    from hybridexec._serialize import dumps_callable, loads, unpack_exception

    good, bad_fn = dumps_callable(tiny), b"not a pickle"
    unpicklable = dumps_callable(maybe_unpicklable)
    wires = [good, good, bad_fn, good, unpicklable, unpicklable]
    arglists: list[tuple[Any, ...]] = [(1,), (3,), (5,), (4,), (30, 0), (2, 0)]
    read, write = os.pipe()
    try:
        _run_group([wires, arglists, 0], {}, write, False)
        os.close(write)
        write = -1
        reader = FrameReader(read)
        data = reader.read()
        assert reader.flagged
        count = int.from_bytes(data[:4], "big")
        values, failures, seconds, _, rss = loads(data[4:])
        while count < len(wires):  # answered in several replies if the calls ran long
            data = reader.read()
            more, fails, secs, _, _ = loads(data[4:])
            failures = {**(failures or {}), **{count + i: f for i, f in (fails or {}).items()}}
            values, seconds, count = values + more, seconds + secs, count + len(more)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    assert count == len(wires) == len(values) == len(seconds)
    assert rss is None
    # (the result that will not pickle made the others go one by one, each pickled alone)
    assert [unwrap(values[i]) for i in (0, 3, 5)] == [2, 8, 2]
    assert sorted(failures) == [1, 2, 4]
    assert all(values[i] is None for i in failures)
    assert isinstance(unpack_exception(failures[1]), ValueError)  # raised by the call
    assert isinstance(unpack_exception(failures[2]), SerializationError)  # fn did not unpickle
    assert isinstance(unpack_exception(failures[4]), SerializationError)  # result did not pickle


def _closure_over(table: tuple[int, ...]) -> Any:
    def shifted(x: int) -> int:  # a local function: it pickles by value (cloudpickle)
        return x + table[-1]

    return shifted


def test_a_callable_kept_by_value_travels_in_groups_whatever_its_length(
    ex: Executor, tmp_path: Path
) -> None:
    from hybridexec._process._group import WIRE_MAX
    from hybridexec._serialize import dumps_callable

    shifted = _closure_over(tuple(range(400)))  # its bytes: far over WIRE_MAX, kept (immutable)
    assert len(dumps_callable(shifted)) > WIRE_MAX
    _warm(ex, shifted, 1)
    futures = _in_one_frame(ex, shifted, [(x,) for x in range(CALLS)], tmp_path / "go")
    assert [f.result() for f in futures] == [x + 399 for x in range(CALLS)]
    # Checked on every call still: a call sees the closure as it is when it is submitted (I2).
    process = ex.options(kind="process")
    assert shifted.__closure__ is not None
    shifted.__closure__[0].cell_contents = (7,)
    assert process.submit(shifted, 1).result(timeout=60) == 8
    shifted.__closure__[0].cell_contents = (1000,)
    assert [f.result(timeout=60) for f in [process.submit(shifted, 1) for _ in range(5)]] == [
        1001
    ] * 5


def test_a_long_callable_pickled_anew_is_pickled_once_per_submit(
    ex: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridexec import _serialize
    from hybridexec._process import _group, _wire

    table = list(range(400))  # mutable: pickled anew on every call (guarantee I2)
    shifted = _closure_over(table)  # type: ignore[arg-type]
    made: list[Any] = []

    def counted(fn: Any) -> bytes:
        made.append(fn)
        return _serialize.dumps_callable(fn)

    monkeypatch.setattr(_group, "dumps_callable", counted)
    monkeypatch.setattr(_wire, "dumps_callable", counted)
    process = ex.options(kind="process")
    for x in range(3):
        table[-1] = x  # each call sees the list as it was when it was submitted
        assert process.submit(shifted, 1).result(timeout=60) == 1 + x
    assert [fn is shifted for fn in made] == [True] * 3


def boxed(x: int, parent: int) -> Any:
    """A result that is no plain value (pickled alone), a failure, or one that fails here."""
    if x % 5 == 1:
        raise KeyError(x)
    if x % 5 == 2:
        return helpers.FailsToUnpickleIn(parent)  # unpickles anywhere but in ``parent``
    return [x]


def test_a_group_reply_settles_each_call_and_records_the_functions_cost(
    ex: Executor, tmp_path: Path
) -> None:
    # A reply settles its calls and sums their figures in one pass (_replies._settle_group):
    # a value pickled alone is unwrapped, a failure stays at its call, a value that will not
    # unpickle here fails only its call, and the group's seconds reach the function's cost.
    parent = os.getpid()
    _warm(ex, boxed, 0, parent)
    futures = _in_one_frame(ex, boxed, [(x, parent) for x in range(CALLS)], tmp_path / "go")
    for x, future in enumerate(futures):
        if x % 5 == 1:
            with pytest.raises(KeyError):
                future.result()
        elif x % 5 == 2:
            with pytest.raises(SerializationError, match="could not be unpickled"):
                future.result()
        else:
            assert future.result() == [x]
    manager: Any = ex._router.processes._manager
    costs = manager.costs[id(boxed)]
    assert costs[0]() is boxed
    assert 0 < costs[1] < 1.0


def keys_after_adding(**kwargs: Any) -> list[str]:
    kwargs["added"] = True  # its own dict: the next call must not see this
    return sorted(kwargs)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_calls_given_no_keywords_share_nothing_a_call_can_change(kind: str) -> None:
    # A task of a call given no keywords keeps one shared empty dict, not the call's own
    # (_task._NO_KWARGS: one object fewer per task): nothing may ever write to it.
    from hybridexec._task import _NO_KWARGS

    with Executor(max_processes=1) as ex:
        lane = ex.options(kind=kind)
        futures = [lane.submit(keys_after_adding) for _ in range(20)]
        assert [f.result(timeout=60) for f in futures] == [["added"]] * 20
        assert lane.submit(helpers.add, 1, y=2).result(timeout=60) == 3
        sums = [lane.submit(helpers.add, x) for x in range(20)]  # no keywords again
        assert [f.result(timeout=60) for f in sums] == list(range(20))
    assert _NO_KWARGS == {}
    assert Task(helpers.add, ((1,), {}), Future("process")).kwargs is _NO_KWARGS


def identity(x: Any) -> Any:
    return x


def test_calls_of_one_number_keep_their_exact_value_and_type(ex: Executor) -> None:
    # One int per call takes the lane's short path (_group.defer_int) once the callable's
    # bytes are cached; bools, ints past its bound and floats go the general way.
    process = ex.options(kind="process")
    _warm(ex, identity, 1)
    values: list[Any] = [True, False, 0, -1, 2**62 - 1, 2**62, -(2**62), -(2**62) - 1, 2**100]
    values.append(1.5)
    got = [f.result(timeout=60) for f in [process.submit(identity, v) for v in values]]
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]


def note_twice(path: str, x: int) -> int:
    """Append ``s<x>`` to ``path`` as the call starts, ``e<x>`` as it ends (~20 us between)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b"s%d\n" % x)
        until = time.perf_counter() + 0.00002
        while time.perf_counter() < until:
            pass
        os.write(fd, b"e%d\n" % x)
    finally:
        os.close(fd)
    return x


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the workers' rings need memfd")
def test_workers_killed_from_outside_mid_storm_run_no_call_twice(tmp_path: Path) -> None:
    # Workers SIGKILLed from outside while they run groups of tiny calls: the calls each had
    # finished get their outcomes from its ring (_process/_ring.py), the one it was running
    # fails (it started and never ended), and the rest run on a new worker: none runs twice.
    # (A call sent ahead alone, not in a group, that had not started fails too: the worker's
    # first call without a reply is taken for the running one; so does a call killed after
    # its code returned and before its outcome was recorded. Neither runs twice.)
    log = tmp_path / "calls.log"
    with Executor(max_processes=2) as executor:
        lane = executor.options(kind="process")
        assert lane.submit(note_twice, str(tmp_path / "warm.log"), -1).result(timeout=60) == -1
        futures = [lane.submit(note_twice, str(log), x) for x in range(20000)]
        killed = 0
        for _ in range(4):
            time.sleep(0.03)
            pids = executor._router.processes.worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed += 1
        done, _ = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == len(futures)
    assert killed
    words = log.read_text().split()
    starts = collections.Counter(int(w[1:]) for w in words if w[0] == "s")
    assert [x for x, n in starts.items() if n > 1] == []
    for x, future in enumerate(futures):
        if future.exception() is None:
            assert future.result() == x
            assert starts[x] == 1, x
        else:  # it was running as its worker died
            assert isinstance(future.exception(), WorkerCrashedError), x
            assert starts[x] <= 1, x  # (it may have ended just before its outcome's record)
