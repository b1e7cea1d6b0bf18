"""An outside tester's cases for round 17 (tester 17a): everything that starts a child process,
seen from a user's program: hybridexec's own fork server, the process lane's workers, process
actors and the shared-memory guardian, beside the program's own multiprocessing use.

Each test names the defect of the tester's report (A1, A2, ...) in its docstring and fails on
main 85f80ae (Python 3.11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


_FIRST_WORKER_AFTER_OWN_POOL = """
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor

import hybridexec as hx
import cfg


def value(_):
    return cfg.VALUE


if __name__ == "__main__":
    cfg.VALUE = "set by the program"
    # The program's own forkserver pool first: multiprocessing's fork server now runs.
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        print("own pool", list(pool.map(value, [0])), flush=True)
    with hx.Executor(max_processes=1) as ex:
        first = ex.options(kind="process").submit(value, 0).result(timeout=30)
        try:  # the worker is killed: the next task gets a new one
            ex.options(kind="process", timeout=1.0).submit(time.sleep, 30).result(timeout=30)
        except hx.TaskTimeoutError:
            pass
        second = ex.options(kind="process").submit(value, 0).result(timeout=30)
    print("first", first, flush=True)
    print("second", second, flush=True)
"""


def test_first_worker_and_later_workers_see_the_same_module_state_after_own_pool(
    tmp_path: Path,
) -> None:
    """A1: a program that ran its own ``forkserver`` pool before hybridexec's first process
    task (so multiprocessing's fork server runs) gets process workers that disagree: the
    lane's first worker sees ``cfg.VALUE`` as the program set it (it is a fork of the
    program), every later worker (a replacement after a timeout, a second worker) sees the
    module freshly imported. The same call gives two answers depending on which worker runs
    it. docs/timeouts-and-killing.md "Start-up": "(Had your program started
    multiprocessing's fork server before hybridexec's first process task, hybridexec's
    workers come from that one.)" -- the first one does not. Cause:
    ``_process/_lane.py`` ``_start_manager`` calls ``preload_in_forkserver`` with
    ``fork_first_worker`` whenever ``safe_to_fork()``; neither checks that multiprocessing's
    fork server runs already (``_zygote._startable`` does, but only for the server), so
    ``_direct.fork_first_worker`` forks the first worker from the program
    (``_zygote.run_as_copy``) while later ones come from multiprocessing's server.
    """
    (tmp_path / "cfg.py").write_text('VALUE = "as imported"\n', encoding="utf-8")
    proc = run_script(tmp_path, _FIRST_WORKER_AFTER_OWN_POOL, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "own pool ['as imported']" in lines, proc.stdout
    first = next(line for line in lines if line.startswith("first "))
    second = next(line for line in lines if line.startswith("second "))
    assert first.split(" ", 1)[1] == second.split(" ", 1)[1], proc.stdout


_REGISTERED_AT_IMPORT = """
import sys

import hybridexec as hx
import registry


def double(x):
    return 2 * x


registry.register("double", double)  # a plugin (a metric, a model) registered at import


if __name__ == "__main__":
    method = None if sys.argv[1] == "default" else sys.argv[1]
    with hx.Executor(max_processes=1, start_method=method) as ex:
        try:
            print("result", ex.options(kind="process").submit(double, 1).result(timeout=30))
        except Exception as exc:
            print("failed", type(exc).__name__, exc)
"""

_REGISTRY = """
_NAMES = {}


def register(name, obj):
    if name in _NAMES:
        raise ValueError(f"{name!r} is already registered")
    _NAMES[name] = obj
    return obj
