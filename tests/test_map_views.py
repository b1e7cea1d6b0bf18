"""``hx.map``/``imap``/``amap`` given a view of an executor (``executor=ex.options(...)``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(60)


def pid_of(_: object) -> int:
    return os.getpid()


def test_a_view_s_options_apply_to_every_call_and_the_map_s_own_come_first() -> None:
    with hx.Executor(max_processes=1) as ex:
        in_process = ex.options(kind="process")
        assert set(hx.map(pid_of, range(3), executor=in_process)) != {os.getpid()}
        assert set(hx.imap(pid_of, range(3), executor=in_process, kind="thread")) == {os.getpid()}
        got = asyncio.run(hx.amap(pid_of, range(3), executor=in_process))
        assert os.getpid() not in got


def test_a_view_s_timeout_applies_to_each_call() -> None:
    import time

    with hx.Executor(max_processes=1) as ex:
        out = hx.map(
            time.sleep, [0.0, 30.0], executor=ex.options(kind="process", timeout=0.5),
            return_exceptions=True,
        )  # fmt: skip
    assert out[0] is None
    assert isinstance(out[1], hx.TaskTimeoutError)


@pytest.mark.parametrize("wrong", [42, "auto", object()])
def test_anything_else_as_executor_is_a_type_error_naming_it(wrong: Any) -> None:
    with pytest.raises(TypeError, match="executor must be a hybridexec Executor"):
        hx.map(pid_of, range(2), executor=wrong)
