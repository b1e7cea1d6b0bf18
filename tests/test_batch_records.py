"""A batch whose worker dies runs again only the items that had not ended (``_process/_ring.py``).

Round 15's CI failed on ``test_outsider_s6``'s version of this: an item that ended less than
``FLUSH_SECONDS`` before its neighbour killed the worker had sent no outcome yet, and ran a
second time. Here the items take microseconds, so every item is in that window: each must be
recorded as it ends, whatever its result is (a number, a container, a large string or array
that the record does not take, an object of a class the worker may not name, a failure).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(120)

ITEMS = 200
CULPRIT = 50


@dataclasses.dataclass
class Result:
    i: int


def killed_once(directory: str, i: int, kind: str) -> Any:
    marker = os.path.join(directory, str(i))
    first = not os.path.exists(marker)
    with open(marker, "a") as fh:
        fh.write("ran\n")
    if i == CULPRIT and first:
        os.kill(os.getpid(), signal.SIGKILL)
    if i % 7 == 3:
        raise ValueError(i)
    if kind == "array":  # some small, some large enough to travel in shared memory
        return np.full(10 if i % 2 else 300_000, i)
    if kind == "object":
        return Result(i)
    if kind == "large":  # larger than a worker's record holds: answered at once instead
        return str(i) * (70_000 if i % 3 else 1)
    if kind == "container":
        return [i, {"i": i}]
    return i


def as_index(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return int(value[0])
    if isinstance(value, Result):
        return value.i
    if isinstance(value, ValueError):
        return value.args[0]
    if isinstance(value, list):
        return value[0]
    return value


def expected(i: int, kind: str) -> Any:
    if i % 7 == 3:
        return i
    if kind == "large":
        return str(i) * (70_000 if i % 3 else 1)
    return i


@pytest.mark.parametrize("kind", ["number", "container", "array", "object", "large"])
def test_only_the_item_that_killed_its_worker_runs_twice(tmp_path: Path, kind: str) -> None:
    with hx.Executor(max_processes=2) as ex:
        results = hx.map(
            killed_once,
            [str(tmp_path)] * ITEMS,
            range(ITEMS),
            [kind] * ITEMS,
            executor=ex,
            kind="process",
            return_exceptions=True,
        )
    assert [as_index(r) for r in results] == [expected(i, kind) for i in range(ITEMS)]
    if kind == "object":
        assert all(isinstance(r, (Result, ValueError)) for r in results)
    runs = {i: len((tmp_path / str(i)).read_text().split()) for i in range(ITEMS)}
    assert runs[CULPRIT] == 2
    twice = sorted(i for i, n in runs.items() if n > 1 and i != CULPRIT)
    assert not twice, f"items run twice besides the one that killed its worker: {twice}"
