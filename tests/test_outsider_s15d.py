"""An outside tester's cases for round 15 (tester 15d): a new user's first hour, from a built
package (the wheel in a fresh virtual environment with only its runtime dependencies, the
README's and docs' examples, optional features without their extras, newcomer mistakes).

Each test names the defect of the tester's report (D1, D2, ...) in its docstring and fails on
main 3282cb1 (Python 3.11; the wheel was also tried on 3.10, 3.12 and 3.13).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import hybridexec as hx

from .scenario import ROOT, kill_session, run_script

pytestmark = pytest.mark.timeout(60)


_OPEN_FILE_TO_A_PROCESS = """
import hybridexec as hx

def append_line(f, line):
    f.write(line)
    f.flush()
    return type(f).__name__

if __name__ == "__main__":
    with open("log.txt", "w") as f:
        f.write("start\\n")
    with hx.Executor(max_processes=1) as ex, open("log.txt", "r+") as f:
        f.seek(0, 2)
        views = (("explicit", ex.options(kind="process")), ("timeout", ex.options(timeout=20)))
        for label, view in views:
            fut = view.submit(append_line, f, label + "\\n")
            try:
                print(label, "ran on", fut.result(timeout=30), "in a", fut.kind, flush=True)
            except hx.SerializationError as exc:
                print(label, "refused:", exc, flush=True)
    print("file:", repr(open("log.txt").read()), flush=True)
