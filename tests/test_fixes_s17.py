"""Round 17's fixes (developers): a worker is never a copy of the program.

17a's A2-A4 were each one face of the class: a worker forked from the program's live state
inherits locks held by the forking thread, objects whose finalizers act by name, and what the
script's top level already did to its modules. These cover faces the tester did not try; each
runs as a script in a fresh interpreter.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)

_LOGGING_AT_THE_TOP = """
import logging
import sys

import hybridexec as hx

log = logging.getLogger("app")
log.addHandler(logging.StreamHandler(sys.stdout))  # the script's top level, as usual
log.setLevel(logging.INFO)


def task(x):
    log.info("task %d", x)
    sys.stdout.flush()
    return x


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        print("result", ex.options(kind="process").submit(task, 7).result(timeout=30), flush=True)
"""


def test_a_handler_added_at_the_top_of_the_script_prints_a_workers_record_once(
    tmp_path: Path,
) -> None:
    """A handler the script adds at its top level is added once in a worker, as under the
    standard library's pools: each record a process task logs is printed once, not twice."""
    proc = run_script(tmp_path, _LOGGING_AT_THE_TOP, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["task 7", "result 7"], proc.stdout + proc.stderr


_SEMAPHORE_AND_CONDITION_HELD = """
import threading

import hybridexec as hx
import shared


def task(x):
    with shared.GATE, shared.COND:
        return x * 2


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex, shared.GATE, shared.COND:
        fut = ex.options(kind="process", timeout=20).submit(task, 21)
        print("result", fut.result(timeout=30), flush=True)
"""


def test_a_semaphore_or_condition_held_at_the_first_process_task_is_free_in_a_worker(
    tmp_path: Path,
) -> None:
    """A ``Semaphore`` and a ``Condition`` held by the submitting thread are a fresh worker's
    to take (the tester's A4 was a plain ``Lock``)."""
    (tmp_path / "shared.py").write_text(
        "import threading\nGATE = threading.Semaphore(1)\nCOND = threading.Condition()\n",
        encoding="utf-8",
    )
    proc = run_script(tmp_path, _SEMAPHORE_AND_CONDITION_HELD, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["result 42"], proc.stdout + proc.stderr


_NAMED_TEMPORARY_FILE = """
import os

import hybridexec as hx
import cfg


def drop():
    cfg.SCRATCH = None  # a worker letting go of its module's file
    return os.getpid()


if __name__ == "__main__":
    path = cfg.SCRATCH.name
    with hx.Executor(max_processes=1) as ex:
        ex.options(kind="process").submit(drop).result(timeout=30)
    print("still there", os.path.exists(path), flush=True)
"""


def test_a_worker_dropping_a_named_temporary_file_leaves_the_programs_in_place(
    tmp_path: Path,
) -> None:
    """A ``NamedTemporaryFile`` (unlinked by name when dropped) made by a module at import is
    the program's own: a worker dropping its module's global never removes the program's."""
    (tmp_path / "cfg.py").write_text(
        "import tempfile\nSCRATCH = tempfile.NamedTemporaryFile(dir='.', suffix='.tmp')\n",
        encoding="utf-8",
    )
    proc = run_script(tmp_path, _NAMED_TEMPORARY_FILE, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["still there True"], proc.stdout + proc.stderr
