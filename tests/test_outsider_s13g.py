"""An outside tester's cases for round 13 (tester 13g): this round's second wave of fixes seen
from a user's side (thread-task deadlines that wait while the thread is "unsafe",
``TaskInterrupted`` as a ``SystemExit``).

Each test names the defect of the tester's report (G1, G2, ...) in its docstring and fails on
main 1fd8329 (Python 3.11); each passed on round 12's main~25 (e5357b0).
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(30)


def _join_poll(lock: threading.Lock, release: threading.Event, ended: threading.Event) -> str:
    """Wait for a helper thread as many programs do: ``join`` with a timeout, in a loop."""
    try:
        helper = threading.Thread(target=release.wait, args=(25.0,), daemon=True)
        helper.start()
        while helper.is_alive():
            helper.join(0.05)
        return "joined"
    finally:
        ended.set()


def test_join_poll_loop_is_interrupted_at_its_deadline() -> None:
    """G1: a timed thread task that waits for a thread of its own with ``join(timeout)`` in a
    loop is never interrupted: its future fails at the deadline but its code runs on until
    the helper thread ends (for ever if it never does), the thread lane's thread stays busy
    and ``shutdown()`` (and interpreter exit) wait for it. docs/timeouts-and-killing.md: "a
    thread blocked in a wait (a ``result()``) is interrupted there"; on round 12 the code
    ended within moments of the deadline. ``_deadlines._unsafe``: the waiting thread's
    innermost frame is ``threading.Thread._wait_for_tstate_lock``, in threading.py and not
    named in ``_WAITING`` (``wait``, ``wait_for``...), so it is "unsafe" at every retry.
    """
    lock = threading.Lock()  # cannot be pickled: the task stays on a thread
    release, ended = threading.Event(), threading.Event()
    ex = hx.Executor()
    try:
        future = ex.options(timeout=0.3).submit(_join_poll, lock, release, ended)
        with pytest.raises(hx.TaskTimeoutError):
            future.result(timeout=10)
        assert ended.wait(3.0), "the task's code still runs 3 s after its deadline"
    finally:
        release.set()
        ex.shutdown(wait=True)


def _cli_main(argv: str) -> None:
    total = 0
    for i in range(20_000):
        total += i
    if argv == "--help":
        sys.exit(0)  # what argparse and click do


def _run_cli_many(lock: threading.Lock, rounds: int, ended: threading.Event) -> int:
    """Run a CLI-style entry point many times; each may end with ``sys.exit()``."""
    done = 0
    try:
        for i in range(rounds):
            try:
                _cli_main("--help" if i % 2 else "run")
            except SystemExit:
                pass
            done += 1
        return done
    finally:
        ended.set()


def test_code_catching_systemexit_is_still_stopped_at_its_deadline() -> None:
    """G2: a timed thread task whose code catches ``SystemExit`` (around ``sys.exit()`` of a
    CLI-style entry point, argparse's ``--help``, a click command) swallows the deadline's
    interruption, now that ``TaskInterrupted`` is a ``SystemExit`` subclass (3452cd9), and
    runs to its natural end: here ~3 s past a 0.3 s timeout (endless for an endless loop);
    the thread stays busy and ``shutdown()`` waits for it. On round 12 (``TaskInterrupted``
    a plain ``BaseException``) the code ended at the deadline. ``_deadlines.on_deadline``
    raises the exception once and never again, however long the thread goes on running.
    """
    lock = threading.Lock()  # cannot be pickled: the task stays on a thread
    ended = threading.Event()
    ex = hx.Executor()
    try:
        start = time.monotonic()
        future = ex.options(timeout=0.3).submit(_run_cli_many, lock, 3000, ended)
        with pytest.raises(hx.TaskTimeoutError):
            future.result(timeout=10)
        assert ended.wait(20.0)
        late = time.monotonic() - start
        assert late < 1.5, f"the task's code ended {late:.1f} s after its start (timeout 0.3 s)"
    finally:
        ex.shutdown(wait=True)