"""


def test_script_registering_in_a_module_at_import_runs_its_process_tasks(tmp_path: Path) -> None:
    """A2: a script whose top level registers something in one of its modules (a plugin in a
    registry, a ``prometheus_client`` metric, a SQLAlchemy table, a logging handler) gets
    ``WorkerCrashedError`` for every process task under the default start method
    (``forkserver``): each worker dies with ``ValueError: 'double' is already registered``.
    With ``start_method="spawn"`` (and with the standard library's pools, any start method)
    the task returns 2. A logging handler added at the top of the script likewise prints each
    record of a process task twice. docs/timeouts-and-killing.md "Start-up": "Your script
    itself is not the copy's ``__main__``: as before, each worker runs it afresh as
    ``__mp_main__``" -- not as before: multiprocessing's workers run the script over freshly
    imported modules, hybridexec's run it a second time over the program's modules as the
    program's first run of the script left them (``registry._NAMES`` holds "double" already).
    Cause: ``_process/_zygote.py`` ``run_as_copy`` (the first worker) and
    ``start_fork_server.serve`` (every later one, through ``spawn.prepare``) blank
    ``__main__`` but keep every other module of the program, then re-run the script on top.
    """
    (tmp_path / "registry.py").write_text(_REGISTRY, encoding="utf-8")
    proc = run_script(tmp_path, _REGISTERED_AT_IMPORT, "default", timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["result 2"], proc.stdout + proc.stderr[-1500:]


_CACHE_MODULE = """
import os
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = tempfile.TemporaryDirectory(prefix="cache-", dir=HERE)  # made at import, gone at exit


def reset():
    global DIR
    DIR = tempfile.TemporaryDirectory(prefix="cache-", dir=HERE)
    return DIR.name
"""

_TASK_RESETS_A_MODULE_CACHE = """
import os

import hybridexec as hx
import cache

if __name__ == "__main__":
    mine = os.path.join(cache.DIR.name, "results.txt")
    with open(mine, "w") as f:
        f.write("the program's data")
    with hx.Executor(max_processes=1) as ex:
        theirs = ex.options(kind="process").submit(cache.reset).result(timeout=30)
        print("worker made its own", theirs != cache.DIR.name, flush=True)
        print("program's file still there", os.path.exists(mine), flush=True)
"""


def test_a_worker_never_runs_the_finalizer_of_the_programs_temporary_directory(
    tmp_path: Path,
) -> None:
    """A3: a module makes a ``tempfile.TemporaryDirectory`` at import (a cache, a scratch
    space) and the program writes its data there. A process task calls the module's
    ``reset()``, which rebinds the global to a new directory: in the worker the old object
    (the program's, copied by the fork) loses its last reference and its finalizer removes
    the *program's* directory, with the program's files: "program's file still there False".
    Under ``start_method="spawn"`` (and with the standard library's pools) the worker imports
    the module afresh and removes only its own directory. The same happens with no task
    code at all when the script's top level rebinds a module attribute holding such an
    object (``cfg.WORK = tempfile.TemporaryDirectory()``): each worker's re-run of the script
    (A2) deletes the program's directory as the worker starts. Breaks
    docs/timeouts-and-killing.md "Start-up": "the objects copied are never garbage-collected
    there (``gc.freeze``: a finalizer of your garbage runs in your program only)" and
    ``_process/_zygote.py``'s docstring ("a finalizer removing a temporary directory would
    run twice"). Cause: ``gc.freeze()`` (``_zygote.fork_copy``, ``run_as_copy``) stops only
    the cyclic collector; reference counting still frees, and finalizes, a copied object as
    soon as the worker drops it, and the copy (server and first worker alike) holds every
    module of the program as it was (``start_fork_server``, ``run_as_copy``).
    """
    (tmp_path / "cache.py").write_text(_CACHE_MODULE, encoding="utf-8")
    proc = run_script(tmp_path, _TASK_RESETS_A_MODULE_CACHE, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "worker made its own True" in lines, proc.stdout
    assert "program's file still there True" in lines, proc.stdout


_SHARED_LOCK = """
import threading

LOCK = threading.Lock()  # guards this process's use of some resource
"""

_SUBMIT_UNDER_A_LOCK = """
import hybridexec as hx
import shared


def task(x):
    with shared.LOCK:  # the worker's own use of the resource
        return x * 2


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        with shared.LOCK:  # the first process task is sent while the program holds its lock
            fut = ex.options(kind="process", timeout=8.0).submit(task, 21)
        try:
            print("result", fut.result(timeout=30), flush=True)
        except Exception as exc:
            print("failed", type(exc).__name__, flush=True)
"""


def test_a_lock_the_program_holds_at_its_first_process_task_is_free_in_the_workers(
    tmp_path: Path,
) -> None:
    """A4: a program submits its first process task inside ``with shared.LOCK:`` (a
    module-level ``threading.Lock`` it uses to guard a resource); the task takes the same
    lock in the worker. Under the default start method the worker deadlocks: its copy of
    the lock is held for ever (here the 8 s task timeout kills it: ``TaskTimeoutError``;
    without a timeout the future never completes). Every later worker, forked from the
    fork server copied in the same submit, deadlocks likewise. With ``start_method="spawn"``
    (and the standard library's ``forkserver`` pools) the task returns 42 at once.
    docs/timeouts-and-killing.md "Start-up" calls the copy safe when "your program has a
    single thread (no other thread can hold a lock that the copy would inherit held)" --
    the thread that forks can hold one too. Cause: ``_process/_zygote.py`` ``safe_to_fork``
    checks threads, half-imported modules, size and shared memory, never the locks of the
    calling thread; ``run_as_copy`` and ``start_fork_server`` then fork from inside the
    caller's critical section.
    """
    (tmp_path / "shared.py").write_text(_SHARED_LOCK, encoding="utf-8")
    proc = run_script(tmp_path, _SUBMIT_UNDER_A_LOCK, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["result 42"], proc.stdout


_CHILD_OUTLIVES_ITS_PARENT = """
import os
import time

import hybridexec as hx


def double(x):
    return 2 * x


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        assert ex.options(kind="process").submit(double, 1).result(timeout=30) == 2
    parent = os.getpid()
    if os.fork() > 0:
        os._exit(0)  # the launcher returns at once: the child goes on (a daemon, say)
    deadline = time.monotonic() + 10
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the parent is gone, and what cleans up after it has run
    try:
        with hx.Executor(max_processes=1) as ex:
            result = ex.options(kind="process").submit(double, 21).result(timeout=30)
        print("child result", result, flush=True)
    except Exception as exc:
        print("child failed", type(exc).__name__, exc, flush=True)
    os._exit(0)
"""


def test_a_forked_child_that_outlives_its_parent_runs_process_tasks(tmp_path: Path) -> None:
    """A5: a program runs a process task, forks, and its parent exits (``os._exit``, the
    daemon idiom; ``sys.exit`` is the same). The child, once its parent is gone, makes an
    executor and submits a process task: it fails with ``BrokenExecutorError: no worker
    process could be started for 1 s: FileNotFoundError(2, 'No such file or
    directory')``, and so does every later process task of the child. While the parent
    still lives (it waits for the child) the same child code returns 42.
    docs/architecture.md "Exit and fork": "An ``Executor`` used in the child builds fresh
    lanes on its next call"; ``_supervise._forget_helper_processes``: "The child starts its
    own [fork server] on first use". Cause: the child lets go of the parent's fork server
    and tracker locks (``_supervise._after_fork``) but keeps multiprocessing's cached
    temporary directory (``current_process()._config["tempdir"]``, the parent's
    ``pymp-*``, made for the parent's fork server socket). The parent's guardian
    (``_guardian``, for a parent that died without an orderly exit) or multiprocessing's exit
    finalizer removes that directory, and the child's new fork server cannot bind its socket
    there.
    """
    proc = run_script(tmp_path, _CHILD_OUTLIVES_ITS_PARENT, timeout=50)
    assert "child result 42" in proc.stdout.splitlines(), proc.stdout + proc.stderr[-1500:]
