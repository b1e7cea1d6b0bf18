"""Outside tester 11d: round 11's changes (exceptions rebuilt by their readers, process actors'
answers, interpreter exit, map over executor views), each case a defect found on main.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

import pytest

import hybridexec as hx

# The gated exception of the lead's test (one gate for both files: tests run one at a time).
from .test_exception_rebuild import GATE, REBUILT_IN, GatedError

pytestmark = pytest.mark.timeout(60)


class Counter:
    """A process actor whose ``fail`` raises a ``GatedError``."""

    def __init__(self) -> None:
        self.n = 0

    def fail(self, origin_pid: int) -> None:
        raise GatedError(origin_pid, "a tell failed")

    def inc(self) -> int:
        self.n += 1
        return self.n


class Holder:
    """A process actor that owns a shared array for good and hands out its handle."""

    def __init__(self) -> None:
        import numpy as np

        self.shared = hx.SharedArray.from_numpy(np.arange(10.0))

    def get(self) -> Any:
        return self.shared


def _rebuild_part(origin_pid: int) -> GatedPart:
    if os.getpid() == origin_pid:
        REBUILT_IN.append(threading.current_thread().name)
        assert GATE.wait(30), "the test never opened the gate"
    return GatedPart(origin_pid)


class GatedPart:
    """A part of a result that unpickles in the test's process only once ``GATE`` is open."""

    def __init__(self, origin_pid: int) -> None:
        self.origin_pid = origin_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_part, (self.origin_pid,))


def large_array_and_gated_part(origin_pid: int) -> tuple[Any, GatedPart]:
    import numpy as np

    return np.ones(2_000_000), GatedPart(origin_pid)


def square(x: int) -> int:
    return x * x


@pytest.mark.xfail(
    strict=True,
    reason="known limitation (docs/actors.md): a failed tell's exception is rebuilt, and "
    "on_error run, on the supervisor thread",
)
def test_d1_a_failed_tells_exception_is_not_rebuilt_by_the_actors_supervisor() -> None:
    """D1: a tell's exception that runs user code to unpickle holds up every later answer.

    The supervisor thread rebuilds a failed tell's exception itself (for ``on_error``), so
    one slow to rebuild delays the actor's answers, and one that asks the same actor waits
    for good: the C3b hang of round 11, by a tell instead of an ask.
    """
    GATE.clear()
    REBUILT_IN.clear()
    ref = hx.spawn(Counter, kind="process", on_error=lambda exc: None)
    try:
        assert ref.ask(Counter.inc).result(timeout=20) == 1
        ref.tell(Counter.fail, os.getpid())
        answer = ref.ask(Counter.inc)
        try:
            assert answer.result(timeout=5) == 2  # the gate is still closed
        finally:
            GATE.set()
    finally:
        GATE.set()
        ref.stop()
        ref.join(20)


def test_d2_an_actors_own_shared_array_survives_an_ask_that_returned_it() -> None:
    """D2: a process actor's long-lived SharedArray, returned by an ask, is handed over.

    The asker becomes its owner: once it drops the handle the segment is unlinked while the
    actor still holds it, and the next ask returning it fails with SerializationError (it
    passed before 20d7111, which hands over every shared object an answer holds, not only
    those the handler made).
    """
    pytest.importorskip("numpy")
    ref = hx.spawn(Holder, kind="process")
    try:
        first = ref.ask(Holder.get).result(timeout=20)
        assert first.array.sum() == 45.0
        del first
        gc.collect()
        again = ref.ask(Holder.get).result(timeout=20)
        assert again.array.sum() == 45.0
        del again
    finally:
        ref.stop()
        ref.join(20)


@pytest.mark.xfail(
    strict=True,
    reason="known limitation (docs/hostile-input.md): a result holding arrays in shared "
    "memory is rebuilt as it arrives (unpickling it is what frees the segments)",
)
def test_d3_a_result_with_a_large_array_and_user_code_to_unpickle_holds_up_no_other_task() -> None:
    """D3: a result holding a large array and an object whose unpickling runs user code.

    Its array came through shared memory, so the lane's manager thread rebuilds the whole
    result at once (``_rebuild._at_once``), the user's ``__reduce__`` included: one slow to
    rebuild holds up every other result of the lane (one that asks the same executor, for
    good), the C3 hold-up round 11 fixed for results and exceptions without such arrays.
    A process actor's answer does the same in its supervisor thread (since 20d7111 large
    arrays of answers come through shared memory too).
    """
    pytest.importorskip("numpy")
    GATE.clear()
    REBUILT_IN.clear()
    try:
        with hx.Executor(kind="process", max_processes=2) as ex:
            big = ex.submit(large_array_and_gated_part, os.getpid())
            deadline = time.monotonic() + 20
            while not REBUILT_IN and not big.done() and time.monotonic() < deadline:
                time.sleep(0.01)  # until the rebuild began (by whichever thread)
            other = ex.submit(square, 7)
            try:
                assert other.result(timeout=5) == 49  # the gate is still closed
            finally:
                GATE.set()
            assert big.result(timeout=30)[0].sum() == 2_000_000
    finally:
        GATE.set()
