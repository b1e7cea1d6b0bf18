"""The joblib backend ``"hybridexec"``, with joblib and scikit-learn themselves.

The backend's shared executors are shut down after every test (``hybridexec.joblib.shutdown``)
so the leak check sees no worker left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import hybridexec as hx

from .conftest import wait_until

joblib = pytest.importorskip("joblib")
psutil = pytest.importorskip("psutil")

import hybridexec.joblib as hxjoblib  # noqa: E402 - after the skip: needs joblib

Parallel = joblib.Parallel
delayed = joblib.delayed
PARENT = os.getpid()


@pytest.fixture(autouse=True)
def backend() -> Iterator[None]:
    hxjoblib.register()
    try:
        yield
    finally:
        hxjoblib.shutdown()


def config(n_jobs: int = 2, **kwargs: Any) -> Any:
    return joblib.parallel_config(backend="hybridexec", n_jobs=n_jobs, **kwargs)


# ---- task functions (module level: workers import them by name) ----------------------------
def square(x: int) -> int:
    return x * x


def pid_of(_: object = None) -> int:
    return os.getpid()


@hx.cpu_bound
def pid_in_process(_: object = None) -> int:
    return os.getpid()


@hx.io_bound
def pid_on_thread(_: object = None) -> int:
    return os.getpid()


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@hx.cpu_bound
def crash_at(x: int, bad: int) -> int:
    if x == bad:
        os._exit(3)
    return x


@hx.cpu_bound
def record_pid_then_block(path: str, seconds: float) -> int:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def append_to(items: list[int], x: int) -> None:
    items.append(x)


@hx.cpu_bound
def nested_view(_: object = None) -> tuple[str, int, int]:
    """The backend a nested Parallel gets here, how many jobs it runs, and its answer."""
    backend, _n = joblib.parallel.get_active_backend()
    jobs = backend.effective_n_jobs(-1)
    total = sum(Parallel(n_jobs=-1)(delayed(square)(i) for i in range(10)))
    return type(backend).__name__, jobs, total


@hx.cpu_bound
def nested_hybridexec(_: object = None) -> tuple[int, int]:
    """Ask for backend='hybridexec' again inside a worker: no processes may start."""
    with joblib.parallel_config(backend="hybridexec", n_jobs=2):
        total = sum(Parallel()(delayed(square)(i) for i in range(10)))
    return total, len(psutil.Process().children(recursive=True))


@hx.cpu_bound
def array_total(arr: Any) -> tuple[float, bool]:
    """The sum and whether the array arrived writable (placed in shared memory: read-only)."""
    return float(arr.sum()), bool(arr.flags.writeable)


# ---- joblib's behaviours ---------------------------------------------------------------------
def test_results_come_back_in_order() -> None:
    with config():
        assert Parallel()(delayed(square)(i) for i in range(100)) == [i * i for i in range(100)]


def test_return_as_generator_yields_in_order() -> None:
    with config():
        results = Parallel(return_as="generator")(delayed(square)(i) for i in range(50))
        assert not isinstance(results, list)
        assert list(results) == [i * i for i in range(50)]


def test_return_as_generator_unordered_yields_every_result() -> None:
    with config():
        results = Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(50))
        assert sorted(results) == [i * i for i in range(50)]


def test_exception_of_one_call_is_raised_with_its_type() -> None:
    with config(), pytest.raises(ValueError, match="bad item 7"):
        Parallel()(delayed(fail_at)(i, 7) for i in range(20))


def test_auto_batching_grows_batches_of_tiny_calls(capsys: pytest.CaptureFixture[str]) -> None:
    with config():
        results = Parallel(verbose=10)(delayed(square)(i) for i in range(5000))
    assert results == [i * i for i in range(5000)]
    assert "Batch computation too fast" in capsys.readouterr().err


def test_each_function_of_a_batch_is_routed_on_its_own() -> None:
    # batch_size=4 puts both functions in every batch; each still runs in its own lane.
    calls = [delayed(pid_in_process if i % 2 else pid_on_thread)(i) for i in range(16)]
    with config():
        pids = Parallel(batch_size=4)(calls)
    assert [pid == PARENT for pid in pids] == [i % 2 == 0 for i in range(16)]


class Scaled:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def times(self, x: int) -> int:
        return self.factor * x


def test_bound_methods_of_different_objects_batch_together_and_keep_their_object() -> None:
    calls = [delayed(Scaled(k).times)(10) for k in range(12)]
    with config():
        assert Parallel(batch_size=4)(calls) == [10 * k for k in range(12)]


def test_prefer_threads_runs_calls_on_threads() -> None:
    with config():
        pids = Parallel(prefer="threads")(delayed(pid_in_process)(i) for i in range(8))
    assert set(pids) == {PARENT}


def test_prefer_processes_runs_calls_in_processes() -> None:
    with config():
        pids = Parallel(prefer="processes")(delayed(pid_on_thread)(i) for i in range(8))
    assert PARENT not in pids


def test_require_sharedmem_runs_calls_on_threads_sharing_memory() -> None:
    items: list[int] = []
    with config():
        Parallel(require="sharedmem")(delayed(append_to)(items, i) for i in range(20))
    assert sorted(items) == list(range(20))


def test_executor_is_reused_across_parallel_calls() -> None:
    with config():
        first = set(Parallel()(delayed(pid_in_process)(i) for i in range(8)))
        second = set(Parallel()(delayed(pid_in_process)(i) for i in range(8)))
    assert PARENT not in first
    assert second <= first  # the same warm workers; none started for the second call


def test_executor_given_in_parallel_config_is_used() -> None:
    with hx.Executor(max_processes=2) as ex:
        with config(executor=ex):
            pids = set(Parallel()(delayed(pid_in_process)(i) for i in range(8)))
        assert pids <= set(ex.worker_pids)
        assert ex.stats()["submitted"]["process"] >= 1


def test_timeout_kills_the_running_call(tmp_path: Any) -> None:
    stamp = tmp_path / "pid"
    # Whichever deadline is seen first on a loaded machine: the task's (TaskTimeoutError, a
    # TimeoutError) or joblib's own, counted from dispatch (multiprocessing.TimeoutError, which
    # is not a builtin TimeoutError); either way the running call must be killed.
    with config():
        Parallel(prefer="processes")(delayed(pid_of)(i) for i in range(2))  # workers started
        started = time.monotonic()
        with pytest.raises((TimeoutError, multiprocessing.TimeoutError)):
            Parallel(timeout=2.0)(delayed(record_pid_then_block)(str(stamp), s) for s in (60.0,))
        assert time.monotonic() - started < 20
    if not stamp.exists():
        # Even a warm worker may not have started it within joblib's 2 s on a loaded machine:
        # then it was cancelled, and must never start.
        assert not wait_until(stamp.exists, 3)
        return
    pid = int(stamp.read_text())
    assert pid != PARENT
    assert wait_until(lambda: not psutil.pid_exists(pid), 10)


def test_crashed_worker_fails_its_call_and_the_next_call_works() -> None:
    with config():
        with pytest.raises(hx.WorkerCrashedError):
            Parallel()(delayed(crash_at)(i, 3) for i in range(8))
        assert Parallel()(delayed(crash_at)(i, -1) for i in range(8)) == list(range(8))


def test_nested_parallel_runs_on_capped_threads_or_sequentially() -> None:
    cpus = len(os.sched_getaffinity(0))
    with config():
        views = Parallel()(delayed(nested_view)(i) for i in range(4))
    for name, jobs, total in views:
        assert total == sum(i * i for i in range(10))
        assert jobs <= max(1, cpus // 2)
        assert name in ("SequentialBackend", "CappedThreadingBackend")


def test_backend_asked_for_inside_a_worker_starts_no_processes() -> None:
    with config():
        results = Parallel()(delayed(nested_hybridexec)(i) for i in range(2))
    assert results == [(sum(i * i for i in range(10)), 0)] * 2


def test_large_numpy_argument_travels_through_shared_memory() -> None:
    np = pytest.importorskip("numpy")
    arr = np.ones(1 << 18)  # 2 MiB: above the 1 MiB threshold
    with config():
        results = Parallel()(delayed(array_total)(arr) for _ in range(4))
    assert results == [(float(arr.size), False)] * 4


def test_n_jobs_1_runs_sequentially_in_the_caller() -> None:
    with config(n_jobs=1):
        assert Parallel()(delayed(pid_of)(i) for i in range(4)) == [PARENT] * 4


def test_calls_from_several_threads_share_the_backend() -> None:
    results: dict[int, list[int]] = {}

    def run(k: int) -> None:
        with config():
            results[k] = Parallel()(delayed(square)(i + k) for i in range(50))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: [(i + k) ** 2 for i in range(50)] for k in range(3)}


# ---- scikit-learn ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.make_classification(n_samples=200, n_features=8, random_state=0)  # type: ignore[no-any-return]


def test_grid_search_matches_sequential(data: tuple[Any, Any]) -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    from sklearn.linear_model import LogisticRegression

    X, y = data
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}

    def search(n_jobs: int) -> Any:
        est = model_selection.GridSearchCV(LogisticRegression(max_iter=500), grid, n_jobs=n_jobs)
        return est.fit(X, y)

    expected = search(1)
    with config():
        got = search(2)
    assert got.best_params_ == expected.best_params_
    assert list(got.cv_results_["mean_test_score"]) == list(expected.cv_results_["mean_test_score"])


def test_cross_val_score_matches_sequential(data: tuple[Any, Any]) -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    from sklearn.tree import DecisionTreeClassifier

    X, y = data
    expected = model_selection.cross_val_score(DecisionTreeClassifier(random_state=0), X, y)
    with config():
        got = model_selection.cross_val_score(
            DecisionTreeClassifier(random_state=0), X, y, n_jobs=2
        )
    assert list(got) == list(expected)


def test_random_forest_matches_sequential(data: tuple[Any, Any]) -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    X, y = data

    def fit(n_jobs: int) -> Any:
        forest = ensemble.RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=n_jobs)
        return forest.fit(X, y)

    expected = fit(1)
    with config():
        got = fit(2)
    assert (got.predict_proba(X) == expected.predict_proba(X)).all()
