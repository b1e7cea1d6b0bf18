"""An outside tester's cases for round 15 (tester 15a): other Pythons and other start methods,
and the ways a user program is launched (``python -m``, ``-c``, ``runpy``, zip apps,
profilers), with functions and classes of ``__main__`` sent to processes.

Each test names the defect of the tester's report (A1, A2, ...) in its docstring and fails on
main 3282cb1 (Python 3.11; also seen on 3.10, 3.12 and 3.13).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .scenario import ROOT, kill_session, run_script, start_script

pytestmark = pytest.mark.timeout(60)


def _run(tmp_path: Path, *argv: str, timeout: float = 40.0) -> subprocess.CompletedProcess[str]:
    """Run ``python *argv`` in ``tmp_path``, in a session of its own killed at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[overran {timeout} s and was killed]"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


_BOX_ARGUMENT = """
import hybridexec as hx


class Box:
    def __init__(self, v):
        self.v = v


def unbox(b):
    return b.v + 1


def get(d, key):
    return d[key].v


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        for name, call in [
            ("task", lambda: ex.options(kind="process").submit(unbox, Box(4)).result()),
            ("map", lambda: hx.map(unbox, [Box(1), Box(2)], kind="process", executor=ex)),
            ("actor", lambda: ex.spawn(dict, kind="process").ask(dict.setdefault, "k", Box(3))
                .result().v),
        ]:
            try:
                print(name, "ok", call(), flush=True)
            except Exception as exc:
                print(name, "failed", repr(exc)[:300], flush=True)
"""


def _package(tmp_path: Path, body: str) -> None:
    pkg = tmp_path / "app"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent(body))


def test_main_class_instance_as_argument_under_python_m_package(tmp_path: Path) -> None:
    """A1: under ``python -m app`` (a package's ``__main__.py``; the same in a zip app and
    ``python some_dir/``), an instance of a class defined in ``__main__`` passed as an
    argument to a process task, a ``map`` item or a process actor's ``ask`` fails with
    ``SerializationError: the worker could not unpickle the task ... Can't get attribute
    'Box' on <module '__main__'>``. Expected: it crosses, as under ``python script.py`` and
    ``python -c``: docs/getting-started.md, "What crosses to a process must pickle": "Classes
    and functions defined in ``__main__`` ... are fine: what the worker cannot import is sent
    by value with cloudpickle, so instances of such classes cross as arguments and as
    results" (and docs/actors.md: "cloudpickle for ... ``__main__`` classes"). The functions
    themselves cross (round 5's defect 3), their arguments do not. Cause (as read):
    ``_serialize.py`` ``main_by_value`` (line 35) redoes a C pickle that names ``__main__``
    by value only when ``__main__`` has no ``__file__``; a package's ``__main__.py`` (and a
    zip app's) has one, yet multiprocessing never runs it in a worker
    (``spawn._fixup_main_from_name``/``_from_path`` skip ``__main__``), so ``__main__.Box``
    by reference cannot be found there.
    """
    _package(tmp_path, _BOX_ARGUMENT)
    result = _run(tmp_path, "-m", "app")
    lines = result.stdout.splitlines()
    assert lines == ["task ok 5", "map ok [2, 3]", "actor ok 3"], result.stdout + result.stderr


_BOX_RESULT = """
import hybridexec as hx


class Box:
    def __init__(self, v):
        self.v = v


def box(x):
    return Box(x)


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        try:
            print("result ok", ex.options(kind="process").submit(box, 4).result().v, flush=True)
        except Exception as exc:
            print("result failed", repr(exc)[:300], flush=True)
"""


def test_main_class_instance_as_result_under_cprofile(tmp_path: Path) -> None:
    """A2: a script run under ``python -m cProfile script.py`` (the same under ``python -m
    trace`` and ``runpy.run_module(name, run_name="__main__")``: the script's namespace is
    not ``sys.modules["__main__"]``) sends its ``__main__`` function to a process fine (by
    value), and an argument of a ``__main__`` class crosses too, but an instance of such a
    class as the task's result fails in the parent with ``SerializationError: the task's
    result could not be unpickled ... Can't get attribute 'Box' on <module 'cProfile'>``:
    the call ran and its result is lost. Expected: "instances of such classes cross as
    arguments and as results" (docs/getting-started.md, "What crosses to a process must
    pickle"). Cause (as read): in the worker, ``_serialize.adopt`` makes ``Box`` an attribute
    of the worker's ``__main__``, so the worker's C pickler pickles the result by reference
    as ``__main__.Box`` (``_serialize.dumps``, line 48: the worker's ``__main__`` has a
    file, so ``main_by_value`` keeps it), which the parent's real ``__main__`` (cProfile's)
    does not hold; ``_serialize.loads`` has no fallback.
    """
    (tmp_path / "job.py").write_text(textwrap.dedent(_BOX_RESULT))
    result = _run(tmp_path, "-m", "cProfile", "-o", os.devnull, "job.py")
    assert result.stdout.splitlines() == ["result ok 4"], result.stdout + result.stderr


