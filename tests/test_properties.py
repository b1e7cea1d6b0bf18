"""Property tests: ``hybridexec.map`` is ``map``, and cancels never lose or duplicate results.

One executor per test serves every Hypothesis example (starting workers per example would
dominate the run time); the strategies live in ``tests/strategies.py``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

import hybridexec
from hybridexec import Executor

from . import helpers
from . import strategies as hst
from .conftest import wait_until

LIMIT = 30.0  # seconds any one wait in an example may take

# Examples share an executor: the function-scoped-fixture check does not apply, and the
# run time is dominated by worker start-up, not by Hypothesis.
PROPERTY_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)


def _builtin(case: hst.MapCase) -> tuple[list[Any] | None, Exception | None]:
    try:
        return list(map(case.fn, case.items)), None
    except Exception as exc:
        return None, exc


def _hybrid(ex: Executor, case: hst.MapCase) -> tuple[list[Any] | None, Exception | None]:
    try:
        got = hybridexec.map(
            case.fn,
            case.items,
            kind=case.kind,
            ordered=case.ordered,
            chunksize=case.chunksize,
            executor=ex,
        )
    except Exception as exc:
        return None, exc
    return got, None


def _error_messages(case: hst.MapCase) -> set[str]:
    messages = set()
    for item in case.items:
        try:
            case.fn(item)
        except Exception as exc:
            messages.add(str(exc))
    return messages


@pytest.mark.timeout(120)
def test_map_equals_builtin_map_for_any_function_input_lane_chunking_and_order() -> None:
    with Executor(max_processes=2) as ex:

        @settings(PROPERTY_SETTINGS, max_examples=300)
        @given(case=hst.map_cases)
        def check(case: hst.MapCase) -> None:
            want, want_error = _builtin(case)
            got, error = _hybrid(ex, case)
            if error is not None:
                assert want_error is not None, f"map raised {error!r}, builtin map did not"
                assert type(error) is type(want_error)
                if case.ordered:  # the first failing item in input order
                    assert str(error) == str(want_error)
                else:  # whichever failing item finished first
                    assert str(error) in _error_messages(case)
                return
            assert want_error is None, f"builtin map raised {want_error!r}, map returned"
            assert want is not None
            if case.ordered:
                assert got == want
            else:
                assert Counter(got) == Counter(want)

        check()


@pytest.mark.timeout(120)
def test_random_cancels_never_lose_or_duplicate_a_result() -> None:
    with Executor(max_processes=2) as ex:

        @settings(PROPERTY_SETTINGS, max_examples=120)
        @given(plan=hst.cancel_plans)
        def check(plan: list[hst.Submission]) -> None:
            futures: list[concurrent.futures.Future[Any]] = []
            answers: dict[int, bool] = {}  # index -> what cancel() returned

            def cancel_due(submitted: int) -> None:
                for index, sub in enumerate(plan[: len(futures)]):
                    due = sub.cancel_after is not None and index + sub.cancel_after <= submitted
                    if due and index not in answers:
                        answers[index] = futures[index].cancel()

            for index, sub in enumerate(plan):
                lane = ex.options(kind=sub.kind)
                futures.append(lane.submit(helpers.sleep_then, sub.seconds, ("token", index)))
                cancel_due(index)
            cancel_due(len(plan) + 10)

            assert wait_until(lambda: all(f.done() for f in futures), LIMIT)
            completed = list(concurrent.futures.as_completed(futures, timeout=LIMIT))
            assert len(completed) == len(set(completed)) == len(futures)
            for index, fut in enumerate(futures):
                if answers.get(index):
                    assert fut.cancelled(), "cancel() returned True for a task that finished"
                elif fut.cancelled():
                    raise AssertionError(f"task {index} was cancelled but cancel() said no")
                else:
                    assert fut.result(timeout=0) == ("token", index)

        check()


def _drain(results: Iterator[Any]) -> tuple[list[Any], BaseException | None]:
    """Read what an iterator still yields, in a thread, with a deadline."""
    values: list[Any] = []
    ended: list[BaseException | None] = []

    def read() -> None:
        try:
            values.extend(results)
            ended.append(None)
        except BaseException as exc:
            ended.append(exc)

    reader = threading.Thread(target=read, name="imap-drain", daemon=True)
    reader.start()
    reader.join(LIMIT)
    assert not reader.is_alive(), "the cancelled imap never ended"
    return values, ended[0]


@pytest.mark.timeout(120)
def test_cancelled_imap_yields_each_result_at_most_once_and_in_order() -> None:
    with Executor(max_processes=2) as ex:

        @settings(PROPERTY_SETTINGS, max_examples=200)
        @given(case=hst.imap_cancels)
        def check(case: hst.ImapCancel) -> None:
            want = [2 * i for i in range(case.items)]
            results = hybridexec.imap(
                hst.FUNCTIONS[2],  # double
                range(case.items),
                kind=case.kind,
                ordered=case.ordered,
                chunksize=case.chunksize,
                executor=ex,
            )
            got = [next(results) for _ in range(min(case.take, case.items))]
            results.cancel()
            rest, ended = _drain(results)
            got += rest
            assert ended is None or isinstance(ended, concurrent.futures.CancelledError)
            assert len(got) == len(set(got)), "a result came twice"
            if case.ordered:
                assert got == want[: len(got)]
            else:
                assert set(got) <= set(want)
            if ended is None:
                assert sorted(got) == want, "the iterator ended early without CancelledError"

        check()
