"""An outside tester's cases for round 11 (tester 11a): many threads, many executors, long life.

Each test names the defect of the tester's report (A1, ...) in its docstring and fails on main
3bbaf51 (Python 3.11). The user's program runs as a script in an interpreter of its own
(``tests/scenario.py``), its whole session killed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


# ---- A1: a first submit while another thread's import of ``inspect`` is under way -------------

HALF_IMPORTED_INSPECT = """
import importlib.abc, sys, threading
import hybridexec as hx


def warm(x):
    return x


def first(x):
    return x + 1


def second(x):
    return x + 2


class SlowDisk(importlib.abc.MetaPathFinder):
    # A slow disk (a network file system, a cold cache): looking ``dis`` up in the thread "a"
    # takes a while. The thread's import of ``inspect`` is under way meanwhile.
    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def find_spec(self, name, path=None, target=None):
        if name == "dis" and threading.current_thread().name == "a":
            self.entered.set()
            self.release.wait(5)  # (a stall of a few seconds shows it as well)
        return None


if __name__ == "__main__":
    ex = hx.Executor(max_processes=1)
    assert ex.submit(warm, 1).result(timeout=30) == 1  # the router is up and has routed
    assert "inspect" not in sys.modules and "cloudpickle" not in sys.modules
    disk = SlowDisk()
    sys.meta_path.insert(0, disk)
    outcome = {}

    def thread_a():
        # The first process call of a function of __main__: the library imports cloudpickle
        # (which imports dataclasses, which imports inspect, which imports dis).
        outcome["a"] = ex.options(kind="process").submit(first, 1).result(timeout=60)

    a = threading.Thread(target=thread_a, name="a")
    a.start()
    assert disk.entered.wait(30)
    try:
        outcome["b"] = ex.submit(second, 1).result(timeout=60)  # a new function, routed
    except Exception as exc:
        outcome["b"] = repr(exc)
    finally:
        disk.release.set()
        a.join(60)
        ex.shutdown()
    print("outcome", sorted(outcome.items()), flush=True)
