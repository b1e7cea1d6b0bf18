"""An outside tester's cases for round 12 (tester 12d): this round's fixes, from a user's side.

Each test names the defect of the tester's report (D1, D2, ...) in its docstring and fails on
main cc840b1 (Python 3.11).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(30)


@hx.cpu_bound
def hinted_type_name(x: object) -> str:
    """A hinted function (``@cpu_bound``): a hint, not an explicit ask for a process."""
    return type(x).__name__


@hx.task(kind="process")
def task_hinted_type_name(x: object) -> str:
    """The same, hinted with ``@task(kind="process")``."""
    return type(x).__name__


@pytest.mark.parametrize("fn", [hinted_type_name, task_hinted_type_name])
def test_process_executor_fails_a_hinted_call_that_cannot_pickle(
    fn: Callable[[object], str],
) -> None:
    """D2: ``Executor(kind="process").submit(f, lock)`` of a ``@cpu_bound`` (or
    ``@task(kind="process")``) function runs ``f`` on a THREAD of the parent and returns its
    result, instead of failing with ``SerializationError``. The same call of an unhinted
    function fails as documented. docs/routing.md layer 1: "A callable or arguments that
    cannot be pickled stay on threads, unless a process was asked for (``kind="process"``
    given to the call, to ``options()`` or to the ``Executor``, or a ``max_memory``): then the
    call fails with ``SerializationError``". Round 12's C3 fix (a hint is not an explicit ask)
    let the hint override the executor's explicit kind: a user who chose a process executor
    for isolation (or to kill the call) gets the call silently in the parent process.
    """
    lock = threading.Lock()
    with hx.Executor(kind="process", max_workers=1) as ex:
        fut = ex.submit(fn, lock)
        with pytest.raises(hx.SerializationError):
            fut.result(timeout=20)


CANCEL_SENT_AHEAD = r"""
import json, sys, time
import hybridexec as hx

LOG = sys.argv[1]

def f(i):
    with open(LOG, "a") as fh:
        fh.write(f"{i}\n")
    if i == 60:
        time.sleep(3)
    return i

if __name__ == "__main__":
    with hx.Executor(kind="process", max_workers=1) as ex:
        # tiny calls, learned as such: later ones travel to the worker in groups
        for fut in [ex.submit(f, -1 - k) for k in range(200)]:
            fut.result(timeout=20)
        open(LOG, "w").close()
        futs = [ex.submit(f, i) for i in range(100)]
        deadline = time.monotonic() + 10
        while not futs[59].done() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # call 60 sleeps (3 s); 61..99 wait in the worker behind it
        running = futs[80].running()
        cancelled = futs[80].cancel()
        for fut in futs:
            try:
                fut.result(timeout=20)
            except BaseException:
                pass
        stats = ex.stats()["process_lane"]
    ran = open(LOG).read().split()
    print(json.dumps({"running": running, "cancelled": cancelled, "reported": futs[80].cancelled(),
                      "ran": "80" in ran, "groups": stats["groups"], "kills": stats["kills"]}))
"""


def test_cancel_of_a_grouped_call_waiting_in_its_worker_stops_it(tmp_path: Path) -> None:
    """D1: a tiny call that went to the worker in a group, behind a call of the group that
    runs long, reads ``running()``; its ``cancel()`` returns True and the future is cancelled,
    yet the worker is not killed (``stats()["process_lane"]["kills"] == 0``) and the call's
    code runs afterwards (its side effect, a line in a file, is there ~2.5 s after ``cancel()``
    returned True). docs/timeouts-and-killing.md: ``cancel()`` of a task that has not started
    removes it from the queue; of a running one in a process returns True and "the worker is
    killed and replaced". Here neither: a cancelled call ran. (The lane kills a worker only
    when a cancelled call becomes the first without a reply, DROP_GRACE later; a group's
    replies come together, so a cancelled call in the middle never is, and runs to its end.)
    Also on 90ba57f (before this round).
    """
    log = tmp_path / "runs.log"
    proc = run_script(tmp_path, CANCEL_SENT_AHEAD, str(log), timeout=25)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["groups"] > 0, got  # the precondition: calls travelled in groups
    if got["cancelled"]:
        assert got["reported"], got
        assert not got["ran"] or got["kills"] >= 1, got  # cancelled, yet it ran, not killed
        assert not got["ran"], got


def plain_type_name(x: object) -> str:
    """An unhinted function."""
    return type(x).__name__


@hx.task(timeout=5)
def timed_type_name(x: object) -> str:
    """A function whose hint sets only a timeout (``kind`` left to the router)."""
    return type(x).__name__


def test_process_executor_fails_a_timed_call_that_cannot_pickle() -> None:
    """D3: in ``Executor(kind="process")``, a call with a timeout (``options(timeout=5)``, or
    ``@task(timeout=5)``) whose argument cannot pickle runs on a THREAD of the parent (its
    ``fut.kind`` is ``"thread"``; a timeout there kills nothing) instead of failing with
    ``SerializationError`` as the same call without the timeout does. docs/routing.md layer 1
    (a process asked for with ``kind="process"`` given to the ``Executor``: "the call fails
    with ``SerializationError``, as ``ProcessPoolExecutor`` fails it"). ``_routing/_rules.py``
    ``route_rules`` returns the timeout's Decision (not explicit) before it looks at the
    executor's ``default_kind``. Also on 90ba57f (before this round).
    """
    lock = threading.Lock()
    with hx.Executor(kind="process", max_workers=1) as ex:
        futs = [
            ex.options(timeout=5).submit(plain_type_name, lock),
            ex.submit(timed_type_name, lock),
        ]
        for fut in futs:
            with pytest.raises(hx.SerializationError):
                fut.result(timeout=20)
