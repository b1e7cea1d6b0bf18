"""An outside tester's cases for round 15 (tester 15e): this round's fixes at the process
boundary and start-up (script objects by value, the guard's reading, the fork copies'
descriptors, fork initializers' globals), seen from a user's side (second wave).

Each test names the defect of the tester's report (E1, E2, ...) in its docstring and fails on
main 3cc9dac (Python 3.11). Every scenario runs as a script in a fresh interpreter whose
session is killed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


def _lines(tmp_path: Path, body: str, *args: str) -> tuple[list[str], str]:
    result = run_script(tmp_path, body, *args, timeout=40)
    return result.stdout.splitlines(), result.stdout + result.stderr[-3000:]


_REDEFINED_UNDER_THE_GUARD = """
import hybridexec as hx

class Box:
    def val(self):
        return "top-level Box"

def call(box):
    return box.val()

if __name__ == "__main__":
    class Box:  # the script's real Box: the top-level one is a default it replaces
        def val(self):
            return "guarded Box"

    with hx.Executor(max_processes=1) as ex:
        print("thread:", ex.options(kind="thread").submit(call, Box()).result(), flush=True)
        print("process:", ex.options(kind="process").submit(call, Box()).result(), flush=True)
"""


def test_class_redefined_under_the_guard_is_not_swapped_for_the_top_level_one(
    tmp_path: Path,
) -> None:
    """E1: a class the script defines again under ``if __name__ == "__main__":`` with the name
    of a top-level class reaches a process task as the *top-level* class: the task silently
    runs the other class's code ("top-level Box" instead of "guarded Box"; a thread gives
    "guarded Box"). Breaks getting-started.md "Classes and functions defined in ``__main__``
    ... are fine: what the worker cannot import is sent by value" and I2 (one answer whichever
    lane). Cause: ``_scripts.guarded`` skips every name the script's top level binds outside
    the guard (``if name in static``) without asking whether the object bound now is the one
    a worker gets: the pickle stays by reference, and the worker's ``__mp_main__.Box`` is the
    top-level one.
    """
    lines, out = _lines(tmp_path, _REDEFINED_UNDER_THE_GUARD)
    assert "thread: guarded Box" in lines, out
    assert "process: guarded Box" in lines, out


_COMPOUND_GUARD = """
import sys
import hybridexec as hx

def call(box):
    return box.v + 1

if __name__ == "__main__" and "--dry-run" not in sys.argv:
    class Box:
        def __init__(self, v):
            self.v = v

    with hx.Executor(max_processes=1) as ex:
        try:
            print("process:", ex.options(kind="process").submit(call, Box(1)).result())
        except Exception as exc:
            print("failed:", repr(exc)[:300])
"""


def test_class_under_a_guard_with_a_compound_condition_goes_by_value(tmp_path: Path) -> None:
    """E2: a class defined under ``if __name__ == "__main__" and <more>:`` cannot be an
    argument of a process task: ``SerializationError: the worker could not unpickle the task
    ... Can't get attribute 'Box' on <module '__mp_main__'>`` (the same with
    ``if __name__ != "__main__": ... else: class Box``). The worker never runs that block,
    exactly as with the plain guard. Breaks getting-started.md "what the worker cannot import
    is sent by value with cloudpickle, so instances of such classes cross as arguments and as
    results". Cause: ``_scripts._is_main_guard`` knows only a lone ``Compare`` of ``__name__``
    with ``"__main__"`` (and ignores its operator): a ``BoolOp`` test is taken for an ordinary
    ``if``, whose body ``_top_level_names`` counts as bound by the top level.
    """
    lines, out = _lines(tmp_path, _COMPOUND_GUARD)
    assert "process: 2" in lines, out


_GUARD_INSIDE_TRY = """
import collections
import hybridexec as hx

def call(box):
    return box.v + 1

