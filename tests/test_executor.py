"""The concurrent.futures contract, for both lanes and every start method."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import hybridexec
from hybridexec import Executor, _faults

from . import guarantee_scripts, helpers, thread_faults
from .conftest import wait_until

KINDS = ["thread", "process"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


LANES = ["thread", "process-forkserver", "process-spawn", "process-fork"]


@pytest.fixture(params=LANES)
def lane_kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def lane(lane_kind: str) -> Iterator[hybridexec.ExecutorOptions]:
    kind, _, start_method = lane_kind.partition("-")
    ex = Executor(max_processes=2, start_method=start_method or None)
    try:
        yield ex.options(kind=kind)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_submit_returns_result_and_records_kind(
    lane: hybridexec.ExecutorOptions, lane_kind: str
) -> None:
    kind = lane_kind.partition("-")[0]
    fut = lane.submit(helpers.add, 2, y=3)
    assert fut.result(timeout=30) == 5
    assert fut.kind == kind
    assert isinstance(fut, concurrent.futures.Future)


def test_exception_reaches_future_with_remote_traceback(
    lane: hybridexec.ExecutorOptions, lane_kind: str
) -> None:
    kind = lane_kind.partition("-")[0]
    fut = lane.submit(helpers.raise_value_error, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        fut.result(timeout=30)
    if kind == "process":
        cause = info.value.__cause__
        assert isinstance(cause, hybridexec.RemoteTraceback)
        assert "raise_value_error" in str(cause)


def test_map_keeps_order_with_multiple_iterables(lane: hybridexec.ExecutorOptions) -> None:
    assert list(lane.map(helpers.add, range(10), range(100, 105))) == [
        100,
        102,
        104,
        106,
        108,
    ]


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_map_chunksize_gives_same_results(lane: hybridexec.ExecutorOptions, chunksize: int) -> None:
    assert list(lane.map(helpers.square, range(20), chunksize=chunksize)) == [
        x * x for x in range(20)
    ]


def test_map_raises_item_exception_in_place(lane: hybridexec.ExecutorOptions) -> None:
    results = lane.map(helpers.raise_value_error, ["a", "b"])
    with pytest.raises(ValueError, match="a"):
        next(results)


def test_map_timeout_raises_timeout_error(executor: Executor) -> None:
    results = executor.map(helpers.sleep_then, [5.0], timeout=0.05)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(results)


def test_closures_and_lambdas_run_in_processes(executor: Executor) -> None:
    offset = 10
    fut = executor.options(kind="process").submit(lambda x: x + offset, 5)
    assert fut.result(timeout=30) == 15


def test_processes_really_run_elsewhere(executor: Executor) -> None:
    import os

    fut = executor.options(kind="process").submit(helpers.pid)
    assert fut.result(timeout=30) != os.getpid()


def test_as_completed_and_wait(lane: hybridexec.ExecutorOptions) -> None:
    futures = [lane.submit(helpers.square, i) for i in range(8)]
    done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=30)}
    assert done == {i * i for i in range(8)}
    finished, not_done = concurrent.futures.wait(futures, timeout=30)
    assert len(finished) == 8
    assert not not_done


def test_asyncio_wrap_future_and_run_in_executor(kind: str) -> None:
    with Executor(max_processes=1) as ex:

        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            a = await asyncio.wrap_future(ex.options(kind=kind).submit(helpers.square, 3))
            b = await loop.run_in_executor(ex, helpers.square, 4)
            return [a, b]

        assert asyncio.run(main()) == [9, 16]


def test_context_manager_waits_for_work() -> None:
    with Executor(max_processes=1) as ex:
        futures = [ex.options(kind=k).submit(helpers.sleep_then, 0.05, k) for k in KINDS]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == KINDS


def test_submit_after_shutdown_raises_runtime_error(kind: str) -> None:
    ex = Executor(max_processes=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.options(kind=kind).submit(helpers.square, 2)
    with pytest.raises(RuntimeError):
        hybridexec.map(helpers.square, [1], executor=ex)


def test_shutdown_cancel_futures_cancels_pending(kind: str) -> None:
    ex = Executor(max_processes=1, max_threads=1)
    lane = ex.options(kind=kind)
    first = lane.submit(helpers.sleep_then, 0.3, "first")
    assert wait_until(first.running, 30)
    rest = [lane.submit(helpers.square, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "first"
    assert all(f.cancelled() for f in rest)


def test_shutdown_without_wait_returns_at_once(kind: str, tmp_path: Any) -> None:
    # No clock: the task ends only when the test opens its gate, after shutdown returned.
    gate = tmp_path / "go"
    ex = Executor(max_processes=1, max_threads=1)
    try:
        fut = ex.options(kind=kind).submit(helpers.gated, str(gate), "done")
        ex.shutdown(wait=False)
        assert not fut.done()
        gate.touch()
        assert fut.result(timeout=30) == "done"
    finally:
        gate.touch()
        ex.shutdown(wait=True)


def test_pending_task_cancels_as_in_stdlib(kind: str) -> None:
    with Executor(max_processes=1, max_threads=1) as ex:
        lane = ex.options(kind=kind)
        blocker = lane.submit(helpers.sleep_then, 0.2)
        queued = lane.submit(helpers.square, 3)
        assert queued.cancel()
        assert queued.cancelled()
        blocker.result(timeout=30)
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result()


def test_many_tasks_all_return(kind: str) -> None:
    with Executor(max_processes=2) as ex:
        futures = [ex.options(kind=kind).submit(helpers.square, i) for i in range(300)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(300)]


def test_submits_from_many_threads(kind: str) -> None:
    results: list[int] = []
    lock = threading.Lock()
    with Executor(max_processes=2) as ex:
        lane = ex.options(kind=kind)

        def producer(base: int) -> None:
            futures = [lane.submit(helpers.square, base + i) for i in range(25)]
            values = [f.result(timeout=60) for f in futures]
            with lock:
                results.extend(values)

        threads = [threading.Thread(target=producer, args=(100 * n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == sorted((100 * n + i) ** 2 for n in range(6) for i in range(25))


def test_initializer_runs_in_every_worker() -> None:
    with Executor(max_processes=1, initializer=helpers.set_marker, initargs=("ready",)) as ex:
        assert ex.options(kind="process").submit(helpers.get_marker).result(timeout=30) == "ready"
        assert ex.options(kind="thread").submit(helpers.get_marker).result(timeout=30) == "ready"


def test_failing_initializer_fails_tasks_precisely() -> None:
    with Executor(max_processes=1, initializer=helpers.raise_value_error) as ex:
        fut = ex.options(kind="process").submit(helpers.square, 2)
        with pytest.raises(hybridexec.BrokenExecutorError, match="initializer") as info:
            fut.result(timeout=30)
        assert isinstance(info.value.__cause__, hybridexec.RemoteTraceback)


def test_failing_initializer_breaks_the_process_lane_as_the_stdlib_does() -> None:
    with Executor(max_processes=1, kind="process", initializer=helpers.raise_value_error) as ex:
        with pytest.raises(hybridexec.BrokenExecutorError):
            ex.submit(helpers.square, 2).result(timeout=30)
        assert wait_until(lambda: ex._broken, 10)  # what ProcessPoolExecutor users read
        with pytest.raises(hybridexec.BrokenExecutorError):
            ex.submit(helpers.square, 3).result(timeout=30)


def test_workers_are_reused(executor: Executor) -> None:
    lane = executor.options(kind="process")
    pids = {lane.submit(helpers.pid).result(timeout=30) for _ in range(20)}
    assert len(pids) <= 2
    assert executor.stats()["process_lane"]["workers_started"] <= 2


def test_thread_lane_grows_for_blocking_work() -> None:
    with Executor() as ex:
        lane = ex.options(kind="thread")
        barrier = threading.Barrier(100, timeout=30)
        futures = [lane.submit(barrier.wait) for _ in range(100)]
        # All 100 tasks must run at once to pass the barrier: far beyond cpu + 4 threads.
        for f in futures:
            f.result(timeout=30)


def test_thread_lane_shrinks_when_idle() -> None:
    with Executor(idle_timeout=0.05) as ex:
        lane = ex.options(kind="thread")
        for f in [lane.submit(helpers.sleep_then, 0.05) for _ in range(10)]:
            f.result(timeout=30)
        assert ex.stats()["threads"] >= 1
        assert wait_until(lambda: ex.stats()["threads"] == 0, 10)


def test_default_executor_functions() -> None:
    fut = hybridexec.submit(helpers.square, 7)
    assert fut.result(timeout=30) == 49
    assert hybridexec.map(helpers.square, range(5)) == [0, 1, 4, 9, 16]
    assert list(hybridexec.imap(helpers.square, iter(range(3)))) == [0, 1, 4]


def test_kind_hints_route_tasks(executor: Executor) -> None:
    cpu: Any = hybridexec.cpu_bound(helpers.make_cpu_task())
    io: Any = hybridexec.io_bound(helpers.make_io_task())
    assert executor.submit(cpu, 2).kind == "process"
    assert executor.submit(io, 2).kind == "thread"
    # An explicit kind at the call beats the hint.
    assert executor.options(kind="thread").submit(cpu, 2).kind == "thread"


def test_executor_dropped_without_shutdown_releases_its_workers() -> None:
    import gc

    ex = Executor(max_processes=1)
    assert ex.options(kind="process").submit(helpers.square, 3).result(timeout=30) == 9
    assert ex.submit(helpers.square, 4).result(timeout=30) == 16
    pids = ex.worker_pids
    assert pids
    del ex
    gc.collect()
    # The leak fixture checks that the worker, the manager and the threads all went.


MAIN_CLASS_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import hybridexec

class Point:
    def __init__(self, x):
        self.x = x

def shift(p):
    return Point(p.x + 1)

with hybridexec.Executor(max_processes=1) as ex:
    print(ex.options(kind="process").submit(shift, Point(41)).result(timeout=30).x)
"""


