"""Regression tests for the defects of issue 13 (guarantees I1-I6 of DESIGN.md section 2b).

One test (or more, for a defect with several parts) per defect, through the public API only.
Scenarios that can hang, kill their parent or change process-wide state run in a child script
(``tests/guarantee_scripts.py``) under a timeout; every process the script started is found
with psutil and killed at the end, even when the test fails.

A test that fails on today's main is marked ``xfail(strict=True)`` with the defect number:
when the defect is fixed, the test passes, strict xfail turns that into a failure, and the
fixer removes the mark.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import hybridexec as hx

from . import guarantee_scripts as gs
from . import helpers
from .conftest import process_gone, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHM_DIR = "/dev/shm"


def _xfail(defect: int, why: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"issue 13 defect {defect}: {why}")


# ---- the child-script runner -------------------------------------------------------------------


class Script:
    """A child ``python -c`` script in a session of its own, read line by line (JSON).

    Every descendant ever seen is remembered (psutil), so that it can be checked after the
    script is SIGKILLed and killed at the end whatever happened.
    """

    def __init__(self, body: str, *, setup: str = "", env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", gs.script(setup + textwrap.dedent(body))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=full_env,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for chunk in self.proc.stderr:
            self._stderr.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def note_descendants(self) -> list[psutil.Process]:
        """Remember (and return) the script's descendants alive now."""
        try:
            found = self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in found:
            self.seen.setdefault(p.pid, p)
        return found

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; fails the test (with the script's stderr) after ``timeout``."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line from the script within {timeout} s; stderr:\n{self.stderr}")
        if line is None:
            self._lines.put(None)
            rc = self.proc.wait(5)
            pytest.fail(f"the script ended (rc {rc}) before saying more; stderr:\n{self.stderr}")
        self.note_descendants()
        result: dict[str, Any] = json.loads(line)
        return result

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if the script is still running after ``timeout``."""
        self.note_descendants()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> list[psutil.Process]:
        """Processes seen that are still running (zombies count as gone)."""
        return [p for p in self.seen.values() if _running(p)]

    def close(self) -> None:
        """Kill the script, then what it started that is still there; release the pipes.

        The script goes first and alone, as after any SIGKILL: its guardian ends what it
        started and removes its segments and its ``pymp-*`` directory. Killed along with the
        script, the guardian left that directory in /tmp, once per script.
        """
        self.note_descendants()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed above
            pass
        wait_until(lambda: not self.alive(), 3)  # the guardian's work: I4 gives it 1 s
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        wait_until(lambda: not self.alive(), 5)  # (psutil's wait polls slowly)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        hx.cleanup_shared_memory()  # segments of SIGKILLed owners (the janitor's job)


def _running(p: psutil.Process) -> bool:
    return not process_gone(p)


@pytest.fixture
def run_script() -> Iterator[Any]:
    """``run_script(body)`` starts a child script; all of them are cleaned up afterwards."""
    scripts: list[Script] = []

    def start(body: str, **kwargs: Any) -> Script:
        s = Script(body, **kwargs)
        scripts.append(s)
        return s

    try:
        yield start
    finally:
        for s in scripts:
            s.close()


def _segments_of(pid: int) -> list[str]:
    try:
        return [n for n in os.listdir(SHM_DIR) if n.startswith(f"hx{pid}_")]
    except FileNotFoundError:
        return []


def _after_parent_sigkill(s: Script, exempt: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """SIGKILL the script alone; return the descendants still alive 1 s later (I4)."""
    s.note_descendants()
    assert s.seen, "the script started no process"
    s.proc.kill()
    s.proc.wait(10)
    killed = time.monotonic()
    # 1 s is the guarantee; 0.5 s of slack for a loaded 2-core machine.
    wait_until(lambda: not [p for p in s.alive() if p.pid not in exempt], 1.5)
    left = [p for p in s.alive() if p.pid not in exempt]
    took = time.monotonic() - killed
    return [f"{p.pid} {_cmdline(p)} (alive {took:.1f} s after the kill)" for p in left]


def _is_tracker(p: psutil.Process) -> bool:
    """multiprocessing's resource tracker: a new interpreter, or forked from us (_zygote)."""
    try:
        return "resource_tracker" in _cmdline(p) or p.name() == "hx-tracker"
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


# ---- defect 1: a worker that cannot start (EAGAIN) ---------------------------------------------


def test_worker_start_failure_fails_no_unrelated_task(run_script: Any) -> None:
    # The worker of `crash` dies; its replacement cannot start for 0.5 s (EAGAIN). `other`,
    # queued behind, has nothing to do with the crash: it must run once starts work again.
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        lane = ex.options(kind="process")
        assert lane.submit(helpers.square, 2).result(timeout=30) == 4
        crash = lane.submit(gs.sleep_then_exit, 0.3)
        other = lane.submit(helpers.square, 7)
        FAULT["until"] = time.monotonic() + 0.5
        say(crash=outcome(crash, 10), other=outcome(other, 10), hits=FAULT["hits"])
        time.sleep(60)
        """,
        setup=gs.START_FAULT,
    )
    out = s.read(40)
    assert out["hits"] > 0, "the injected start failure never happened"
    assert out["crash"][0] == "WorkerCrashedError", out
    assert out["other"] == ["ok", 49], out


def test_worker_start_failures_resolve_every_future_and_the_lane_recovers(
    run_script: Any,
) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        lane = ex.options(kind="process")
        FAULT["until"] = time.monotonic() + 0.5
        futures = [lane.submit(helpers.square, i) for i in range(3)]
        outs = [outcome(f, 3) for f in futures]  # nothing else wakes the lane meanwhile
        done = threading.Event()
        threading.Thread(target=lambda: (ex.shutdown(wait=True), done.set()), daemon=True).start()
        say(outs=outs, shutdown=done.wait(5), hits=FAULT["hits"])
        time.sleep(60)
        """,
        setup=gs.START_FAULT,
    )
    out = s.read(60)
    assert out["hits"] > 0, "the injected start failure never happened"
    for i, o in enumerate(out["outs"]):  # I1: each ends, with its result or a clear error
        assert o == ["ok", i * i] or o[0] in ("BrokenExecutorError", "WorkerCrashedError"), out
    assert out["outs"][-1] == ["ok", 4], out  # I6: the lane recovered by itself
    assert out["shutdown"], "shutdown(wait=True) did not return within 5 s"


