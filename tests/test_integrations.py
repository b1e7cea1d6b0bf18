"""hybridexec under other libraries: the claims of docs/integrations.md not shown there.

The joblib backend itself is tested in test_joblib.py; the examples of the page run in
test_docs.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import hybridexec as hx

from .conftest import wait_until


@hx.cpu_bound
def record_pid_then_block(path: str, seconds: float) -> int:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def inc(x: int) -> int:
    return x + 1


# ---- joblib: the optional extra ------------------------------------------------------------
def test_register_without_joblib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import hybridexec.joblib as hxjoblib

    monkeypatch.setitem(sys.modules, "joblib", None)  # import joblib now raises ImportError
    with pytest.raises(hx.BackendUnavailableError, match=r"hybridexec\[joblib\]"):
        hxjoblib.register()


def test_importing_the_backend_module_does_not_import_joblib() -> None:
    code = "import sys, hybridexec.joblib; assert 'joblib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- dask's local scheduler ----------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_default_pool() -> None:
    # dask's default scheduler starts a thread pool that lives as long as the interpreter:
    # start it before the leak check takes its baseline (module scope is set up first).
    # Calls meeting at a barrier, one per thread of the pool, make it start all of them.
    dask = pytest.importorskip("dask")
    from dask.delayed import delayed
    from dask.system import CPU_COUNT

    barrier = threading.Barrier(CPU_COUNT)
    meet = delayed(barrier.wait, pure=False)
    dask.compute(*(meet() for _ in range(CPU_COUNT)), scheduler="threads")


@pytest.fixture
def dask_ex(dask_default_pool: None) -> Iterator[hx.Executor]:
    with hx.Executor(max_processes=2) as ex:
        yield ex


def test_dask_delayed_graph_with_scheduler_executor(dask_ex: hx.Executor) -> None:
    from dask.delayed import delayed

    total = delayed(sum)([delayed(inc)(i) for i in range(20)])
    assert total.compute(scheduler=dask_ex) == total.compute() == sum(range(1, 21))


def test_dask_array_with_scheduler_executor(dask_ex: hx.Executor) -> None:
    da = pytest.importorskip("dask.array")
    pytest.importorskip("numpy")
    x = da.arange(100_000, chunks=10_000)
    expected = (x * 2).sum().compute()
    assert (x * 2).sum().compute(scheduler=dask_ex) == expected
    assert dask_ex.stats()["submitted"] != {"thread": 0, "process": 0}


def test_dask_config_scheduler_executor(dask_ex: hx.Executor) -> None:
    import dask
    from dask.delayed import delayed

    graph = delayed(sum)([delayed(inc)(i) for i in range(10)])
    with dask.config.set(scheduler=dask_ex):
        assert graph.compute() == sum(range(1, 11))
    assert sum(dask_ex.stats()["submitted"].values()) >= 1


def test_dask_config_pool_executor(dask_ex: hx.Executor) -> None:
    import dask
    from dask.delayed import delayed

    graph = delayed(sum)([delayed(inc)(i) for i in range(10)])
    with dask.config.set(pool=dask_ex):
        assert graph.compute() == sum(range(1, 11))


# ---- asyncio -------------------------------------------------------------------------------
def test_run_in_executor_cancel_kills_process_work(tmp_path: Path) -> None:
    stamp = tmp_path / "pid"

    async def main(ex: hx.Executor) -> None:
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(ex, record_pid_then_block, str(stamp), 60.0)
        await asyncio.to_thread(wait_until, stamp.exists, 30)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    with hx.Executor(max_processes=1) as ex:
        asyncio.run(main(ex))
        pid = int(stamp.read_text())
        assert wait_until(lambda: pid not in ex.worker_pids, 10)


def test_set_default_executor_refuses_a_non_thread_executor() -> None:
    async def main(ex: hx.Executor) -> None:
        loop = asyncio.get_running_loop()
        if sys.version_info >= (3, 11):
            with pytest.raises(TypeError):
                loop.set_default_executor(ex)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loop.set_default_executor(ex)
            assert any(issubclass(w.category, DeprecationWarning) for w in caught)

    with hx.Executor() as ex:
        asyncio.run(main(ex))
