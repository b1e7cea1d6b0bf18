"""Outside tester 11b: the docs (and the public API's types) taken as a contract.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring and fails on
main 3bbaf51 (Python 3.11). The type-checking cases run ``mypy --strict`` on a user's script,
as a user of the ``py.typed`` package would; the others use the public API, a script in an
interpreter of its own where what reaches stderr is the point.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from .scenario import run_piped, run_script
from .test_docs import DOCS, examples_of

pytestmark = pytest.mark.timeout(40)


def mypy_strict(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Type-check ``code`` as a user's module with ``mypy --strict``."""
    script = tmp_path / "user_code.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "mypy-cache"), "--no-error-summary", script.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip


class Abandon(BaseException):
    """A user's BaseException (docs/getting-started.md names "your own" among those kept)."""


def stops_on_two(x: int) -> int:
    if x == 2:
        raise Abandon("two")
    return x


def test_return_exceptions_item_type_admits_what_is_put_in_place(tmp_path: Path) -> None:
    """B1: ``hx.map(fn, xs, return_exceptions=True)`` is typed ``list[R | Exception]``
    (``_default.py`` overloads; ``amap`` and ``imap`` alike), but docs/getting-started.md says
    "any other exception stays in its place, a ``BaseException`` such as ``GeneratorExit`` or
    your own too", and so it does. Code that mypy --strict and pyright pass, the usual
    ``if isinstance(r, Exception): ... else: use r as R``, then treats the ``BaseException`` as
    a result: ``r + 1`` raises ``TypeError`` at run time. The item type must be
    ``R | BaseException``.
    """
    got = hx.map(stops_on_two, [1, 2], kind="thread", return_exceptions=True)
    item: object = got[1]  # the runtime (typed, mypy calls an Abandon here unreachable)
    assert isinstance(item, Abandon)
    assert not isinstance(item, Exception)
    result = mypy_strict(
        tmp_path,
        """
        import hybridexec as hx

        def f(x: int) -> int:
            return x

        got = hx.map(f, [1, 2], return_exceptions=True)
        for item in got:
            if not isinstance(item, Exception):
                total: int = item + 1  # an Abandon lands here at run time
        """,
    )
    # A sound type makes mypy reject ``item + 1``: item is still ``int | BaseException``.
    assert result.returncode != 0, "mypy passes code that gets a BaseException as an int"


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("entry", ["map", "imap", "amap"])
def test_map_with_an_options_view_as_executor(entry: str) -> None:
    """B2: ``hx.map(fn, xs, executor=ex.options(kind="process"))`` fails with
    ``AttributeError: 'ExecutorOptions' object has no attribute '_router'`` (``imap`` and
    ``amap`` too), a private name leaking out. docs/getting-started.md lists ``executor=``
    among the options of ``hx.map``/``imap``/``amap`` ("a specific executor instead of the
    default one"), and ``hx.arun(fn, executor=ex.options(...))`` does accept the view (its
    docstring says so). Either the view works, or a ``TypeError`` names the argument.
    """
    import asyncio

    with hx.Executor(max_processes=1) as ex:
        view: Any = ex.options(kind="thread")  # Any: the overloads say Executor | None
        outcome: object
        try:
            if entry == "map":
                outcome = hx.map(square, range(3), executor=view)
            elif entry == "imap":
                outcome = list(hx.imap(square, range(3), executor=view))
            else:
                outcome = asyncio.run(hx.amap(square, range(3), executor=view))
        except Exception as exc:  # which one is the point
            outcome = exc
    if isinstance(outcome, TypeError):
        assert "executor" in str(outcome)
    else:
        assert outcome == [0, 1, 4]


def test_map_checks_its_items_against_fn(tmp_path: Path) -> None:
    """B3: the overloads of ``hx.map``/``imap``/``amap`` for one and two iterables
    (``Callable[[T1], R], Iterable[T1]``: "one or two iterables are checked against fn's
    parameters", the comment above them) check nothing: when the items do not fit, mypy and
    pyright fall through to the catch-all ``Callable[..., R], *Iterable[Any]`` overload, so
    ``hx.map(square, ["x"])`` type-checks as ``list[int]`` and fails only at run time.
    ``builtins.map(square, ["x"])``, the model the comment names, is rejected.
    """
    result = mypy_strict(
        tmp_path,
        """
        import hybridexec as hx

        def square(x: int) -> int:
            return x * x

        def main() -> None:
            hx.map(square, ["x"])
        """,
    )
    control = mypy_strict(
        tmp_path,
        """
        def square(x: int) -> int:
            return x * x

        def main() -> None:
            list(map(square, ["x"]))
        """,
    )
    assert control.returncode != 0, control.stdout  # mypy does check builtins.map
    assert result.returncode != 0, "mypy --strict passes hx.map(square, ['x'])"
    assert "square" in result.stdout or "str" in result.stdout, result.stdout


