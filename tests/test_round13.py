"""Round 13: the classes of the outside testers' defects, beyond their own cases.

Each test names the defect it widens (13a's A5: a child forked on a library thread; ...).
"""

from __future__ import annotations

import os
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


_FOREIGN_SAME_PID = """
import os
import hybridexec as hx
from hybridexec._shm._names import identity

if __name__ == "__main__":
    shared = hx.SharedArray.zeros(4)  # ours: named with our identity, swept at exit if left
    ours = identity(os.getpid())
    other = "%04x" % ((int(ours[:4], 16) + 1) & 0xFFFF) + ours[4:]  # another PID namespace
    name = "hx%d_%st%s" % (os.getpid(), os.urandom(8).hex(), other)
    with open("/dev/shm/" + name, "wb"):
        pass
    print("FOREIGN", name, "OURS", shared.name, flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/ns"), reason="Linux PID namespaces")
def test_exit_sweep_spares_a_segment_of_another_namespace_with_our_pid(tmp_path: Path) -> None:
    # 13b's B4 at every place that matches names by pid: the exit sweep (and remove_made_by,
    # the guardian) took "our pid" for "ours"; a program in another PID namespace sharing
    # /dev/shm may have the same pid.
    result = run_script(tmp_path, _FOREIGN_SAME_PID, timeout=40)
    words = result.stdout.split()
    assert "FOREIGN" in words, (result.stdout, result.stderr[-3000:])
    foreign, ours = words[words.index("FOREIGN") + 1], words[words.index("OURS") + 1]
    left = os.path.exists("/dev/shm/" + foreign)
    if left:
        os.unlink("/dev/shm/" + foreign)
    assert left, "the exit sweep removed another namespace's segment"
    assert not os.path.exists("/dev/shm/" + ours)
