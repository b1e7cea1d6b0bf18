"""An outside tester's cases for round 11 (tester 11c): what crosses the process boundary.

Each test names the defect of the tester's report (C1, C2, ...) in its docstring and fails on
main 3bbaf51 (Python 3.11).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from .scenario import ROOT, run_script

pytestmark = pytest.mark.timeout(20)


class Box:
    """An actor with nothing in it: the handlers under test are plain functions."""

    def touch(self) -> int:
        return 1


def counter_closure() -> tuple[Callable[[Box, int], int], Callable[[int], None]]:
    """A handler closing over a cell, and a setter of that cell (a closure goes by value)."""
    step = 1

    def add_step(box: Box, x: int) -> int:
        return x + step

    def set_step(value: int) -> None:
        nonlocal step
        step = value

    return add_step, set_step


def test_process_actor_handler_sees_its_closure_as_it_is_at_each_ask() -> None:
    """C2: a process actor runs a plain-function handler with the closure (and globals) it
    had at its FIRST ask: ``ref.ask(add_step, 1)`` returns 2, the closure's cell is set to
    50, and the next ``ref.ask(add_step, 1)`` returns 2 again, not 51. A lambda reading a
    ``__main__`` global does the same (script in the report). ``_actors/_process.py``
    ``_wire_ref`` keeps the cloudpickled bytes in ``self.refs[fn]`` for good, without the
    identity checks of ``_fncache`` that the executor's process lane uses (the same closure
    submitted to ``Executor(kind="process")`` returns 51; a thread actor returns 51).
    Guarantee I2 (docs/guarantees.md): "no stale data". Silent wrong results.
    """
    add_step, set_step = counter_closure()
    ref = hx.spawn(Box, kind="process")
    try:
        assert ref.ask(add_step, 1).result(timeout=15) == 2
        set_step(50)
        assert ref.ask(add_step, 1).result(timeout=15) == 51
    finally:
        ref.kill()


def test_process_actor_lambda_handler_sees_the_value_it_closes_over_now() -> None:
    """C2 (a lambda made once and asked twice): the value it reads through its closure cell
    changes between the asks; the actor answers the first value both times."""
    limit = 1

    def make() -> Callable[[Box], int]:
        return lambda box: limit

    handler = make()
    ref = hx.spawn(Box, kind="process")
    try:
        assert ref.ask(handler).result(timeout=15) == 1
        limit = 7
        assert ref.ask(handler).result(timeout=15) == 7
    finally:
        ref.kill()


def test_thread_actor_join_in_a_thread_started_after_it_ended_returns_true() -> None:
    """C1: after ``ref.stop()`` of a thread actor, ``ref.join(5)`` called in a thread started
    afterwards returns ``False`` at once (50 of 50 runs), though ``ref.is_alive()`` is
    ``False`` and ``ref.state == "stopped"``; so does any thread whose ident happens to be
    the ended actor thread's (first seen as 2 of 4 joiners of one actor returning False).
    ``_actors/_thread.py`` ``in_actor()`` compares ``threading.get_ident()`` with the actor
    thread's ident, and the OS reuses a thread id as soon as the thread is gone: the new
    thread counts as "the actor's own handler", and ``ActorRef.join`` returns False for it
    ("its own handler or hook: it cannot wait for itself"). docs/actors.md: ``join`` returns
    whether the actor is gone; the bounded stop ``ref.join(5) or ref.kill()`` then kills.
    A process actor's ``in_actor`` compares the supervisor ``Thread`` object and is immune.
    """
    wrong: list[tuple[bool, bool, str]] = []
    for _ in range(5):
        ref = hx.spawn(Box)
        assert ref.ask(Box.touch).result(timeout=10) == 1
        ref.stop()
        answers: list[bool] = []
        thread = threading.Thread(target=lambda r=ref, a=answers: a.append(r.join(5)))
        thread.start()
        thread.join(10)
        assert len(answers) == 1
        if not answers[0]:
            wrong.append((answers[0], ref.is_alive(), ref.state))
    assert wrong == []


_EXECUTORS: list[tuple[int, hx.Executor]] = []  # (the test's pid, its executor): a worker
# imports this module afresh (empty list) or forks it (another pid)


def _ask_the_executor(state: dict[str, Any]) -> None:
    if _EXECUTORS and os.getpid() == _EXECUTORS[0][0]:
        state["inner"] = _EXECUTORS[0][1].submit(int, "5").result(timeout=5)


class ReentrantError(Exception):
    """An exception whose rebuilding in the test's process asks the executor for a value."""

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        state = dict(state or {})
        _ask_the_executor(state)
        self.__dict__.update(state)


