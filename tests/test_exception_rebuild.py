"""A process task's exception that runs user code to unpickle is rebuilt by its reader.

The lane's manager thread settles every caller's future; were it to unpickle an exception
whose ``__reduce__`` runs the user's code (slow, or asking the same executor for work), the
lane's other results, timeouts and crashes would wait for it (outside tester 11c's C3). The
future is settled as failed at once (``wait(FIRST_EXCEPTION)`` returns for it) and the
exception is rebuilt by the thread that reads it.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from . import helpers

pytestmark = pytest.mark.timeout(60)

GATE = threading.Event()
REBUILT_IN: list[str] = []


def _rebuild(origin_pid: int, message: str) -> GatedError:
    if os.getpid() == origin_pid:  # the parent (the worker test-unpickles it as it packs it)
        REBUILT_IN.append(threading.current_thread().name)
        assert GATE.wait(30), "the test never opened the gate"
    return GatedError(origin_pid, message)


class GatedError(Exception):
    """Unpickles in the test's process only once ``GATE`` is open."""

    def __init__(self, origin_pid: int, message: str) -> None:
        super().__init__(message)
        self.origin_pid = origin_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.origin_pid, str(self)))


def raise_gated(origin_pid: int) -> None:
    raise GatedError(origin_pid, "gated")


def test_an_exception_slow_to_rebuild_holds_up_nothing_and_is_rebuilt_by_its_reader() -> None:
    GATE.clear()
    REBUILT_IN.clear()
    with hx.Executor(kind="process", max_processes=1) as ex:
        gated = ex.submit(raise_gated, os.getpid())
        done, _ = concurrent.futures.wait(
            [gated], timeout=20, return_when=concurrent.futures.FIRST_EXCEPTION
        )
        assert done == {gated}  # settled as failed, not rebuilt yet
        assert ex.submit(helpers.square, 7).result(timeout=20) == 49  # the lane goes on
        assert REBUILT_IN == []
        got: list[BaseException | None] = []
        reader = threading.Thread(target=lambda: got.append(gated.exception()), name="reader")
        reader.start()
        GATE.set()
        reader.join(20)
    assert REBUILT_IN == ["reader"]
    (exc,) = got
    assert isinstance(exc, GatedError)
    assert str(exc) == "gated"
    assert isinstance(exc.__cause__, hx.RemoteTraceback)
    assert gated.exception() is exc  # rebuilt once, kept
    with pytest.raises(GatedError):
        gated.result()


def test_a_standard_exception_arrives_as_before() -> None:
    with hx.Executor(kind="process", max_processes=1) as ex:
        fut = ex.submit(helpers.raise_value_error, "plain")
        with pytest.raises(ValueError, match="plain") as info:
            fut.result(timeout=20)
    assert isinstance(info.value.__cause__, hx.RemoteTraceback)
    assert "raised ValueError" in repr(fut)


def test_a_user_module_that_shadows_a_standard_one_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception class of a user's ``turtle.py`` (a standard library name) may run user code
    to unpickle: it is rebuilt by its reader too, as any user class (outside tester 11d)."""
    from hybridexec._process import _rebuild

    (tmp_path / "turtle.py").write_text("class Shadowed(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "turtle", raising=False)
    monkeypatch.setattr(_rebuild, "_checked", {})
    assert _rebuild._is_trusted("turtle") is False
    assert _rebuild._is_trusted("json") is True
    assert _rebuild._is_trusted("numpy") is False  # installed, not the standard library's
