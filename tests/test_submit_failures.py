"""A submit that cannot be carried out fails at the call, with nothing left queued (I1).

When the system refuses what a lane needs to start (a descriptor, a thread), the ``submit``
that needed it raises, and its call must never run later behind the caller's back: the caller
was told it failed, and may well submit it again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    import hybridexec as hx

    def mark(path, tag):
        with open(path, "a") as f:
            f.write(tag + "\\n")
        return tag

    if __name__ == "__main__":
        path = sys.argv[1]
        ex = hx.Executor()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        hog = []
        try:
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            ex.options(kind="process").submit(mark, path, "first")
        except OSError as exc:
            print("refused", exc.errno, flush=True)
        else:
            print("accepted", flush=True)
        for fd in hog:
            os.close(fd)
        print(ex.options(kind="process").submit(mark, path, "second").result(timeout=30))
        ex.shutdown(wait=True)
        print(open(path).read().split())
    """
)


def test_a_process_lane_that_cannot_start_refuses_the_call_and_never_runs_it(
    tmp_path: Path,
) -> None:
    out = _run(tmp_path, SCRIPT, str(tmp_path / "marks.txt"))
    lines = out.stdout.split("\n")
    assert lines[0].startswith("refused 24"), out.stdout  # EMFILE, at the call
    assert lines[1] == "second"
    assert lines[2] == "['second']"  # the refused call never ran


def _refusing(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Threads named ``prefix``... cannot start, as at a thread limit."""
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith(prefix):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_a_thread_lane_that_cannot_start_a_thread_fails_the_call_and_never_runs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    with hx.Executor(thread_name_prefix="refused") as ex:
        _refusing(monkeypatch, "refused")
        with pytest.raises(RuntimeError, match="start new thread"):
            ex.options(kind="thread").submit(calls.append, 1)
        monkeypatch.undo()
        ex.options(kind="thread").submit(calls.append, 2).result(timeout=30)
    assert calls == [2]  # the refused call never ran


def test_a_refused_thread_leaves_the_call_queued_for_the_threads_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    with hx.Executor(thread_name_prefix="few") as ex:
        target = ex.options(kind="thread")
        first = target.submit(gate.wait, 30)
        _refusing(monkeypatch, "few")
        second = target.submit(lambda: "ran")  # no new thread: waits for the first one's
        assert not second.done()
        gate.set()
        assert first.result(timeout=30) is True
        assert second.result(timeout=30) == "ran"


def test_a_timeout_whose_timer_thread_cannot_start_fails_that_call_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with hx.Executor() as ex:
        target = ex.options(kind="thread")
        assert target.submit(lambda: 1).result(timeout=30) == 1  # a lane thread is up
        _refusing(monkeypatch, "hybridexec-thread-deadlines")
        failing = target.options(timeout=5.0).submit(lambda: 2)
        with pytest.raises(RuntimeError, match="start new thread"):
            failing.result(timeout=30)
        monkeypatch.undo()
        # The timer starts now, and only this call's deadline is in it: it fires, and
        # the refused call's deadline (gone with it) never interrupts another task.
        started = time.monotonic()
        slow = target.options(timeout=0.3).submit(time.sleep, 5)
        with pytest.raises(hx.TaskTimeoutError):
            slow.result(timeout=30)
        assert time.monotonic() - started < 3
        assert target.submit(time.sleep, 0.5).result(timeout=30) is None


FORK_SERVER_SCRIPT = textwrap.dedent(
    """
    import os, resource, time
    import hybridexec as hx

    def slow(x):
        time.sleep(0.5)
        return x

    if __name__ == "__main__":
        ex = hx.Executor(max_processes=2)  # single-threaded here: the forked fork server
        target = ex.options(kind="process")
        assert target.submit(slow, 0).result(timeout=30) == 0
        running = target.submit(slow, 1)
        while not running.running():
            time.sleep(0.005)
        # The second worker's start meets the limit (5 descriptors free), then it is lifted.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        opened = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 40, hard))
        hog = []
        try:
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for _ in range(5):
            os.close(hog.pop())
        more = [target.submit(slow, x) for x in range(2, 8)]
        time.sleep(1.0)  # starts tried meanwhile, under the limit
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print([f.result(timeout=30) for f in more])
        print(running.result(timeout=30), target.submit(slow, 9).result(timeout=30))
        print(ex.stats()["process_lane"]["crashes"])
        ex.shutdown()
    """
)


def test_worker_starts_out_of_descriptors_leave_the_fork_server_alive(tmp_path: Path) -> None:
    # Before: multiprocessing hung up on the fork server mid-request, which died of it
    # (EOFError), and every worker it had forked with it: finished calls failed as crashes.
    out = _run(tmp_path, FORK_SERVER_SCRIPT)
    lines = out.stdout.split("\n")
    assert lines[0] == "[2, 3, 4, 5, 6, 7]", out.stdout + out.stderr
    assert lines[1:3] == ["1 9", "0"], out.stdout + out.stderr  # no worker crashed
    assert "EOFError" not in out.stderr


def _run(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script in a fresh interpreter; it must exit 0."""
    script = tmp_path / "script.py"
    script.write_text(source)
    out = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out
