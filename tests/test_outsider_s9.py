"""An outside tester's cases for round 9: how a program starts and how it ends.

Each test names the defect of the tester's report (G1, G2, ...) in its docstring; each fails
on 983d517 (Python 3.11). They run a user's script in an interpreter of its own
(``tests/scenario.py``) and use the public API only.
"""

from __future__ import annotations

import select
import time
from pathlib import Path

import pytest

from tests.scenario import MAIN_THREAD_WAITS, kill_session, run_script, start_script

pytestmark = pytest.mark.timeout(60)


# ---- G1: a Ctrl-C that interrupts shutdown(wait=True) loses the running process calls --------

_G1_SCRIPT = (
    """
import os, signal, sys, threading, time
import hybridexec as hx


def work(d, i):
    open(os.path.join(d, f"started{i}"), "w").close()
    while not os.path.exists(os.path.join(d, "gate")):  # opened after the interrupt
        time.sleep(0.01)
    open(os.path.join(d, f"done{i}"), "w").close()
    return i


def ctrl_c_inside_the_join(d):
    # Ctrl-C once both calls run and the main thread waits in shutdown()'s Thread.join.
    while True:
        names = main_thread_frames()
        started = all(os.path.exists(os.path.join(d, f"started{i}")) for i in range(2))
        if started and "shutdown" in names and "join" in names:
            break
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)

"""
    + MAIN_THREAD_WAITS
    + """


if __name__ == "__main__":
    d = os.getcwd()
    ex = hx.Executor(max_processes=2)
    futures = [ex.options(kind="process").submit(work, d, i) for i in range(2)]
    threading.Thread(target=ctrl_c_inside_the_join, args=(d,), daemon=True).start()
    try:
        ex.shutdown(wait=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    gate = os.path.join(d, "gate")
    if sys.argv[1] == "again":  # the calls may end once a second shutdown waits for them
        waits = {"shutdown", "join"}
        threading.Thread(target=open_when_main_waits, args=(gate, waits), daemon=True).start()
        ex.shutdown(wait=True)
        print("after second shutdown:", [f.done() for f in futures], flush=True)
    else:  # the calls may end once the exit waits for them
        waits = {"run_exit_hooks", "join"}  # the library's exit hook, in a join
        threading.Thread(target=open_when_main_waits, args=(gate, waits), daemon=True).start()
"""
)


@pytest.mark.parametrize("then", ["exit", "again"])
def test_caught_ctrl_c_in_shutdown_still_lets_running_process_calls_finish(
    tmp_path: Path, then: str
) -> None:
    """G1: a ``KeyboardInterrupt`` that interrupts ``ex.shutdown(wait=True)`` while process
    calls run, caught by the program, which goes on: docs/timeouts-and-killing.md says the
    running calls are then left "to finish" and that executors left open finish their
    running work at exit. On Python 3.10 to 3.12 the interrupted ``Thread.join`` of the
    process lane's manager marks that thread stopped (a CPython bug, fixed in 3.13): a second
    ``shutdown(wait=True)`` returns at once with the calls still running ("again"), and
    interpreter exit does not wait for them either: the workers are killed and the calls
    never finish, silently ("exit"). Python 3.13 finishes both calls.
    """
    done = run_script(tmp_path, _G1_SCRIPT, then, timeout=45)
    assert "interrupted" in done.stdout, done.stderr
    if then == "again":
        assert "after second shutdown: [True, True]" in done.stdout, done.stdout + done.stderr
    finished = sorted(p.name for p in tmp_path.glob("done*"))
    assert finished == ["done0", "done1"], f"exit {done.returncode}; stderr:\n{done.stderr}"


# ---- G2: Ctrl-C at exit still gives a live actor's handler its 5 s grace -----------------------

_G2_SCRIPT = """
import sys, time
import hybridexec as hx
import hybridexec._actors._ref as _ref

_ref.EXIT_GRACE = 120.0  # the lead: a wait for it shows whatever the machine's load


class Slow:
    def nap(self):
        time.sleep(60)


def work():
    time.sleep(60)


if __name__ == "__main__":
    ex = hx.Executor(max_processes=1)  # left open, its call still running
    fut = ex.options(kind="process").submit(work)
    actor = hx.spawn(Slow, kind=sys.argv[1])  # never stopped, its handler still running
    started = actor.ask(Slow.nap)
    while not (fut.running() and started.running()):
        time.sleep(0.01)
    print("ready", flush=True)
    raise KeyboardInterrupt  # Ctrl-C ends the program
"""


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_ctrl_c_exit_does_not_wait_for_a_live_actors_handler(tmp_path: Path, kind: str) -> None:
    """G2: a program ended by Ctrl-C (an uncaught ``KeyboardInterrupt``) with an executor of
    its own running a process call and an actor (process or thread) whose handler runs:
    docs/timeouts-and-killing.md says that when Ctrl-C ends the program "nothing is waited
    for at exit", and guarantees.md I5 "no fixed multi-second wait anywhere". The exit
    waits the actors' fixed 5 s grace (``_actors._ref._stop_all`` joins each actor for
    ``EXIT_GRACE`` without looking at ``_lifecycle.interrupted()``) before the actor is killed.
    Without the open executor the same exit is prompt (about 0.2 s).

    The script sets the grace to 120 s (the lead, so that no load can fake the result):
    the bound below is 20 s against a 120 s wait; the prompt exit takes about 0.2 s.
    """
    proc = start_script(tmp_path, _G2_SCRIPT, kind)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 40)
        assert ready
        assert proc.stdout.readline().strip() == "ready"
        began = time.monotonic()
        rc = proc.wait(40)
        took = time.monotonic() - began
        assert rc in (130, -2), rc
        assert took < 20.0, f"Ctrl-C exit took {took:.1f} s"
    finally:
        kill_session(proc)
        proc.communicate()
