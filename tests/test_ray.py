"""The Ray backend, on a local Ray runtime; skipped when Ray is not installed (``make test-ray``).

The runtime is module-scoped and autouse, started before the leak check's per-test baseline
(pytest sets up higher-scoped fixtures first) and shut down after the last test.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import hybridexec as hx
from hybridexec import RemoteTraceback, TaskTimeoutError

from .conftest import EXEMPT_TREES, wait_until
from .helpers import raise_value_error
from .remote_helpers import array_sum, echo_kwargs, local_pid, plus_one, sleep_marked, worker_pid

ray = pytest.importorskip("ray")
np = pytest.importorskip("numpy")


@pytest.fixture(scope="module", autouse=True)
def runtime() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children()}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Ray's raylet starts and replaces pooled worker processes as it likes (a forced cancel
    # kills one): the leak check ignores everything under the runtime's own processes.
    roots = {p.pid for p in psutil.Process().children()} - before
    EXEMPT_TREES.update(roots)
    try:
        ray.get(ray.remote(plus_one).remote(1))  # start what Ray starts lazily
        yield
    finally:
        ray.shutdown()
        EXEMPT_TREES.difference_update(roots)


@pytest.fixture
def ex() -> Iterator[hx.Executor]:
    executor = hx.Executor(backend="ray", max_processes=1)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_process_work_runs_on_ray(ex: hx.Executor) -> None:
    future = ex.submit(worker_pid)
    assert future.result(timeout=30) != os.getpid()
    assert future.kind == "ray"


def test_io_bound_work_stays_on_local_threads(ex: hx.Executor) -> None:
    future = ex.submit(local_pid)
    assert future.result(timeout=30) == os.getpid()
    assert future.kind == "thread"


def test_map_of_1000_items(ex: hx.Executor) -> None:
    assert hx.map(plus_one, range(1000), executor=ex) == [x + 1 for x in range(1000)]


def test_keyword_arguments_reach_the_function(ex: hx.Executor) -> None:
    kwargs = {"num_cpus": 99, "resources": {"GPU": 8}, "name": "n", "max_retries": 3}
    assert ex.submit(echo_kwargs, **kwargs).result(timeout=30) == kwargs


def test_exception_keeps_its_remote_traceback(ex: hx.Executor) -> None:
    future = ex.options(kind="process").submit(raise_value_error, "ray boom")
    with pytest.raises(ValueError, match="ray boom") as info:
        future.result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_numpy_argument_is_put_once(ex: hx.Executor) -> None:
    arr = np.arange(1 << 18, dtype=np.float64)
    futures = [ex.submit(array_sum, arr) for _ in range(4)]
    assert [f.result(timeout=30) for f in futures] == [float(arr.sum())] * 4
    assert ex._router.remote is not None
    assert 1 <= ex._router.remote.stats["shared"] <= 4


def test_cancel_kills_a_task_blocked_in_c(ex: hx.Executor, tmp_path: Path) -> None:
    path = str(tmp_path / "started")
    future = ex.options(kind="process").submit(sleep_marked, path, 60.0)
    assert wait_until(lambda: os.path.exists(path), timeout=30)
    assert future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()


def test_timeout_kills_a_task_blocked_in_c(ex: hx.Executor, tmp_path: Path) -> None:
    future = ex.options(kind="process", timeout=1.0).submit(sleep_marked, str(tmp_path / "t"), 60.0)
    with pytest.raises(TaskTimeoutError):
        future.result(timeout=30)
    assert ex.submit(plus_one, 1).result(timeout=30) == 2


def test_shutdown_leaves_a_runtime_it_did_not_start_running() -> None:
    executor = hx.Executor(backend="ray")
    assert executor.submit(plus_one, 1).result(timeout=30) == 2
    executor.shutdown(wait=True)
    assert ray.is_initialized()
