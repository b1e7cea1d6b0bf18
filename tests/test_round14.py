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
