"""A child forked while BLAS pools are narrowed gets their counts back (LocalPools on fork)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("threadpoolctl")

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import os
import numpy
from threadpoolctl import threadpool_info
from hybridexec._process._threadlimits import local_pools

def blas():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

found = blas()
pools = local_pools()
assert pools.prepare(), "no BLAS pool found"
owner = object()
pools.narrow(owner, 1)
pools.settle()
narrowed = blas()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, repr(blas()).encode())
    os._exit(0)
os.close(write)
child = os.read(read, 1000).decode()
os.waitpid(pid, 0)
pools.release(owner)
pools.settle()
print(found, narrowed, child, blas(), sep="|")
"""


@pytest.mark.timeout(60)
def test_a_child_forked_while_blas_is_narrowed_gets_every_thread_back() -> None:
    # In a fresh interpreter: os.fork() in this multi-threaded test process would warn.
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}  # no *_NUM_THREADS
    env.update((k, v) for k, v in os.environ.items() if k in ("TMPDIR", "HOME"))
    out = (
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SCRIPT)],
            capture_output=True,
            text=True,
            timeout=50,
            env=env,
            check=True,
        )
        .stdout.strip()
        .split("|")
    )
    found, narrowed, child, after = out
    if found == "[1]":
        pytest.skip("this machine's BLAS has one thread: nothing to narrow")
    assert narrowed == "[1]"
    assert child == found  # before the fix: [1] for good
    assert after == found