# ---- defect 2: EMFILE while making a worker's pipe ----------------------------------------------


def test_pipe_creation_failure_fails_only_touched_tasks_and_lane_recovers(
    run_script: Any,
) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=2)
        lane = ex.options(kind="process")
        assert lane.submit(helpers.square, 2).result(timeout=30) == 4  # one worker up
        FAULT["until"] = time.monotonic() + 0.3
        a = lane.submit(helpers.sleep_then, 0.5, "a")  # runs on the worker already up
        b = lane.submit(helpers.sleep_then, 0.5, "b")  # needs a new worker: its pipe fails
        oa, ob = outcome(a, 10), outcome(b, 10)
        until(lambda: time.monotonic() > FAULT["until"])
        try:
            late = outcome(lane.submit(helpers.square, 6), 10)
        except BaseException as exc:
            late = ["submit raised " + type(exc).__name__, str(exc)]
        say(a=oa, b=ob, late=late, hits=FAULT["hits"])
        time.sleep(60)
        """,
        setup=gs.PIPE_FAULT,
    )
    out = s.read(40)
    assert out["hits"] > 0, "the injected EMFILE never happened"
    assert out["a"] == ["ok", "a"], out  # the fault did not touch it
    assert out["b"] == ["ok", "b"] or out["b"][0] == "BrokenExecutorError", out
    assert out["late"] == ["ok", 36], out  # descriptors are free again: the lane works


# Defect 2's race (``_break`` drains the queue without the lane lock) is a window of a few
# bytecodes: this storm did not hit it on main in repeated runs. It stays as the I1 check.
def test_every_accepted_submit_resolves_when_the_lane_faults(run_script: Any) -> None:
    # Four threads submit without pause while a worker start meets EMFILE. Whatever the lane
    # does about the fault, a submit that returned a future must see that future end (I1).
    s = run_script(
        """
        sys.setswitchinterval(1e-6)
        ex = hx.Executor(max_processes=1)
        lane = ex.options(kind="process")
        assert lane.submit(helpers.square, 2).result(timeout=30) == 4
        crash = lane.submit(gs.sleep_then_exit, 0.2)  # its replacement's pipe fails
        FAULT["until"] = time.monotonic() + 0.8  # room for a loaded machine to see the crash
        accepted, refused = [], [0]
        def storm():
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                try:
                    accepted.append(lane.submit(helpers.square, 3))
                except Exception:
                    refused[0] += 1
        threads = [threading.Thread(target=storm) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 15
        for f in accepted:
            outcome(f, max(0.01, deadline - time.monotonic()))
        lost = sum(1 for f in accepted if not f.done())
        say(accepted=len(accepted), refused=refused[0], lost=lost, hits=FAULT["hits"])
        time.sleep(60)
        """,
        setup=gs.PIPE_FAULT,
    )
    out = s.read(60)
    assert out["hits"] > 0
    assert out["lost"] == 0, out


# ---- defect 3: a thread task's deadline firing inside its done-callbacks ----------------------


def test_thread_timeout_never_fires_inside_done_callbacks(ex: hx.Executor) -> None:
    # The task ends well before its 0.5 s deadline; its first callback is still running when
    # the deadline passes. The task succeeded: no timeout may reach its callbacks.
    first_done = threading.Event()
    last_ran = threading.Event()
    fut = ex.options(kind="thread", timeout=0.5).submit(helpers.sleep_then, 0.2, "v")

    def slow_callback(_f: Any) -> None:
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            time.sleep(0.01)
        first_done.set()

    fut.add_done_callback(slow_callback)
    fut.add_done_callback(lambda _f: last_ran.set())
    loop = asyncio.new_event_loop()
    try:
        wrapped = asyncio.wrap_future(fut, loop=loop)
        assert fut.result(timeout=5) == "v"
        assert last_ran.wait(3), "the callback after the slow one never ran"
        assert first_done.is_set(), "the slow callback was interrupted"
        assert loop.run_until_complete(asyncio.wait_for(wrapped, 3)) == "v"
    finally:
        loop.close()


# ---- defect 4: automatic shared-memory placement hands out a stale copy -----------------------


def test_placement_never_hands_stale_array(ex: hx.Executor) -> None:
    np = pytest.importorskip("numpy")
    array = np.zeros(1 << 18)  # 2 MiB: placed in shared memory automatically
    lane = ex.options(kind="process")
    first = lane.submit(gs.sleep_then_sum, 0.5, array)  # still in flight below
    array[1] = 1.0  # a change the placement's sample of values does not look at
    second = lane.submit(gs.sleep_then_sum, 0.0, array)
    assert first.result(timeout=30) == 0.0
    assert second.result(timeout=30) == 1.0  # I2: what the call returns at submit time


# ---- defect 5: os.fork() in the parent --------------------------------------------------------


def test_forked_child_can_submit_to_inherited_executor(run_script: Any) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        lane = ex.options(kind="process")
        assert lane.submit(helpers.square, 2).result(timeout=30) == 4
        pid = os.fork()
        if pid == 0:
            try:
                code = 0 if lane.submit(helpers.square, 3).result(timeout=3) == 9 else 2
            except BaseException:
                code = 3
            os._exit(code)
        deadline = time.monotonic() + 15
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        say(child=os.waitstatus_to_exitcode(status) if done else "hung")
        time.sleep(60)
        """
    )
    out = s.read(40)
    assert out["child"] == 0, f"child: {out['child']} (3: the result did not come within 3 s)"


