"""The Dask backend, against a real two-worker LocalCluster on 127.0.0.1.

The cluster and its client are module-scoped and autouse: pytest sets up higher-scoped fixtures
first, so they exist (with the threads distributed starts lazily, warmed up below) before the
leak check takes its per-test baseline, and they are stopped after the last test.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx
from hybridexec import BackendUnavailableError, RemoteTraceback, TaskTimeoutError

from .conftest import wait_until
from .helpers import raise_value_error, square
from .remote_helpers import (
    array_sum,
    echo_kwargs,
    fresh_token,
    local_pid,
    plus_one,
    spin_marked,
    worker_pid,
)

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

CLUSTER_OPTIONS: dict[str, Any] = {
    "n_workers": 2,
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": "127.0.0.1:0",
    "worker_dashboard_address": "127.0.0.1:0",
}


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(**CLUSTER_OPTIONS) as cluster:
        yield cluster


@pytest.fixture(scope="module", autouse=True)
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster, set_as_default=False) as client:
        # Start what distributed starts lazily and keeps (offload and event threads).
        client.gather(client.map(square, range(4), pure=False))
        client.gather(client.scatter(np.zeros(1 << 18), hash=False))
        client.run(os.getpid)
        yield client


@pytest.fixture
def ex(client: Any) -> Iterator[hx.Executor]:
    executor = hx.Executor(backend=client, max_processes=1)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def worker_pids(client: Any) -> set[int]:
    return set(client.run(os.getpid).values())


def occupy_all_workers(ex: hx.Executor, tmp_path: Path, seconds: float) -> list[hx.Future[int]]:
    """Start one long interruptible task per worker and wait until each is running."""
    paths = [str(tmp_path / f"started-{i}") for i in range(2)]
    futures = [ex.options(kind="process").submit(spin_marked, p, seconds) for p in paths]
    assert wait_until(lambda: all(os.path.exists(p) for p in paths), timeout=20)
    return futures


# ---- submit, routing, map -----------------------------------------------------------------------
def test_process_work_runs_on_the_cluster(ex: hx.Executor, client: Any) -> None:
    future = ex.submit(worker_pid)
    assert future.result(timeout=20) in worker_pids(client)
    assert future.kind == "dask"
    assert ex.stats()["submitted"]["dask"] == 1


def test_max_memory_is_refused_on_the_cluster(ex: hx.Executor) -> None:
    # Its limit would bind a whole Dask worker, whose other tasks run on its threads.
    with pytest.raises(ValueError, match="distributed backend"):
        ex.options(max_memory=1 << 30).submit(square, 3)
    assert ex.submit(square, 3).result(timeout=20) == 9


def test_io_bound_work_stays_on_local_threads(ex: hx.Executor) -> None:
    future = ex.submit(local_pid)
    assert future.result(timeout=20) == os.getpid()
    assert future.kind == "thread"


def test_remote_all_sends_io_bound_work_to_the_cluster(client: Any) -> None:
    with hx.Executor(backend=client, remote="all") as executor:
        future = executor.submit(local_pid)
        assert future.result(timeout=20) in worker_pids(client)
        assert future.kind == "dask"


async def async_pid() -> int:
    return os.getpid()


def test_remote_all_runs_async_def_functions_on_the_local_event_loop(client: Any) -> None:
    """docs/distributed.md: a cluster worker would not await a coroutine function."""
    with hx.Executor(backend=client, remote="all") as executor:
        future = executor.submit(async_pid)
        assert future.result(timeout=20) == os.getpid()
        assert future.kind == "async"


def test_map_of_1000_items_goes_in_batches(ex: hx.Executor) -> None:
    assert hx.map(plus_one, range(1000), executor=ex) == [x + 1 for x in range(1000)]
    assert 0 < ex.stats()["submitted"]["dask"] < 200
    assert list(ex.map(plus_one, range(1000), chunksize=100)) == [x + 1 for x in range(1000)]


def test_identical_calls_are_not_merged(ex: hx.Executor) -> None:
    futures = [ex.submit(fresh_token) for _ in range(4)]
    assert len({f.result(timeout=20) for f in futures}) == 4


def test_keyword_arguments_named_like_dask_options_reach_the_function(ex: hx.Executor) -> None:
    kwargs = {
        "key": "k",
        "workers": ["nowhere"],
        "resources": {"GPU": 8},
        "pure": True,
        "retries": 5,
        "priority": -1,
        "allow_other_workers": False,
        "actor": True,
    }
    assert ex.submit(echo_kwargs, **kwargs).result(timeout=20) == kwargs


def test_tuples_starting_with_a_callable_are_data_not_tasks(ex: hx.Executor) -> None:
    value = [(square, 3), {"k": (square, 4)}]
    assert ex.options(kind="process").submit(list, value).result(timeout=20) == value


def test_exception_keeps_its_remote_traceback(ex: hx.Executor) -> None:
    future = ex.options(kind="process").submit(raise_value_error, "remote boom")
    with pytest.raises(ValueError, match="remote boom") as info:
        future.result(timeout=20)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in raise_value_error" in cause.tb


def test_a_failing_item_of_a_batch_raises_in_map(ex: hx.Executor) -> None:
    items = [1, 2, "three", 4]
    with pytest.raises(TypeError):
        list(ex.options(kind="process").map(plus_one, items, chunksize=4))


def test_numpy_argument_is_sent_once_for_tasks_in_flight(ex: hx.Executor) -> None:
    arr = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    scale = np.ones(1 << 18)
    futures = [ex.submit(array_sum, arr, scale=scale) for _ in range(6)]
    expected = float(arr.sum()) * float(scale.sum())
    assert [f.result(timeout=20) for f in futures] == [expected] * 6
    remote = ex._router.remote
    assert remote is not None
    assert 2 <= remote.stats["shared"] <= 2 * 6
    assert not remote._shared  # released with the last task that used them


def test_unpicklable_call_falls_back_to_threads_unless_process_was_asked(
    ex: hx.Executor,
) -> None:
    lock = threading.Lock()
    auto = ex.options(timeout=20.0).submit(lambda: lock.locked())
    assert auto.result(timeout=20) is False
    assert auto.kind == "thread"
    explicit = ex.options(kind="process").submit(lambda: lock.locked())
    with pytest.raises(hx.SerializationError):
        explicit.result(timeout=20)


def test_futures_work_with_concurrent_futures_wait(ex: hx.Executor) -> None:
    futures = [ex.submit(plus_one, i) for i in range(10)]
    done, not_done = concurrent.futures.wait(futures, timeout=20)
    assert not not_done
    assert sorted(f.result() for f in done) == list(range(1, 11))


# ---- cancel, timeout, shutdown ------------------------------------------------------------------
def test_cancel_of_a_queued_task_means_it_never_runs(ex: hx.Executor, tmp_path: Path) -> None:
    busy = occupy_all_workers(ex, tmp_path, 30.0)
    never = str(tmp_path / "never")
    queued = ex.options(kind="process").submit(spin_marked, never, 0.0)
    assert queued.cancel()
    assert queued.cancelled()
    for future in busy:
        assert future.cancel()
    assert ex.submit(plus_one, 1).result(timeout=20) == 2
    assert not os.path.exists(never)


def test_cancel_of_a_running_task_interrupts_python_code(ex: hx.Executor, tmp_path: Path) -> None:
    busy = occupy_all_workers(ex, tmp_path, 40.0)
    started = time.monotonic()
    assert all(f.cancel() for f in busy)
    with pytest.raises(concurrent.futures.CancelledError):
        busy[0].result()
    # Both workers are free again long before the 40 s loops would have ended.
    pids = {ex.submit(worker_pid, i).result(timeout=20) for i in range(4)}
    assert pids
    assert time.monotonic() - started < 20


def test_timeout_fails_the_task_and_interrupts_it(ex: hx.Executor, tmp_path: Path) -> None:
    future = ex.options(kind="process", timeout=0.5).submit(spin_marked, str(tmp_path / "t"), 40.0)
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        future.result(timeout=20)
    assert future.kind == "dask"
    futures = [ex.submit(worker_pid, i) for i in range(4)]
    assert all(f.result(timeout=20) for f in futures)
    assert time.monotonic() - started < 20
    assert ex._router.remote is not None
    assert ex._router.remote.stats["timeouts"] == 1


def test_timeout_counts_from_the_start_on_a_worker(ex: hx.Executor, tmp_path: Path) -> None:
    busy = occupy_all_workers(ex, tmp_path, 1.0)
    # Queued behind 1 s of work: a 0.8 s budget would be gone if counted from submission.
    late = ex.options(kind="process", timeout=5.0).submit(spin_marked, str(tmp_path / "l"), 0.1)
    assert late.result(timeout=20) > 0
    assert all(f.result(timeout=20) > 0 for f in busy)


def test_shutdown_with_cancel_futures_cancels_unfinished_tasks(client: Any, tmp_path: Path) -> None:
    executor = hx.Executor(backend=client)
    busy = occupy_all_workers(executor, tmp_path, 40.0)
    queued = [executor.options(kind="process").submit(plus_one, i) for i in range(3)]
    started = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 20
    assert all(f.cancelled() for f in [*busy, *queued])
    with pytest.raises(RuntimeError):
        executor.submit(plus_one, 1)
    # The client given to the executor is still running.
    assert client.submit(square, 3, pure=False).result(timeout=20) == 9


def test_shutdown_without_wait_lets_running_work_finish(client: Any) -> None:
    executor = hx.Executor(backend=client)
    futures = [executor.submit(plus_one, i) for i in range(5)]
    executor.shutdown(wait=False)
    assert [f.result(timeout=20) for f in futures] == [1, 2, 3, 4, 5]
    executor.shutdown(wait=True)


# ---- connecting -------------------------------------------------------------------------------
def test_scheduler_address_connects_to_a_running_cluster(cluster: Any, client: Any) -> None:
    with hx.Executor(backend=cluster.scheduler_address) as executor:
        future = executor.submit(worker_pid)
        assert future.result(timeout=20) in worker_pids(client)
    assert cluster.status.name == "running"


def test_dask_backend_reads_the_scheduler_address_variable(
    cluster: Any, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    with hx.Executor(backend="dask") as executor:
        assert executor.submit(worker_pid).result(timeout=20) in worker_pids(client)


def test_dask_backend_starts_and_stops_its_own_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    executor = hx.Executor(
        backend="dask", backend_options={"n_workers": 1, "threads_per_worker": 1}
    )
    try:
        remote = executor._router.remote
        assert remote is not None
        own = set(remote.client.run(os.getpid).values())  # type: ignore[attr-defined]
        future = executor.submit(worker_pid)
        assert future.result(timeout=30) in own
        assert future.kind == "dask"
    finally:
        executor.shutdown(wait=True)
    # The no_leaks fixture checks that the cluster's processes are gone.


# ---- configuration errors ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dask", "ray"])
def test_missing_extra_names_the_pip_install(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ["dask", "distributed"] if name == "dask" else ["ray"]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, f"hybridexec._backends._{name}", raising=False)
    with pytest.raises(BackendUnavailableError, match=rf"pip install 'hybridexec\[{name}\]'"):
        hx.Executor(backend=name)


def test_missing_extra_is_an_import_error() -> None:
    assert issubclass(BackendUnavailableError, ImportError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "spark"}, "unknown backend"),
        ({"backend": 42}, "unknown backend"),
        ({"backend": "dask", "remote": "some"}, "remote must be one of"),
        ({"remote": "all"}, "only with a backend"),
        ({"backend_options": {"n_workers": 1}}, "only with a backend"),
    ],
)
def test_bad_backend_configuration_raises_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hx.Executor(**kwargs)


def test_options_cannot_apply_to_an_existing_client(client: Any) -> None:
    with pytest.raises(ValueError, match="backend_options"):
        hx.Executor(backend=client, backend_options={"n_workers": 1})
