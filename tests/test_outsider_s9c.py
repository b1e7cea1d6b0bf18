"""An outside tester's cases for round 9 (third wave): lane threads, the bootstrapping refusal
of unguarded scripts, and results rebuilt by their reader.

Each test names the defect of the tester's report (K1, ...) in its docstring and fails on main
042543a (Python 3.11). The user's program runs as a script in an interpreter of its own
(``tests/scenario.py``), its whole session killed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenario import run_script

pytestmark = pytest.mark.timeout(60)

JOIN = 8.0  # seconds a stopped process (actor, child) gets to end; it needs well under one

ACTOR = f"""
    import hybridexec as hx

    def neg(x):
        return -x

    class Uses:
        def work(self):
            # The default executor's process lane, started inside the actor's process.
            return list(hx.map(neg, [1, 2], kind="process"))

    if __name__ == "__main__":
        ref = hx.spawn(Uses, kind="process")
        print("result", ref.ask(Uses.work).result(timeout=30), flush=True)
        ref.stop(wait=False)
        print("joined", ref.join({JOIN}), flush=True)
        ref.kill()
"""

CHILD = f"""
    import multiprocessing
    import hybridexec as hx

    def neg(x):
        return -x

    def child():
        print("child", list(hx.map(neg, [1, 2], kind="process")), flush=True)

    if __name__ == "__main__":
        proc = multiprocessing.get_context("spawn").Process(target=child)
        proc.start()
        proc.join({JOIN})
        print("joined", proc.exitcode is not None, flush=True)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
"""


@pytest.mark.parametrize("body", [ACTOR, CHILD], ids=["process-actor", "spawn-child"])
def test_process_lane_started_in_a_multiprocessing_child_lets_it_exit(
    tmp_path: Path, body: str
) -> None:
    """K1: a process lane started inside a multiprocessing child (a process actor's handler,
    or a plain ``multiprocessing.Process`` target) using the default executor, or any executor
    left open, keeps that child from ever exiting: multiprocessing's ``_bootstrap`` ends a
    child with ``util._exit_function`` (which joins every non-daemon child process) and
    ``os._exit``, never the ``atexit`` hooks, so the lane is never shut down and its workers
    (non-daemon ``multiprocessing`` children waiting for work) are joined for ever. A stopped
    actor never ends (``ref.stop()`` hangs; ``join`` says False); ``Process.join()`` hangs.
    """
    done = run_script(tmp_path, body, timeout=JOIN + 10)
    assert "joined True" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert done.returncode == 0, done.stderr[-2000:]