"""


def test_first_submit_while_another_thread_imports_inspect_routes_the_call(
    tmp_path: Path,
) -> None:
    """A1: two application threads submit for the first time at once. Thread "a" submits a
    process call, so the library imports cloudpickle (-> dataclasses -> inspect); while that
    import is under way (held here on a lookup of ``dis``, as a slow disk would), the main
    thread submits a new function: ``submit`` raises ``AttributeError: partially initialized
    module 'inspect' has no attribute 'iscoroutinefunction'``. The router's
    ``is_coroutine_function`` takes ``sys.modules.get("inspect")`` for a finished module. Seen
    without any help in a 12-thread stress run and in a script whose daemon threads submit at
    exit (the error, not RuntimeError, reached the thread's excepthook)."""
    proc = run_script(tmp_path, HALF_IMPORTED_INSPECT, timeout=50)
    assert "outcome [('a', 2), ('b', 3)]" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr


# ---- A2: shutdown() while another thread's first spawn imports the actor modules --------------

SHUTDOWN_DURING_FIRST_SPAWN = """
import importlib.abc, sys, threading
import hybridexec as hx


class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def work(x):
    return x + 1


class SlowDisk(importlib.abc.MetaPathFinder):
    # A slow disk: looking ``hybridexec._actors._base`` up in the thread "a" takes a while.
    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def find_spec(self, name, path=None, target=None):
        if name == "hybridexec._actors._base" and threading.current_thread().name == "a":
            self.entered.set()
            self.release.wait(5)  # (a stall of a few seconds shows it as well)
        return None


if __name__ == "__main__":
    ex = hx.Executor(max_processes=1)
    assert ex.options(kind="process").submit(work, 1).result(timeout=30) == 2
    disk = SlowDisk()
    sys.meta_path.insert(0, disk)
    outcome = {}

    def thread_a():
        try:
            ref = ex.spawn(Counter, kind="process")  # the program's first actor
            outcome["a"] = ref.ask(Counter.add, 1).result(timeout=30)
        except Exception as exc:  # a spawn refused by the shutdown is fine
            outcome["a"] = type(exc).__name__

    a = threading.Thread(target=thread_a, name="a")
    a.start()
    assert disk.entered.wait(30)
    try:
        ex.shutdown()  # the application stops while a request spawns its first actor
        outcome["shutdown"] = "returned"
    except Exception as exc:
        outcome["shutdown"] = repr(exc)
    finally:
        disk.release.set()
        a.join(60)
    print("shutdown:", outcome["shutdown"], flush=True)
    print("workers after shutdown:", ex.worker_pids, flush=True)
"""


def test_shutdown_while_another_thread_spawns_the_first_actor_returns(tmp_path: Path) -> None:
    """A2: ``ex.shutdown()`` called while another thread's first ``ex.spawn`` is importing the
    actor modules (held here on a lookup, as a slow disk would) raises ``AttributeError:
    partially initialized module 'hybridexec._actors._ref' has no attribute 'stop_actors'``.
    ``Executor.shutdown`` and ``_actors.stop_actors`` take ``sys.modules.get(...)`` for a
    loaded module. The shutdown stops half-way: the executor is closed to new work but its
    lanes were never shut down (its process worker is still alive after the call); only a
    second ``shutdown()`` releases them."""
    proc = run_script(tmp_path, SHUTDOWN_DURING_FIRST_SPAWN, timeout=50)
    assert "shutdown: returned" in proc.stdout, proc.stdout + proc.stderr
    assert "workers after shutdown: []" in proc.stdout, proc.stdout + proc.stderr


# ---- A3: a map with return_exceptions=True while another thread imports asyncio --------------

MAP_WHILE_ASYNCIO_IMPORTS = """
import importlib.abc, sys, threading
import hybridexec as hx


def check(x):
    if x == 2:
        raise ValueError(x)
    return x


class SlowDisk(importlib.abc.MetaPathFinder):
    # A slow disk: looking ``asyncio.base_events`` up in the thread "a" takes a while.
    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def find_spec(self, name, path=None, target=None):
        if name == "asyncio.base_events" and threading.current_thread().name == "a":
            self.entered.set()
            self.release.wait(5)  # (a stall of a few seconds shows it as well)
        return None


if __name__ == "__main__":
    assert repr(hx.map(check, [1, 2, 3], return_exceptions=True)) == "[1, ValueError(2), 3]"
    assert "asyncio" not in sys.modules
    disk = SlowDisk()
    sys.meta_path.insert(0, disk)
    # Another thread of the application imports asyncio (to run an event loop of its own).
    a = threading.Thread(target=lambda: __import__("asyncio"), name="a")
    a.start()
    assert disk.entered.wait(30)
    try:
        print("outcome", repr(hx.map(check, [1, 2, 3], return_exceptions=True)), flush=True)
    except Exception as exc:
        print("outcome raised", repr(exc), flush=True)
    finally:
        disk.release.set()
        a.join(60)
"""


def test_map_with_return_exceptions_while_another_thread_imports_asyncio(tmp_path: Path) -> None:
    """A3: ``hx.map(fn, items, return_exceptions=True)`` with an item that raises, while another
    thread imports ``asyncio`` (held here on a lookup, as a slow disk would), raises
    ``AttributeError: partially initialized module 'asyncio' has no attribute
    'CancelledError'`` instead of returning ``[1, ValueError(2), 3]``: ``_mapitems.ends_map``
    takes ``sys.modules.get("asyncio")`` for a loaded module."""
    proc = run_script(tmp_path, MAP_WHILE_ASYNCIO_IMPORTS, timeout=50)
    assert "outcome [1, ValueError(2), 3]" in proc.stdout, proc.stdout + proc.stderr


# ---- A4, A5: work submitted by an atexit handler that runs after the library's exit hooks -----

LATE_ATEXIT_THREAD_WORK = """
import atexit, time


def upload(path):
    time.sleep(3)
    open(path, "w").close()


def at_exit():
    import hybridexec as hx

    try:
        hx.Executor().options(kind="thread").submit(upload, "late.done")  # the last upload
        print("submit accepted", flush=True)
    except RuntimeError as exc:
        print("submit refused", repr(exc), flush=True)


atexit.register(at_exit)  # the program's own cleanup, registered first thing
import hybridexec as hx

if __name__ == "__main__":
    assert hx.map(len, [[1], [2]]) == [1, 1]
    print("main ends", flush=True)
"""


def test_work_submitted_by_a_late_atexit_handler_is_run_or_refused(tmp_path: Path) -> None:
    """A4: an ``atexit`` handler registered before the program first used the library (so it
    runs after the library's exit hooks) submits a thread task to a new Executor and returns.
    ``submit`` accepts it, then the interpreter exits 0.2 s later without waiting for it: the
    task never finishes, and nothing says so. docs/timeouts-and-killing.md: "Executors you left
    open finish their queued and running work, on threads and in processes, as the stdlib's
    pools do at exit"; the stdlib's pools refuse such a submit with ``RuntimeError('cannot
    schedule new futures after interpreter shutdown')``. Either is fine; silent loss is not.
    (A handler registered after the first executor runs before the library's hooks: its task
    is awaited.)"""
    proc = run_script(tmp_path, LATE_ATEXIT_THREAD_WORK, timeout=30)
    assert proc.returncode == 0, proc.stderr
    refused = "submit refused RuntimeError" in proc.stdout
    assert refused or (tmp_path / "late.done").exists(), proc.stdout + proc.stderr


LATE_ATEXIT_PROCESS_EXECUTOR = """
import atexit, os


def where(x):
    return os.getpid()


def at_exit():
    import hybridexec as hx

    try:
        print("default executor:", len(hx.map(where, [1, 2], kind="process")), flush=True)
    except RuntimeError as exc:
        print("default executor refused", repr(exc), flush=True)
    ex = hx.Executor(max_processes=1)
    try:
        future = ex.options(kind="process").submit(where, 1)
    except RuntimeError as exc:
        print("new executor refused", repr(exc), flush=True)
        return
    try:
        print("new executor ran in a worker:", future.result(timeout=20) != os.getpid())
    except Exception as exc:
        print("new executor failed", repr(exc), flush=True)


atexit.register(at_exit)  # the program's own cleanup, registered first thing
import hybridexec as hx

if __name__ == "__main__":
    assert len(hx.map(where, [1, 2], kind="process")) == 2
    print("main ends", flush=True)
"""


def test_process_executor_made_by_a_late_atexit_handler_runs_or_refuses(tmp_path: Path) -> None:
    """A5: in the same late ``atexit`` handler, ``hx.map(..., kind="process")`` runs in
    workers; a new ``hx.Executor(max_processes=1)`` made after it accepts a process task and
    fails it after 1 s with ``BrokenExecutorError("no worker process could be started for 1 s:
    FileNotFoundError(2, 'No such file or directory')")``, raised by multiprocessing's
    ``forkserver.connect_to_new_process``: the fork server's socket is gone (its directory
    removed at exit) while multiprocessing still holds its address. Expected: the task runs,
    or ``submit`` refuses at once with ``RuntimeError`` (the stdlib's pools do).

    (Lead: after the library's exit hooks every submit is refused, as the standard library's
    pools refuse after interpreter shutdown: the ``hx.map`` too, which ran then only because
    the default executor was made again and its work was not awaited.)"""
    proc = run_script(tmp_path, LATE_ATEXIT_PROCESS_EXECUTOR, timeout=40)
    out = proc.stdout + proc.stderr
    assert (
        "default executor: 2" in proc.stdout
        or "default executor refused RuntimeError('cannot schedule new futures after "
        "interpreter shutdown')"
        in proc.stdout
    ), out
    assert (
        "new executor ran in a worker: True" in proc.stdout
        or "new executor refused RuntimeError" in proc.stdout
    ), out