def test_main_module_classes_travel_when_main_has_no_file() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", MAIN_CLASS_SCRIPT.format(root=root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "42"


EXIT_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import hybridexec
from tests import helpers

fut = hybridexec.submit(helpers.sleep_then_write, 0.5, {path!r})
assert fut.kind == "process"
while not fut.running():
    time.sleep(0.005)
"""


def test_default_executor_finishes_running_work_at_exit(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "written"
    subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT.format(root=str(root), path=str(path))],
        timeout=60,
        check=True,
        cwd=root,
    )
    assert path.read_text() == "done"


# ---- issue 13: faults at the thread lane's points, a timer against done-callbacks --------------


@pytest.mark.parametrize("case", thread_faults.CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_thread_lane_fault_ends_each_task_once(
    executor: Executor, case: thread_faults.Case, timeout: float | None
) -> None:
    lane = executor.options(kind="thread", timeout=timeout)
    ends: list[object] = []
    second_callback = threading.Event()
    _faults.inject(case.point, case.fault())
    try:
        fut = lane.submit(helpers.square, 3)
        fut.add_done_callback(ends.append)
        fut.add_done_callback(lambda _f: second_callback.set())
        try:
            outcome: object = fut.result(timeout=10)
        except BaseException as exc:
            outcome = type(exc).__name__
    finally:
        _faults.clear()
    assert outcome == (9 if case.expect == "ok" else case.expect)
    assert second_callback.wait(10), "a done-callback after the faulty one never ran"
    # ends exactly once (I1); the first callback may be the one the fault hit
    assert len(ends) <= 1
    assert fut.done()
    # the lane still works (no thread lost)
    assert lane.submit(helpers.square, 4).result(timeout=10) == 16


def test_raising_done_callback_keeps_the_thread_lane_whole() -> None:
    with Executor(max_threads=1) as ex:
        lane = ex.options(kind="thread")
        for _ in range(3):
            fut = lane.submit(helpers.square, 2)
            fut.add_done_callback(lambda _f: (_ for _ in ()).throw(SystemExit(3)))
            assert fut.result(timeout=10) == 4
        assert lane.submit(helpers.square, 5).result(timeout=10) == 25
        assert ex.stats()["threads"] == 1


def test_deadline_after_the_call_never_reaches_callbacks(executor: Executor) -> None:
    # Many short timed tasks whose callbacks outlast the deadline: none may see a timeout.
    lane = executor.options(kind="thread", timeout=0.05)
    seen: list[str] = []
    futures = []
    for _ in range(5):
        fut = lane.submit(helpers.square, 2)
        fut.add_done_callback(lambda _f: time.sleep(0.1))  # outlasts the deadline
        fut.add_done_callback(lambda f: seen.append(repr(f.result())))
        futures.append(fut)
    assert [f.result(timeout=10) for f in futures] == [4] * 5
    assert wait_until(lambda: len(seen) == 5, 10), seen


@pytest.mark.parametrize("kind", ["thread", "auto"])
def test_thread_task_releases_callable_args_and_result(executor: Executor, kind: str) -> None:
    arg = guarantee_scripts.Dummy(1)
    arg_ref, method_ref = weakref.ref(arg), weakref.ref(arg)
    assert executor.options(kind=kind).submit(guarantee_scripts.value_of, arg).result(30) == 1
    method = executor.options(kind=kind).submit(arg.method)  # a bound method holds its object
    assert method.result(timeout=30) == 2
    del arg
    assert wait_until(lambda: gc.collect() is not None and arg_ref() is None, 2)
    assert method_ref() is None
    made = executor.options(kind=kind).submit(guarantee_scripts.make_dummy, 3)
    result_ref = weakref.ref(made.result(timeout=30))
    del made
    assert wait_until(lambda: gc.collect() is not None and result_ref() is None, 2)


def test_timed_thread_task_releases_its_future_before_the_deadline(executor: Executor) -> None:
    # The timer keeps a record of each deadline until it passes (an hour here).
    fut = executor.options(kind="thread", timeout=3600).submit(guarantee_scripts.make_dummy, 1)
    ref = weakref.ref(fut.result(timeout=30))
    fut_ref = weakref.ref(fut)
    del fut
    assert wait_until(lambda: gc.collect() is not None and fut_ref() is None, 2)
    assert ref() is None


# ---- issue 14: exit parity for executors left open or dropped ---------------------------------

OPEN_AT_EXIT = """
import os, sys, threading, time
sys.path.insert(0, {root!r})
import hybridexec as hx
from tests import helpers

