"""Round 14: the outside testers' defects widened to their class, and the leftovers of round 13.

Each test names what it covers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)

_THREAD_KIND_FORKS_NOTHING = """
import os
import hybridexec as hx

def children():
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return f.read().split()
    except FileNotFoundError:
        return None

def double(x):
    return 2 * x

if __name__ == "__main__":
    with hx.Executor(kind="thread") as ex:
        assert sum(ex.map(double, range(200))) == 39800
        assert ex.submit(sum, range(10**5)).result(timeout=20) == 4999950000
        print("CHILDREN_THREAD_KIND", children(), flush=True)
        # asked for by an option, the process lane still works (started the slower way)
        assert ex.options(kind="process").submit(double, 21).result(timeout=30) == 42
    print("DONE", flush=True)
"""


def test_an_executor_of_kind_thread_forks_no_helper_process(tmp_path: Path) -> None:
    # Round 13's leftover: Executor(kind="thread") forked the fork server and the guardian
    # ahead of need as its first thread started, two processes a threads-only user never uses.
    result = run_script(tmp_path, _THREAD_KIND_FORKS_NOTHING, timeout=50)
    assert "DONE" in result.stdout, (result.stdout, result.stderr[-3000:])
    line = next(x for x in result.stdout.splitlines() if x.startswith("CHILDREN_THREAD_KIND"))
    if "None" in line:
        pytest.skip("no /proc/<pid>/task/<tid>/children here")
    assert line == "CHILDREN_THREAD_KIND []", line


_CHILD_WAITS_FOR_INHERITED = """
import concurrent.futures as cf, faulthandler, os, time
import hybridexec as hx

def nap(x):
    time.sleep(x)
    return x

if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        futures = [ex.options(kind="process").submit(nap, 1.0), ex.submit(nap, 1.0)]
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later(8, exit=True)  # a hang ends the child (status 1)
            done, not_done = cf.wait(futures, timeout=5)
            print("WAIT", len(done), len(not_done), flush=True)
            ended = list(cf.as_completed(futures, timeout=5))
            print("AS_COMPLETED", len(ended), type(ended[0].exception()).__name__, flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("CHILD", os.waitstatus_to_exitcode(status), flush=True)
        print("PARENT", [f.result(timeout=20) for f in futures], flush=True)
"""


def test_futures_inherited_by_a_forked_child_end_for_wait_and_as_completed(
    tmp_path: Path,
) -> None:
    # 14a's A2 widened: result() was the tester's case; concurrent.futures.wait() and
    # as_completed() in the child waited for the parent's work too (for ever, or their timeout).
    result = run_script(tmp_path, _CHILD_WAITS_FOR_INHERITED, timeout=40)
    out = result.stdout
    assert "WAIT 2 0" in out, out + result.stderr[-3000:]
    assert "AS_COMPLETED 2 BrokenExecutorError" in out, out + result.stderr[-3000:]
    assert "CHILD 0" in out, out + result.stderr[-3000:]
    assert "PARENT [1.0, 1.0]" in out, out + result.stderr[-3000:]


def test_a_classifier_class_is_refused_as_an_instance_would_be() -> None:
    # 14c's C6 widened (14e noticed): the class itself has a classify attribute, so it passed
    # the check at construction and failed only at the first call.
    import hybridexec as hx
    from hybridexec._routing import LearningClassifier

    with pytest.raises(TypeError, match="classifier"):
        hx.Executor(classifier=LearningClassifier)  # type: ignore[arg-type]
