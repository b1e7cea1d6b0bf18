"""An exception that pickles in the worker but will not unpickle in the parent."""

from __future__ import annotations

import os
from typing import Any

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(60)


def _rebuild_in_worker_only(origin_pid: int) -> Exception:
    if os.getpid() != origin_pid:
        raise LookupError("no such error class here")
    return ValueError("rebuilt")


class FailsInParent(Exception):
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_in_worker_only, (os.getpid(),))


def raise_fails_in_parent() -> None:
    raise FailsInParent()


def test_an_exception_that_will_not_unpickle_in_the_parent_chains_why() -> None:
    with hx.Executor(max_processes=1) as ex:
        future = ex.options(kind="process").submit(raise_fails_in_parent)
        with pytest.raises(hx.SerializationError, match="cannot unpickle the exception") as info:
            future.result(timeout=30)
        assert isinstance(info.value.__cause__, LookupError)
        assert ex.options(kind="process").submit(os.getpid).result(timeout=30) > 0
