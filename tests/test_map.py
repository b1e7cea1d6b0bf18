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
        hybridexec.imap(42, [1], executor=executor)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        executor.submit(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        executor.map(42, [1])  # type: ignore[call-overload]


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


# ---- several iterables, limit=, return_exceptions= (issue 14 gap, issue 15 items 4 and 6) ----


@pytest.mark.parametrize("kind", [*KINDS, "auto"])
@pytest.mark.parametrize("chunksize", [None, 3])
def test_map_zips_several_iterables_like_builtin_map(
    executor: Executor, kind: str, chunksize: int | None
) -> None:
    bases, exponents = range(300), [2, 3] * 100  # the shorter one ends the map
    got = hybridexec.map(pow, bases, exponents, kind=kind, chunksize=chunksize, executor=executor)
    assert got == list(map(pow, bases, exponents))
    # No iterable: nothing to do (typed as builtins.map is: at least one iterable).
    assert hybridexec.map(pow, executor=executor) == []  # type: ignore[call-overload]


def test_tiny_calls_over_several_iterables_run_inline(executor: Executor) -> None:
    got = hybridexec.map(helpers.add, range(20_000), range(20_000), executor=executor)
    assert got == [2 * x for x in range(20_000)]
    assert executor.stats()["submitted"].get("inline", 0) > 19_000


def test_imap_of_several_endless_iterables_stays_lazy(executor: Executor) -> None:
    results = hybridexec.imap(
        helpers.add, itertools.count(), itertools.count(10), kind="thread", executor=executor
    )
    assert [next(results) for _ in range(5)] == [10, 12, 14, 16, 18]
    results.close()


_first_call_done = threading.Event()


def slow_first_call(x: int) -> int:
    # A warm-up (an import, a cache) on the first call only: one misleading probe time.
    if x == 0:
        threading.Event().wait(0.003)  # the work of the warm-up, not a wait for state
        _first_call_done.set()
    return x


def after_the_first_call(n: int) -> Iterator[int]:
    yield 0
    assert _first_call_done.wait(30)  # the other probes go out once the slow one is back
    yield from range(1, n)


def test_one_slow_probe_does_not_unbatch_tiny_calls(executor: Executor) -> None:
    # What made test_tiny_calls_are_batched fail under load: the first probe back read more
    # than a tiny call (on a busy machine its wall time counts time spent waiting for a
    # CPU), and the map sent the next 256 calls one per task. The other probes count too.
    _first_call_done.clear()
    before = executor.stats()["submitted"]["thread"]
    got = hybridexec.map(slow_first_call, after_the_first_call(20_000), executor=executor)
    assert got[-1] == 19_999
    tasks = executor.stats()["submitted"]["thread"] - before
    assert tasks < 200, f"{tasks} tasks for 20,000 trivial calls: not batched"


class Gauge:
    """Counts the calls running at once; each waits (bounded) until ``target`` run together.

    The wait makes the calls overlap as much as the map lets them, so the peak shows both
    that the limit is reached and that it is never passed, without any timing assertion.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.full = threading.Event()

    def __call__(self, x: int, y: int = 0) -> int:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            if self.now >= self.target:
                self.full.set()
        self.full.wait(10)
        with self.lock:
            self.now -= 1
        return x + y


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("api", ["map", "imap", "Executor.map"])
def test_limit_caps_the_calls_running_at_once(executor: Executor, api: str, ordered: bool) -> None:
    gauge = Gauge(target=3)
    if api == "Executor.map":
        got = list(executor.map(gauge, range(40), range(40), limit=3))
    elif api == "imap":
        it = hybridexec.imap(
            gauge, range(40), range(40), ordered=ordered, limit=3, executor=executor
        )
        got = list(it)
    else:
        got = hybridexec.map(
            gauge, range(40), range(40), ordered=ordered, limit=3, executor=executor
        )
    assert sorted(got) == [2 * x for x in range(40)]
    assert gauge.peak == 3  # reached (the calls overlap) and never passed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api", ["map", "Executor.map"])
def test_limit_counts_a_batch_as_its_calls(executor: Executor, api: str) -> None:
    # Explicit thread lane and chunks of 2 under a limit of 4: at most two chunks at a time.
    gauge = Gauge(target=2)
    if api == "Executor.map":
        got = list(executor.map(gauge, range(30), chunksize=2, limit=4))
    else:
        got = hybridexec.map(
            gauge, range(30), kind="thread", chunksize=2, limit=4, executor=executor
        )
    assert got == list(range(30))
    assert gauge.peak == 2
    # Sized automatically, tiny batched calls respect the limit too.
    tiny = Gauge(target=1)
    assert hybridexec.map(tiny, range(3_000), kind="thread", limit=2, executor=executor) == list(
        range(3_000)
    )
    assert tiny.peak <= 2


@pytest.mark.parametrize("kind", [*KINDS, "auto"])
@pytest.mark.parametrize("ordered", [True, False])
def test_return_exceptions_keeps_every_other_result(
    executor: Executor, kind: str, ordered: bool
) -> None:
    # fail_at(x, bad) fails where x == bad: items 7 and 150 fail, batched or not.
    bad = [7 if x < 100 else 150 for x in range(300)]
    got = hybridexec.map(
        helpers.fail_at, range(300), bad, kind=kind, ordered=ordered, return_exceptions=True,
        executor=executor,
    )  # fmt: skip
    errors = [r for r in got if isinstance(r, ValueError)]
    assert sorted(str(e) for e in errors) == ["item 150 fails", "item 7 fails"]
    values = [r for r in got if not isinstance(r, BaseException)]
    assert sorted(values) == [x for x in range(300) if x not in (7, 150)]
    if ordered:
        assert isinstance(got[7], ValueError)
        assert isinstance(got[150], ValueError)


def test_return_exceptions_inline(executor: Executor) -> None:
    results = hybridexec.imap(
        helpers.fail_at, range(20_000), return_exceptions=True, executor=executor
    )
    got = list(results)
    assert len(got) == 20_000
    assert str(got[15_000]) == "item 15000 fails"
    assert got[:15_000] == list(range(15_000))
    assert got[15_001:] == list(range(15_001, 20_000))
    assert executor.stats()["submitted"].get("inline", 0) > 0


@pytest.mark.timeout(120)
def test_return_exceptions_across_crashes_and_timeouts(executor: Executor) -> None:
    # A batch whose worker died is retried item by item: only the culprit is marked.
    got = hybridexec.map(
        helpers.exit_on, range(200), [13] * 200, kind="process", chunksize=50,
        return_exceptions=True, executor=executor,
    )  # fmt: skip
    assert isinstance(got[13], hybridexec.WorkerCrashedError)
    assert got[:13] + got[14:] == [x for x in range(200) if x != 13]
    late = hybridexec.map(
        helpers.sleep_then, [0, 60, 0], [1, 2, 3], kind="process", timeout=1,
        return_exceptions=True, executor=executor,
    )  # fmt: skip
    assert late[0] == 1
    assert late[2] == 3
    assert isinstance(late[1], hybridexec.TaskTimeoutError)


def test_return_exceptions_off_still_raises_the_first_failure(executor: Executor) -> None:
    with pytest.raises(ValueError, match="item 7"):
        hybridexec.map(helpers.fail_at, range(100), [7] * 100, kind="process", executor=executor)


@pytest.mark.parametrize(
    ("limit", "error"),
    [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)],
)
def test_bad_limit_raises_at_the_call(
    executor: Executor, limit: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="limit"):
        hybridexec.imap(helpers.square, [1], limit=limit, executor=executor)
    with pytest.raises(error, match="limit"):
        hybridexec.map(helpers.square, [1], limit=limit, executor=executor)
    with pytest.raises(error, match="limit"):
        executor.map(helpers.square, [1], limit=limit)
    with pytest.raises(ValueError, match="limit"):  # a chunk bigger than the limit never starts
        executor.map(helpers.square, [1], chunksize=5, limit=4)
    with pytest.raises(ValueError, match="limit"):
        hybridexec.map(helpers.square, [1], chunksize=5, limit=4, executor=executor)