def test_forked_child_exit_leaves_parent_actors_running(run_script: Any) -> None:
    s = run_script(
        """
        actor = hx.spawn(gs.Counter, kind="process")
        assert actor.ask(gs.Counter.incr, 1).result(timeout=30) == 1
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a normal exit: atexit hooks run in the child
        deadline = time.monotonic() + 15
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        try:
            after = outcome(actor.ask(gs.Counter.incr, 1), 5)
        except BaseException as exc:
            after = ["ask raised " + type(exc).__name__, str(exc)]
        say(child=os.waitstatus_to_exitcode(status) if done else "hung", after=after,
            state=actor.state)
        time.sleep(60)
        """
    )
    out = s.read(40)
    assert out["after"] == ["ok", 2], out
    assert out["state"] == "open", out


def test_parent_sigkill_with_forked_child_alive_leaves_no_orphans(run_script: Any) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        fut = ex.options(kind="process").submit(helpers.sleep_then, 60)
        until(fut.running)
        pid = os.fork()
        if pid == 0:
            time.sleep(60)  # the user's own child, alive while the parent dies
            os._exit(0)
        say(forked=pid)
        time.sleep(60)
        """
    )
    forked = s.read(40)["forked"]
    # The user's child is the user's. multiprocessing's resource tracker is shared with a forked
    # child on purpose (it cleans up after the last process of the family, and the user's child
    # may use what the parent registered): it may live as long as that child, never longer.
    trackers = {p.pid for p in s.note_descendants() if _is_tracker(p) and p.pid != forked}
    left = _after_parent_sigkill(s, exempt={forked} | trackers)
    assert not left, left
    psutil.Process(forked).kill()
    assert wait_until(lambda: not [p for p in s.alive() if p.pid in trackers], 1.5), [
        _cmdline(p) for p in s.alive()
    ]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_parent_sigkill_frees_its_segments_and_its_workers_without_a_janitor(
    run_script: Any, method: str
) -> None:
    # Before: the segments of a SIGKILLed parent (and of the workers killed with it) stayed in
    # /dev/shm until some later Executor ran the janitor. The guardian now unlinks them.
    s = run_script(
        f"""
        ex = hx.Executor(max_processes=1, start_method={method!r})
        mine = hx.SharedBuffer(4096)
        worker = ex.options(kind="process").submit(gs.make_segment_then, "keep")
        say(parent=os.getpid(), worker=int(worker.result(timeout=30)))
        time.sleep(60)
        """
    )
    out = s.read(60)
    parent, worker = out["parent"], out["worker"]
    assert _segments_of(parent), out
    assert _segments_of(worker), out
    assert _after_parent_sigkill(s) == []
    gone = wait_until(lambda: not _segments_of(parent) and not _segments_of(worker), 3.0)
    assert gone, (_segments_of(parent), _segments_of(worker))


KILLED_PARENT = textwrap.dedent(
    """
    import time
    import hybridexec as hx

    if __name__ == "__main__":
        ex = hx.Executor(max_processes=1)
        ex.options(kind="process").submit(abs, -1).result(30)
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_parent_sigkill_leaves_no_multiprocessing_temp_dir(tmp_path: Path) -> None:
    # Outside tester, round 5, defect 9 (I3/I4 spirit: "nothing left in /tmp"). The fork
    # server's /tmp/pymp-XXXX directory (its listener socket) stayed after the parent was
    # SIGKILLed, though the guardian ended every descendant; 1300 of them piled up on the test
    # machine. (The stdlib pool leaves it too.) The guardian now removes it.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    script = tmp_path / "job.py"
    script.write_text(KILLED_PARENT)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert [p.name for p in tmpdir.iterdir() if p.name.startswith("pymp-")]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 3.0
        left = [p.name for p in tmpdir.iterdir()]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the cleanup, bounded
            left = [p.name for p in tmpdir.iterdir()]
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_guardian_started_late_still_removes_its_dead_owners_temp_dir(tmp_path: Path) -> None:
    # A guardian (a new interpreter) may get to run after its parent was SIGKILLed: getppid()
    # then names init, which never dies, and the parent's pymp-* directory stayed. It is told
    # its owner instead. Here the owner is another process than its parent, so that it can
    # be dead before the guardian reads a line.
    from hybridexec._process._guardian import GUARDIAN

    top = tmp_path / "pymp-test"
    top.mkdir()
    (top / "listener-x").write_text("")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    guardian = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", GUARDIAN, str(owner.pid), "hybridexec-guardian"],
        stdin=subprocess.PIPE,
    )
    try:
        assert guardian.stdin is not None
        guardian.stdin.write(b"d" + os.fsencode(top) + b"\n")
        guardian.stdin.flush()
        owner.kill()
        owner.wait(10)
        guardian.stdin.close()  # EOF: the owner is gone
        assert guardian.wait(10) == 0
        assert not top.exists()
    finally:
        for proc in (owner, guardian):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# ---- I4: parent SIGKILL in other states ---------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "forkserver",
        "spawn",
    ],
)
def test_parent_sigkill_with_worker_in_gil_holding_c_leaves_no_orphans(
    run_script: Any, method: str
) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1, start_method=os.environ["HX_METHOD"])
        fut = ex.options(kind="process").submit(helpers.catastrophic_regex, 40)
        until(fut.running)
        time.sleep(0.3)  # the worker is inside the regex engine now, holding the GIL
        say(ready=True)
        time.sleep(60)
        """,
        env={"HX_METHOD": method},
    )
    s.read(40)
    left = _after_parent_sigkill(s)
    assert not left, left


def test_parent_sigkill_with_process_actors_running_leaves_no_orphans(run_script: Any) -> None:
    s = run_script(
        """
        actors = [hx.spawn(gs.Counter, kind="process") for _ in range(2)]
        busy = [a.ask(gs.Counter.sleep, 60) for a in actors]
        until(lambda: all(b.running() for b in busy))
        say(pids=[a.pid for a in actors])
        time.sleep(60)
        """
    )
    s.read(40)
    left = _after_parent_sigkill(s)
    assert not left, left


# ---- I5 and defect 7: bounded shutdown, kill and exit ------------------------------------------


def test_shutdown_without_wait_returns_within_50ms_with_work_running(tmp_path: Path) -> None:
    # What the machine cannot make it miss: the work runs until the test opens its gate, so
    # shutdown returns without waiting for it; and the call's own CPU time stays under 50 ms
    # (its wall time on a loaded host is the host's: a run queue, another thread's GIL).
    gate = tmp_path / "go"
    ex = hx.Executor(max_processes=1)
    try:
        procs = ex.options(kind="process").submit(helpers.gated, str(gate), "p")
        threads = ex.options(kind="thread").submit(helpers.gated, str(gate), "t")
        assert wait_until(lambda: procs.running() and threads.running(), 30)
        cpu = time.thread_time()
        ex.shutdown(wait=False)
        cpu = time.thread_time() - cpu
        assert not procs.done()
        assert not threads.done()
        assert cpu < 0.05, f"shutdown(wait=False) used {cpu * 1000:.0f} ms of CPU"
        gate.touch()
        assert procs.result(timeout=10) == "p"
        assert threads.result(timeout=10) == "t"
    finally:
        gate.touch()
        ex.shutdown(wait=True)


@pytest.mark.parametrize(
    "state",
    [
        "lingering",
        "idle",
        "busy",
    ],
)
def test_kill_workers_during_shutdown_is_prompt(run_script: Any, state: str) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        if os.environ["HX_STATE"] == "idle":
            fut = ex.options(kind="process").submit(helpers.square, 3)
            fut.result(timeout=30)  # the worker is idle: shutdown starts stopping it at once
        elif os.environ["HX_STATE"] == "lingering":
            # Idle too, but its exit takes 3 s (a thread the task left): the manager is
            # waiting for it to go when kill_workers() comes.
            fut = ex.options(kind="process").submit(gs.leave_thread, 3.0)
            fut.result(timeout=30)
        else:
            fut = ex.options(kind="process").submit(helpers.sleep_then, 30, "late")
            until(fut.running)
        ex.shutdown(wait=False)
        started = time.monotonic()
        ex.kill_workers()
        took = time.monotonic() - started
        say(took=took, fut=outcome(fut, 2))
        time.sleep(60)
        """,
        env={"HX_STATE": state},
    )
    out = s.read(8)  # start-up, then at most a second: main blocks 10 s here
    assert out["took"] < 1.0, out
    assert out["fut"][0] != "pending", out  # the task ended (result, cancelled or failed)


