"""An outside tester's cases for round 12 (tester 12b): the process lane's fast path.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring and fails on
main 90ba57f (Python 3.11). B3 (a process initializer failing in one worker breaks the whole
lane, where docs/timeouts-and-killing.md said only that worker's tasks fail) was settled in the
docs: the lane breaks as ``ProcessPoolExecutor`` does (``tests/test_executor.py``,
``test_failing_initializer_breaks_the_process_lane_as_the_stdlib_does``).

Tiny calls of a plain function with small plain arguments travel in groups
(``_process/_group.py``); these tests submit exactly such calls.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time
from pathlib import Path

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(30)


def note(path: str, x: int, crash: int, hold: int) -> int:
    """Append ``s<x>`` to ``path``, sleep 5 s if ``x == hold``, append ``e<x>``.

    ``x == crash`` ends the worker with ``os._exit(3)`` between the two lines.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b"s%d\n" % x)
        if x == crash:
            os._exit(3)
        if x == hold:
            time.sleep(5.0)
        os.write(fd, b"e%d\n" % x)
    finally:
        os.close(fd)
    return x


def read_log(path: Path) -> tuple[collections.Counter[int], collections.Counter[int]]:
    starts: collections.Counter[int] = collections.Counter()
    ends: collections.Counter[int] = collections.Counter()
    if path.exists():
        for line in path.read_text().split():
            (starts if line[0] == "s" else ends)[int(line[1:])] += 1
    return starts, ends


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the workers' rings need memfd")
def test_a_crash_in_a_group_does_not_run_its_finished_neighbours_again(tmp_path: Path) -> None:
    """B1: one plain ``submit`` call of a storm that kills its worker (``os._exit``) makes
    the calls grouped with it that had FINISHED in the worker, but whose replies were not
    flushed yet (the worker answers a group every 0.5 ms), run a second time: 30 to 75
    tiny calls, each a plain ``ex.options(kind="process").submit(fn, i)``, execute twice
    (their side effects happen twice) and the culprit itself runs (and crashes) twice.
    ``_process/_crashes.py`` ``_on_crash`` re-sends every call of the group without a reply
    (``seal`` + ``pending.appendleft``), whether it ran or not. docs/guarantees.md ("A
    worker dies"): its task fails, "other tasks go on", and "the calls sent to it that had
    not started" run on the replacement; the re-run caveat is written for a ``map`` batch
    only. ``ProcessPoolExecutor`` never runs a submitted call twice. (Three storms, one
    crash each: a single storm shows it about 7 times in 8.)
    """
    twice: dict[int, list[int]] = {}
    for crash in (300, 900, 1500):
        log = tmp_path / f"calls{crash}.log"
        with hx.Executor(max_processes=2) as ex:
            lane = ex.options(kind="process")
            futures = [lane.submit(note, str(log), i, crash, -1) for i in range(2000)]
            _, not_done = concurrent.futures.wait(futures, timeout=8)
        assert not not_done
        assert isinstance(futures[crash].exception(), hx.WorkerCrashedError)
        assert [f.result() for i, f in enumerate(futures) if i != crash] == [
            i for i in range(2000) if i != crash
        ]
        starts, _ = read_log(log)
        again = sorted(i for i, n in starts.items() if n > 1 and i != crash)
        if again:
            twice[crash] = again
    assert twice == {}


def test_cancel_of_a_running_grouped_call_kills_its_worker(tmp_path: Path) -> None:
    """B2: ``fut.cancel()`` of a plain process call that is RUNNING inside a group returns
    True and the future is cancelled, but its worker is not killed: the call runs to its end
    (5 s here; its side effects happen after ``cancel()`` said it was stopped) and every call
    queued behind it waits those 5 s. The same call submitted with a keyword argument (so it
    travels alone) is killed at once and the rest finish in ~0.2 s. Guess:
    ``_process/_manager.py`` ``_check_head`` only arms the kill (``drop_at``) when the
    worker's head call (``worker.task``: the oldest without a reply, an earlier call of the
    group whose reply is not flushed yet) is done, not when the cancelled call runs behind
    it in the same frame. docs/timeouts-and-killing.md, "Cancelling running work": in a
    worker process, ``cancel()`` returns True and "the worker is killed and replaced".
    """
    stuck: dict[int, tuple[int, int]] = {}
    for hold in (300, 700):  # two storms: one shows it about 4 times in 5
        log = tmp_path / f"calls{hold}.log"
        with hx.Executor(max_processes=1) as ex:
            lane = ex.options(kind="process")
            for _ in range(30):  # a warm worker, and the function measured as tiny
                warm = lane.submit(note, str(tmp_path / "warm.log"), -1, -2, -3)
                assert warm.result(15) == -1
            futures = [lane.submit(note, str(log), i, -1, hold) for i in range(1000)]
            deadline = time.monotonic() + 10
            while b"s%d\n" % hold not in (log.read_bytes() if log.exists() else b""):
                assert time.monotonic() < deadline
                time.sleep(0.002)
            try:
                assert futures[hold].cancel() is True
                assert futures[hold].cancelled()
                rest = [f for i, f in enumerate(futures) if i != hold]
                _, late = concurrent.futures.wait(rest, timeout=2.0)
                _, ends = read_log(log)
                if late or ends[hold]:
                    stuck[hold] = (len(late), ends[hold])  # calls still waiting after 2 s
            finally:
                ex.kill_workers()
    assert stuck == {}
