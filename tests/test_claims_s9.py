"""An outside auditor's checks of the docs' claims, round 9 (actors, api, getting started,
integrations, distributed, security, README).

Each test checks one claim as the page states it, through the public API. A test whose
docstring names C1, C2, ... checks a claim found false: it fails on purpose until the doc or
the library changes. The others close a proof gap ("proves: <page>:<line>").
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest

import hybridexec as hx

from .conftest import process_gone, wait_until
from .scenario import ROOT, run_piped, run_script

pytestmark = pytest.mark.timeout(60)


# ---- functions and classes the workers and actors run ----------------------------------------


def _gone(pid: int) -> bool:
    return process_gone(pid)


class Box:
    """A small actor: keeps what it is given, blocks on a file when told to."""

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def value(self) -> int:
        return 1

    def hold(self, started: str, release: str) -> None:
        """Say it started, then wait (in Python, 30 s at most) for ``release`` to appear."""
        Path(started).touch()
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)

    def sleep_then_mark(self, started: str, seconds: float, after: str) -> None:
        """Say it started, block in C (``time.sleep``), then write ``after``."""
        Path(started).touch()
        time.sleep(seconds)
        Path(after).touch()

    def keep(self, array: Any) -> bool:
        self.kept.append(array)
        return bool(array.flags.writeable)

    def kept_writeable(self) -> bool:
        return bool(self.kept[-1].flags.writeable)

    def fail(self) -> None:
        raise KeyError("refused")

    def exit_when(self, gate: str) -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.005)
        os._exit(5)

    def nothing(self) -> None:
        pass

    def thread_name(self) -> str:
        return threading.current_thread().name


class BrokenBox:
    def __init__(self) -> None:
        raise ValueError("no box")

    def value(self) -> int:
        return 1


def pid_of(_: object = None) -> int:
    return os.getpid()


@hx.task(kind="process", timeout=20.0)
def tasked_pid() -> int:
    return os.getpid()


def raise_generator_exit(x: int) -> int:
    if x == 1:
        raise GeneratorExit("kept in place")
    return x


def start_escaping_child(path: str) -> None:
    """Start a grandchild in a session of its own, note its pid, then run past the deadline."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    Path(path).write_text(str(child.pid))
    time.sleep(60)


# ---- C: claims found false ---------------------------------------------------------------------

UNGUARDED = """
    import hybridexec as hx


    def work(x: int) -> int:
        return x + 1


    with hx.Executor(max_processes=1) as ex:
        fut = ex.options(kind="process").submit(work, 1)
        try:
            print(__name__, "RESULT", fut.result(timeout=30))
        except hx.WorkerCrashedError:
            print(__name__, "WorkerCrashedError")
        except BaseException as exc:
            print(__name__, "OTHER", type(exc).__name__)
"""


def test_unguarded_script_future_raises_worker_crashed_error(tmp_path: Path) -> None:
    """C1. docs/getting-started.md:263-264: "Without the guard, starting a worker fails: the
    task's future raises `WorkerCrashedError` and multiprocessing prints a `RuntimeError` about
    the "bootstrapping phase"."

    What happens: the script's own future succeeds (``__main__ RESULT 2``); no error, no
    bootstrapping message. The worker re-ran the whole unguarded script as ``__mp_main__``,
    started an executor of its own and submitted there too (its nested task fails with a
    SerializationError): the top-level side effects run once more per worker, silently.
    Fixed in the library (round 9): a worker's re-run of the script stops at its first call
    that would start a process lane, with multiprocessing's "bootstrapping phase" advice.
    """
    result = run_script(tmp_path, UNGUARDED, timeout=50)
    lines = result.stdout.splitlines()
    assert "__main__ WorkerCrashedError" in lines, (result.stdout, result.stderr[-2000:])
    assert "bootstrapping phase" in result.stderr