def test_exit_with_unnamed_process_executor_runs_work_to_completion(run_script: Any) -> None:
    s = run_script(
        """
        try:
            result = hx.Executor().options(kind="process").submit(gs.job, 21).result(timeout=30)
        except BaseException as exc:
            result = type(exc).__name__
        say(result=result, t=time.time())
        """
    )
    out = s.read(40)
    rc = s.wait(1.0 + 2.0)  # at most 1 s of exit (I5), plus slack; main takes ~10 s
    exited = time.time()
    assert out["result"] == 42, out
    assert rc == 0, f"exit took over 3 s (rc {rc}); stderr:\n{s.stderr}"
    assert exited - out["t"] < 1.5, f"exit took {exited - out['t']:.1f} s"


# ---- defect 8: killing an actor whose constructor never returns ---------------------------------


def test_kill_of_actor_whose_constructor_never_returns(run_script: Any) -> None:
    s = run_script(
        """
        actor = hx.spawn(gs.NeverReady, kind="process")
        until(lambda: actor.pid is not None)
        sent = []
        def send_big():  # more than a pipe holds: nobody reads it while __init__ runs
            try:
                actor.tell(gs.NeverReady.swallow, b"x" * (1 << 20))
                sent.append("returned")
            except BaseException as exc:
                sent.append(type(exc).__name__)
        threading.Thread(target=send_big, daemon=True).start()
        time.sleep(0.3)  # the tell is writing by now
        killer = threading.Thread(target=actor.kill, daemon=True)
        started = time.monotonic()
        killer.start()
        killer.join(3)
        say(killed=not killer.is_alive(), took=time.monotonic() - started,
            alive=actor.is_alive(), sent=sent)
        time.sleep(60)
        """
    )
    out = s.read(40)
    assert out["killed"], f"kill() had not returned after 3 s: {out}"
    assert out["took"] < 2.0, out
    assert not out["alive"], out