class ReentrantResult:
    """The same rebuild, for a result."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        _ask_the_executor(state)
        self.__dict__.update(state)


def raise_reentrant() -> None:
    error = ReentrantError("raised in the worker")
    error.note = "state, so that unpickling calls __setstate__"  # type: ignore[attr-defined]
    raise error


def return_reentrant() -> ReentrantResult:
    result = ReentrantResult()
    result.note = "state"  # type: ignore[attr-defined]
    return result


def test_an_exception_rebuilt_with_the_executors_help_arrives_as_a_result_does() -> None:
    """C3: a process task's exception is unpickled on the process lane's manager thread
    (``_process/_replies.py`` ``_handle_group``: ``values[index] = unpack_exception(packed)``,
    and ``_failure``), not by the thread that reads it, as results are since round 8's A3.
    So an exception whose ``__setstate__`` asks the same executor for a value (the same
    code in a result works: ``return_reentrant`` gives ``inner == 5``) waits for a reply
    that only the blocked manager thread can deliver: ``SerializationError('cannot unpickle
    the exception raised by a task: TimeoutError()')`` after its 5 s, and with no timeout
    the whole process lane hangs for good. The slow case is timing-dependent, so only in the
    report: an exception whose unpickling sleeps 3 s delays another task's ``timeout=0.5``
    to 3.0 s (the same for a result: 0.5 s). docs/hostile-input.md: "none hangs the executor".
    """
    with hx.Executor(kind="process", max_workers=2) as ex:
        _EXECUTORS[:] = [(os.getpid(), ex)]
        try:
            result = ex.submit(return_reentrant).result(timeout=15)
            assert result.inner == 5  # type: ignore[attr-defined]
            with pytest.raises(ReentrantError) as caught:
                ex.submit(raise_reentrant).result(timeout=15)
            assert caught.value.inner == 5  # type: ignore[attr-defined]
        finally:
            _EXECUTORS.clear()


_ACTORS: list[tuple[int, hx.ActorRef[Any]]] = []  # (the test's pid, the actor), as _EXECUTORS


class Answer:
    """A process actor's answer whose rebuilding in the test's process asks the actor again."""

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        state = dict(state or {})
        if _ACTORS and os.getpid() == _ACTORS[0][0]:
            state["inner"] = _ACTORS[0][1].ask(Box.touch).result(timeout=5)
        self.__dict__.update(state)


def answer(box: Box) -> Answer:
    made = Answer()
    made.note = "state"  # type: ignore[attr-defined]
    return made


def test_a_process_actors_answer_rebuilt_with_the_actors_help_arrives() -> None:
    """C3b: C3 for process actors, results too: the supervisor thread unpickles each answer
    (``_actors/_supervisor.py``) before it reads the next, so an answer whose rebuilding
    asks the same actor waits for its own reply: ``SerializationError('an answer of actor
    Box-1 would not unpickle')`` after 5 s (forever without a timeout: the actor is dead to
    every sender). The executor's results are rebuilt by their reader (round 8, A3); an
    exception raised by the handler does the same (``TimeoutError`` chained).
    """
    ref = hx.spawn(Box, kind="process")
    _ACTORS[:] = [(os.getpid(), ref)]
    try:
        rebuilt = ref.ask(answer).result(timeout=15)
        assert rebuilt.inner == 1  # type: ignore[attr-defined]
    finally:
        _ACTORS.clear()
        ref.kill()


class Maker:
    """A process actor that makes shared arrays and returns them (keeping one, or not)."""

    def __init__(self) -> None:
        self.kept: list[hx.SharedArray] = []

    def make_kept(self) -> hx.SharedArray:
        made = hx.SharedArray.zeros((1000,))
        made.array[:] = 5
        self.kept.append(made)
        return made


def total(shared: hx.SharedArray) -> float:
    return float(shared.array.sum())


def test_a_shared_array_a_process_actor_keeps_serves_its_askers_while_it_lives() -> None:
    """C4: docs/shared-memory.md said "A shared object created in a worker and returned is
    handed over: the receiving process becomes its owner", but a process actor's was not: the
    parent got an ``attached`` handle, and the segment went with the actor.

    (Lead: handing it over broke the usual case, an actor that keeps the object as its state
    and returns it: the asker's dropped handle removed the segment under the actor, outside
    tester 11d's D2. The docs now say the actor stays the owner; this holds them to it: the
    asker's handle works, a process task given it reads it, while the actor lives.)
    """
    ref = hx.spawn(Maker, kind="process")
    try:
        made = ref.ask(Maker.make_kept).result(timeout=15)
        assert not made.owner
        with hx.Executor(kind="process", max_workers=1) as ex:
            assert ex.submit(total, made).result(timeout=15) == 5000.0
        made.close()
        again = ref.ask(Maker.make_kept).result(timeout=15)  # the actor's own are intact
        assert float(again.array.sum()) == 5000.0
        again.close()
    finally:
        ref.stop()
    text = " ".join((ROOT / "docs" / "shared-memory.md").read_text(encoding="utf-8").split())
    assert "One that a **process actor** made stays the actor's" in text


_FORK_MODULE = """
import os


class ForkOnPickle:
    # Forks as it is pickled outside the script's own process (by the worker, as a result).
    def __reduce__(self):
        if str(os.getpid()) != os.environ["C5_SCRIPT_PID"]:
            os.fork()  # the child does not exit: it goes on where the worker was
        return (ForkOnPickle, ())


def make():
    return ForkOnPickle()


def value(i):
    return ("value", i)
"""

_C5_SCRIPT = """
import os, sys, time
sys.path.insert(0, os.getcwd())
import hybridexec as hx
import forkmod


def children(pid):  # the live ones: a child that exited and is not reaped yet is a zombie
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        kids = listing.read().split()
    live = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] != "Z":
                    live.append(kid)
        except FileNotFoundError:
            pass
    return live


if __name__ == "__main__":
    os.environ["C5_SCRIPT_PID"] = str(os.getpid())  # a worker runs the top level again
    ex = hx.Executor(kind="process", max_workers=1)
    worker = ex.submit(os.getpid).result(timeout=10)
    print("first", type(ex.submit(forkmod.make).result(timeout=10)).__name__, flush=True)
    deadline = time.monotonic() + 5
    while children(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("children left", len(children(worker)), flush=True)
    for i in range(4):
        try:
            print("next", ex.submit(forkmod.value, i).result(timeout=3), flush=True)
        except BaseException as exc:
            print("next failed", type(exc).__name__, flush=True)
    os._exit(0)  # no shutdown: on main it waits for the lost calls for good
"""


def test_a_result_that_forks_as_it_is_pickled_harms_no_later_task(tmp_path: Path) -> None:
    """C5: a process task's result whose ``__reduce__`` forks (the child not exiting) leaves
    the worker's child alive as a second worker on the same pipes: the first result
    arrives, then the worker's child lives on (5 s later: ``children left 1``, every run),
    and some later calls never answer or get another call's answer (``next failed
    TimeoutError`` for 1 to 3 of the next 3-4 calls in 9 runs of 10; once ``value(1)``
    returned the ``ForkOnPickle`` of the first call); ``shutdown()`` waits for good.
    docs/hostile-input.md covers a fork in ``fn`` ("The child exits as soon as it returns
    into the worker's loop ... no other task can get its answer"), and the worker checks
    ``_in_forked_child`` after the call, but not after pickling the reply:
    ``_process/_worker.py`` ``_serve`` writes ``encode_reply(...)`` from the child too, and
    the child then reads the next tasks. "Each row ends in a value or a precise exception;
    none hangs the executor."

    (Lead: the child now exits before it writes or reads. It stays a zombie until the worker
    exits, as after a fork in ``fn``: the worker cannot tell it from children a task keeps to
    wait for later, so it reaps none; "children left" counts the live ones.)
    """
    (tmp_path / "forkmod.py").write_text(_FORK_MODULE, encoding="utf-8")
    done = run_script(tmp_path, _C5_SCRIPT, timeout=19)
    assert "first ForkOnPickle" in done.stdout, done.stderr[-2000:]
    assert "children left 0" in done.stdout, done.stdout
    assert done.stdout.count("next ('value',") == 4, done.stdout + done.stderr[-2000:]


class Forker:
    """A process actor whose handler forks, the child returning as the docs' executor case."""

    def fork_and_return(self) -> str:
        os.fork()
        return "forked"

    def touch(self) -> int:
        return 1


def test_a_process_actor_handler_that_forks_leaves_the_actor_working() -> None:
    """C6: a process actor's handler that forks, the child returning (the executor's
    documented case "An ``fn`` that forks, where the child returns ... Works normally"),
    breaks the actor: the ask itself answers "forked", then every ask raises
    ``ActorBrokenError: actor Forker-1 is broken``, cause ``IndexError('pop from an empty
    deque')``: the child answers too, and the supervisor (``_actors/_supervisor.py``) pops
    a future for the extra answer from an empty queue. An internal error as the cause, no
    restart (``restarts == 0``), nothing in docs/actors.md about forks. (Asks sent at once
    after the fork may race the child's answer and pass; ``join(2)`` waits for the break.)
    """
    ref = hx.spawn(Forker, kind="process")
    try:
        assert ref.ask(Forker.fork_and_return).result(timeout=15) == "forked"
        assert not ref.join(2), (ref.state, ref.restarts)  # on main: broken within ms
        assert [ref.ask(Forker.touch).result(timeout=15) for _ in range(3)] == [1, 1, 1]
    finally:
        ref.kill()
