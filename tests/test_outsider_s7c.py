"""An outside tester's cases for round 7 (third tester): variants of the round's fixes.

Each test names the defect of the tester's report (F1, F2, ...) in its docstring; each failed
on fa17796. They use the public API only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .scenario import kill_session, run_script, start_script

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


# ---- F1: Ctrl-C while ``with Executor()``'s own exit waits for the queue ----------------------

CTRL_C_IN_EXIT = """
import os, signal, sys, threading, time
import hybridexec as hx


def nap(seconds):
    time.sleep(seconds)
    return seconds


if __name__ == "__main__":
    futures = []
    kept = []
    try:
        with hx.Executor(max_processes=1, max_threads=1) as ex:
            kept.append(ex)
            run = ex.options(kind=sys.argv[1])
            futures.extend(run.submit(nap, 2.0) for _ in range(6))
            while not futures[0].running():
                time.sleep(0.01)
            # Ctrl-C comes while __exit__ waits for the work (shutdown(wait=True)).
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    except KeyboardInterrupt:
        pass
    queued = futures[1:]
    print("cancelled", sum(f.cancelled() for f in queued), "of", len(queued), flush=True)
    kept[0].kill_workers()
"""


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_ctrl_c_while_the_with_block_waits_at_its_end_cancels_the_queue(
    tmp_path: Path, kind: str
) -> None:
    """F1: a ``KeyboardInterrupt`` that leaves ``with hx.Executor() as ex:`` while its
    ``__exit__`` waits for the submitted work (the usual place for Ctrl-C: submit in the
    block, let the block's end wait) cancels none of the queued calls; a program that catches
    the interrupt and goes on keeps running the whole old queue in the background (5 x 2 s
    here, on both lanes and every start method; scratch kbi_exit.py). docs/timeouts-and-
    killing.md: "A KeyboardInterrupt that leaves a ``with hx.Executor() as ex:`` block ...:
    the queued calls are cancelled". The round-7 fix looks only at an exception raised in the
    block's body (``__exit__``'s ``exc_type``), not at one raised by its own wait.
    """
    done = run_script(tmp_path, CTRL_C_IN_EXIT, kind, timeout=30)
    assert "cancelled" in done.stdout, done.stderr[-2000:]
    assert "cancelled 5 of 5" in done.stdout, done.stdout + done.stderr[-1000:]


# ---- F2: Ctrl-C while the interpreter waits at exit for running work --------------------------

CTRL_C_AT_EXIT = """
import sys
import time
import hybridexec as hx


@hx.task(kind="process")
def nap(seconds):
    time.sleep(seconds)
    return seconds


if __name__ == "__main__":
    if sys.argv[1] == "default":
        futures = [hx.submit(nap, 12.0) for _ in range(2)]
    elif sys.argv[1] == "open":  # an executor left open: exit finishes its work
        ex = hx.Executor(max_processes=1)
        futures = [ex.submit(nap, 12.0) for _ in range(2)]
    else:  # two executors left open, one call running in each
        futures = [hx.Executor(max_processes=1).submit(nap, 12.0) for _ in range(2)]
        while not futures[1].running():
            time.sleep(0.01)
    while not futures[0].running():
        time.sleep(0.01)
    print("ready", flush=True)
    # the script ends here: exit waits for the running call
"""


@pytest.mark.parametrize("executor", ["default", "open", "two-open"])
def test_ctrl_c_while_exit_waits_for_running_work_exits_130(tmp_path: Path, executor: str) -> None:
    """F2: the script ended normally and interpreter exit waits (as documented) for running
    process work (the default executor's, or an executor left open); a Ctrl-C then (SIGINT to
    the pid: the workers ignore SIGINT) stops the wait and the workers at once, but the
    program exits with status 0 and prints nothing: a shell's ``python job.py && next`` goes
    on as if the job had finished (0.03-0.07 s after the SIGINT, status 0, thread lane alike;
    scratch exit_wait.py, exit_wait2.py via harness.py). With two executors left open the
    Ctrl-C ends only the first one's wait: exit then waits for the second one's running call
    (its whole 12 s), then exits with status 0. docs/guarantees.md I5: "Ctrl-C exits
    with status 130". The ``KeyboardInterrupt`` raised inside the exit hook's wait is caught
    by ``_lifecycle.run_exit_hooks`` (``except BaseException``, logged on the NullHandler
    logger) and ``interrupted()`` is False (the script did not end with it), so the flag that
    makes CPython exit with 130 is not re-armed. (CPython's ThreadPoolExecutor also exits 0
    here on 3.11, but prints the KeyboardInterrupt.)
    """
    proc = start_script(tmp_path, CTRL_C_AT_EXIT, executor)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # the script has ended; exit is waiting for the running call
        os.kill(proc.pid, signal.SIGINT)
        started = time.monotonic()
        try:
            rc = proc.wait(timeout=6)
        except subprocess.TimeoutExpired:
            rc = None
        waited = time.monotonic() - started
        assert rc in (130, -signal.SIGINT), f"exit status {rc} {waited:.1f} s after Ctrl-C"
    finally:
        kill_session(proc)
        proc.communicate()
