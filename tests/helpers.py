"""Module-level functions for tests: picklable by reference under every start method."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0) -> int:
    return x + y


def pid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def raise_value_error(message: str = "boom") -> None:
    raise ValueError(message)


def spin(seconds: float) -> int:
    """Hold the GIL in pure Python for about ``seconds``."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def exit_now(code: int = 3) -> None:
    os._exit(code)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


_marker: str | None = None


def set_marker(value: str) -> None:
    global _marker
    _marker = value


def get_marker() -> str | None:
    return _marker


def make_cpu_task() -> Any:
    def cpu_task(x: int) -> int:
        return x + 1

    return cpu_task


def make_io_task() -> Any:
    def io_task(x: int) -> int:
        return x - 1

    return io_task
