"""What code written for concurrent.futures expects of an executor, through the public API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import hashlib
import itertools
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import hybridexec as hx
from tests import helpers
from tests.scenario import run_script


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


# ---- contextvars: each task runs in a copy of its submitter's context ------------------------

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def read_request_id(_: object = None) -> str:
    return REQUEST_ID.get()


def set_request_id(value: str) -> str:
    REQUEST_ID.set(value)
    return REQUEST_ID.get()


async def read_request_id_async() -> str:
    await asyncio.sleep(0)
    return REQUEST_ID.get()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["thread", "auto"])
def test_task_runs_in_a_copy_of_the_submitters_context(kind: str) -> None:
    with hx.Executor(kind=kind) as ex:
        token = REQUEST_ID.set("first")
        try:
            first = ex.submit(read_request_id)
            REQUEST_ID.set("second")  # after submit: the task keeps what it was given
            second = ex.submit(read_request_id)
            assert (first.result(timeout=10), second.result(timeout=10)) == ("first", "second")
        finally:
            REQUEST_ID.reset(token)
        assert ex.submit(read_request_id).result(timeout=10) == "unset"


@pytest.mark.timeout(30)
def test_what_a_task_sets_stays_in_its_copy() -> None:
    with hx.Executor(max_workers=1, kind="thread") as ex:
        assert ex.submit(set_request_id, "inside").result(timeout=10) == "inside"
        assert REQUEST_ID.get() == "unset"
        # The same lane thread runs the next task, which must not see the first one's value.
        assert ex.submit(read_request_id).result(timeout=10) == "unset"


@pytest.mark.timeout(30)
def test_map_batches_run_in_the_callers_context() -> None:
    with hx.Executor(kind="thread") as ex:
        token = REQUEST_ID.set("mapped")
        try:
            assert set(ex.map(read_request_id, range(20), chunksize=4)) == {"mapped"}
        finally:
            REQUEST_ID.reset(token)


@pytest.mark.timeout(30)
def test_a_thread_started_elsewhere_submits_its_own_context() -> None:
    with hx.Executor(kind="thread") as ex:
        results: list[str] = []

        def submitter() -> None:
            REQUEST_ID.set("from-a-thread")
            results.append(ex.submit(read_request_id).result(timeout=10))

        thread = threading.Thread(target=submitter)
        thread.start()
        thread.join(timeout=20)
        assert results == ["from-a-thread"]


@pytest.mark.timeout(30)
def test_async_function_runs_in_the_submitters_context() -> None:
    with hx.Executor() as ex:
        token = REQUEST_ID.set("async")
        try:
            fut = ex.submit(read_request_id_async)
        finally:
            REQUEST_ID.reset(token)
        assert fut.kind == "async"
        assert fut.result(timeout=10) == "async"


@pytest.mark.timeout(30)
def test_run_in_executor_sees_the_calling_tasks_context() -> None:
    async def main(ex: hx.Executor) -> list[str]:
        async def one(value: str) -> str:
            REQUEST_ID.set(value)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(ex, read_request_id)

        return list(await asyncio.gather(one("a"), one("b"), one("c")))

    with hx.Executor(kind="thread") as ex:
        assert asyncio.run(main(ex)) == ["a", "b", "c"]


@pytest.mark.timeout(60)
def test_the_context_does_not_cross_into_a_process() -> None:
    # Documented: a process task runs in the worker's own context.
    with hx.Executor(max_processes=1) as ex:
        token = REQUEST_ID.set("parent")
        try:
            fut = ex.options(kind="process").submit(read_request_id)
            assert fut.result(timeout=30) == "unset"
        finally:
            REQUEST_ID.reset(token)


# ---- constructor: ThreadPoolExecutor's thread_name_prefix and initializer failure --------------


def thread_name(_: object = None) -> str:
    return threading.current_thread().name


@pytest.mark.timeout(30)
def test_thread_name_prefix_names_the_lanes_threads() -> None:
    with hx.Executor(max_workers=2, kind="thread", thread_name_prefix="SpecialPool") as ex:
        names = set(ex.map(thread_name, range(8)))
    assert names
    assert all(name.startswith("SpecialPool_") for name in names), names
    with hx.Executor(kind="thread") as ex:
        assert ex.submit(thread_name).result(timeout=10).startswith("hybridexec-thread-")


def fail_to_initialize() -> None:
    raise ValueError("error in initializer")


LOGGED_BEFORE_BROKEN = """
import concurrent.futures, logging, logging.handlers, multiprocessing, queue
import hybridexec as hx


