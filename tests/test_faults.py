"""Killable, crash-proof workers: the crash matrix, timeouts, cancel, recycling, no orphans."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import hybridexec
from hybridexec import (
    Executor,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
)

from . import helpers
from .conftest import process_gone, wait_until


def _still_usable(ex: Executor) -> None:
    lane = ex.options(kind="process")
    assert [f.result(timeout=30) for f in [lane.submit(helpers.square, i) for i in range(4)]] == [
        0,
        1,
        4,
        9,
    ]


# ---- the crash matrix: each ends in a precise error on one future ---------------------------


def _check_crash(
    ex: Executor, error: type[BaseException], fn: Callable[..., Any], *args: Any
) -> BaseException:
    fut = ex.options(kind="process").submit(fn, *args)
    with pytest.raises(error) as info:
        fut.result(timeout=30)
    _still_usable(ex)
    return info.value


def test_crash_arguments_fail_to_pickle(ex: Executor) -> None:
    err = _check_crash(ex, SerializationError, helpers.identity, helpers.Unpicklable())
    assert "refuses to be pickled" in str(err)


def test_crash_arguments_fail_to_unpickle_in_worker(ex: Executor) -> None:
    err = _check_crash(ex, SerializationError, helpers.identity, helpers.FailsToUnpickle())
    assert "could not unpickle the task" in str(err)


def test_crash_exception_in_call(ex: Executor) -> None:
    err = _check_crash(ex, ValueError, helpers.raise_value_error, "inside")
    assert isinstance(err.__cause__, hybridexec.RemoteTraceback)


def test_crash_result_fails_to_pickle(ex: Executor) -> None:
    pids_before = set(ex.worker_pids)
    err = _check_crash(ex, SerializationError, helpers.return_unpicklable)
    assert "result could not be pickled" in str(err)
    assert ex.stats()["process_lane"]["crashes"] == 0
    assert pids_before <= set(ex.worker_pids) or not pids_before


def test_crash_result_fails_to_unpickle_in_parent(ex: Executor) -> None:
    err = _check_crash(ex, SerializationError, helpers.return_fails_to_unpickle_in, os.getpid())
    assert "could not be unpickled" in str(err)


def test_crash_segfault(ex: Executor) -> None:
    err = _check_crash(ex, WorkerCrashedError, helpers.segfault)
    assert isinstance(err, WorkerCrashedError)
    assert err.signal == signal.SIGSEGV
    assert err.exitcode == -signal.SIGSEGV


def test_crash_os_exit(ex: Executor) -> None:
    err = _check_crash(ex, WorkerCrashedError, helpers.exit_now, 3)
    assert isinstance(err, WorkerCrashedError)
    assert err.exitcode == 3
    assert err.signal is None
    assert isinstance(err, concurrent.futures.process.BrokenProcessPool)


def test_crash_sigkill_from_outside(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(helpers.sleep_then, 30)
    assert wait_until(lambda: fut.running() and ex.worker_pids, 30)
    os.kill(ex.worker_pids[0], signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="memory may have run out") as info:
        fut.result(timeout=30)
    assert info.value.signal == signal.SIGKILL
    assert info.value.pid is not None
    _still_usable(ex)


def test_one_crash_fails_only_its_own_task(ex: Executor) -> None:
    lane = ex.options(kind="process")
    futures = [lane.submit(helpers.exit_on, i, 25) for i in range(50)]
    results = []
    for i, fut in enumerate(futures):
        if i == 25:
            with pytest.raises(WorkerCrashedError):
                fut.result(timeout=60)
        else:
            results.append(fut.result(timeout=60))
    assert results == [i for i in range(50) if i != 25]


def test_crash_inside_a_batch_fails_only_the_culprit(ex: Executor) -> None:
    results = ex.options(kind="process").map(helpers.exit_on, range(40), [25] * 40, chunksize=10)
    got = [next(results) for _ in range(25)]
    with pytest.raises(WorkerCrashedError):
        next(results)
    assert got == list(range(25))  # items 20-24 shared the culprit's batch and still returned


def test_crash_error_pickles() -> None:
    import pickle

    err = WorkerCrashedError("died", exitcode=-9, pid=123)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.exitcode, copy.signal, copy.pid, str(copy)) == (-9, signal.SIGKILL, 123, "died")


# ---- timeouts ------------------------------------------------------------------------------


def test_timeout_kills_sleeping_process_task(ex: Executor) -> None:
    fut = ex.options(timeout=0.5).submit(helpers.sleep_then, 60)
    assert fut.kind == "process"
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=30)
    assert time.monotonic() - started < 5.0  # figures are measured by `make bench`
    assert isinstance(fut.exception(), TimeoutError)
    assert ex.stats()["process_lane"]["kills"] == 1
    _still_usable(ex)


def test_timeout_kills_task_holding_the_gil_in_c(ex: Executor) -> None:
    fut = ex.options(timeout=0.5).submit(helpers.catastrophic_regex, 40)
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=30)
    _still_usable(ex)


def test_timeout_kills_whole_process_tree(ex: Executor, tmp_path: Any) -> None:
    fut = ex.options(timeout=1.0).submit(helpers.spawn_grandchild_and_sleep, 60)
    assert wait_until(lambda: fut.running() and ex.worker_pids, 30)
    worker = psutil.Process(ex.worker_pids[0])
    assert wait_until(lambda: worker.children(), 30)
    grandchild = worker.children()[0]
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=30)
    assert wait_until(lambda: process_gone(grandchild), 10)


def _gone(proc: psutil.Process) -> bool:
    return process_gone(proc)


def test_task_decorator_timeout(ex: Executor) -> None:
    slow = hybridexec.task(timeout=0.3)(helpers.make_sleeper())
    fut = ex.submit(slow, 30)
    assert fut.kind == "process"
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=30)


def test_map_timeout_is_per_item(ex: Executor, tmp_path: Path) -> None:
    # A timeout counts a worker's start-up (docs/timeouts-and-killing.md): under a CPU hog a
    # cold worker importing this module took longer than the 0.5 s. Both workers start first,
    # each holding a call until both are up.
    gate = tmp_path / "go"
    process = ex.options(kind="process")
    warm = [process.submit(helpers.gated, str(gate), n) for n in range(2)]
    lane = ex._router.processes
    assert wait_until(lambda: lane.stats["workers_started"] == 2, 30)
    gate.touch()
    assert [f.result(timeout=30) for f in warm] == [0, 1]
    results = hybridexec.imap(
        helpers.sleep_then, [0.0, 30.0, 0.0], kind="process", timeout=0.5, executor=ex
    )
    assert next(results) is None
    with pytest.raises(TaskTimeoutError):
        next(results)


def test_timeout_with_unpicklable_task_runs_on_a_thread(ex: Executor) -> None:
    lock = threading.Lock()
    fut = ex.options(timeout=5).submit(lambda: lock.locked())
    assert fut.kind == "thread"
    assert fut.result(timeout=30) is False


def test_thread_timeout_fails_future_and_interrupts_thread(ex: Executor) -> None:
    fut = ex.options(kind="thread", timeout=0.2).submit(helpers.spin, 30)
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=10)
    # The thread was interrupted at a bytecode boundary: it finishes long before 30 s.
    assert wait_until(
        lambda: (
            not any(
                t.name.startswith("hybridexec-thread") and _busy(t) for t in threading.enumerate()
            )
        ),
        10,
    )


def _busy(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "spin":
            return True
        frame = frame.f_back
    return False


def test_timeout_must_be_positive(ex: Executor) -> None:
    with pytest.raises(ValueError, match="positive"):
        ex.options(timeout=0)
    with pytest.raises(TypeError):
        ex.options(timeout="1")  # type: ignore[arg-type]


# ---- cancel that stops running work ---------------------------------------------------------


def test_cancel_running_process_task_kills_worker(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(helpers.sleep_then, 60)
    assert wait_until(lambda: fut.running() and ex.worker_pids, 30)
    worker = psutil.Process(ex.worker_pids[0])
    assert fut.cancel() is True
    assert fut.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result()
    assert wait_until(lambda: _gone(worker), 10)
    _still_usable(ex)


def test_cancel_running_thread_task_returns_false(ex: Executor) -> None:
    event = threading.Event()
    fut = ex.options(kind="thread").submit(event.wait, 30)
    assert wait_until(fut.running, 10)
    assert fut.cancel() is False
    event.set()
    assert fut.result(timeout=10) is True


def test_asyncio_cancellation_stops_process_work(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(helpers.sleep_then, 60)

    async def main() -> None:
        wrapped = asyncio.wrap_future(fut)
        assert await asyncio.to_thread(wait_until, lambda: fut.running(), 30)
        wrapped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wrapped

    asyncio.run(main())
    assert fut.cancelled()
    assert wait_until(lambda: ex.stats()["process_lane"]["kills"] == 1, 10)


# ---- recycling and explicit kills -----------------------------------------------------------


def test_max_tasks_per_child_replaces_workers() -> None:
    with Executor(max_processes=1, max_tasks_per_child=2) as ex:
        lane = ex.options(kind="process")
        pids = [lane.submit(helpers.pid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3
    assert all(pids.count(p) == 2 for p in set(pids))


def test_max_memory_per_child_replaces_big_workers() -> None:
    with Executor(max_processes=1, max_memory_per_child=200 << 20) as ex:
        lane = ex.options(kind="process")
        big = lane.submit(helpers.rss_grow, 300).result(timeout=30)
        after = lane.submit(helpers.pid).result(timeout=30)
        small = lane.submit(helpers.pid).result(timeout=30)
    assert big != after
    assert after == small


def test_idle_timeout_lets_workers_go_and_restarts_lazily() -> None:
    with Executor(max_processes=1, idle_timeout=0.1) as ex:
        lane = ex.options(kind="process")
        first = lane.submit(helpers.pid).result(timeout=30)
        assert wait_until(lambda: not ex.worker_pids, 10)
        second = lane.submit(helpers.pid).result(timeout=30)
    assert first != second


def test_kill_workers_cancels_running_tasks() -> None:
    ex = Executor(max_processes=2)
    lane = ex.options(kind="process")
    running = [lane.submit(helpers.sleep_then, 60) for _ in range(2)]
    queued = lane.submit(helpers.square, 2)
    assert wait_until(lambda: all(f.running() for f in running), 30)
    started = time.monotonic()
    ex.kill_workers()
    assert all(f.cancelled() for f in running)
    assert queued.cancelled()
    ex.shutdown(wait=True)
    assert time.monotonic() - started < 5
    with pytest.raises(RuntimeError):
        ex.submit(helpers.square, 1)


def test_terminate_workers_stops_everything() -> None:
    ex = Executor(max_processes=1)
    fut = ex.options(kind="process").submit(helpers.sleep_then, 60)
    assert wait_until(fut.running, 30)
    ex.terminate_workers()
    ex.shutdown(wait=True)
    assert fut.cancelled()


def test_shutdown_cancel_without_wait_returns_at_once_while_tasks_run(tmp_path: Path) -> None:
    # No clock: the task ends only when the test opens its gate, after shutdown returned.
    gate = tmp_path / "go"
    ex = Executor(max_processes=1)
    try:
        fut = ex.options(kind="process").submit(helpers.gated, str(gate), "ok")
        assert wait_until(fut.running, 30)
        ex.shutdown(wait=False, cancel_futures=True)
        assert not fut.done()
        gate.touch()
        assert fut.result(timeout=30) == "ok"
    finally:
        gate.touch()
        ex.shutdown(wait=True)


def test_keyboard_interrupt_during_map_cancels_the_rest() -> None:
    main = threading.main_thread().ident
    assert main is not None
    assert threading.get_ident() == main
    with Executor(max_processes=2) as ex:
        timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                hybridexec.map(helpers.sleep_then, [30.0] * 6, kind="process", executor=ex)
        finally:
            timer.join()
        # The running tasks were killed, the queued ones cancelled: shutdown does not wait 30 s.
        started = time.monotonic()
    assert time.monotonic() - started < 10


# ---- no orphans -----------------------------------------------------------------------------

ORPHAN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import hybridexec
    from tests import helpers

    ex = hybridexec.Executor(max_processes=2, start_method={method!r})
    lane = ex.options(kind="process")
    futures = [lane.submit(helpers.spawn_grandchild_and_sleep, 60) for _ in range(2)]
    while not all(f.running() for f in futures) or len(ex.worker_pids) < 2:
        time.sleep(0.01)
    print(" ".join(map(str, ex.worker_pids)), flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_workers_die_with_their_parent(method: str) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT.format(root=root, method=method)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        workers = [psutil.Process(int(p)) for p in line.split()]
        assert len(workers) == 2
        assert wait_until(lambda: all(w.children() for w in workers), 30)
        family = workers + [c for w in workers for c in w.children()]
        proc.kill()
        proc.wait(10)
        killed = time.monotonic()
        assert wait_until(lambda: all(_gone(p) for p in family), 10), [
            (p.pid, _gone(p)) for p in family
        ]
        assert time.monotonic() - killed < 2.0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_segments_of_a_crashed_worker_are_removed_at_once(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(helpers.leave_segment_and_exit)
    with pytest.raises(WorkerCrashedError) as info:
        fut.result(timeout=30)
    prefix = f"hx{info.value.pid}_"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
