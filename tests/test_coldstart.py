"""The process lane's cold start: the guardian (and the tracker) forked from the parent.

Where the parent has a single thread, no module half imported and a modest size, the guardian
is a copy of it (``hybridexec._process._zygote``), and the resource tracker a copy of the
guardian, instead of new interpreters. The fork server, whose children run user code, is
always multiprocessing's new interpreter (round 17: a copy of the program carried its locks,
finalizers and registrations into every worker). These tests check, each in a fresh
interpreter, that the copies are taken only when that is safe, that they hold nothing of the
parent's (descriptors, signal handlers, buffered output), and that a SIGKILLed parent still
leaves nothing behind (I4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from .conftest import wait_until
from .test_guarantees import ROOT, _after_parent_sigkill, run_script

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the default start method is forkserver on Linux"
)

__all__ = ["run_script"]  # the fixture, shared with test_guarantees

COPIES = {"guardian": "hx-guardian", "tracker": "hx-tracker"}

# What the scripts below report about the fork server, the guardian and a worker.
HELPERS = """
import multiprocessing.forkserver as _mpfs
from hybridexec._process import _guardian as _gd

def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()

def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\\0", b" ").decode()

def state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None

def fds(pid):
    return sorted(os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd"))

def tracker_pid():
    # Forked by the guardian once needed (an orphan, not our child: multiprocessing knows no
    # pid): the process that holds the other end of the tracker's pipe, once it runs.
    from multiprocessing import resource_tracker as _rt
    tracker = _rt._resource_tracker
    tracker.ensure_running()  # its check that the tracker runs is the first use of one
    if tracker._pid is not None:
        return tracker._pid
    pipe = os.readlink(f"/proc/self/fd/{tracker._fd}")
    for _ in range(2000):
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                if comm(pid) == "hx-tracker" and pipe in fds(pid):
                    return pid
            except OSError:
                pass
        time.sleep(0.01)
    raise AssertionError("no resource tracker holds " + pipe)

def helpers_of_this_process():
    return {"guardian": _gd._guardian.pid, "tracker": tracker_pid()}

def server_cmdline():
    return cmdline(_mpfs._forkserver._forkserver_pid)
"""


@pytest.mark.timeout(60)
def test_guardian_and_tracker_are_copies_holding_nothing_the_server_a_new_interpreter(
    run_script: Any, tmp_path: Any
) -> None:
    s = run_script(
        """
        secret = open(os.environ["HX_SECRET"], "w")
        r, w = os.pipe()
        signal.signal(signal.SIGTERM, lambda *_: None)  # a handler workers must not inherit
        sys.stdout.write(json.dumps({"early": True}) + "\\n")  # buffered: stdout is a pipe
        ex = hx.Executor(max_processes=1)
        lane = ex.options(kind="process")
        worker = lane.submit(os.getpid).result(timeout=30)
        handler = lane.submit(signal.getsignal, signal.SIGTERM).result(timeout=30)
        pids = helpers_of_this_process()
        # Each copy names itself as it starts: on a loaded machine it may not have run yet.
        until(lambda: all(comm(pid) != comm(os.getpid()) for pid in pids.values()), 20)
        say(
            comms={name: comm(pid) for name, pid in pids.items()},
            me=comm(os.getpid()),
            worker=comm(worker),
            handler=handler == signal.SIG_DFL,
            fds={name: fds(pid) for name, pid in [*pids.items(), ("worker", worker)]},
            server=server_cmdline(),
            mine=[os.readlink(f"/proc/self/fd/{fd}") for fd in (secret.fileno(), r, w)],
        )
        ex.shutdown()  # the worker exits, flushing its copy of sys.stdout
        """,
        setup=HELPERS,
        env={"HX_SECRET": str(tmp_path / "secret"), "PYTHONUNBUFFERED": ""},
    )
    assert s.read(40) == {"early": True}
    out = s.read(40)
    assert out["comms"] == COPIES
    assert "multiprocessing.forkserver" in out["server"], "the fork server is a copy"
    assert out["worker"] == out["me"], "a worker keeps the parent's process name"
    assert out["handler"], "the parent's SIGTERM handler reached a worker"
    for name, targets in out["fds"].items():
        leaked = set(targets) & set(out["mine"])
        assert not leaked, f"the {name} holds the parent's {leaked}"
    assert s.wait(30) == 0, s.stderr
    rest = []
    while (line := s._lines.get(timeout=10)) is not None:  # EOF once every copy is gone
        rest.append(line)
    assert not rest, f"output written again by a copy: {rest}"


@pytest.mark.timeout(60)
def test_fork_server_and_guardian_are_new_interpreters_while_another_thread_runs(
    run_script: Any,
) -> None:
    s = run_script(
        """
        stop = threading.Event()
        other = threading.Thread(target=stop.wait)
        other.start()
        with hx.Executor(max_processes=1) as ex:
            assert ex.options(kind="process").submit(helpers.square, 3).result(timeout=30) == 9
            pids = helpers_of_this_process()
            cmdlines = {name: cmdline(pid) for name, pid in pids.items()}
            say(cmdlines=cmdlines, server=server_cmdline())
        stop.set()
        other.join()
        """,
        setup=HELPERS,
    )
    out = s.read(40)
    assert "multiprocessing.forkserver" in out["server"]
    assert "hybridexec-guardian" in out["cmdlines"]["guardian"]
    assert "resource_tracker" in out["cmdlines"]["tracker"]
    assert s.wait(30) == 0, s.stderr


@pytest.mark.timeout(60)
def test_executor_made_while_its_module_is_imported_forks_nothing(
    run_script: Any, tmp_path: Any
) -> None:
    (tmp_path / "hx_module_level.py").write_text(
        "import multiprocessing.forkserver as fs\n"
        "import hybridexec as hx\n"
        "from hybridexec._process import _guardian\n"
        "EX = hx.Executor(max_processes=1)\n"
        "SERVER_AT_IMPORT = fs._forkserver._forkserver_pid or _guardian._guardian\n"
    )
    s = run_script(
        """
        sys.path.insert(0, os.environ["HX_DIR"])
        import hx_module_level as m
        lane = m.EX.options(kind="process")
        assert lane.submit(helpers.square, 4).result(timeout=30) == 16
        pids = helpers_of_this_process()
        until(lambda: all(comm(pid) != comm(os.getpid()) for pid in pids.values()), 20)
        say(at_import=m.SERVER_AT_IMPORT, comms={name: comm(pid) for name, pid in pids.items()})
        m.EX.shutdown()
        """,
        setup=HELPERS,
        env={"HX_DIR": str(tmp_path)},
    )
    out = s.read(40)
    assert out["at_import"] is None, "forked while a module was half imported"
    assert out["comms"] == COPIES, "the helpers are forked with the first worker, once it is safe"
    assert s.wait(30) == 0, s.stderr


@pytest.mark.timeout(60)
def test_helpers_are_forked_before_the_first_thread_not_with_the_executor(
    run_script: Any,
) -> None:
    s = run_script(
        """
        import multiprocessing.forkserver as fs
        ex = hx.Executor(max_processes=1)
        made = {"server": fs._forkserver._forkserver_pid, "guardian": _gd._guardian}
        # Default routing: the first call is measured on a thread, the lane's first thread.
        assert ex.submit(helpers.square, 3).result(timeout=30) == 9
        threads = threading.active_count()
        assert ex.options(kind="process").submit(helpers.square, 4).result(timeout=30) == 16
        pids = helpers_of_this_process()
        until(lambda: all(comm(pid) != comm(os.getpid()) for pid in pids.values()), 20)
        say(
            made=made,
            threads=threads,
            comms={name: comm(pid) for name, pid in pids.items()},
        )
        ex.shutdown()
        """,
        setup=HELPERS,
    )
    out = s.read(40)
    assert out["made"] == {"server": None, "guardian": None}, "forked with the executor"
    assert out["threads"] > 1, "the measured call ran on no thread: nothing was checked"
    # Copies, not new interpreters: forked before the thread lane's first thread started.
    # (The fork server is a new interpreter in every case.)
    assert out["comms"] == COPIES
    assert s.wait(30) == 0, s.stderr


@pytest.mark.timeout(60)
def test_parent_sigkill_with_forked_helpers_leaves_no_descendant(run_script: Any) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=2)
        lane = ex.options(kind="process")
        busy = [lane.submit(helpers.catastrophic_regex, 40) for _ in range(2)]
        until(lambda: all(f.running() for f in busy))
        time.sleep(0.3)  # both workers are inside the regex engine now, holding the GIL
        say(comms={name: comm(pid) for name, pid in helpers_of_this_process().items()})
        time.sleep(60)
        """,
        setup=HELPERS,
    )
    out = s.read(40)
    assert out["comms"] == COPIES
    left = _after_parent_sigkill(s)
    assert not left, left


