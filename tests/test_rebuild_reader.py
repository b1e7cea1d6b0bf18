"""Process results are rebuilt by the thread that reads them, not by the lane's manager thread.

Outside tester 8a's A3 (tests/test_outsider_s8a.py) found one instance: a result slow to
unpickle held up the lane's other results and a timeout. These check the class: single calls,
batches (``Executor.map`` with ``chunksize``, ``hx.map``), failures to rebuild, a Ctrl-C during
a rebuild, and results with large arrays in shared memory (rebuilt at once: unread, they must
not stay in ``/dev/shm``; the conftest leak check fails a test that leaves one).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from typing import Any

import pytest

import hybridexec as hx
from hybridexec import Executor, SerializationError, TaskTimeoutError

from .helpers import RebuiltBy

LIMIT = 20.0
ORIGIN = os.getpid()

REBUILT_IN: list[int] = []  # the threads that rebuilt a tagged() result, in the parent
GATE = threading.Event()
GATE_SEEN: list[bool] = []
INTERRUPTS = [0]


def _rebuild_tagged(value: int) -> int:
    if os.getpid() == ORIGIN:
        REBUILT_IN.append(threading.get_ident())
    return value


def tagged(value: int) -> Any:  # an int, once rebuilt in the parent: says which thread did
    return RebuiltBy(_rebuild_tagged, value)


def _rebuild_after_gate(value: int) -> int:
    if os.getpid() == ORIGIN:
        GATE_SEEN.append(GATE.wait(5.0))
    return value


def gated(value: int) -> Any:  # an int, once rebuilt in the parent (after GATE, at most 5 s)
    return RebuiltBy(_rebuild_after_gate, value)


def _rebuild_interrupted(value: int) -> int:
    if os.getpid() == ORIGIN and INTERRUPTS[0] == 0:
        INTERRUPTS[0] += 1
        raise KeyboardInterrupt
    return value


def interrupted_once() -> Any:  # 7, once rebuilt in the parent
    return RebuiltBy(_rebuild_interrupted, 7)


def _refuse(_: int) -> int:
    if os.getpid() == ORIGIN:
        raise ValueError("not here")
    return 0


def refused() -> Any:
    return RebuiltBy(_refuse, 0)


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def big_array(n: int) -> Any:
    import numpy as np

    return np.ones(n, dtype=np.uint8)


@pytest.fixture(autouse=True)
def _reset() -> Any:
    REBUILT_IN.clear()
    GATE.clear()
    GATE_SEEN.clear()
    INTERRUPTS[0] = 0
    yield
    GATE.set()


def test_a_single_result_is_rebuilt_by_the_thread_that_reads_it() -> None:
    with Executor(max_processes=1) as ex:
        future = ex.options(kind="process").submit(tagged, 3)
        cf.wait([future], timeout=LIMIT)  # done: the manager settled it, without rebuilding
        assert future.done()
        assert REBUILT_IN == []
        reader: list[int] = []

        def read() -> None:
            reader.append(threading.get_ident())
            assert future.result() == 3

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(LIMIT)
        assert reader == REBUILT_IN  # once, there
        assert future.result() == 3
        assert future.exception() is None
        assert reader == REBUILT_IN  # not again


@pytest.mark.parametrize("how", ["executor-map", "hx-map"])
def test_a_batch_slow_to_rebuild_holds_up_no_timeout_of_the_lane(how: str) -> None:
    with Executor(max_processes=2) as ex:
        run = ex.options(kind="process")
        assert [f.result(timeout=LIMIT) for f in [run.submit(nap, 0.0) for _ in range(2)]]
        late = ex.options(kind="process", timeout=0.5).submit(nap, 60.0)
        late.add_done_callback(lambda _: GATE.set())
        if how == "executor-map":
            results = run.map(gated, range(4), chunksize=4)  # one batch
            with pytest.raises(TaskTimeoutError):
                late.result(timeout=LIMIT)
            assert list(results) == [0, 1, 2, 3]
        else:
            values = hx.map(gated, range(4), executor=ex, kind="process", chunksize=4)
            assert values == [0, 1, 2, 3]
            with pytest.raises(TaskTimeoutError):
                late.result(timeout=LIMIT)
    assert GATE_SEEN
    assert all(GATE_SEEN)


def test_a_result_that_will_not_rebuild_fails_with_serialization_error_on_every_read() -> None:
    with Executor(max_processes=1) as ex:
        future = ex.options(kind="process").submit(refused)
        seen: list[BaseException | None] = []
        future.add_done_callback(lambda f: seen.append(f.exception()))
        with pytest.raises(SerializationError, match="could not be unpickled"):
            future.result(timeout=LIMIT)
        err = future.exception()
        assert isinstance(err, SerializationError)
        assert isinstance(err.__cause__, ValueError)
        # The worker lives on: the next call runs.
        assert ex.options(kind="process").submit(nap, 0.0).result(timeout=LIMIT) == 0.0
        ex.shutdown(wait=True)  # the callbacks have run
        assert seen == [err]


def test_a_batch_item_that_will_not_rebuild_fails_with_serialization_error() -> None:
    with Executor(max_processes=1) as ex:
        outcomes = hx.map(
            _refused_or_value, range(6), executor=ex, kind="process", chunksize=3,
            return_exceptions=True,
        )  # fmt: skip
    assert isinstance(outcomes[2], SerializationError)
    # The batch that held it fails whole, as when the manager rebuilt it; the others are kept.
    assert outcomes[-1] == 5
    assert all(o == x or isinstance(o, SerializationError) for x, o in enumerate(outcomes))


def _refused_or_value(x: int) -> Any:
    return refused() if x == 2 else tagged(x)


def test_a_ctrl_c_while_rebuilding_leaves_the_result_to_the_next_read() -> None:
    with Executor(max_processes=1) as ex:
        future = ex.options(kind="process").submit(interrupted_once)
        cf.wait([future], timeout=LIMIT)
        with pytest.raises(KeyboardInterrupt):
            future.result()
        assert future.result() == 7
        assert future.exception() is None


def test_unread_results_in_shared_memory_are_freed() -> None:
    pytest.importorskip("numpy")
    with Executor(max_processes=1) as ex:
        futures = [ex.options(kind="process").submit(big_array, 8 << 20) for _ in range(3)]
        done, _ = cf.wait(futures, timeout=LIMIT)
        assert len(done) == 3
        assert "state=finished" in repr(futures[0])
        assert futures[0].result().nbytes == 8 << 20
        del futures, done  # two never read: the leak check (conftest) looks in /dev/shm


def test_repr_of_a_result_not_yet_rebuilt_runs_no_user_code() -> None:
    with Executor(max_processes=1) as ex:
        future = ex.options(kind="process").submit(tagged, 1)
        cf.wait([future], timeout=LIMIT)
        assert "state=finished" in repr(future)
        assert "kind=process" in repr(future)
        assert REBUILT_IN == []
        assert future.result() == 1


def test_a_read_waits_one_timeout_for_done_and_another_readers_rebuild_together() -> None:
    """``result(timeout)`` of a future rebuilt meanwhile by another thread: the wait for done
    and the wait for that rebuild share the one timeout (they were two: up to twice it)."""
    from hybridexec._futures import Deferred, Future

    deferred = Deferred(lambda data: (True, data), 5)
    deferred.lock.acquire()  # another reader is rebuilding it
    try:
        # Deterministic form: a wait that began 10 s ago has nothing left of a 5 s timeout.
        with pytest.raises(cf.TimeoutError):
            deferred.get(5.0, since=time.monotonic() - 10.0)
        # Through Future.result: done 0.6 s in, then the rebuild is never let go of.
        future: Future[int] = Future()
        timer = threading.Timer(0.6, future.settle, (True, deferred))
        timer.start()
        began = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            future.result(timeout=1.0)
        waited = time.monotonic() - began
        timer.join()
        assert waited < 1.45, f"waited {waited:.2f} s for a 1 s timeout (two waits: 1.6 s)"
        assert future.done()
    finally:
        deferred.lock.release()
    assert future.result(timeout=0) == 5  # rebuilt now the other reader let go
