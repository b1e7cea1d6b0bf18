"""A process call's timeout stops its code before the caller hears of it.

``TaskTimeoutError`` from a process task promises that its worker was killed: once the caller
sees it, the call's code runs no more and does no more side effects. The future used to be
settled just before the worker was signalled; anything that held the manager thread between
the two (a slow log handler on the ``hybridexec`` logger, the GIL) let the call run on, unseen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridexec import Executor, TaskTimeoutError

from . import stop_helpers
from .conftest import process_gone, wait_until


class SlowKillLog(logging.Handler):
    """Holds the manager thread as it logs a worker's kill (a handler writing to a slow sink)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.go = threading.Event()
        self.held = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("killing worker"):
            self.held.set()
            self.go.wait(0.5)


@pytest.fixture
def slow_kill_log() -> Iterator[SlowKillLog]:
    logger = logging.getLogger("hybridexec")
    handler = SlowKillLog()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        handler.go.set()
        logger.removeHandler(handler)
        logger.setLevel(level)


def _size(path: Path) -> int:
    return path.stat().st_size


def _start(ex: Executor, path: Path, timeout: float) -> tuple[object, int]:
    # A worker that imported the task's module already: the clock runs for the call alone.
    lane = ex.options(kind="process")
    assert lane.submit(stop_helpers.pid).result(timeout=30) > 0
    fut = lane.options(timeout=timeout).submit(stop_helpers.append_forever, str(path))
    pid_file = Path(str(path) + ".pid")
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", 30)
    assert wait_until(lambda: path.exists() and _size(path) > 0, 30), "the call never ran"
    return fut, int(pid_file.read_text())


def _running(pid: int) -> bool:
    return not process_gone(pid)


@pytest.mark.timeout(60)
def test_timed_out_call_writes_nothing_after_its_timeout_error(
    tmp_path: Path, slow_kill_log: SlowKillLog
) -> None:
    path = tmp_path / "out"
    with Executor(max_processes=1) as ex:
        fut, pid = _start(ex, path, timeout=0.3)
        with pytest.raises(TaskTimeoutError):
            fut.result(timeout=30)  # type: ignore[attr-defined]
        seen = _size(path)
        running = _running(pid)
        # A window for a call that was not stopped to show it (it appends thousands of bytes
        # in it); the manager thread is held in the log handler until it ends.
        time.sleep(0.2)
        later = _size(path)
        slow_kill_log.go.set()
        assert slow_kill_log.held.is_set(), "the kill was never logged"
        assert not running, "the worker still ran as the caller saw the TimeoutError"
        assert later == seen, f"the call wrote {later - seen} bytes after its TimeoutError"
        assert ex.options(kind="process").submit(pow, 3, 2).result(timeout=30) == 9


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_timed_out_call_has_stopped_when_its_timeout_error_is_seen(
    start_method: str, tmp_path: Path
) -> None:
    with Executor(max_processes=1, start_method=start_method) as ex:
        for attempt in range(3):
            path = tmp_path / f"out{attempt}"
            fut, pid = _start(ex, path, timeout=0.2)
            with pytest.raises(TaskTimeoutError, match="was killed"):
                fut.result(timeout=30)  # type: ignore[attr-defined]
            seen = _size(path)
            assert not _running(pid), f"attempt {attempt}: the worker runs after its timeout"
            assert _size(path) == seen
        stats = ex.stats()
    assert stats["process_lane"]["crashes"] == 0, stats  # a timeout is not counted as a crash
