"""An outside tester's cases for round 14 (tester 14c): bad input and the typed public API.

Each test names the defect of the tester's report (C1, C2, ...) in its docstring and fails on
main 3cf623e (Python 3.11). The type-checking cases run ``mypy --strict`` on a user's module,
as a user of the ``py.typed`` package would (pyright 1.1 agrees with mypy on each of them).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(30)


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
        timeout=25,
        check=False,
    )  # fmt: skip


def echo(x: int) -> int:
    return x


async def fetch(n: int) -> bytes:
    return b"x" * n


class Account:
    def __init__(self) -> None:
        self.balance = 0

    def deposit(self, n: int) -> int:
        self.balance += n
        return self.balance

    async def deposit_later(self, n: int) -> int:
        self.balance += n
        return self.balance


def test_maps_and_arun_of_an_async_def_are_typed_as_what_they_return(tmp_path: Path) -> None:
    """C1 (typing, medium): ``hx.map``, ``hx.imap``, ``hx.amap``, ``hx.arun`` and
    ``Executor.map`` of an ``async def`` function are typed as returning coroutines
    (``list[Coroutine[Any, Any, bytes]]``, ``await hx.arun(fetch, 1)`` is a
    ``Coroutine[Any, Any, bytes]``), but at run time the executor awaits them on its event
    loop and the user gets ``bytes`` (docs/getting-started.md, docs/index.md: "``async def``
    tasks"; DESIGN section 1: "``async def`` functions submitted to the executor run on an event
    loop owned by the executor"). ``Executor.submit`` has the coroutine overload
    (``Callable[P, Coroutine[Any, Any, R]] -> Future[R]``); the maps and ``arun`` lack it
    (``_default.py`` overloads of ``map``/``imap``/``amap``, ``arun``; ``_executor.py``
    ``Executor.map``). So correct code is rejected by mypy --strict and pyright.
    """
    got: object = hx.map(fetch, [1, 2], kind="thread")
    assert got == [b"x", b"xx"]  # the runtime
    result = mypy_strict(
        tmp_path,
        """
        import asyncio

        import hybridexec as hx


        async def fetch(n: int) -> bytes:
            return b"x" * n


        async def main() -> None:
            one: bytes = await hx.arun(fetch, 1)
            many: list[bytes] = await hx.amap(fetch, [1, 2])
            print(one, many)


        if __name__ == "__main__":
            got: list[bytes] = hx.map(fetch, [1, 2])
            lazy: list[bytes] = list(hx.imap(fetch, [1, 2]))
            with hx.Executor() as ex:
                direct: list[bytes] = list(ex.map(fetch, [1, 2]))
            asyncio.run(main())
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.xfail(
    strict=True,
    reason="declined (developers): kind stays typed str on Executor(), options() and the maps, "
    "so a kind read from configuration type-checks; the run-time ValueError names it",
)
def test_kind_of_options_and_maps_is_checked_by_type_checkers(tmp_path: Path) -> None:
    """C2 (typing, low): ``Executor.options(kind=...)`` and the maps' ``kind`` (``MapOptions``)
    are typed ``str``, so ``ex.options(kind="proces")`` or ``hx.map(f, xs, kind="threads")``
    pass mypy --strict and pyright and fail only at run time with ``ValueError``, while the
    same typo is flagged for ``@hx.task(kind=...)`` (``Kind``, a ``Literal``) and
    ``hx.spawn(kind=...)`` (``ActorKind``). The signature allows a ``Literal["auto",
    "thread", "process"]`` there too (``_executor.py`` ``options``, ``_default.py``
    ``MapOptions``).
    """
    with hx.Executor(max_processes=1) as ex, pytest.raises(ValueError, match="kind"):
        ex.options(kind="proces")
    result = mypy_strict(
        tmp_path,
        """
        import hybridexec as hx


        def f(x: int) -> int:
            return x


        with hx.Executor() as ex:
            ex.options(kind="proces")
        hx.map(f, [1], kind="threads")
        """,
    )
    assert result.returncode != 0, "mypy passes a kind that fails at run time"
    assert result.stdout.count("error:") >= 2, result.stdout


def test_a_falsy_progress_shows_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """C3 (low): ``hx.map(fn, xs, progress=0)`` (or ``progress=""``, ``numpy.False_``, a
    verbosity count left at 0) draws a tqdm bar on stderr: ``_views.py:359``
    ``progress_report`` tests ``progress is False or progress is None`` by identity, so every
    other value that is not callable, falsy ones included, means "show a bar". The docstring:
    "progress: True for a tqdm bar (extra ``progress``), or a callback"; a falsy value should
    show none (and a value that is neither a bool nor a callable should be a ``TypeError``).
    """
    tqdm_std = pytest.importorskip("tqdm.std")
    monkeypatch.setattr(tqdm_std.tqdm, "monitor_interval", 0)  # no monitor thread left behind
    falsies: tuple[Any, ...] = (0, False, None)
    for falsy in falsies:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            got = hx.map(echo, range(3), kind="thread", progress=falsy)
        assert got == [0, 1, 2]
        assert "task" not in err.getvalue(), f"progress={falsy!r} drew a bar: {err.getvalue()!r}"
    # Developers' decision: a value that is neither a bool (an int) nor a callback is refused
    # at the call, falsy or not ("" or "no" as much as 1.5).
    for wrong in ("", "no", 1.5):
        with pytest.raises(TypeError, match="progress"):
            hx.map(echo, range(3), kind="thread", progress=wrong)  # type: ignore[call-overload]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_ask_and_tell_reject_a_non_callable_at_the_call(kind: str) -> None:
    """C4 (low): ``ref.ask(5)``, ``ref.ask("deposit", 1)`` and ``ref.tell(5)`` are accepted:
    ``ask`` returns a future that later fails with ``TypeError("'int' object is not
    callable")`` raised in the actor, and ``tell``'s ``TypeError`` only reaches the log (or
    ``on_error``), long after the call that caused it. ``submit``, ``map``, ``imap`` and
    ``spawn`` raise ``TypeError`` at once for a non-callable (docs/hostile-input.md, first
    row); the handle's methods should too (``_actors/_ref.py`` ``ask``/``tell`` do not check
    ``method``).
    """
    ref = hx.spawn(Account, kind=kind)  # type: ignore[arg-type]
    try:
        with pytest.raises(TypeError):
            ref.ask(5)  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            ref.ask("deposit", 1)  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            ref.tell(5)  # type: ignore[arg-type]
        assert ref.ask(Account.deposit, 2).result(timeout=20) == 2  # still usable
    finally:
        ref.stop()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_ask_of_an_async_method_is_awaited_or_refused(kind: str) -> None:
    """C5 (medium): ``ref.ask(Account.deposit_later, 1)`` with an ``async def`` method never
    runs the method's body. A thread actor's future holds an unawaited coroutine (and Python
    prints "RuntimeWarning: coroutine 'Account.deposit_later' was never awaited" from
    ``_actors/_thread.py``); a process actor's future fails with ``SerializationError("the
    result of Account.deposit_later would not pickle")``; the balance is unchanged either
    way. The executor runs an ``async def`` submitted to it on its event loop and gives the
    awaited value; ``ask`` should do the same or raise ``TypeError`` at the call, not hand
    back an object that silently did nothing. (Typed ``Future[Coroutine[Any, Any, int]]``.)
    """
    ref = hx.spawn(Account, kind=kind)  # type: ignore[arg-type]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                future = ref.ask(Account.deposit_later, 5)
            except TypeError:
                return  # refused at the call: fine
            try:
                value: object = future.result(timeout=20)
            except hx.SerializationError as exc:
                value = exc
        assert value == 5, f"ask of an async method gave {value!r}"
        assert ref.ask(Account.deposit, 1).result(timeout=20) == 6
    finally:
        ref.stop()


def test_executor_rejects_a_classifier_that_is_not_one_at_construction() -> None:
    """C6 (low): ``hx.Executor(classifier=5)`` (or any object without ``classify``) is
    accepted; then every ``"auto"`` call, ``submit`` and ``hx.map`` alike, raises
    ``AttributeError: 'int' object has no attribute 'classify'`` from deep in the router,
    far from the mistake. The other parameters are checked at construction (``TypeError``
    naming the parameter: "max_threads must be an int or None"); ``classifier`` should be
    too (``_executor.py`` ``__init__``).
    """
    ex: hx.Executor | None = None
    try:
        with pytest.raises(TypeError, match="classifier"):
            ex = hx.Executor(max_processes=1, classifier=5)  # type: ignore[arg-type]
    finally:
        if ex is not None:
            ex.shutdown()


def test_explain_rejects_a_non_callable() -> None:
    """C7 (low): ``ex.explain(5)`` returns an ``Explanation`` (``"builtins.int.__call__ ->
    thread: not seen yet ..."``) and ``ex.explain("print")`` one for
    ``builtins.str.__call__``: a typo'd or wrong argument is explained as if it were a
    function that would run on a thread, where ``submit(5)`` raises ``TypeError: fn must
    be callable, not int`` (docs/hostile-input.md). ``explain`` should raise the same.
    """
    with hx.Executor(max_processes=1) as ex, pytest.raises(TypeError, match="callable"):
        ex.explain(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("slot_size", [-1, 1.5])
def test_shared_list_checks_slot_size(slot_size: object) -> None:
    """C8 (low): ``hx.SharedList([1], slot_size=-1)`` and ``slot_size=1.5`` (and ``True``)
    are accepted silently (``slot_size="2"`` fails with a bare ``TypeError: '>' not
    supported between instances of 'str' and 'int'`` that does not name it). Every other
    size of the API is checked (``SharedBuffer(-1)``: "nbytes must not be negative";
    ``Executor``: "must be an int"); a negative or fractional ``slot_size`` should be a
    ``ValueError``/``TypeError`` naming ``slot_size`` (``_shm/_list.py`` ``__init__``).
    """
    shared: hx.SharedList | None = None
    try:
        with pytest.raises((TypeError, ValueError), match="slot_size"):
            shared = hx.SharedList([1], slot_size=slot_size)  # type: ignore[arg-type]
    finally:
        if shared is not None:
            shared.close()


_DASK_THREADS_CLUSTER = """
import logging
import hybridexec as hx

def inc(x):
    return x + 1

if __name__ == "__main__":
    options = {"processes": False, "n_workers": 1, "silence_logs": logging.ERROR}
    with hx.Executor(backend="dask", backend_options=options) as ex:
        fut = ex.options(kind="process").submit(inc, 1)
        print("RESULT", fut.result(timeout=20), fut.kind, flush=True)
"""


def test_dask_backend_options_processes_false_starts_a_cluster(tmp_path: Path) -> None:
    """C9 (low-medium): ``hx.Executor(backend="dask", backend_options={"processes": False})``
    fails with ``RuntimeError: Cluster failed to start: Scheduler failed to start.``
    (caused by ``ValueError: not enough values to unpack`` in ``distributed/comm/inproc.py``),
    where ``distributed.LocalCluster(processes=False)`` itself starts fine.
    docs/distributed.md: "``backend_options={...}`` passes keyword arguments on: to
    ``distributed.LocalCluster`` when the executor starts one (``n_workers``,
    ``threads_per_worker``, ...)". The executor adds its own defaults first
    (``_backends/_dask.py`` ``CLUSTER_DEFAULTS``: ``host="127.0.0.1"``), and a threads
    cluster speaks ``inproc://``, whose addresses are not a host: a valid LocalCluster
    option the user gave is broken by a default the user did not give. Adding
    ``protocol="tcp"`` works around it.
    """
    pytest.importorskip("distributed")
    result = run_script(tmp_path, _DASK_THREADS_CLUSTER, timeout=25)
    output = result.stdout[-2000:] + result.stderr[-3000:]
    assert "RESULT 2 dask" in result.stdout, output