def test_asyncio_cancel_example_is_guarded_and_prints_no_traceback(tmp_path: Path) -> None:
    """B4 (docs): the example of docs/timeouts-and-killing.md that cancels an asyncio task
    awaiting process work (the block after "cancelling an asyncio task that awaits process
    work kills that work") starts an executor at the top level of the script, with no
    ``if __name__ == "__main__":`` guard, against the getting-started page's "Guard your
    script". Run as the docs tell (``python script.py``), it exits 0 but prints a worker's
    traceback ending in ``RuntimeError: An attempt has been made to start a process lane in
    a worker process before it has finished its bootstrapping phase`` every time, and the
    worker that "was killed" by the cancel in fact died of that error. tests/test_docs.py
    only looks for "Warning" on stderr, so it passes.
    """
    page = DOCS / "timeouts-and-killing.md"
    (example,) = [e for e in examples_of(page) if "asyncio.wrap_future(fut)" in e.script()]
    result = run_script(tmp_path, example.script(), timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_stdin_script_fails_its_process_tasks_as_documented(tmp_path: Path) -> None:
    """Holds (proves docs/getting-started.md, "A script piped to the interpreter ... process
    tasks end with ``WorkerCrashedError``"): no hang, auto-routed work still runs."""
    code = textwrap.dedent(
        """
        import hybridexec as hx

        def work(x: int) -> int:
            return x + 1

        if __name__ == "__main__":
            try:
                hx.map(work, range(3), kind="process")
            except hx.WorkerCrashedError:
                print("crashed")
            print(hx.map(work, range(3), kind="thread"))
        """
    )
    result = run_piped(tmp_path, code, timeout=30)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["crashed", "[1, 2, 3]"], result.stdout


async def coroutine_fn(x: int) -> int:
    return x


def test_explain_says_where_a_coroutine_function_runs() -> None:
    """B5: ``ex.explain(fn)`` "tells where a call of ``fn`` would go now, and why"
    (docs/getting-started.md; its docstring: "where a call of ``fn`` goes now"). For an
    ``async def`` function it answers ``-> thread: not seen yet: its first call will be
    measured on a thread``, before and after calls, while every call of it runs on the
    executor's event loop (``fut.kind == "async"``, docs/timeouts-and-killing.md: "An ``async
    def`` function submitted to an executor runs on the executor's own event loop"): nothing
    is measured on a thread, and the explanation never matches the lane.
    """
    with hx.Executor(max_processes=1) as ex:
        before = ex.explain(coroutine_fn, 1)
        fut = ex.submit(coroutine_fn, 1)
        assert fut.result(timeout=15) == 1
        after = ex.explain(coroutine_fn, 1)
    assert fut.kind == "async"
    assert (before.kind, after.kind) == (fut.kind, fut.kind), (str(before), str(after))


def holds_nothing(lock: object) -> str:
    return type(lock).__name__


def test_executor_kind_process_fails_an_unpicklable_call_as_its_docs_say() -> None:
    """B6: ``Executor(kind="process")``: its docstring said ``kind`` is "the lane for calls
    that no option, hint or rule places", and docs/routing.md listed "a callable or arguments
    that cannot be pickled stay on threads" among the rules before it. The call went to a
    process all the same and failed with ``SerializationError`` (``explain`` said process).
    That is the intended drop-in behaviour (``ProcessPoolExecutor`` fails such a call;
    ``tests/test_dropin.py``), so the docs were wrong: both now say so, and this holds them to
    it.
    """
    import threading

    from hybridexec import _executor

    docstring = " ".join((_executor.Executor.__doc__ or "").split())
    assert "pickled fails with ``SerializationError``" in docstring
    assert "`ProcessPoolExecutor` fails it" in " ".join((DOCS / "routing.md").read_text().split())
    with hx.Executor(kind="process", max_processes=1) as ex:
        fut = ex.submit(holds_nothing, threading.Lock())
        assert isinstance(fut.exception(timeout=20), hx.SerializationError)
        assert ex.explain(holds_nothing, threading.Lock()).kind == "process"
    assert fut.kind == "process"