_MYLOG = """
import os

LOG = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "log.txt"), "a")
STATE = {"configured": False}


def record(x):
    LOG.write(f"item {x}\\n")
    LOG.flush()
    return STATE["configured"]
"""

_OWN_FORKSERVER_POOL = """
import multiprocessing
import sys

import hybridexec as hx
import mylog


def square(x):
    return x * x


if __name__ == "__main__":
    mylog.STATE["configured"] = True  # the parent's own state, not a worker's
    if sys.argv[1] == "hx":
        print("hx", hx.map(square, range(4), kind="process"), flush=True)
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        print("pool", pool.map(mylog.record, range(3)), flush=True)
"""


def test_own_forkserver_pool_after_hybridexec_keeps_its_workers_files(tmp_path: Path) -> None:
    """A3: a program that uses multiprocessing's ``forkserver`` itself (``mp.Pool``,
    ``ProcessPoolExecutor(mp_context=...)``, PyTorch's ``DataLoader``; Python 3.14's default
    start method) after its first hybridexec process task gets its pool's workers forked
    from hybridexec's copy of the program (``hx-forkserver``), not from multiprocessing's
    fork server: a file a module opened at import writes to ``/dev/null`` in those workers
    (the 3 lines the pool writes to ``log.txt`` are silently lost: 0 lines), and the
    workers see the parent's module state of that moment (``STATE["configured"]`` is True,
    False with the standard library alone). Without the hybridexec call (``main.py none``)
    the pool writes its 3 lines and sees False. Expected: hybridexec's start-up trick is its own
    business; docs/timeouts-and-killing.md "Start-up" describes the copy only for
    hybridexec's workers ("The fork server runs multiprocessing's own server loop, so every
    worker is still forked from a single-threaded server with multiprocessing's protocol")
    and says nothing of the user's own forkserver processes. Cause (as read):
    ``_zygote.start_fork_server`` (lines 184-186, called from
    ``_supervise.preload_in_forkserver``, line 105) installs the copy as multiprocessing's
    process-wide ``multiprocessing.forkserver._forkserver``; in the copy every descriptor but
    0-2 was pointed at ``/dev/null``. Same on 3.10, 3.12, 3.13.
    """
    (tmp_path / "mylog.py").write_text(textwrap.dedent(_MYLOG))
    (tmp_path / "main.py").write_text(textwrap.dedent(_OWN_FORKSERVER_POOL))
    result = _run(tmp_path, "main.py", "hx")
    assert "hx [0, 1, 4, 9]" in result.stdout.splitlines(), result.stdout + result.stderr
    log = tmp_path / "log.txt"
    written = log.read_text().splitlines() if log.exists() else []
    assert sorted(written) == ["item 0", "item 1", "item 2"], "lines in log.txt: " + repr(written)


def test_own_forkserver_pool_after_hybridexec_sees_fresh_module_state(tmp_path: Path) -> None:
    """A3, its second half: the pool's workers see ``STATE["configured"]`` True (the parent's
    module state when hybridexec forked its copy), False with the standard library alone."""
    (tmp_path / "mylog.py").write_text(textwrap.dedent(_MYLOG))
    (tmp_path / "main.py").write_text(textwrap.dedent(_OWN_FORKSERVER_POOL))
    result = _run(tmp_path, "main.py", "hx")
    assert "pool [False, False, False]" in result.stdout.splitlines(), result.stdout


_INITIALIZER_UNDER_FORK = """
import hybridexec as hx

CONFIG = {"k": 0}
LEVEL = 0


def init(k):
    global LEVEL
    CONFIG["k"] = k
    LEVEL = k


def read(_):
    return [CONFIG["k"], LEVEL]


if __name__ == "__main__":
    with hx.Executor(max_processes=1, initializer=init, initargs=(7,), start_method="fork") as ex:
        print([ex.options(kind="process").submit(read, i).result() for i in range(3)], flush=True)
"""