"""


def test_an_open_file_sent_to_a_process_is_refused_not_silently_copied(tmp_path: Path) -> None:
    """D1: an open file passed to a process task is silently replaced by an ``io.StringIO``
    snapshot of its text, so what the task writes to it is lost without any error.
    docs/getting-started.md (Pitfalls, "What crosses to a process must pickle") says: "open
    files, sockets, locks and generators do not pickle. An automatically routed task that
    cannot be pickled runs on a thread instead; with an explicit ``kind="process"`` its future
    fails with ``SerializationError``". Expected: with ``kind="process"`` the future fails with
    ``SerializationError``; with only a ``timeout`` (routed to a process "when it can be
    pickled") the task runs on a thread and its line reaches the file. Actual: both run in a
    process on a ``StringIO`` (``fut.result()`` is ``"StringIO"``), and the file still holds
    only ``"start\\n"``: two writes lost, no error, no warning. Cause: ``_serialize.py``
    ``dumps`` (line 58-62) falls back to cloudpickle for arguments when the C pickler refuses,
    and cloudpickle's reducer for text files (``_file_reduce``) reads a file opened for reading
    (``"r"``, ``"r+"``, ``"a+"``, ``"w+"``) into a ``StringIO``. The same holds for a
    ``__main__`` function using a global open file (sent by value with its globals).
    """
    result = run_script(tmp_path, _OPEN_FILE_TO_A_PROCESS, timeout=50)
    assert "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    assert "StringIO" not in out, out
    assert "explicit refused:" in out, out
    assert "file: 'start\\ntimeout\\n'" in out, out


_CLASS_UNDER_THE_GUARD = """
import hybridexec as hx

def getx(o):
    return o.x

if __name__ == "__main__":
    class Point:
        def __init__(self, x):
            self.x = x

    for label, opts in (("explicit", {"kind": "process"}), ("timeout", {"timeout": 20})):
        with hx.Executor(max_processes=1) as ex:
            fut = ex.options(**opts).submit(getx, Point(3))
            try:
                print(label, "result", fut.result(timeout=30), flush=True)
            except Exception as exc:
                print(label, "failed", type(exc).__name__, exc, flush=True)
"""


def test_an_instance_of_a_class_defined_under_the_main_guard_crosses_to_a_process(
    tmp_path: Path,
) -> None:
    """D2: an instance of a class defined in the script's ``if __name__ == "__main__":`` block
    (a common newcomer layout) cannot be an argument of a process task: the future fails with
    ``SerializationError: the worker could not unpickle the task: ... AttributeError("Can't get
    attribute 'Point' on <module '__mp_main__' from '.../scenario.py'>")``, with
    ``kind="process"`` and also with just ``timeout=`` (where docs/getting-started.md says a
    task "runs in a worker process (when it can be pickled)", else on a thread). The same
    class works under ``python -c`` (sent by value), and in a worker where an earlier task
    (one returning such an instance) happened to define it: the outcome depends on what ran
    before. A process actor's ``ask`` with such an argument fails the same way.
    docs/getting-started.md (Pitfalls): "Classes and functions defined in ``__main__`` (a
    script, ``python -c``, a REPL or a notebook) are fine: what the worker cannot import is
    sent by value with cloudpickle, so instances of such classes cross as arguments and as
    results." Cause: ``_serialize.py`` ``dumps``/``main_by_value`` (line
    35-46) redoes a pickle by value only when ``__main__`` has no ``__file__``; for a script,
    ``__main__.Point`` is pickled by reference by the C pickler although the worker, which
    re-imports the script without its guarded block, has no ``Point``.
    """
    result = run_script(tmp_path, _CLASS_UNDER_THE_GUARD, timeout=50)
    out = result.stdout
    assert "explicit result 3" in out, out + result.stderr
    assert "timeout result 3" in out, out + result.stderr


def test_the_sdist_holds_every_file_its_own_test_suite_reads(tmp_path: Path) -> None:
    """D3: the sdist ships ``tests/`` and ``docs/`` but not ``mkdocs.yml``, which its own test
    suite reads: in an unpacked sdist, ``pytest tests/test_docs.py`` fails
    (``test_every_page_is_in_the_site_navigation``: ``FileNotFoundError: .../mkdocs.yml``),
    and ``make docs`` (README.md: "``make docs`` builds it into ``site/``") fails too; its
    Makefile's ``test-all``/``test-others`` also call ``scripts/test-all``, not shipped either.
    A packager who runs the tests of the sdist (the usual check of a distribution) sees a
    failure that is not a defect of the code. Expected: the sdist holds what its Makefile and
    tests use. Cause: ``pyproject.toml`` ``[tool.hatch.build.targets.sdist] include`` lists
    ``src/hybridexec``, ``tests``, ``docs``, ``benchmarks``, README.md, CHANGELOG.md, LICENSE
    and the Makefile, but not ``mkdocs.yml`` nor ``scripts``.
    """
    try:
        built = subprocess.run(
            [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("the sdist took over 50 s to build here")
    if built.returncode != 0:
        pytest.skip(f"no sdist could be built here: {built.stderr[-500:]}")
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert "tests/test_docs.py" in names
    top = {n.split("/")[0] for n in names}
    read_by_tests = set(re.findall(r'ROOT / "([^"/]+)"', (ROOT / "tests/test_docs.py").read_text()))
    assert "mkdocs.yml" in read_by_tests
    assert read_by_tests <= top, sorted(read_by_tests - top)


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_api_docstrings_name_no_version_later_than_the_package_version() -> None:
    """D4: the installed package is version 0.1.0.dev0 (``hx.__version__``, the wheel's
    metadata, the only CHANGELOG section is "Unreleased"), but the docstrings a new user reads
    with ``help()`` (and that docs/api.md renders) say ``.. versionchanged:: 0.4 several
    iterables, limit and return_exceptions`` (``hx.map``, ``hx.imap``, ``hx.amap``),
    ``.. versionadded:: 0.5`` (``_exceptions.py`` line 168), ``.. versionchanged:: 0.5 Ctrl-C
    leaving a with block does not wait`` (``Executor``), ``0.2`` for the joblib backend, ...:
    features this version has are marked as coming in later versions, so a reader of the
    0.1.0.dev0 docs concludes they are missing. Expected: no version above the package's own.
    Cause: the markers in ``src/hybridexec`` count internal rounds, not releases
    (``_version.py`` says 0.1.0.dev0).
    """
    package = Path(hx.__file__).parent
    ahead = [
        f"{path.relative_to(package)}: {marker}"
        for path in sorted(package.rglob("*.py"))
        for marker in re.findall(r"version(?:added|changed):: [\d.]+", path.read_text("utf-8"))
        if _release(marker) > _release(hx.__version__)
    ]
    assert not ahead, ahead


def _python_313() -> str | None:
    home = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = [
        shutil.which("python3.13"),
        *map(str, sorted(home.glob("versions/3.13*/bin/python3.13"))),
    ]
    for candidate in filter(None, found):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_the_declared_typing_extensions_floor_works_on_python_3_13(tmp_path: Path) -> None:
    """D5: the metadata (``Requires-Dist: typing-extensions>=4.6``, classifier "Python ::
    3.13") accepts typing-extensions 4.6 to 4.11 on Python 3.13, and with any of them the
    first ``hx.map`` (or ``hx.imap``, ``hx.amap``, ``hx.arun``...: every name ``_default.py``
    backs) crashes: ``AttributeError: attribute '__default__' of 'typing.ParamSpec' objects is
    not writable``, raised deep inside ``typing_extensions`` while ``hybridexec._default``
    runs ``P = ParamSpec("P")`` (line 26). ``pip install hybridexec`` into an environment that
    already holds such a version (pinned by another package) keeps it, since it satisfies the
    requirement. Seen with 4.6.0, 4.10.0 and 4.11.0 on 3.13.0; 4.12.0 works; 3.10 to 3.12
    work with 4.6.0. The cloudpickle floor has a marker of this kind for 3.14 already.
    Expected: a requirement such as ``typing-extensions>=4.12; python_version >= "3.13"``, or
    a floor that works. Cause: ``pyproject.toml`` ``dependencies``.
    """
    floor = "4.11.0"
    wanted = [
        Requirement(line)
        for line in importlib.metadata.requires("hybridexec") or []
        if Requirement(line).name == "typing-extensions"
    ]
    applies = [
        r for r in wanted if r.marker is None or r.marker.evaluate({"python_version": "3.13"})
    ]
    assert applies, wanted
    if not all(r.specifier.contains(floor) for r in applies):
        return  # the metadata no longer allows a version that breaks on 3.13
    python = _python_313()
    if python is None:
        pytest.skip("no Python 3.13 here to run the package on")
    venv = tmp_path / "venv"
    pins = [f"typing-extensions=={floor}", "cloudpickle>=3.0"]
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=30)
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            *pins,
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    if installed.returncode != 0:
        pytest.skip(f"typing-extensions {floor} could not be installed: {installed.stderr[-300:]}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT / "src")
    ran = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import hybridexec as hx; print(hx.map(abs, [-1, -2]))",
        ],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert ran.stdout.strip() == "[1, 2]", ran.stderr[-1500:]


_PROFILED_JOB = """
import hybridexec as hx

class Point:
    def __init__(self, x):
        self.x = x

def getx(p):
    return p.x

def make(x):
    return Point(x)

if __name__ == "__main__":
    print("args", hx.map(getx, [Point(i) for i in range(3)], kind="process"), flush=True)
    try:
        print("results", [p.x for p in hx.map(make, range(3), kind="process")], flush=True)
    except Exception as exc:
        print("results failed:", type(exc).__name__, exc, flush=True)
"""


def test_a_script_run_under_cprofile_gets_its_own_class_back_from_a_process(
    tmp_path: Path,
) -> None:
    """D6: a newcomer profiling a script (``python -m cProfile -o out job.py``, also
    ``python -m trace --count job.py``) sees a map that works when the script runs plainly
    fail: instances of a class of the script cross to the workers as arguments, but as results
    they fail with ``SerializationError: the task's result could not be unpickled: ...
    AttributeError("Can't get attribute 'Point' on <module 'cProfile' from '.../cProfile.py'>")``.
    docs/getting-started.md (Pitfalls): "Classes and functions defined in ``__main__`` (a
    script, ``python -c``, a REPL or a notebook) are fine: what the worker cannot import is
    sent by value with cloudpickle, so instances of such classes cross as arguments and as
    results." Cause (as read): under such a launcher ``sys.modules["__main__"]`` is the
    launcher's module (it has a ``__file__``), not the script's globals; in the worker the
    result is pickled by reference as ``__main__.Point`` (``_serialize.py`` ``dumps`` keeps
    the C pickler's bytes since ``main_by_value`` sees a ``__main__`` with a ``__file__``),
    and the parent's ``__main__`` (cProfile) has no ``Point``.
    """
    (tmp_path / "job.py").write_text(_PROFILED_JOB, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cProfile", "-o", os.devnull, "job.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=50)
    finally:
        kill_session(proc)
    assert "args [0, 1, 2]" in out, out + err
    assert "results [0, 1, 2]" in out, out + err