def say(x):
    time.sleep(0.2)
    os.write(1, f"{{x}}\\n".encode())  # one write: lines from parallel threads never mix

{body}
"""

EXIT_CASES = {
    # Three tasks on one thread: two are still queued when the script ends.
    "thread-left-open": "ex = hx.Executor(max_workers=1, kind='thread')\n"
    "for x in 'abc': ex.submit(say, x)",
    # Dropped at once: its lane still finishes what was submitted.
    "thread-dropped": "for x in 'abc': hx.Executor(max_workers=1, kind='thread').submit(say, x)",
    # shutdown(wait=False) lets queued work run, as the standard library does.
    "thread-no-wait": "ex = hx.Executor(max_workers=1, kind='thread')\n"
    "for x in 'abc': ex.submit(say, x)\n"
    "ex.shutdown(wait=False)",
    # A process lane left open runs its queued work too (the first worker is still starting).
    "process-left-open": "ex = hx.Executor(max_processes=1, kind='process')\n"
    "for x in 'abc': ex.submit(say, x)",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(EXIT_CASES))
def test_work_submitted_before_exit_runs_to_completion(case: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = OPEN_AT_EXIT.format(root=str(root), body=EXIT_CASES[case])
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=root,
    )
    assert (out.returncode, sorted(out.stdout.split()), out.stderr) == (0, ["a", "b", "c"], "")


@pytest.mark.timeout(60)
def test_ctrl_c_does_not_wait_for_running_thread_work() -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = OPEN_AT_EXIT.format(
        root=str(root),
        body="ex = hx.Executor(kind='thread')\n"
        "fut = ex.submit(time.sleep, 60)\n"
        "while not fut.running(): time.sleep(0.005)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert rc in (130, -signal.SIGINT)
