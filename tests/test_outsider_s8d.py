"""An outside tester's cases for round 8 (d): the round-8 fixes, tried from a user's side.

Each test names the defect of the tester's report (E1, E2, ...) in its docstring; each fails
on a3bedbb. They use the public API as a user would; the cases that kill a process run as a
script in a fresh interpreter of its own session.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(120)


# ---- E1: Executor.map(timeout=inf/1e12, limit=N) raises OverflowError --------------------


def _in_a_wait(frame: FrameType | None) -> bool:
    """Whether a thread's innermost frames are a lock or condition wait."""
    names: list[str] = []
    while frame is not None and len(names) < 4:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "wait" in names


@pytest.mark.parametrize("timeout", [math.inf, 1e12, sys.float_info.max])
def test_executor_map_with_limit_takes_a_huge_timeout(timeout: float) -> None:
    """E1: ``Executor.map(fn, items, timeout=inf, limit=1)`` raises ``OverflowError`` from
    ``concurrent.futures.wait`` (_views.wait_head) as soon as the head of the map is not done:
    round 8 made inf/1e12 a timeout that never fires for tasks, ``Future.result`` and joins,
    but the map's whole-iteration timeout with a ``limit`` still reaches a lock wait as is
    (``timestamp out of range for platform time_t``). Without ``limit`` the same map works.

    The head blocks until the main thread sits in a wait (seen in its frames): no timing.
    """
    release = threading.Event()
    stop = threading.Event()
    main = threading.get_ident()

    def blocked(x: int) -> int:
        if not release.wait(30):
            raise RuntimeError("never released")
        return x * 2

    def releaser() -> None:
        while not stop.is_set():
            if _in_a_wait(sys._current_frames().get(main)):
                release.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=releaser, daemon=True)
    watcher.start()
    try:
        with hx.Executor() as ex:
            got = list(ex.options(kind="thread").map(blocked, range(3), timeout=timeout, limit=1))
    finally:
        stop.set()
        release.set()
        watcher.join(10)
    assert got == [0, 2, 4]


# ---- E2: a process actor's tells still queued in the parent are lost without on_error ----

LOST_TELLS = """
import os, signal, sys, threading
import hybridexec as hx


class Dies:
    def work(self, payload, die=False):
        if die:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    size = int(sys.argv[1])
    errors = []
    lock = threading.Lock()

    def on_error(exc):
        with lock:
            errors.append(type(exc).__name__)

    ref = hx.spawn(Dies, kind="process", on_error=on_error)
    accepted = refused = 0
    payload = b"x" * size
    for i in range(100):
        try:
            ref.tell(Dies.work, payload, die=(i == 0))
            accepted += 1
        except hx.ActorError:
            refused += 1
    print("joined", ref.join(60))
    print("accepted", accepted, "refused", refused, "reported", len(errors), sorted(set(errors)))
"""


