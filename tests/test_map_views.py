"""``hx.map``/``imap``/``amap`` given a view of an executor, and bad options given to either."""

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


def test_a_timeout_beyond_any_float_is_a_value_error() -> None:
    with hx.Executor() as ex, pytest.raises(ValueError, match="timeout is too large"):
        ex.options(timeout=10**400)


def test_a_classifier_s_decision_of_an_unknown_kind_fails_where_it_is_made() -> None:
    with pytest.raises(ValueError, match="kind must be 'thread' or 'process', not 'gpu'"):
        hx.Decision("gpu", "a typo in a custom classifier")