@pytest.mark.timeout(60)
def test_garbage_of_the_parent_is_finalized_by_the_parent_alone(run_script: Any) -> None:
    s = run_script(
        """
        import gc, weakref

        class Cycle:
            pass

        gc.disable()  # the cycle stays uncollected garbage until the end
        cycle = Cycle()
        cycle.me = cycle
        weakref.finalize(cycle, lambda: say(finalized_in=os.getpid()))
        del cycle
        ex = hx.Executor(max_processes=1)
        worker = ex.options(kind="process").submit(helpers.collect_garbage).result(timeout=30)
        guardian = helpers_of_this_process()["guardian"]
        until(lambda: comm(guardian) != comm(os.getpid()), 20)  # it names itself as it starts
        say(parent=os.getpid(), worker=worker, guardian=comm(guardian))
        gc.collect()
        ex.shutdown()
        """,
        setup=HELPERS,
    )
    assert s.wait(40) == 0, s.stderr
    lines = [json.loads(line) for line in iter(lambda: s._lines.get(timeout=10), None)]
    out = next(line for line in lines if "parent" in line)
    assert out["guardian"] == "hx-guardian"
    finalized = [line["finalized_in"] for line in lines if "finalized_in" in line]
    assert finalized == [out["parent"]], f"finalized in {finalized}; worker {out['worker']}"