def test_initializer_globals_are_seen_under_fork(tmp_path: Path) -> None:
    """A4: with ``start_method="fork"``, an ``initializer`` that sets a global (``LEVEL = k``)
    or fills one (``CONFIG["k"] = k``) is not seen by the tasks: they read the parent's
    values, ``[[0, 0], [0, 0], [0, 0]]`` instead of ``[[7, 7], ...]``, silently (the
    standard library's ``ProcessPoolExecutor`` with a ``fork`` context gives 7; hybridexec
    under ``forkserver`` and ``spawn`` gives 7). Breaks docs/getting-started.md, "What
    crosses to a process must pickle": "An ``initializer`` that sets (or fills) a global is
    seen by the tasks, as ``concurrent.futures`` has it", with no start method excepted
    (``fork`` is a documented ``start_method``). Cause (as read): under ``fork`` the worker's
    ``Initializer`` is not pickled (``_process/_worker.py`` ``Initializer.__reduce__``,
    line 87, runs only when the process arguments are pickled), so the initializer is the
    parent's own function, whose globals are the worker's real ``__main__`` dict:
    ``_serialize._by_value_globals`` (line 152) returns None for it and
    ``run_initializer`` records nothing for ``adopt`` to lay over the tasks, which arrive
    by value with the parent's values. Same on 3.10 and 3.13.
    """
    result = run_script(tmp_path, _INITIALIZER_UNDER_FORK, timeout=40)
    assert result.stdout.splitlines() == ["[[7, 7], [7, 7], [7, 7]]"], (
        result.stdout + result.stderr[-2000:]
    )


_LOGGING_TO_A_FILE = """
import logging

import hybridexec as hx

logging.basicConfig(filename="job.log", level=logging.INFO, format="%(message)s")
log = logging.getLogger("job")


def work(x):
    log.info("work %s", x)
    return x


if __name__ == "__main__":
    log.info("start")
    print(hx.map(work, range(4), kind="process"), flush=True)
"""


def test_process_tasks_log_records_reach_the_scripts_log_file(tmp_path: Path) -> None:
    """A5: a script that configures logging to a file at its top level (the usual
    ``logging.basicConfig(filename="job.log")``) loses every record its process tasks log:
    ``job.log`` holds ``start`` and none of the 4 ``work`` lines, silently. The standard
    library's ``ProcessPoolExecutor`` writes all 4 under ``fork``, ``forkserver`` and
    ``spawn``, and so does hybridexec with ``start_method="spawn"`` or ``"fork"``, or when
    the program has a thread of its own (no copy is made): only the default start loses
    them (3.10, 3.11, 3.13). Expected, by docs/timeouts-and-killing.md "Start-up": "Your
    script itself is not the copy's ``__main__``: as before, each worker runs it afresh as
    ``__mp_main__``": it does, but ``basicConfig`` there is a no-op, since the worker's
    ``logging`` is the copy's, already configured with a handler whose descriptor was
    pointed at ``/dev/null`` ("an object still holding one writes nowhere", the same page).
    A speed-up that silently drops a program's worker logs is a lost output, not a
    start-up detail. Cause (as read): ``_zygote`` (the fork server and first worker forked
    from the program, descriptors 3+ redirected to ``/dev/null``), with modules kept as they
    were.
    """
    result = run_script(tmp_path, _LOGGING_TO_A_FILE, timeout=40)
    assert result.stdout.splitlines() == ["[0, 1, 2, 3]"], result.stdout + result.stderr[-2000:]
    lines = (tmp_path / "job.log").read_text().splitlines()
    assert sorted(lines) == ["start", "work 0", "work 1", "work 2", "work 3"], lines


_AUTO_MAP_IN_A_POOL_WORKER = """
import multiprocessing

import hybridexec as hx


def spin(n):
    s = 0
    for i in range(n):
        s += i
    return s


def job(_):
    try:
        return "ok", hx.map(spin, [300_000] * 16) == [spin(300_000)] * 16
    except Exception as exc:
        return "failed", repr(exc)[:300]


if __name__ == "__main__":
    with multiprocessing.get_context("forkserver").Pool(1) as pool:
        print(pool.map(job, [0]), flush=True)
"""


