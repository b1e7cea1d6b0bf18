"""Calls of a function being learned: ``submit`` returns at once, the call runs after the verdict.

See ``src/hybridexec/_deferred.py``. The first call is held (an Event) and its window made to
report only when it returns, so the verdict cannot come before the test lets it.
"""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Any

import pytest

import hybridexec
from hybridexec._routing import Decision, LearningClassifier, WouldWait, _ticket
from hybridexec._routing._rules import waiting_refused

from .conftest import wait_until

pytestmark = pytest.mark.timeout(60)

HELD = 3.0  # the longest the first call is held (the old submit took 0.25 s per call)
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def held(gate: threading.Event, x: int) -> tuple[int, str, bool]:
    """Wait for ``gate`` (the first call only, in effect); return x, the context, and whether
    the gate opened in time."""
    opened = gate.wait(HELD)
    return x, var.get(), opened


def failing(gate: threading.Event, x: int) -> int:
    gate.wait(HELD)
    raise ValueError(f"item {x}")


@pytest.fixture
def no_early_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ticket, "WINDOW_SECONDS", None)  # the window reports at the call's end


def test_submit_returns_while_the_first_call_is_measured(no_early_verdict: None) -> None:
    gate = threading.Event()
    with hybridexec.Executor() as ex:
        first = ex.submit(held, gate, 0)
        futures = [ex.submit(held, gate, i) for i in range(1, 21)]  # was 0.25 s each
        gate.set()
        assert first.result(timeout=30) == (0, "unset", True)  # the gate opened in time
        assert [f.result(timeout=30)[0] for f in futures] == list(range(1, 21))
        assert all(f.kind == "thread" for f in futures)  # it waits: the verdict is threads


def test_deferred_calls_run_in_their_submitters_context(no_early_verdict: None) -> None:
    gate = threading.Event()
    with hybridexec.Executor() as ex:
        first = ex.submit(held, gate, 0)
        token = var.set("at submit")
        try:
            second = ex.submit(held, gate, 1)
        finally:
            var.reset(token)
        gate.set()
        assert first.result(timeout=30)[1] == "unset"
        assert second.result(timeout=30)[1] == "at submit"


def test_a_deferred_call_can_be_cancelled_and_errors_reach_its_future(
    no_early_verdict: None,
) -> None:
    gate = threading.Event()
    with hybridexec.Executor() as ex:
        first = ex.submit(failing, gate, 0)
        cancelled = ex.submit(failing, gate, 1)
        second = ex.submit(failing, gate, 2)
        assert cancelled.cancel()
        gate.set()
        with pytest.raises(ValueError, match="item 0"):
            first.result(timeout=30)
        with pytest.raises(ValueError, match="item 2"):
            second.result(timeout=30)
        assert cancelled.cancelled()


def test_shutdown_runs_the_calls_still_waiting_for_a_verdict(no_early_verdict: None) -> None:
    gate = threading.Event()
    ex = hybridexec.Executor()
    first = ex.submit(held, gate, 0)
    futures = [ex.submit(held, gate, i) for i in range(1, 6)]
    threading.Timer(0.2, gate.set).start()  # the first call returns while shutdown waits
    ex.shutdown(wait=True)
    assert first.done()
    assert [f.result(timeout=0)[0] for f in futures] == [1, 2, 3, 4, 5]


def test_shutdown_cancel_futures_cancels_the_calls_waiting(no_early_verdict: None) -> None:
    gate = threading.Event()
    ex = hybridexec.Executor()
    first = ex.submit(held, gate, 0)
    futures = [ex.submit(held, gate, i) for i in range(1, 6)]
    ex.shutdown(wait=False, cancel_futures=True)  # no verdict yet: none of them was placed
    gate.set()
    ex.shutdown(wait=True)
    assert first.result(timeout=0)[0] == 0  # it was running
    assert all(f.cancelled() for f in futures)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_does_not_run_the_parents_waiting_calls(no_early_verdict: None) -> None:
    gate = threading.Event()
    with hybridexec.Executor() as ex:
        first = ex.submit(held, gate, 0)
        second = ex.submit(held, gate, 1)
        pid = os.fork()
        if pid == 0:  # the child: its own calls work; the parent's are not its business
            try:
                opened = threading.Event()
                opened.set()
                ok = ex.submit(abs, -3).result(timeout=20) == 3
                # held is being measured in the parent: the child measures it afresh
                ok = ok and ex.submit(held, opened, 7).result(timeout=20)[0] == 7
                code = 0 if ok else 1
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        gate.set()
        assert os.waitstatus_to_exitcode(status) == 0
        assert first.result(timeout=30)[0] == 0
        assert second.result(timeout=30)[0] == 1


class _ExitOnce(LearningClassifier):
    """Would wait on the submitter's thread; its first answer to a placer is a SystemExit."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0

    def classify(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Decision:
        if waiting_refused():
            raise WouldWait
        self.answers += 1
        if self.answers == 1:
            raise SystemExit("from the classifier")
        return Decision("thread", "test: threads")


def test_a_base_exception_ends_its_call_and_the_placer_goes_on() -> None:
    with hybridexec.Executor(classifier=_ExitOnce()) as ex:
        first, second = ex.submit(abs, -1), ex.submit(abs, -2)
        with pytest.raises(SystemExit, match="from the classifier"):
            first.result(timeout=30)
        assert second.result(timeout=30) == 2  # was queued behind it: not stranded
        assert ex.submit(abs, -3).result(timeout=30) == 3


def test_no_thread_for_a_placer_means_the_submitter_waits_as_before(
    no_early_verdict: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = threading.Thread.start

    def refuse_placers(self: threading.Thread) -> None:
        if self.name == "hybridexec-placer":
            raise RuntimeError("can't start new thread")  # what EAGAIN looks like
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse_placers)
    gate = threading.Event()
    with hybridexec.Executor() as ex:
        first = ex.submit(held, gate, 0)
        threading.Timer(0.1, gate.set).start()  # the call waits for the verdict, then runs
        second = ex.submit(held, gate, 1)
        assert second.result(timeout=30)[0] == 1
        assert first.result(timeout=30) == (0, "unset", True)


def also_held(gate: threading.Event, x: int) -> tuple[int, str, bool]:
    """A second function being learned (its own key)."""
    return held(gate, x)


def test_the_next_function_learned_is_handed_to_a_spare_placer_not_a_new_thread(
    no_early_verdict: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The submitter waits in Thread.start until a new thread runs: 2-11 ms while measured
    # calls hold the GIL. A spare placer, started by the first one, takes the next key.
    gate = threading.Event()
    with hybridexec.Executor() as ex:
        futures = [ex.submit(held, gate, 0), ex.submit(held, gate, 1)]  # a placer, a spare
        deferrals = ex._router.deferrals
        assert deferrals is not None
        assert wait_until(lambda: deferrals._spares == 1, 10.0)
        started: list[str] = []
        start = threading.Thread.start

        def counted(thread: threading.Thread) -> None:
            if threading.current_thread() is threading.main_thread():
                started.append(thread.name)
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", counted)
        futures += [ex.submit(also_held, gate, 2), ex.submit(also_held, gate, 3)]
        assert "hybridexec-placer" not in started
        gate.set()
        assert [f.result(timeout=30)[0] for f in futures] == [0, 1, 2, 3]
        # Nothing left to learn: the spares end.
        assert wait_until(
            lambda: not any(t.name == "hybridexec-placer" for t in threading.enumerate()), 10.0
        )