def test_dask_pool_option_runs_the_graph_on_the_executor() -> None:
    """C2 (fixed in the docs). docs/integrations.md said: "`dask.config.set(pool=ex)` does not
    work yet: dask's threaded scheduler reads the pool's private `_max_workers`, which
    `Executor` does not have". ``Executor`` has ``_max_workers`` and ``pool=ex`` works: the
    graph's tasks run on the executor. The page now says so; this proves it."""
    dask = pytest.importorskip("dask")
    from dask.delayed import delayed

    def inc(x: int) -> int:
        return x + 1

    graph = delayed(sum)([delayed(inc)(i) for i in range(10)])
    with hx.Executor(max_processes=1) as ex:
        with dask.config.set(pool=ex):
            assert graph.compute() == 55
        assert sum(ex.stats()["submitted"].values()) > 0
        assert ex._max_workers >= 1


def test_api_index_gives_the_first_line_of_each_docstring() -> None:
    """C3. docs/api.md:96-97: "The index below names every public object with the first line of
    its docstring".

    What happens: the rows of ``hx.imap`` ("Apply `fn` to each item lazily") and ``hx.amap``
    ("Await `hybridexec.map(fn, items, ...)`") differ from their docstrings ("Apply ``fn`` to the
    items of ``iterables`` lazily", "Await ``hybridexec.map(fn, *iterables, ...)``"). Backtick
    style is ignored here; only the words are compared.
    """
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \[`hx\.(\w+)`\]\(#hybridexec\.\w+\) \| (.*) \|$", page, re.M)
    assert rows
    differ = {}
    for name, text in rows:
        doc = (inspect.getdoc(getattr(hx, name)) or "").split("\n\n")[0].replace("\n", " ")
        if doc.replace("``", "`").strip() != text.strip():
            differ[name] = (text, doc)
    assert not differ


# ---- actors.md ----------------------------------------------------------------------------------

AT_EXIT = """
    import sys
    import time
    from pathlib import Path

    import hybridexec as hx


    class Slow:
        def value(self) -> int:
            return 1

        def handle(self, started: str, done: str) -> None:
            Path(started).touch()
            time.sleep(0.5)
            Path(done).touch()

        def note(self, path: str) -> None:
            Path(path).touch()


    def report(fut):
        exc = fut.exception()
        Path("ask.txt").write_text(type(exc).__name__ if exc else "result")


    if __name__ == "__main__":
        ref = hx.spawn(Slow, kind=sys.argv[1])
        ref.ask(Slow.value).result(timeout=20)
        ref.tell(Slow.handle, "started", "done")
        ref.tell(Slow.note, "queued_tell")
        ref.ask(Slow.value).add_done_callback(report)
        deadline = time.monotonic() + 20
        while not Path("started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_actor_never_stopped_is_stopped_without_draining_at_exit(tmp_path: Path, kind: str) -> None:
    """proves: docs/actors.md:113-116 (at exit: the message being handled finishes, queued tells
    are dropped, queued asks fail with ActorClosedError)."""
    result = run_script(tmp_path, AT_EXIT, kind, timeout=40)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "done").exists()
    assert not (tmp_path / "queued_tell").exists()
    assert (tmp_path / "ask.txt").read_text() == "ActorClosedError"


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_sender_blocked_on_a_full_mailbox_wakes_when_the_actor_is_killed(
    tmp_path: Path, kind: Literal["thread", "process"]
) -> None:
    """proves: docs/actors.md:141-142 (a blocked sender wakes with ActorBrokenError if the actor
    dies meanwhile)."""
    ref = hx.spawn(Box, kind=kind, mailbox_size=1)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    try:
        ref.tell(Box.hold, started, release)
        assert wait_until(lambda: os.path.exists(started), 20)
        ref.tell(Box.value)  # fills the mailbox
        errors: list[BaseException] = []
        entered = threading.Event()

        def sender() -> None:
            entered.set()
            try:
                ref.ask(Box.value)
            except BaseException as exc:  # recorded for the assertion
                errors.append(exc)

        thread = threading.Thread(target=sender)
        thread.start()
        entered.wait(10)
        ref.kill()
        thread.join(20)
        assert not thread.is_alive()
        assert [type(e) for e in errors] == [hx.ActorBrokenError]
    finally:
        Path(release).touch()
        ref.kill()
        ref.join(10)


def test_large_array_in_a_tell_is_pickled_and_in_an_ask_arrives_read_only() -> None:
    """proves: docs/actors.md:159 (numpy arrays of 1 MiB or more in an `ask` arrive read-only;
    a `tell` pickles them)."""
    np = pytest.importorskip("numpy")
    big = np.ones(2**18, dtype=np.float64)  # 2 MiB
    ref = hx.spawn(Box, kind="process")
    try:
        assert ref.ask(Box.keep, big).result(timeout=20) is False
        ref.tell(Box.keep, big)
        assert ref.ask(Box.kept_writeable).result(timeout=20) is True
        ref.stop()
    finally:
        ref.kill()
        ref.join(10)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_killed_actor_is_not_restarted_and_refuses_messages(
    kind: Literal["thread", "process"],
) -> None:
    """proves: docs/actors.md:79 and 110-111 (after a kill, ask/tell raise ActorBrokenError; a
    killed actor is not restarted, even with max_restarts)."""
    ref = hx.spawn(Box, kind=kind, max_restarts=3)
    assert ref.ask(Box.value).result(timeout=20) == 1
    ref.kill()
    assert ref.join(10)
    with pytest.raises(hx.ActorBrokenError):
        ref.ask(Box.value)
    with pytest.raises(hx.ActorBrokenError):
        ref.tell(Box.value)
    assert ref.restarts == 0
    assert ref.state == "killed"


def test_constructor_error_breaks_at_once_despite_max_restarts() -> None:
    """proves: docs/actors.md:77 and 132 (a constructor that raises breaks the actor at once,
    also reported to on_error)."""
    errors: list[BaseException] = []
    ref = hx.spawn(BrokenBox, kind="process", max_restarts=3, on_error=errors.append)
    with pytest.raises(hx.ActorBrokenError) as info:
        ref.ask(BrokenBox.value).result(timeout=20)
    assert isinstance(info.value.__cause__, ValueError)
    assert ref.join(10)
    assert ref.state == "broken"
    assert ref.restarts == 0
    assert [type(e) for e in errors] == [ValueError]


def test_tells_lost_without_on_error_give_one_warning_that_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """proves: docs/actors.md:81 (the process died with tells pending, no on_error: one warning
    that counts them)."""
    gate = str(tmp_path / "gate")
    ref = hx.spawn(Box, kind="process")
    try:
        ref.ask(Box.value).result(timeout=20)
        with caplog.at_level(logging.WARNING, logger="hybridexec"):
            ref.tell(Box.exit_when, gate)
            for _ in range(4):
                ref.tell(Box.nothing)
            Path(gate).touch()
            assert ref.join(20)
            assert wait_until(lambda: any("lost" in r.getMessage() for r in caplog.records))
        lost = [r for r in caplog.records if "lost" in r.getMessage()]
        assert len(lost) == 1
        assert lost[0].levelno == logging.WARNING
        assert "5 tell(s) lost" in lost[0].getMessage()
    finally:
        ref.kill()
        ref.join(10)


def test_thread_actor_kill_lets_a_c_call_finish_then_stops_the_handler(tmp_path: Path) -> None:
    """proves: docs/actors.md:105-108 (thread actor kill: pending asks fail at once; a handler
    blocked in C finishes that call first, then stops)."""
    started, after = str(tmp_path / "started"), str(tmp_path / "after")
    ref = hx.spawn(Box)
    running = ref.ask(Box.sleep_then_mark, started, 0.5, after)
    assert wait_until(lambda: os.path.exists(started), 20)
    pending = ref.ask(Box.value)
    ref.kill()
    assert pending.done()  # failed at once, not when the handler ends
    assert isinstance(pending.exception(0), hx.ActorBrokenError)
    assert ref.join(20)
    assert isinstance(running.exception(10), hx.ActorBrokenError)
    assert not os.path.exists(after)


def test_process_actor_kill_returns_when_the_process_is_gone() -> None:
    """proves: docs/actors.md:104 (`kill()` returns when the process is gone)."""
    ref = hx.spawn(Box, kind="process")
    pid = ref.ask(pid_of).result(timeout=20)
    ref.kill()
    assert _gone(pid)
    assert ref.join(10)


def test_on_error_runs_in_the_actors_thread() -> None:
    """proves: docs/actors.md:84 (`on_error` runs in the actor's thread)."""
    seen: list[tuple[str, str]] = []
    ref = hx.spawn(
        Box, on_error=lambda exc: seen.append((threading.current_thread().name, type(exc).__name__))
    )
    ref.tell(Box.fail)
    name = ref.ask(Box.thread_name).result(timeout=20)
    ref.stop()
    assert seen == [(name, "KeyError")]
    assert name != threading.current_thread().name


def test_executor_spawn_uses_the_executors_start_method() -> None:
    """proves: docs/actors.md:48-50 (`Executor.spawn` uses the executor's start method)."""
    with hx.Executor(start_method="spawn") as ex:
        ref = ex.spawn(Box, kind="process")
        pid = ref.ask(pid_of).result(timeout=30)
        assert "multiprocessing.spawn" in " ".join(psutil.Process(pid).cmdline())
    assert ref.join(10)


# ---- getting-started.md -------------------------------------------------------------------------

PIPED = """
import hybridexec as hx


def work(x: int) -> int:
    return x + 1


if __name__ == "__main__":
    fut = hx.default_executor().options(kind="process").submit(work, 1)
    try:
        print("RESULT", fut.result(timeout=30))
    except hx.WorkerCrashedError:
        print("WorkerCrashedError")
"""


def test_script_piped_to_the_interpreter_fails_its_process_tasks(tmp_path: Path) -> None:
    """proves: docs/getting-started.md:267-269 (`python - < job.py`: process tasks end with
    WorkerCrashedError)."""
    out = run_piped(tmp_path, PIPED).stdout
    assert out.splitlines() == ["WorkerCrashedError"]


def test_task_defaults_yield_to_options_given_with_the_call() -> None:
    """proves: docs/getting-started.md:158-159 (`@hx.task` defaults; options given with the call
    override them)."""
    with hx.Executor(max_processes=1) as ex:
        default = ex.submit(tasked_pid)
        overridden = ex.options(kind="thread").submit(tasked_pid)
        assert default.result(timeout=30) != os.getpid()
        assert default.kind == "process"
        assert overridden.result(timeout=30) == os.getpid()
        assert overridden.kind == "thread"


_release = threading.Event()
_started: list[int] = []
_started_lock = threading.Lock()


@hx.io_bound
def wait_for_release(i: int) -> int:
    with _started_lock:
        _started.append(i)
    _release.wait(30)
    return i


def test_thread_lane_grows_for_blocking_work_up_to_256_threads() -> None:
    """proves: docs/getting-started.md:120 (`max_threads` default 256; threads start as blocking
    work arrives)."""
    _release.clear()
    _started.clear()
    with hx.Executor() as ex:
        try:
            futures = [ex.submit(wait_for_release, i) for i in range(300)]
            assert wait_until(lambda: len(_started) >= 256, 30)
            assert ex.stats()["threads"] == 256
            assert len(_started) == 256  # the 44 others wait for a thread
        finally:
            _release.set()
        assert sorted(f.result(timeout=30) for f in futures) == list(range(300))


def test_a_task_with_max_memory_goes_to_a_process() -> None:
    """proves: docs/getting-started.md:128-130 (a task with `max_memory` goes to a process)."""
    with hx.Executor(max_processes=1) as ex:
        fut = ex.options(max_memory=2**30).submit(pid_of)
        assert fut.result(timeout=30) != os.getpid()
        assert fut.kind == "process"


def test_generator_exit_stays_in_its_place_with_return_exceptions() -> None:
    """proves: docs/getting-started.md:75-76 (a `BaseException` such as `GeneratorExit` stays
    in its place)."""
    got = hx.map(raise_generator_exit, range(3), kind="thread", return_exceptions=True)
    assert got[0] == 0
    assert got[2] == 2
    assert isinstance(got[1], GeneratorExit)


def test_amap_progress_is_called_off_the_event_loop_thread() -> None:
    """proves: docs/getting-started.md:210-211 (for `hx.amap`, the progress callable runs in a
    thread of its own, not the event loop's)."""
    calls: list[int] = []

    async def main() -> None:
        loop_thread = threading.get_ident()
        await hx.amap(
            abs, range(10), progress=lambda done, total: calls.append(threading.get_ident())
        )
        assert calls
        assert loop_thread not in calls

    asyncio.run(main())


# ---- security.md --------------------------------------------------------------------------------


def test_timeout_does_not_reach_a_child_in_a_new_session(tmp_path: Path) -> None:
    """proves: docs/security.md:85-87 (a task can start a process in a new session, which then
    outlives the timed-out worker: timeouts are not a sandbox)."""
    path = tmp_path / "escaped.pid"
    with hx.Executor(max_processes=1) as ex:
        # 5 s: room for the grandchild to start on a loaded machine before the deadline.
        fut = ex.options(timeout=5.0).submit(start_escaping_child, str(path))
        assert wait_until(lambda: path.exists() and path.read_text() != "", 20)
        with pytest.raises(hx.TaskTimeoutError):
            fut.result(timeout=30)
        assert fut.kind == "process"
    pid = int(path.read_text())
    try:
        assert not _gone(pid)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- integrations.md ----------------------------------------------------------------------------


def test_joblib_n_jobs_minus_one_means_every_cpu() -> None:
    """proves: docs/integrations.md:41 (`n_jobs=-1`: every CPU)."""
    joblib = pytest.importorskip("joblib")
    import hybridexec.joblib

    hybridexec.joblib.register()
    try:
        with joblib.parallel_config(backend="hybridexec", n_jobs=-1):
            assert joblib.effective_n_jobs() == (os.cpu_count() or 1)
    finally:
        hybridexec.joblib.shutdown()


@hx.cpu_bound
def note_pid_then_sleep(path: str) -> int:
    """In a process: write this worker's pid to ``path``, then run 30 s."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(30)
    return 0


@hx.cpu_bound
def raise_once_noted(path: str) -> None:
    """Raise KeyError once ``path`` names a running worker (30 s at most)."""
    deadline = time.monotonic() + 30
    while not (os.path.exists(path) and Path(path).read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise KeyError("stop")


def test_joblib_exception_kills_the_calls_still_running_in_processes(tmp_path: Path) -> None:
    """proves: docs/integrations.md:48 (an exception is raised by `Parallel` with its own type;
    the calls still running are cancelled, which kills those in processes)."""
    joblib = pytest.importorskip("joblib")
    import hybridexec.joblib

    path = str(tmp_path / "pid")
    hybridexec.joblib.register()
    try:
        with joblib.parallel_config(backend="hybridexec", n_jobs=2), pytest.raises(KeyError):
            joblib.Parallel()(
                [
                    joblib.delayed(note_pid_then_sleep)(path),
                    joblib.delayed(raise_once_noted)(path),
                ]
            )
        pid = int(Path(path).read_text())
        assert wait_until(lambda: _gone(pid), 10)
    finally:
        hybridexec.joblib.shutdown()


def test_joblib_prefer_threads_yields_to_a_timeout() -> None:
    """proves: docs/integrations.md:43 (`prefer="threads"` is a hint: a `timeout` overrides it
    and the calls run in processes)."""
    joblib = pytest.importorskip("joblib")
    import hybridexec.joblib

    hybridexec.joblib.register()
    try:
        with joblib.parallel_config(backend="hybridexec", n_jobs=2):
            hinted = joblib.Parallel(prefer="threads")(joblib.delayed(pid_of)(i) for i in range(4))
            timed = joblib.Parallel(prefer="threads", timeout=30)(
                joblib.delayed(pid_of)(i) for i in range(4)
            )
        assert set(hinted) == {os.getpid()}
        assert os.getpid() not in timed
    finally:
        hybridexec.joblib.shutdown()


BUSY_AT_EXIT = """
    import os
    import time
    from pathlib import Path

    import hybridexec as hx


    class Busy:
        def pid(self) -> int:
            return os.getpid()

        def spin(self) -> None:
            Path("started").touch()
            end = time.monotonic() + 60
            while time.monotonic() < end:
                pass


    if __name__ == "__main__":
        ref = hx.spawn(Busy, kind="process")
        print(ref.ask(Busy.pid).result(timeout=20), flush=True)
        ref.tell(Busy.spin)
        deadline = time.monotonic() + 20
        while not Path("started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
"""


def test_process_actor_busy_at_exit_is_killed_after_its_grace(tmp_path: Path) -> None:
    """proves: docs/actors.md:114-116 (at exit the running message gets up to 5 s, then a
    process actor still running is killed: a 60 s handler does not hold the exit)."""
    result = run_script(tmp_path, BUSY_AT_EXIT, timeout=40)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "started").exists()
    assert _gone(int(result.stdout.split()[0]))