def fail_logging_to(log_queue):
    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(logging.handlers.QueueHandler(log_queue))
    logger.setLevel("CRITICAL")
    logger.propagate = False
    raise ValueError("error in initializer")


if __name__ == "__main__":
    found = 0
    for _ in range(5):
        log_queue = multiprocessing.get_context("forkserver").Queue()
        with hx.Executor(max_workers=1, kind="process", initializer=fail_logging_to,
                         initargs=(log_queue,)) as ex:
            try:
                ex.submit(abs, -2).result(timeout=30)
            except concurrent.futures.BrokenExecutor:
                pass
        messages = []
        try:
            while True:
                messages.append(log_queue.get_nowait().getMessage())
        except queue.Empty:
            pass
        found += any("ValueError: error in initializer" in m for m in messages)
    print(found, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_failed_worker_initializer_is_logged_before_the_pool_is_seen_broken(
    tmp_path: Any,
) -> None:
    # As CPython's FailingInitializerMixin reads it: once a call failed with BrokenExecutor,
    # the worker's log record is in the queue (it left a worker's feeder thread too late in
    # 12 of 30 tries with three CPU hogs; the worker now flushes it before any reply). In a
    # script: the queues' named semaphores stay with the scenario.
    done = run_script(tmp_path, LOGGED_BEFORE_BROKEN, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["5"], done.stderr[-2000:]


@pytest.mark.timeout(30)
def test_failing_thread_initializer_breaks_the_thread_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As ThreadPoolExecutor: queued work fails, then every submit raises BrokenExecutor.
    with hx.Executor(kind="thread") as fine:
        assert fine._broken is False
    queued = threading.Event()

    def fail_once_queued() -> None:  # all three are queued before the lane breaks (a
        queued.wait(10)  # submit after that raises, as in ThreadPoolExecutor)
        fail_to_initialize()

    with hx.Executor(max_workers=1, kind="thread", initializer=fail_once_queued) as ex:
        futures = [ex.submit(helpers.square, x) for x in range(3)]
        queued.set()
        for fut in futures:
            with pytest.raises(hx.BrokenExecutorError, match="initializer") as info:
                fut.result(timeout=10)
            assert isinstance(info.value, concurrent.futures.BrokenExecutor)
            assert isinstance(info.value.__cause__, ValueError)
        assert ex._broken
        with pytest.raises(concurrent.futures.BrokenExecutor):
            ex.submit(helpers.square, 2)
    assert any(r.name == "concurrent.futures" and r.levelname == "CRITICAL" for r in caplog.records)


# ---- Python 3.14/3.15 and free-threaded code paths, simulated ----------------------------------


class FakeForkServer:
    """A forkserver not started yet, with Python 3.15's ``on_error`` preload setting."""

    def __init__(self, on_error: str | None) -> None:
        self._forkserver_pid = None
        self._preload_modules = ["__main__", "mymodule"]
        if on_error is not None:
            self._preload_on_error = on_error
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def set_forkserver_preload(self, modules: list[str], **kwargs: str) -> None:
        self.calls.append((modules, kwargs))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("on_error", [None, "fail", "warn"])
def test_forkserver_preload_keeps_the_users_modules_and_on_error(
    monkeypatch: pytest.MonkeyPatch, on_error: str | None
) -> None:
    import multiprocessing.forkserver

    server = FakeForkServer(on_error)
    monkeypatch.setattr(multiprocessing.forkserver, "_forkserver", server)
    hx.Executor(start_method="forkserver").shutdown()
    expected = {} if on_error is None else {"on_error": on_error}
    assert server.calls == [(["__main__", "mymodule", "hybridexec._process._worker"], expected)]


@pytest.mark.timeout(30)
def test_segment_counts_its_numpy_views_without_getrefcount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python 3.14 borrows references where it can, so sys.getrefcount no longer tells whether
    # a mapping is still viewed; the placement pool must not reuse a segment under a view.
    pytest.importorskip("numpy")

    from hybridexec._shm import Segment

    monkeypatch.setattr(sys, "getrefcount", lambda _obj: 1)
    segment = Segment.create(4096)
    other: Segment | None = None
    try:
        assert not segment.has_views()
        view = segment.ndarray((512,), "float64")
        part = view[10:]  # a view derived from it keeps it, and so the count
        del view
        gc.collect()
        assert segment.has_views()
        del part
        gc.collect()
        assert not segment.has_views()
        other = Segment.attach(segment.name)  # the same mapping, reused by name
        seen = other.ndarray((512,), "float64")
        assert segment.has_views()  # counted per mapping, whichever handle made the view
        del seen
        gc.collect()
        assert not segment.has_views()
    finally:
        if other is not None:
            other.close()
        segment.close()


class Concurrency:
    """Counts the calls running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def spin(self, seconds: float) -> str:
        import time

        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        # CPU work that runs in parallel here too: the GIL is only simulated off (the fixture),
        # and pure-Python spinning threads would share the real one, each seen using about
        # half a CPU (read as waiting); hashing a large buffer releases the GIL.
        data = b"x" * (1 << 20)
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            hashlib.sha256(data).digest()
        with self.lock:
            self.now -= 1
        return threading.current_thread().name


def sleep_and_name(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return threading.current_thread().name


@pytest.fixture
def gil_off(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("gil_off")
def test_gil_off_cpu_work_runs_on_at_most_the_usable_cpus() -> None:
    from hybridexec._process import usable_cpus

    counter = Concurrency()
    with hx.Executor() as ex:
        names = {f.result(timeout=30) for f in [ex.submit(counter.spin, 0.02) for _ in range(24)]}
        assert ex.stats()["threads"] == 0  # the growing lane never started a thread
    assert counter.most <= usable_cpus()
    assert len(names) <= usable_cpus()
    assert all(name.startswith("hybridexec-cpu-thread-") for name in names), names


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("gil_off")
def test_gil_off_io_bound_calls_keep_the_growing_lane() -> None:
    barrier = threading.Barrier(16, timeout=20)

    @hx.io_bound
    def meet() -> str:
        barrier.wait()  # only passes if all 16 run at once
        return threading.current_thread().name

    with hx.Executor() as ex:
        names = [f.result(timeout=30) for f in [ex.submit(meet) for _ in range(16)]]
    assert all(name.startswith("hybridexec-thread-") for name in names), names


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("gil_off")
def test_gil_off_function_seen_to_wait_leaves_the_capped_lane() -> None:
    import time

    with hx.Executor() as ex:
        deadline = time.monotonic() + 20
        name = ex.submit(sleep_and_name, 0.01).result(timeout=30)
        assert name.startswith("hybridexec-cpu-thread-")  # not known yet: capped
        while not name.startswith("hybridexec-thread-"):
            assert time.monotonic() < deadline, "never learned that it waits"
            name = ex.submit(sleep_and_name, 0.01).result(timeout=30)


_LOCK: Any = None


def keep_lock(lock: Any) -> None:
    global _LOCK
    _LOCK = lock


def use_lock() -> bool:
    assert _LOCK is not None
    with _LOCK:
        return True


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_initargs_that_may_only_be_inherited_reach_the_worker(method: str) -> None:
    # As ProcessPoolExecutor does (tqdm passes its lock this way): pickled as the worker starts.
    import multiprocessing

    lock = multiprocessing.get_context(method).Lock()
    with hx.Executor(start_method=method, initializer=keep_lock, initargs=(lock,)) as ex:
        assert ex.options(kind="process").submit(use_lock).result(timeout=60) is True


def test_mp_context_chooses_the_start_method_as_in_process_pool_executor() -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with hx.Executor(max_workers=1, mp_context=context) as ex:
        assert ex._router.processes.start_method == "spawn"
        assert ex.options(kind="process").submit(helpers.square, 6).result(timeout=60) == 36
    with pytest.raises(ValueError, match="not both"):
        hx.Executor(start_method="fork", mp_context=context)


def test_what_will_not_pickle_fails_a_process_executor_with_a_pickling_error() -> None:
    # ProcessPoolExecutor callers catch pickle.PicklingError; Executor(kind="process") is a
    # request for processes, so the call fails instead of running on a thread.
    import pickle
    import threading

    with hx.Executor(kind="process") as ex:
        fut = ex.submit(id, threading.Lock())
        with pytest.raises(pickle.PicklingError) as info:
            fut.result(timeout=30)
        assert isinstance(info.value, hx.SerializationError)
        assert fut.kind == "process"
