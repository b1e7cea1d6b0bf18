"""An outside tester's cases for round 15 (tester 15h): this round's pickling changes
(top-level classes sent by name inside functions sent by value), regressions against main
3282cb1.

Each test names the defect of the tester's report (H1, H2, H3) in its docstring and fails on
main 02125d9 (Python 3.11); H1 and H2 pass on 3282cb1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


_CLASS_SET_UNDER_GUARD = """
import hybridexec as hx

class Config:
    scale = 1

def uses(x):
    return x * Config.scale

class Counter:
    def read(self):
        return Config.scale

if __name__ == "__main__":
    Config.scale = 10  # the program's set-up, before any call
    with hx.Executor() as ex:
        thread = ex.options(kind="thread").submit(uses, 2).result(timeout=30)
        process = ex.options(kind="process").submit(uses, 2).result(timeout=30)
        lam = ex.options(kind="process").submit(lambda x: x * Config.scale, 2).result(timeout=30)
    actor = hx.spawn(Counter, kind="process")
    try:
        seen = actor.ask(Counter.read).result(timeout=30)
    finally:
        actor.stop()
    print("RESULT", thread, process, lam, seen, flush=True)
"""


def test_class_attribute_set_under_the_guard_reaches_process_tasks(tmp_path: Path) -> None:
    """H1: a class attribute the script sets in its ``if __name__ == "__main__":`` block
    (``Config.scale = 10`` on a top-level ``class Config``) is not seen by process tasks any
    more: a top-level function, a lambda and a process actor's method all read the class's
    default (``1``) in the worker, while the same call on a thread reads ``10``. On main
    3282cb1 every one of them read ``10``. Expected ``RESULT 20 20 20 10``; actual
    ``RESULT 20 2 2 1``: a wrong result, with no error. Breaks docs/getting-started.md: "A
    function of your script (`__main__`) is sent by value, with the values of the globals it
    uses as the call is sent: exactly what it would see on a thread, so an automatically
    routed `map` gives one answer whichever lane each call lands on. An assignment made in the
    `if __name__ == "__main__":` block before the call is therefore seen by the worker".
    Cause: ``_serialize.cloud_pickler``'s ``reducer_override`` (new in 785365f) sends every
    class the script binds at its top level by name (``_main_attr``), so the worker gets its
    own re-run of the class body, not the class as the program changed it; the static check in
    ``_scripts.shared`` sees names bound, not attributes set on them.
    """
    done = run_script(tmp_path, _CLASS_SET_UNDER_GUARD, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT 20 20 20 10" in done.stdout, done.stdout + done.stderr[-1000:]


_DASK_CLI_WORKER = """
import dataclasses, os, socket, subprocess, sys
import distributed
import hybridexec as hx

@dataclasses.dataclass(frozen=True)
class Point:
    x: int

def make(n):
    return Point(n).x * 2

if __name__ == "__main__":
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    addr = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
        "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"], **quiet)
    work = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr,
        "--nthreads", "1", "--no-nanny", "--dashboard-address", "127.0.0.1:0"], **quiet)
    try:
        client = distributed.Client(addr, timeout=20)
        client.wait_for_workers(1, timeout=20)
        with hx.Executor(backend=client, remote="all") as ex:
            for label, fut in [("fn", ex.submit(make, 3)),
                               ("lambda", ex.submit(lambda n: Point(n).x * 2, 3))]:
                try:
                    print(label, fut.result(timeout=20), flush=True)
                except Exception as exc:
                    print(label, "FAILED", type(exc).__name__, exc, flush=True)
        client.close()
    finally:
        work.kill()
        sched.kill()
        work.wait()
        sched.wait()
"""


def test_script_class_used_inside_a_function_runs_on_a_dask_cli_worker(tmp_path: Path) -> None:
    """H2: with ``backend=`` a Dask cluster whose worker was started by ``dask worker`` (any
    real cluster), a function of the script that builds an instance of a top-level class of
    the script (``Point(n)``, a frozen dataclass) no longer runs: ``SerializationError: the
    worker could not unpickle the task: ... AttributeError("module '__main__' has no
    attribute 'Point'")``, for a top-level function and for a lambda alike. On main 3282cb1
    both gave ``6``. Breaks docs/distributed.md: "Functions defined in `__main__`, lambdas and
    closures travel by value (cloudpickle), as with local processes." Cause:
    ``_serialize.cloud_pickler``'s ``reducer_override`` (785365f) sends the class by name as
    ``_main_attr("Point")``, which reads the *worker's* ``__main__``; on a Dask worker that
    is ``distributed.cli.dask_worker``, not the script (``_backends/_wire.py`` ``encode`` uses
    the same ``dumps_callable``). The by-name rule holds only for hybridexec's own process
    workers.
    """
    pytest.importorskip("distributed")
    done = run_script(tmp_path, _DASK_CLI_WORKER, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fn 6" in done.stdout, done.stdout
    assert "lambda 6" in done.stdout, done.stdout


_LOG_MODE_W = """
import logging
import hybridexec as hx

log = logging.getLogger("app")

def job(i):
    log.warning("job %d", i)
    return i

if __name__ == "__main__":
    handler = logging.FileHandler("app.log", mode="w")
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    log.warning("parent start")
    with hx.Executor() as ex:
        print(list(ex.options(kind="process").map(job, range(3))), flush=True)
    log.warning("parent end")
    handler.close()
"""


def test_process_tasks_log_lines_survive_a_mode_w_file_handler(tmp_path: Path) -> None:
    """H3: with a ``logging.FileHandler(path, mode="w")`` made before the first process task,
    the worker's records are appended (the handler is reopened with ``mode="a"``) but the
    parent's own handler still writes at its own offset without ``O_APPEND``: its next
    record overwrites what the workers wrote. Expected the file to hold the lines ``parent
    start``, ``job 0``, ``job 1``, ``job 2`` and ``parent end``, each whole; actual (3.11):
    ``parent start``, ``parent end``, ``NG:app:job 1``, ``job 2``: ``job 0`` is lost and a line
    is cut. The fix for 15a's A5 ("a worker's first record opens its file again, appending",
    ``_process/_child.py`` ``blank_descriptors``, lines 222-229) reopens the worker's copy
    only; mixing an appending writer with the parent's truncating one loses records.

    Developers (round 15): a ``"w"`` handler's records from workers cannot be written without
    this overwriting (the parent's descriptor has no ``O_APPEND``, and the copies hold none of
    the parent's files: 15e's E5), so they are not written (docs/timeouts-and-killing.md,
    Start-up); the parent's file stays whole. Only an append-mode handler reopens (15a's A5).
    """
    done = run_script(tmp_path, _LOG_MODE_W, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (tmp_path / "app.log").read_text().splitlines()
    expected = [f"WARNING:app:{text}" for text in ("parent start", "parent end")]
    assert lines == expected, lines