try:
    if __name__ == "__main__":
        Box = collections.namedtuple("Box", "v")
        with hx.Executor(max_processes=1) as ex:
            try:
                print("process:", ex.options(kind="process").submit(call, Box(1)).result())
            except Exception as exc:
                print("failed:", repr(exc)[:300])
except KeyboardInterrupt:
    pass
"""


def test_namedtuple_assigned_under_a_guard_inside_try_goes_by_value(tmp_path: Path) -> None:
    """E3: a guard nested in a top-level ``try:`` (to catch Ctrl-C) that makes a class by
    assignment (``Box = namedtuple(...)``, an ``Enum("Color", ...)``, ``type(...)``) cannot
    send its instances to a process: ``SerializationError ... Can't get attribute 'Box' on
    <module '__mp_main__'>``, though the worker never runs that block. (A ``class`` statement
    there works.) Breaks getting-started.md "what the worker cannot import is sent by value".
    Cause: ``_scripts._top_level_names`` handles a compound statement that is not a guard with
    ``ast.walk`` over the whole node, which collects every ``Name`` stored anywhere inside it,
    those of the nested guard's body included, before it recurses into the body where the
    guard would have been skipped.
    """
    lines, out = _lines(tmp_path, _GUARD_INSIDE_TRY)
    assert "process: 2" in lines, out


_TOP_LEVEL_TYPES_IN_A_TASK = """
import dataclasses, enum
import hybridexec as hx

class Color(enum.Enum):
    RED = 1
    BLUE = 2

@dataclasses.dataclass
class Point:
    x: int

def is_red(color):
    return color == Color.RED

def is_point(p):
    return isinstance(p, Point)

if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        for kind in ("thread", "process"):
            on = ex.options(kind=kind)
            print(kind, "is_red", on.submit(is_red, Color.RED).result(), flush=True)
            print(kind, "is_point", on.submit(is_point, Point(1)).result(), flush=True)
"""


def test_top_level_enum_and_isinstance_checks_hold_in_a_process_task(tmp_path: Path) -> None:
    """E4: a top-level function of the script that compares its argument with a top-level
    enum member (``color == Color.RED``) or checks ``isinstance(p, Point)`` for a top-level
    dataclass answers False in a process task for ``Color.RED`` / ``Point(1)`` (True on a
    thread): every ``match``/``isinstance`` dispatch on the script's own types silently takes
    the wrong branch in a worker. Also on main 3282cb1 (not new this round). Breaks
    getting-started.md "A function of your script (``__main__``) is sent by value, with the
    values of the globals it uses as the call is sent: exactly what it would see on a thread,
    so an automatically routed ``map`` gives one answer whichever lane each call lands on"
    (I2). Cause: ``_serialize.dumps_callable`` pickles the function by value with cloudpickle,
    which also makes the ``__main__`` classes in its globals by value (a second ``Color``,
    ``Point`` in the worker), while the arguments go through the C pickler by reference to the
    worker's ``__mp_main__.Color``/``Point``: two distinct classes.
    """
    lines, out = _lines(tmp_path, _TOP_LEVEL_TYPES_IN_A_TASK)
    assert "thread is_red True" in lines, out
    assert "thread is_point True" in lines, out
    assert "process is_red True" in lines, out
    assert "process is_point True" in lines, out


_LOCKED_FILE = """
import fcntl
import hybridexec as hx

def square(x):
    return x * x

if __name__ == "__main__":
    held = open("job.lock", "w")
    fcntl.flock(held, fcntl.LOCK_EX)  # this run owns the job
    with hx.Executor(max_processes=1) as ex:
        print(list(ex.options(kind="process").map(square, range(4))), flush=True)
    held.close()  # the job is done: this releases the lock
    again = open("job.lock", "w")  # another open file description, as another program's
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("lock released", flush=True)
    except OSError as exc:
        print("lock still held:", exc, flush=True)
