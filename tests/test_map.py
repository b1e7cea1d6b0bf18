"""hybridexec.map / imap: order, batching, lazy input, bounded work, progress, bad input."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import hybridexec
from hybridexec import Executor

from . import guarantee_scripts, helpers

KINDS = ["thread", "process"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_equals_builtin_map(executor: Executor, kind: str, chunksize: int | None) -> None:
    got = hybridexec.map(
        helpers.square, range(500), kind=kind, chunksize=chunksize, executor=executor
    )
    assert got == [x * x for x in range(500)]


@pytest.mark.parametrize("kind", KINDS)
def test_unordered_map_returns_every_result_once(executor: Executor, kind: str) -> None:
    got = hybridexec.map(helpers.square, range(300), kind=kind, ordered=False, executor=executor)
    assert sorted(got) == [x * x for x in range(300)]


def test_unordered_yields_fast_results_first(executor: Executor) -> None:
    got = hybridexec.imap(
        helpers.sleep_then,
        [0.5, 0.0],
        kind="thread",
        ordered=False,
        chunksize=1,
        executor=executor,
    )
    assert next(got) is None
    assert list(got) == [None]


def test_empty_input(executor: Executor) -> None:
    assert hybridexec.map(helpers.square, [], executor=executor) == []


def test_tiny_calls_are_batched(executor: Executor) -> None:
    before = executor.stats()["submitted"]["thread"]
    assert hybridexec.map(helpers.square, range(20_000), executor=executor)[-1] == 19_999**2
    tasks = executor.stats()["submitted"]["thread"] - before
    assert tasks < 200, f"{tasks} tasks for 20,000 trivial calls: not batched"
    # After the probes, calls far cheaper than a hand-off ran inline in this thread.
    assert executor.stats()["submitted"].get("inline", 0) > 19_000


def test_explicit_thread_kind_keeps_tiny_calls_on_the_thread_lane(executor: Executor) -> None:
    got = hybridexec.map(helpers.square, range(5_000), kind="thread", executor=executor)
    assert got == [x * x for x in range(5_000)]
    assert executor.stats()["submitted"].get("inline", 0) == 0


def test_inline_map_raises_at_the_failing_item_after_the_values_before_it(
    executor: Executor,
) -> None:
    results = hybridexec.imap(helpers.fail_at, range(20_000), executor=executor)
    assert [next(results) for _ in range(15_000)] == list(range(15_000))
    with pytest.raises(ValueError, match="15000"):
        next(results)
    assert executor.stats()["submitted"].get("inline", 0) > 0


def test_process_map_batches_cheap_calls(executor: Executor) -> None:
    before = executor.stats()["submitted"]["process"]
    hybridexec.map(helpers.square, range(5_000), kind="process", executor=executor)
    tasks = executor.stats()["submitted"]["process"] - before
    assert tasks < 100


def test_imap_reads_lazy_input_with_bounded_work_in_flight(executor: Executor) -> None:
    consumed = itertools.count()
    lock = threading.Lock()

    def produce() -> Iterator[int]:
        for i in itertools.count():
            with lock:
                next(consumed)
            yield i

    results = hybridexec.imap(helpers.square, produce(), kind="thread", executor=executor)
    first = [next(results) for _ in range(10)]
    assert first == [i * i for i in range(10)]
    results.close()
    with lock:
        read = next(consumed)
    # An endless input was read only a bounded way ahead of the consumer.
    assert read < 100_000


def test_map_raises_first_error_and_cancels_the_rest(executor: Executor) -> None:
    with pytest.raises(ValueError, match="boom"):
        hybridexec.map(helpers.raise_value_error, ["boom"] * 10, executor=executor)


def test_progress_callback_counts_every_item(executor: Executor) -> None:
    seen: list[tuple[int, int | None]] = []
    hybridexec.map(
        helpers.square,
        range(50),
        progress=lambda done, total: seen.append((done, total)),
        executor=executor,
    )
    assert seen[-1] == (50, 50)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "gpu"}, ValueError),
        ({"chunksize": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": "soon"}, TypeError),
    ],
)
def test_bad_arguments_raise_at_the_call(
    executor: Executor, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        hybridexec.map(helpers.square, [1], executor=executor, **kwargs)


def test_non_callable_raises_type_error_at_the_call(executor: Executor) -> None:
    with pytest.raises(TypeError, match="callable"):
        hybridexec.imap(42, [1], executor=executor)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        executor.submit(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        executor.map(42, [1])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_threads": 0}, ValueError),
        ({"max_processes": -1}, ValueError),
        ({"max_processes": 1.5}, TypeError),
        ({"start_method": "teleport"}, ValueError),
        ({"kind": "quantum"}, ValueError),
        ({"max_tasks_per_child": 0}, ValueError),
        ({"initializer": 3}, TypeError),
    ],
)
def test_bad_executor_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Executor(**kwargs)


def test_unknown_kind_in_options(executor: Executor) -> None:
    with pytest.raises(ValueError, match="kind"):
        executor.options(kind="gpu")


def test_timeout_with_chunksize_stays_per_item(executor: Executor) -> None:
    results = hybridexec.map(
        helpers.sleep_then, [0.2] * 6, kind="process", chunksize=6, timeout=1.0, executor=executor
    )
    assert results == [None] * 6


@pytest.mark.parametrize("kind", ["thread", "process", "auto"])
@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_imap_lets_go_of_consumed_results(
    executor: Executor, kind: str, chunksize: int | None
) -> None:
    # CPython's test_free_reference, for hybridexec.imap (issue 13 defect 12).
    import gc
    import weakref

    from .conftest import wait_until

    it = hybridexec.imap(
        guarantee_scripts.make_dummy, range(8), kind=kind, chunksize=chunksize, executor=executor
    )
    for obj in it:
        ref = weakref.ref(obj)
        del obj
        assert wait_until(lambda r=ref: gc.collect() is not None and r() is None, 2), (
            f"a consumed result of imap on {kind} is still referenced"
        )
