"""An outside tester's cases for round 12 (tester 12a): routing, the CPU budget, limits, failures.

Each test names the defect of the tester's report (A1, A2, ...) in its docstring and fails on
main 90ba57f (Python 3.11).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(30)

LOOP = 400_000  # a Python loop of some 20-40 ms: GIL-bound


def mode_work(n: int, mode: str = "io") -> int:
    """Sleeps when ``mode == "io"``, runs a Python loop otherwise (a flag-keyed shape)."""
    if mode == "io":
        time.sleep(0.03)
        return 0
    total = 0
    for i in range(n):
        total += i
    return total


def test_explain_reads_the_verdict_of_a_keyword_flag_shape() -> None:
    """A2: ``ex.explain(fn, *args, **kwargs)`` drops the keyword arguments, so for a function
    whose shapes are told apart by a keyword flag (docs/routing.md: ``convert(path,
    mode="io")`` and ``convert(path, mode="cpu")`` get verdicts of their own) it answers
    "not seen yet: its first call will be measured on a thread" (``kind == "thread"``,
    ``learned == False``) for BOTH shapes once both are learned, while the executor sends the
    ``mode="cpu"`` calls to processes and the ``mode="io"`` calls to threads. The docstring of
    ``Executor.explain`` takes "Keyword arguments of a typical call". ``_views.py``
    ``explain_call``: ``explain(fn, args if args or kwargs else None)``: ``kwargs`` never
    reach the classifier's key.
    """
    with hx.Executor(max_processes=2) as ex:
        lanes: dict[str, str] = {}
        for mode in ("io", "cpu"):
            for _wave in range(4):
                futures = [ex.submit(mode_work, LOOP, mode=mode) for _ in range(4)]
                for future in futures:
                    future.result(timeout=20)
            lanes[mode] = futures[-1].kind
        answers = {mode: ex.explain(mode_work, LOOP, mode=mode) for mode in ("io", "cpu")}
    for mode in ("io", "cpu"):
        assert answers[mode].learned, (mode, str(answers[mode]))
        assert answers[mode].kind == lanes[mode], (mode, lanes, str(answers[mode]))


BLAS_SCRIPT = """
import os

import numpy  # loaded at module level: a worker has OpenBLAS loaded before its first task
import threadpoolctl

import hybridexec as hx


def blas_threads():
    counts = [
        (lib["internal_api"], lib["num_threads"])
        for lib in threadpoolctl.threadpool_info()
        if lib["user_api"] == "blas"
    ]
    return os.environ.get("OPENBLAS_NUM_THREADS"), counts


if __name__ == "__main__":
    print("parent", blas_threads())
    with hx.Executor(max_processes=2) as ex:
        print("worker", ex.options(kind="process").submit(blas_threads).result(timeout=20))
"""


def test_worker_keeps_the_openblas_thread_count_the_user_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A1: a user who runs ``OPENBLAS_NUM_THREADS=2 python job.py`` (numpy imported at module
    level, ``Executor(max_processes=2)`` on 2 cores) gets OpenBLAS on ONE thread in every
    worker: the variable is there ('2') but ``threadpoolctl`` reports ``num_threads == 1``.
    docs/routing.md, Known limits: "a value you set is kept"; ``_threadlimits.py``: "A
    variable the user set (in the parent's environment) is never overridden."
    ``apply_thread_limits`` calls ``threadpool_limits(limits=1, user_api=None)`` (every
    library) whenever ``OMP_NUM_THREADS`` and one of MKL/VECLIB are unset by the user, so the
    OpenBLAS count the user chose is replaced at run time.
    """
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    from hybridexec._process import usable_cpus

    if usable_cpus() < 2:
        pytest.skip("needs 2 usable CPUs for OpenBLAS to start 2 threads")
    for name in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    done = run_script(tmp_path, BLAS_SCRIPT, timeout=25)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["parent"] == "('2', [('openblas', 2)])", done.stdout
    assert lines["worker"] == "('2', [('openblas', 2)])", done.stdout


def killed_every_time(folder: str, i: int) -> int:
    """Notes each run of item ``i`` in ``folder``; item 3 is SIGKILLed (as by the OOM killer)."""
    with open(os.path.join(folder, str(i)), "a", encoding="utf-8") as notes:
        notes.write("run\n")
    if i == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def test_sigkilled_item_of_a_batch_runs_at_most_twice(tmp_path: Path) -> None:
    """A3: in ``hx.map(..., chunksize=3, kind="process", return_exceptions=True)`` an item
    that is SIGKILLed every time it runs (an OOM victim) runs THREE times (3 of 3 runs; twice
    with ``chunksize=None`` or 1): once in its batch, once when the process lane splits the
    batch and runs its items one by one, and once more when the map retries the SIGKILLed
    item alone (``_mapping.py`` ``retry_killed``). docs/timeouts-and-killing.md and
    docs/guarantees.md: the item "runs once more, alone ... Killed a second time, it fails
    with its WorkerCrashedError". A third OOM kill (and a third run of its side effects) for
    one item is past that bound.
    """
    with hx.Executor(max_processes=2) as ex:
        results = hx.map(
            killed_every_time,
            [str(tmp_path)] * 8,
            range(8),
            executor=ex,
            kind="process",
            chunksize=3,
            return_exceptions=True,
        )
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert isinstance(results[3], hx.WorkerCrashedError)
    runs = len((tmp_path / "3").read_text(encoding="utf-8").split())
    assert runs <= 2, f"the SIGKILLed item ran {runs} times"


@hx.task(max_memory=2**28)
def limited(x: int) -> int:
    """A task that must run in a process (it has a memory limit)."""
    return x


def test_map_with_an_impossible_kind_fails_at_the_call_with_return_exceptions() -> None:
    """A4 (contract reading; low): ``hx.map(limited, items, kind="thread")`` for a task with
    ``max_memory`` raises ``ValueError("max_memory needs a process: it cannot apply with
    kind='thread'")`` at the call, but with ``return_exceptions=True`` the same mistake is
    not raised: every item gets its own copy of that ``ValueError`` in its place (a million
    items, a million errors, nothing run, ``stats()["submitted"]`` all zero); so do
    ``hx.imap``/``hx.amap`` and an ``@hx.io_bound`` function mapped through
    ``ex.options(max_memory=...)``. The options conflict concerns the call, not any item
    (docs/timeouts-and-killing.md: "a ValueError at submit"; getting-started: an invalid
    ``kind=`` or ``limit=`` is raised at the call even with ``return_exceptions``).
    """
    with hx.Executor(max_processes=1) as ex, pytest.raises(ValueError, match="max_memory"):
        hx.map(limited, range(3), kind="thread", executor=ex, return_exceptions=True)
