"""Round 17's fixes (fixer y): Ctrl-C at exit, maps under a shutdown, waits in a timed-out task.

17b's B7, B4 and B2 were each one face of a class: every way work of the default executor can
still be running when Ctrl-C ends the program (B7); every view of ``Executor.map`` that submits
while it yields (B4); every wait on a hybridexec future inside a thread task that times out
(B2). These cover the faces the tester did not try; each scenario that needs a fresh
interpreter runs as a script in a session of its own, killed at the end.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from .scenario import kill_session, run_script, start_script

pytestmark = pytest.mark.timeout(60)


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (dead, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


# ---- B7: Ctrl-C ends the program while the default executor's calls run ---------------------

_CTRL_C_WITH_DEFAULT_WORK_RUNNING = """
import asyncio, os, signal, sys, threading, time
import hybridexec as hx

def forever(i):
    with open(f"pid-{i}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(f"pid-{i}.tmp", f"pid-{i}")
    while True:
        time.sleep(1)

async def forever_async():
    await asyncio.sleep(600)

KEPT = []

def started(n):
    while sum(f.startswith("pid-") and not f.endswith(".tmp") for f in os.listdir(".")) < n:
        time.sleep(0.01)

def main(how):
    if how == "submit":
        KEPT.append(hx.default_executor().options(kind="process").submit(forever, 0))
        KEPT.append(hx.default_executor().options(kind="thread").submit(time.sleep, 600))
        KEPT.append(hx.default_executor().submit(forever_async))
        started(1)
    elif how == "imap-kept":  # the iterator outlives the frame: the map never cancels itself
        KEPT.append(hx.imap(forever, range(2), kind="process", chunksize=1))
        threading.Thread(target=lambda: next(KEPT[0], None), daemon=True).start()
        started(2)
    else:  # hx.map, Ctrl-C uncaught while it waits
        threading.Thread(target=lambda: (started(2), os.kill(os.getpid(), signal.SIGINT))).start()
        hx.map(forever, range(2), kind="process", chunksize=1)
    print("pids", *sorted(open(f).read() for f in os.listdir(".") if f.startswith("pid-")),
          flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)

if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.mark.parametrize("how", ["submit", "imap-kept", "map"])
def test_ctrl_c_with_the_default_executors_work_running_kills_it_and_exits_130(
    tmp_path: Path, how: str
) -> None:
    """B7, widened: whatever put the default executor's work in flight (``submit`` of process,
    thread and ``async def`` work; an ``imap`` kept alive elsewhere, which never cancels its
    calls; ``hx.map`` stopped by the Ctrl-C), a Ctrl-C that ends the program waits for none of
    it: exit status 130 within seconds, and the workers that ran the calls are gone."""
    proc = start_script(tmp_path, _CTRL_C_WITH_DEFAULT_WORK_RUNNING, how)
    try:
        if how == "map":  # the map's own cleanup kills its calls; exit must not wait either
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(list(tmp_path.glob("pid-?"))) < 2:
                time.sleep(0.02)
            pids = [int(p.read_text()) for p in tmp_path.glob("pid-?")]
        else:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("pids"), line + (proc.stderr.read() if proc.stderr else "")
            pids = [int(p) for p in line.split()[1:]]
        assert pids
        try:
            status: int | None = proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            status = None
        assert status is not None, "still exiting 8 s after Ctrl-C: it waits for the calls"
        assert status in (130, -2), status
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.05)
        assert all(_gone(p) for p in pids), f"a worker outlived the program: {pids}"
    finally:
        kill_session(proc)
        proc.communicate()


def test_a_normal_exit_still_waits_for_the_default_executors_running_work(
    tmp_path: Path,
) -> None:
    """B7's fix is for Ctrl-C only: a program that simply ends still waits for the default
    executor's running process call (as the standard library's pools do)."""
    body = """
import os, time
import hybridexec as hx

def nap(seconds):
    open("started", "w").close()
    time.sleep(seconds)
    open("ended", "w").close()

if __name__ == "__main__":
    hx.default_executor().options(kind="process").submit(nap, 1.0)
    while not os.path.exists("started"):
        time.sleep(0.01)
"""
    proc = start_script(tmp_path, body)
    try:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
        assert (tmp_path / "ended").exists()
    finally:
        kill_session(proc)


# ---- B4: Executor.map under a shutdown from another thread -----------------------------------