# ---- defect 9: exit after a measured first call that never returns -----------------------------


def test_exit_bounded_when_measured_first_call_never_returns(run_script: Any) -> None:
    s = run_script(
        """
        fut = hx.submit(gs.spin_forever)  # no kind, no timeout: the library picks the lane
        until(fut.running)
        say(kind=fut.kind, t=time.time())
        """
    )
    out = s.read(40)
    rc = s.wait(3.0)
    exited = time.time()
    assert rc is not None, (
        f"still running 3 s after its last statement (first call on a {out['kind']})"
    )
    assert exited - out["t"] < 2.0, f"exit took {exited - out['t']:.1f} s"


# ---- defect 10: Ctrl-C with an executor open --------------------------------------------------


@pytest.mark.parametrize("which", ["default", "explicit"])
def test_ctrl_c_exits_130_with_executor_open(run_script: Any, which: str) -> None:
    s = run_script(
        """
        if os.environ["HX_WHICH"] == "default":
            hx.submit(helpers.square, 2).result(timeout=30)
            hx.map(helpers.square, range(4), kind="process")
        else:
            ex = hx.Executor(max_processes=1)
            ex.options(kind="process").submit(helpers.square, 2).result(timeout=30)
            ex.options(kind="thread").submit(helpers.square, 2).result(timeout=30)
        say(ready=True)
        time.sleep(60)
        """,
        env={"HX_WHICH": which},
    )
    s.read(40)
    os.killpg(s.proc.pid, signal.SIGINT)  # what the terminal does: the foreground group
    rc = s.wait(5)
    # A KeyboardInterrupt ending Python re-raises SIGINT: the shell sees 130.
    assert rc in (130, -signal.SIGINT), f"exit status {rc}; stderr:\n{s.stderr}"


