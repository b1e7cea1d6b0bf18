"""Round 13: the classes of the outside testers' defects, beyond their own cases.

Each test names the defect it widens (13a's A5: a child forked on a library thread; ...).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)

_THREAD_TASK_FORKS = """
import os, time
import hybridexec as hx

def fork():
    pid = os.fork()
    return "child" if pid == 0 else pid  # the child returns into the thread lane's loop

if __name__ == "__main__":
    with hx.Executor(kind="thread", max_workers=1) as ex:
        child = ex.submit(fork).result(timeout=20)
        assert ex.submit(sum, [1, 2]).result(timeout=20) == 3  # the parent's lane goes on
    deadline = time.monotonic() + 10
    ended = False
    while time.monotonic() < deadline:
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            ended = True
            break
        time.sleep(0.02)
    print("CHILD_ENDED", ended, flush=True)
    if not ended:
        os.kill(child, 9)
        os.waitpid(child, 0)
"""


def test_a_child_forked_by_a_thread_task_ends_as_it_returns_into_the_lane(
    tmp_path: Path,
) -> None:
    # 13a's A5, on the thread lane (the tester saw it there too): the child, returning from
    # the task into the lane's loop, waited for the parent's next task for ever.
    result = run_script(tmp_path, _THREAD_TASK_FORKS, timeout=40)
    assert "CHILD_ENDED True" in result.stdout, (result.stdout, result.stderr[-3000:])