class _Subclass(hx.Executor):
    """An executor whose ``submit`` is overridden: ``map`` sends every call through it."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> hx.Future[Any]:
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(
    ("view", "cancel"),
    [
        ("limit", False),
        ("buffersize", False),
        ("chunks-limit", False),
        ("chunks-buffersize", False),
        ("subclass-buffersize", False),
        ("subclass-limit", False),
        ("limit", True),
        ("buffersize", True),
    ],
)
def test_executor_map_under_a_shutdown_hands_out_every_call_that_ran(
    view: str, cancel: bool
) -> None:
    """B4, widened: every ``Executor.map`` that submits while it yields (``limit=``,
    ``buffersize=``, with chunks, through a subclass's ``submit``) hands out the result of each
    call that ran before it raises for the rest: ``RuntimeError`` after a plain shutdown,
    ``CancelledError`` after ``shutdown(cancel_futures=True)``; nothing ran that was not
    handed out, and nothing queued was cancelled by the map itself."""
    ex = (_Subclass if view.startswith("subclass") else hx.Executor)(max_threads=8)
    ran: list[int] = []
    got: list[int] = []
    errors: list[BaseException] = []
    third, shut = threading.Event(), threading.Event()

    def call(i: int) -> int:
        ran.append(i)
        time.sleep(0.02)
        return i

    def consume() -> None:
        size = {"chunksize": 2} if view.startswith("chunks") else {}
        bound = {"limit": 4} if view.endswith("limit") else {"buffersize": 4}
        try:
            for value in ex.options(kind="thread").map(call, range(200), **size, **bound):
                got.append(value)
                if len(got) == 3:  # calls are in flight: the shutdown comes now
                    third.set()
                    shut.wait(30)
        except BaseException as exc:  # what ended the map is the point
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert third.wait(30)
        ex.shutdown(cancel_futures=cancel)
    finally:
        shut.set()
        consumer.join(30)
        ex.shutdown()
    assert not consumer.is_alive()
    expected = concurrent.futures.CancelledError if cancel else RuntimeError
    assert len(errors) == 1, (errors, got)
    assert type(errors[0]) is expected, (errors, got)
    assert got == list(range(len(got))), got
    assert sorted(ran) == got, f"ran {sorted(ran)}, handed out {got}"
    if not cancel:  # the calls in flight at the shutdown ran, and were handed out
        assert len(got) > 3, got


# ---- B2: waits on hybridexec's futures inside a thread task that times out -------------------

_WAIT_IN_A_THREAD_TASK_THAT_TIMES_OUT = """
import json, os, sys, threading, time
import hybridexec as hx

def nap(i):
    with open(f"pid-{i}.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(f"pid-{i}.tmp", f"pid-{i}")
    time.sleep(30)
    return i

def wait_in(how, ex):
    procs = ex.options(kind="process")
    if how == "result":
        procs.submit(nap, 0).result()
    elif how == "result-timeout":
        procs.submit(nap, 0).result(timeout=60)
    elif how == "exception":
        procs.submit(nap, 0).exception()
    elif how == "map":
        hx.map(nap, range(2), kind="process", chunksize=1, executor=ex)
    elif how == "map-unordered":
        hx.map(nap, range(2), kind="process", chunksize=1, ordered=False, executor=ex)
    elif how == "imap":
        for _ in hx.imap(nap, range(2), kind="process", chunksize=1, executor=ex):
            pass
    elif how == "executor-map":
        list(procs.map(nap, range(2)))
    elif how == "executor-map-limit":
        list(procs.map(nap, range(2), limit=2))

if __name__ == "__main__":
    how = sys.argv[1]
    ex = hx.Executor(max_processes=2, max_threads=4)
    record, ended = {}, threading.Event()
    start = time.monotonic()

    def task():
        try:
            wait_in(how, ex)
        except BaseException as exc:
            record.update(error=type(exc).__name__, after=time.monotonic() - start)
            ended.set()
            raise

    fut = ex.options(kind="thread", timeout=1.0).submit(task)
    try:
        fut.result()
    except hx.TaskTimeoutError:
        record["timed_out"] = time.monotonic() - start
    ended.wait(10)
    pids = [int(open(f).read()) for f in os.listdir(".") if f.startswith("pid-") and "." not in f]
    print(json.dumps(dict(record, pids=pids)), flush=True)
    print("still works", ex.options(kind="thread").submit(pow, 2, 5).result(timeout=10), flush=True)
    ex.kill_workers()
    os._exit(0)
"""


@pytest.mark.parametrize(
    "how",
    [
        "result",
        "result-timeout",
        "exception",
        "map",
        "map-unordered",
        "imap",
        "executor-map",
        "executor-map-limit",
    ],
)
def test_a_wait_on_hybridexecs_futures_in_a_thread_task_is_interrupted_at_its_deadline(
    tmp_path: Path, how: str
) -> None:
    """B2, widened: in a thread task that times out, whatever waits on hybridexec's futures
    (``result()`` with or without a timeout, ``exception()``, ``hx.map`` ordered or not, an
    ``hx.imap`` loop, ``Executor.map`` plain or with ``limit=``) is interrupted at the
    deadline, not when the process calls it waits for end (30 s here); a map stopped that way
    kills its running calls; the executor works on."""
    result = run_script(tmp_path, _WAIT_IN_A_THREAD_TASK_THAT_TIMES_OUT, how, timeout=50)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr[-3000:]
    record = json.loads(lines[0])
    assert "timed_out" in record, record
    assert record.get("error") == "TaskInterrupted", (record, result.stderr[-3000:])
    assert record["after"] < 2.5, record  # the deadline is at 1 s
    assert lines[1] == "still works 32", lines
    if how.startswith(("map", "imap", "executor-map")):  # stopped early: its calls are killed
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(map(_gone, record["pids"])):
            time.sleep(0.05)
        assert all(map(_gone, record["pids"])), record