@pytest.mark.timeout(60)
def test_script_making_its_executor_at_the_top_finds_classes_defined_below(
    tmp_path: Any,
) -> None:
    # The executor is made while the script is half run; its workers still see the whole
    # script, as under multiprocessing's own server, its guarded part excepted.
    script = tmp_path / "late_class.py"
    script.write_text(
        "import multiprocessing.forkserver, os, sys, time\n"
        "import hybridexec as hx\n"
        "ex = hx.Executor(max_processes=1)\n\n"
        "class Point:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n\n"
        "def norm(p):\n"
        "    return abs(p.x)\n\n"
        "if __name__ == '__main__':\n"
        "    lane = ex.options(kind='process')\n"
        "    print(lane.submit(norm, Point(-3)).result(timeout=30))\n"
        "    print(type(lane.submit(Point, 4).result(timeout=30)).__name__)\n"
        "    server = multiprocessing.forkserver._forkserver._forkserver_pid\n"
        "    with open(f'/proc/{server}/cmdline', 'rb') as f:\n"
        "        print('forkserver' in f.read().decode(errors='replace'))\n"
        "    ex.shutdown()\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT + "/src", env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "Point", "True"], done.stderr


@pytest.mark.timeout(60)
def test_forked_resource_tracker_still_removes_what_the_program_leaked(run_script: Any) -> None:
    s = run_script(
        """
        import warnings
        from multiprocessing import shared_memory

        warnings.simplefilter("error")  # the program's filters: the copy reports as a new one
        with hx.Executor(max_processes=1) as ex:
            assert ex.options(kind="process").submit(helpers.square, 2).result(timeout=30) == 4
            leaked = shared_memory.SharedMemory(create=True, size=4096)  # never unlinked
            tracker = helpers_of_this_process()["tracker"]
            until(lambda: comm(tracker) != comm(os.getpid()), 20)  # it names itself as it starts
            say(segment=leaked.name, tracker=comm(tracker))
        """,
        setup=HELPERS,
    )
    out = s.read(40)
    assert out["tracker"] == "hx-tracker"
    assert s.wait(30) == 0, s.stderr
    path = os.path.join("/dev/shm", out["segment"].lstrip("/"))
    assert wait_until(lambda: not os.path.exists(path), 10), f"{path} left behind: {s.stderr}"
    assert wait_until(lambda: "leaked shared_memory" in s.stderr, 10), s.stderr  # reported


@pytest.mark.timeout(60)
def test_forked_guardian_killed_from_outside_is_replaced_and_still_guards(
    run_script: Any,
) -> None:
    s = run_script(
        """
        ex = hx.Executor(max_processes=1)
        lane = ex.options(kind="process")
        assert lane.submit(helpers.square, 2).result(timeout=30) == 4
        old = helpers_of_this_process()["guardian"]
        until(lambda: comm(old) == "hx-guardian", 20)  # it names itself as it starts
        os.kill(old, signal.SIGKILL)
        until(lambda: state(old) in ("Z", None))  # dead (not reaped: our child)
        lane.submit(helpers.exit_now).exception(timeout=30)  # its replacement needs a guardian
        busy = lane.submit(helpers.catastrophic_regex, 40)
        until(busy.running)
        new = helpers_of_this_process()["guardian"]
        say(old=old, new=new, cmdline=cmdline(new))
        time.sleep(60)
        """,
        setup=HELPERS,
    )
    out = s.read(40)
    assert out["new"] != out["old"]
    assert "hybridexec-guardian" in out["cmdline"]
    left = _after_parent_sigkill(s)
    assert not left, left


@pytest.mark.timeout(60)
def test_resource_tracker_is_forked_by_the_guardian_not_started_by_us(run_script: Any) -> None:
    # Needed as the fork server starts (multiprocessing checks that its tracker runs): the
    # guardian forks it then, and lets go of the pipe; it is not our child.
    s = run_script(
        """
        from multiprocessing import resource_tracker as _rt

        def holders(pipe):  # the other processes holding an end of the tracker's pipe
            found = []
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    if pid != os.getpid() and pipe in fds(pid):
                        found.append(comm(pid))
                except OSError:
                    pass
            return found

        with hx.Executor(max_processes=1) as ex:
            assert ex.options(kind="process").submit(helpers.square, 2).result(timeout=30) == 4
            pipe = os.readlink(f"/proc/self/fd/{_rt._resource_tracker._fd}")
            # The guardian forks the tracker, then closes its own end: wait for both.
            until(lambda: "hx-tracker" in holders(pipe) and "hx-guardian" not in holders(pipe), 20)
            say(pid=_rt._resource_tracker._pid, holders=holders(pipe))
        """,
        setup=HELPERS,
    )
    out = s.read(40)
    assert out["holders"].count("hx-tracker") == 1
    assert out["pid"] is None  # not our child: multiprocessing's case of another's tracker
    assert s.wait(30) == 0, s.stderr