def test_every_lost_tell_of_a_dead_process_actor_reaches_on_error(tmp_path: Path) -> None:
    """E2: a process actor (max_restarts=0) dies in its first tell; every tell it had accepted
    is lost and, per round 8, each should reach ``on_error`` as an ``ActorBrokenError``. With
    small tells all do (100 of 100); with 100 kB tells only the one written to the pipe does
    (1 of 100): the rest wait in the supervisor's overflow queue, and ``supervise``'s finally
    drops them with ``drop(None)``, which for a tell does nothing (docs/actors.md:81 says
    "once per lost tell"; the warning's count misses them too). No handler can run after
    the first message, so accepted == reported whatever the timing.
    """
    proc = run_script(tmp_path, LOST_TELLS, "100000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = proc.stdout.split()
    assert "joined True" in proc.stdout, proc.stdout
    accepted = int(words[words.index("accepted") + 1])
    reported = int(words[words.index("reported") + 1])
    assert reported == accepted, proc.stdout


# ---- E3: a process actor's result whose pickling raises a BaseException kills the actor ---


class _Refuses:
    """Pickling it raises the BaseException it was given (a user's ``__reduce__``)."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[object, ...]:
        raise self.exc("raised while pickling the result")


class ReplyActor:
    """A process actor whose result will not pickle."""

    def bad(self, which: str) -> _Refuses:
        exc = {"exit": SystemExit, "kbd": KeyboardInterrupt, "genexit": GeneratorExit}[which]
        return _Refuses(exc)

    def value_error(self) -> _Refuses:
        return _Refuses(ValueError)

    def ok(self) -> int:
        return 42


@pytest.mark.parametrize("which", ["exit", "kbd", "genexit"])
def test_process_actor_reply_whose_pickling_raises_a_base_exception(which: str) -> None:
    """E3: round 8 made a worker reply whose pickling raises SystemExit/KeyboardInterrupt/
    GeneratorExit fail its task with ``SerializationError``, the worker alive. A process
    actor's reply was left out: the actor process dies (``_actors/_child.py`` catches only
    ``SerializationError`` around ``dumps((OK, value))``), the ask fails with
    ``ActorBrokenError`` and the actor is broken for good. A ``ValueError`` from the same
    ``__reduce__`` gives ``SerializationError`` and the actor goes on (checked first).
    """
    ref = hx.spawn(ReplyActor, kind="process")
    try:
        with pytest.raises(hx.SerializationError):
            ref.ask(ReplyActor.value_error).result(60)
        assert ref.ask(ReplyActor.ok).result(60) == 42
        with pytest.raises(hx.SerializationError):
            ref.ask(ReplyActor.bad, which).result(60)
        assert ref.ask(ReplyActor.ok).result(60) == 42
    finally:
        ref.kill()


# ---- E4: a NaN timeout now waits forever (round 7 and the stdlib: a zero wait) ------------


def test_future_result_nan_does_not_wait_for_the_result() -> None:
    """E4: ``Future.result(float("nan"))`` on a running task waits until the task ends: round
    8's ``wait_long`` sends NaN down its long-wait loop (``nan <= MAX_WAIT`` is False, and
    ``left <= 0`` never holds), sleeping pieces of 11.6 days. The stdlib (and hybridexec
    before round 8, through ``Condition.wait``) treats NaN as no wait: ``TimeoutError`` at
    once. A NaN from arithmetic (a budget minus a NaN) turns a bounded wait into a hang.
    The task is released after 5 s so that the failing case ends.
    """
    release = threading.Event()
    timer = threading.Timer(5.0, release.set)
    with hx.Executor() as ex:
        future = ex.options(kind="thread").submit(release.wait, 60)
        timer.start()
        try:
            with pytest.raises((TimeoutError, ValueError)):  # no wait, or refused
                future.result(float("nan"))
        finally:
            timer.cancel()
            release.set()


class _Idle:
    """An actor with nothing to do."""


def test_actor_join_nan_does_not_wait_for_the_actor() -> None:
    """E4: ``ActorRef.join(float("nan"))`` on a live actor waits until the actor is gone
    (here: stopped after 5 s by a timer). Before round 8 it raised ``ValueError`` (from
    ``Thread.join(nan)``); returning False at once, as ``join(0)`` does, would do too.
    """
    ref = hx.spawn(_Idle, kind="thread")
    timer = threading.Timer(5.0, ref.stop)
    timer.start()
    try:
        try:
            gone = ref.join(float("nan"))
        except ValueError:
            gone = False  # refused: fine
        assert gone is False
    finally:
        timer.cancel()
        ref.stop()


# ---- E5: an on_error hook that raises SystemExit breaks a healthy process actor ----------


class FailsToTell:
    """A process actor with a tell that fails and an ask that works."""

    def fail(self) -> None:
        raise ValueError("this tell fails")

    def ok(self) -> int:
        return 1


def test_on_error_raising_system_exit_leaves_a_process_actor_alive() -> None:
    """E5: ``report`` ("never raises") catches only ``Exception`` from the user's hook; an
    ``on_error`` that calls ``sys.exit()`` (a BaseException) escapes into the process actor's
    supervisor thread, which logs "the supervisor of actor ... failed", SIGKILLs the healthy
    actor process and marks it broken: the next ask fails with ``ActorBrokenError``. The same
    escape in ``_on_exit``'s loop leaves every later lost tell unreported (1 of 20). A thread
    actor stops instead (``ActorClosedError``). docs/actors.md:85: "An on_error that raises
    is logged"; the failed tell should cost its report only.
    """
    calls: list[BaseException] = []

    def hook(exc: BaseException) -> None:
        calls.append(exc)
        sys.exit(1)

    ref = hx.spawn(FailsToTell, kind="process", on_error=hook)
    try:
        ref.tell(FailsToTell.fail)
        assert ref.ask(FailsToTell.ok).result(60) == 1
        assert len(calls) == 1
    finally:
        ref.kill()


# ---- E6: ActorRef.join(inf) from the actor's own handler spins forever --------------------


class JoinsItself:
    """A thread actor whose handler joins its own actor."""

    def join_me(self, ref: hx.ActorRef[JoinsItself], timeout: float | None) -> bool:
        return ref.join(timeout)


@pytest.mark.parametrize("timeout", [math.inf, 1e12])
def test_actor_join_inf_from_its_own_handler_returns(timeout: float) -> None:
    """E6: from the actor's own handler ``ref.join(None)`` and ``ref.join(5)`` return False at
    once (the core's ``join`` refuses to wait for itself), but ``ref.join(inf)`` or
    ``join(1e12)`` never returns: ``wait_long`` calls that join again and again until the
    deadline, a busy loop (a core's worth of CPU) for ever, and the actor is stuck.
    """
    ref = hx.spawn(JoinsItself, kind="thread")
    try:
        assert ref.ask(JoinsItself.join_me, ref, None).result(10) is False  # the contract
        assert ref.ask(JoinsItself.join_me, ref, timeout).result(10) is False
    finally:
        ref.kill()