def test_automatic_map_inside_a_multiprocessing_pool_worker(tmp_path: Path) -> None:
    """A6: ``hx.map(fn, items)`` with automatic routing, called inside a worker of the
    standard library's ``multiprocessing.Pool`` (whose workers are daemonic, as are Dask
    nanny workers' and Celery's prefork children), fails as a whole with
    ``BrokenExecutorError: no worker process could be started for 1 s:
    AssertionError('daemonic processes are not allowed to have children')``, after a second
    of retries (also under ``spawn``; ``ex.submit(fn)`` without ``kind`` too). The caller
    asked for no process: the router chose one it can never start. Expected: automatic work
    runs where it can, on threads, as ``ThreadPoolExecutor`` would there ("Routing is
    automatic", docs/getting-started.md; docs/hostile-input.md: "``hybridexec.map`` (the
    default executor) called inside a worker | Works."); a daemonic process is a permanent
    condition, not the transient start failure (``EAGAIN``, ``EMFILE``, ``ENOMEM``) that
    docs/guarantees.md retries for 1 s. Cause (as read): the router never asks whether this
    process may have children (``multiprocessing.current_process().daemon``); the
    ``AssertionError`` of ``Process.start`` is taken for a failed start
    (``_process/_supervision.py`` line 232, "EAGAIN, EMFILE, ENOMEM...: transient") and
    retried until
    ``START_GIVE_UP``.
    """
    result = run_script(tmp_path, _AUTO_MAP_IN_A_POOL_WORKER, timeout=40)
    assert result.stdout.splitlines() == ["[('ok', True)]"], result.stdout + result.stderr[-2000:]


_EMBEDDED_HOST = """
import multiprocessing
import os
import re
import sys
import threading
import time

REAL = sys.executable
HOST = os.path.abspath("host.sh")
with open(HOST, "w") as f:
    f.write('#!/bin/sh\\necho "$1 $2 $3" >> host_calls.txt\\nexit 3\\n')
os.chmod(HOST, 0o755)
sys.executable = HOST  # an embedding host's binary (uwsgi, a frozen app), not a Python
multiprocessing.set_executable(REAL)  # what multiprocessing's docs tell such a host to do

import hybridexec as hx


def stuck(n):
    return re.match(r"(a+)+$", "a" * n + "b")  # the regex engine holds the GIL for ages


if __name__ == "__main__":
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # a host's thread
    ex = hx.Executor(max_processes=1, start_method="spawn")
    print("worker", ex.options(kind="process").submit(os.getpid).result(), flush=True)
    fut = ex.options(kind="process").submit(stuck, 40)
    while not fut.running():
        time.sleep(0.01)
    time.sleep(0.5)
    print("ready", flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    return data[data.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def test_guardian_honours_multiprocessing_set_executable(tmp_path: Path) -> None:
    """A7: in a program whose ``sys.executable`` is not a Python (an embedding host such as
    uwsgi, a frozen app: the reason for ``multiprocessing.set_executable`` and
    ``freeze_support``), the guardian is started as ``sys.executable -I -S -c GUARDIAN``
    all the same (``host.sh`` is called with ``-I -S -c``), while multiprocessing, and so
    every worker, uses the executable it was given. The host binary is run instead of the
    guardian (a frozen app would start its whole program again), the guardian never runs,
    and I4 fails: after the parent's ``SIGKILL``, a ``spawn`` worker stuck in C code that
    holds the GIL is still alive 1.5 s later. Expected (docs/guarantees.md I4): "A parent
    killed with ``SIGKILL`` in any state leaves no descendant alive after 1 s: a worker in C
    code that holds the GIL ..., any start method". Cause (as read):
    ``_process/_guardian.py`` ``guard`` (line 297) runs ``[sys.executable, "-I", "-S",
    ...]`` rather than ``multiprocessing.spawn.get_executable()``; its ``OSError`` handler
    does not see a guardian that starts and exits.
    """
    proc = start_script(tmp_path, _EMBEDDED_HOST)
    worker = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("worker "):
                worker = int(line.split()[1])
            if line.startswith("ready"):
                break
        assert worker, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        time.sleep(1.5)
        calls = (
            (tmp_path / "host_calls.txt").read_text()
            if (tmp_path / "host_calls.txt").exists()
            else ""
        )
        assert not _alive(worker), (
            f"worker {worker} alive 1.5 s after the parent's SIGKILL; host calls: {calls!r}"
        )
    finally:
        kill_session(proc)
        if worker and _alive(worker):  # its own process group: not in the script's
            os.kill(worker, signal.SIGKILL)
        proc.communicate(timeout=10)