def test_ctrl_c_does_not_wait_for_running_process_work(run_script: Any) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        fut = ex.options(kind="process").submit(gs.spin_forever)
        until(fut.running)
        say(ready=True)
        time.sleep(60)
        """
    )
    s.read(40)
    os.killpg(s.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
    rc = s.wait(5)  # before: the exit waited for the spinning call
    assert rc in (130, -signal.SIGINT), f"exit status {rc}; stderr:\n{s.stderr}"


# ---- defect 11: the kill path must never signal a pid after its process was reaped ----------


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_kill_path_never_signals_a_reaped_pid(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # A signal sent to a pid whose process is gone would hit whatever process got that pid
    # next. Every os.kill() is checked at the moment it is made (a stdlib patch).
    real_kill = os.kill
    stale: list[tuple[int, int]] = []
    ours = {os.getpid()}

    def checking_kill(pid: int, sig: int) -> None:
        # (psutil.pid_exists would call os.kill itself.)
        if pid > 0 and pid not in ours and not os.path.exists(f"/proc/{pid}"):
            stale.append((pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", checking_kill)
    with hx.Executor(max_processes=1) as ex:
        if how == "timeout":
            fut = ex.options(kind="process", timeout=0.3).submit(helpers.sleep_then, 30)
            with pytest.raises(hx.TaskTimeoutError):
                fut.result(timeout=30)
        else:
            fut = ex.options(kind="process").submit(helpers.sleep_then, 30)
            assert wait_until(fut.running, 30)
            assert fut.cancel()
        # The replacement worker is up once the dead one was reaped.
        assert ex.options(kind="process").submit(helpers.square, 4).result(timeout=30) == 16
    assert not stale, f"signals sent to pids already gone: {stale}"


# ---- defect 12: finished work is released --------------------------------------------------


def _collected(ref: weakref.ref[Any], timeout: float = 0.5) -> bool:
    return wait_until(lambda: gc.collect() is not None and ref() is None, timeout)


@pytest.mark.parametrize(
    "kind",
    [
        "thread",
        "process",
        "auto",
    ],
)
def test_map_iterator_lets_go_of_consumed_results(ex: hx.Executor, kind: str) -> None:
    # CPython's test_free_reference.
    for obj in ex.options(kind=kind).map(gs.make_dummy, range(5)):
        ref = weakref.ref(obj)
        del obj
        assert _collected(ref), f"a consumed result of map on {kind} is still referenced"


@pytest.mark.parametrize(
    "kind",
    [
        "thread",
        "process",
        "auto",
    ],
)
def test_finished_task_releases_fn_args_result(ex: hx.Executor, kind: str) -> None:
    arg = gs.Dummy(7)
    arg_ref = weakref.ref(arg)
    fut = ex.options(kind=kind).submit(gs.value_of, arg)
    assert fut.result(timeout=30) == 7
    del arg
    assert _collected(arg_ref), f"the argument of a finished {kind} task is still referenced"
    assert fut.done()  # the future itself is still held: it must not hold the arguments


@pytest.mark.parametrize(
    "kind",
    [
        "thread",
        "process",
        "auto",
    ],
)
def test_finished_task_releases_result_with_its_future(ex: hx.Executor, kind: str) -> None:
    fut = ex.options(kind=kind).submit(gs.make_dummy, 3)
    result_ref = weakref.ref(fut.result(timeout=30))
    del fut
    assert _collected(result_ref), f"the result of a finished {kind} task is still referenced"


@pytest.mark.parametrize(
    "kind",
    [
        "thread",
        "process",
        "auto",
    ],
)
def test_finished_task_releases_bound_method(ex: hx.Executor, kind: str) -> None:
    obj = gs.Dummy(1)
    ref = weakref.ref(obj)
    fut = ex.options(kind=kind).submit(obj.method)
    assert fut.result(timeout=30) == 2
    del obj
    assert _collected(ref), f"the bound method's object is still referenced ({kind} lane)"
    assert fut.done()  # the future itself is still held: it must not hold the callable


# ---- defect 13: every death path frees the segments it created ---------------------------------
# Not reproduced deterministically on main: these paths all free the dead process's segments.
# (A first version, where the actor died inside the call that made the segment, left it behind
# in 3 of 5 runs and passed in 2: too flaky for a strict xfail.)


def _live_segments(pid: int) -> list[str]:
    return _segments_of(pid)


@pytest.mark.parametrize("path", ["exit", "sigkill", "timeout", "cancel", "kill_workers"])
def test_process_lane_segments_freed_on_every_death_path(path: str) -> None:
    ex = hx.Executor(max_processes=1)
    pid = -1
    try:
        lane = ex.options(kind="process", timeout=1.0 if path == "timeout" else None)
        made = ex.options(kind="process").submit(gs.make_segment_then, "keep")
        pid = int(made.result(timeout=30))  # one worker: the next task runs there too
        assert _live_segments(pid), "no segment was made"
        fut = lane.submit(gs.make_segment_then, path, 30)
        if path in ("exit", "sigkill"):
            with pytest.raises(hx.WorkerCrashedError):
                fut.result(timeout=30)
        else:
            assert wait_until(fut.running, 30)
            if path == "timeout":
                with pytest.raises(hx.TaskTimeoutError):
                    fut.result(timeout=30)
            elif path == "cancel":
                assert fut.cancel()
            else:
                ex.kill_workers()
        assert wait_until(lambda: not psutil.pid_exists(pid), 10)
        assert wait_until(lambda: not _live_segments(pid), 2.0), _live_segments(pid)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        hx.cleanup_shared_memory()


@pytest.mark.parametrize(
    "path",
    [
        "exit",
        "sigkill",
        "kill",
    ],
)
def test_actor_segments_freed_on_every_death_path(path: str) -> None:
    actor = hx.spawn(gs.Counter, kind="process")
    pid = -1
    try:
        pid = int(actor.ask(gs.Counter.make_segment_then, "keep").result(timeout=30))
        assert _live_segments(pid), "no segment was made"
        if path == "exit":
            fut = actor.ask(gs.Counter.exit_now, 5)
        elif path == "sigkill":
            fut = actor.ask(gs.Counter.kill_self)
        else:
            fut = actor.ask(gs.Counter.sleep, 30)
            assert wait_until(fut.running, 30)
            actor.kill()
        with pytest.raises(hx.ActorBrokenError):
            fut.result(timeout=30)
        assert wait_until(lambda: not psutil.pid_exists(pid), 10)
        assert wait_until(lambda: not _live_segments(pid), 2.0), _live_segments(pid)
    finally:
        actor.kill()
        hx.cleanup_shared_memory()