"""


def test_a_file_lock_is_released_once_the_program_closes_its_file(tmp_path: Path) -> None:
    """E5: since this round, hybridexec's forked copies of the program (``hx-forkserver``,
    ``hx-guardian``, ``hx-tracker``) keep every regular file the program had open when its
    first process task ran, for the program's whole life, after ``shutdown()`` too. A
    ``flock`` the program took on such a file (a job or pid lock) stays held after the
    program closes the file: another program waiting for it with ``LOCK_EX`` hangs until this
    one exits. (A large file the program deletes keeps its disk space the same way.) On main
    3282cb1 the lock is released. Breaks timeouts-and-killing.md "Neither copy keeps anything
    of your program's" as amended ("files and devices stay open, so a log file's handler ...
    still writes to its file from a worker, as under fork": under ``fork`` the stdlib's
    workers exit at ``shutdown()``; these copies never do). Cause:
    ``_process/_child.py`` ``blank_descriptors`` now skips every ``S_ISREG``/``S_ISCHR``
    descriptor, and the copies live until the program exits.
    """
    lines, out = _lines(tmp_path, _LOCKED_FILE)
    assert "[0, 1, 4, 9]" in lines, out
    assert "lock released" in lines, out


_FORK_INITIALIZER_HELPER = """
import hybridexec as hx

CONN = None

def _connect():
    global CONN
    CONN = "connected"

def init():
    _connect()

def task(x):
    return CONN

if __name__ == "__main__":
    with hx.Executor(max_processes=1, start_method="fork", initializer=init) as ex:
        print("process:", ex.options(kind="process").submit(task, 1).result(), flush=True)
"""


def test_fork_initializer_setting_a_global_through_a_helper_reaches_the_tasks(
    tmp_path: Path,
) -> None:
    """E6: under ``start_method="fork"``, an initializer that sets a ``__main__`` global
    through a helper it calls (``init()`` calls ``_connect()``, which does ``global CONN``)
    leaves the tasks seeing ``CONN = None``; under ``spawn`` and ``forkserver`` they see
    ``"connected"``, as with ``concurrent.futures`` under every start method. Breaks
    getting-started.md "An ``initializer`` that sets (or fills) a global is seen by the tasks,
    as ``concurrent.futures`` has it" (this round's 15a A4 fix). Cause:
    ``_serialize._main_globals_used`` keeps only the names in the initializer's own code
    (``co_names``: ``_connect``), not those of the functions it calls; under spawn the
    initializer came by value and ``_by_value_globals`` takes its whole globals dict.
    """
    lines, out = _lines(tmp_path, _FORK_INITIALIZER_HELPER)
    assert "process: connected" in lines, out


_FORK_INITIALIZER_METHOD = """
import hybridexec as hx

CONN = None

class Setup:
    def run(self, value):
        global CONN
        CONN = value

def task(x):
    return CONN

if __name__ == "__main__":
    setup = Setup()
    with hx.Executor(
        max_processes=1, start_method="fork", initializer=setup.run, initargs=("connected",)
    ) as ex:
        print("process:", ex.options(kind="process").submit(task, 1).result(), flush=True)
"""


def test_fork_bound_method_initializer_global_reaches_the_tasks(tmp_path: Path) -> None:
    """E7: under ``start_method="fork"``, a bound method as ``initializer`` that sets a
    ``__main__`` global leaves the tasks seeing the old value (``None``; ``"connected"`` under
    spawn and with ``concurrent.futures``). Breaks getting-started.md "the globals the
    initializer touched are the worker's own, for plain functions, ``functools.partial``
    objects and bound methods alike". Cause: ``_serialize._main_globals_used`` looks through
    ``functools.partial`` only; for a ``MethodType`` it returns ``{}`` (``type(fn) is not
    types.FunctionType``), where ``_by_value_globals`` looks through ``__func__``.
    """
    lines, out = _lines(tmp_path, _FORK_INITIALIZER_METHOD)
    assert "process: connected" in lines, out
