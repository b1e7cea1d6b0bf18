"""Picklable functions and classes for the chaos, property and hostile-input tests.

Module level, so that every start method imports them by reference in the workers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KILL_WAIT_LIMIT = 30.0  # a task waiting to be killed gives up after this, so nothing hangs


# ---- faults ----------------------------------------------------------------------------------
def recurse(n: int = 0) -> int:
    """Recurse until Python raises RecursionError."""
    return recurse(n + 1) + 1


def big_bytes(megabytes: int) -> bytes:
    return b"\x01" * (megabytes << 20)


def await_kill(directory: str, token: str) -> str:
    """Publish this worker's pid in ``directory/token.pid``, then wait to be killed from outside."""
    path = Path(directory)
    tmp = path / f"{token}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(path / f"{token}.pid")  # atomic: the killer never reads half a pid
    deadline = time.monotonic() + KILL_WAIT_LIMIT
    while time.monotonic() < deadline:
        time.sleep(0.005)
    return "survived"


def raise_key_error(key: str) -> None:
    raise KeyError(key)


def sys_exit_with(code: int) -> None:
    sys.exit(code)


def sys_exit_on(x: int, bad: int) -> int:
    if x == bad:
        sys.exit(5)
    return x


def sys_exit_on_three(x: int) -> int:
    return sys_exit_on(x, 3)


# ---- numpy and shared memory -----------------------------------------------------------------
def array_sum(array: Any) -> float:
    return float(array.sum())


def make_array(n: int, value: float) -> Any:
    import numpy as np

    return np.full(n, value)


def exit_holding(array: Any) -> None:
    """Touch a (shared-memory) argument, then die."""
    float(array[0])
    os._exit(9)


def write_slot(shared: Any, index: int, value: float) -> int:
    """Write ``value`` at ``index`` of a ``SharedArray``; return the index."""
    shared.array[index] = value
    return index


# ---- hostile input ---------------------------------------------------------------------------
def generator_function(n: int) -> Iterator[int]:
    yield from range(n)


class ReduceGarbage:
    """``__reduce__`` returns whatever it was given: not a valid reduce value."""

    def __init__(self, garbage: Any) -> None:
        self.garbage = garbage

    def __reduce__(self) -> Any:
        return self.garbage


class ReduceRaises:
    """``__reduce__`` raises a plain exception."""

    def __reduce__(self) -> Any:
        raise RuntimeError("__reduce__ refuses")


class UnpicklableError(Exception):
    """An exception that cannot travel back from a worker."""

    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to be pickled")


def raise_unpicklable_error() -> None:
    raise UnpicklableError("raised in the worker")


def return_reduce_garbage(garbage: Any) -> ReduceGarbage:
    return ReduceGarbage(garbage)


def unpicklable_on(x: int, bad: int) -> Any:
    """Return ``x``, except an object that refuses to be pickled when ``x == bad``."""
    from .helpers import Unpicklable

    return Unpicklable() if x == bad else x


def nested_list(depth: int) -> list[Any]:
    """A list nested ``depth`` deep: pickling it overflows the C stack limit of pickle."""
    root: list[Any] = []
    inner = root
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return root


def byte_length(data: bytes) -> int:
    return len(data)


def fork_child_exits(x: int) -> int:
    """Fork a child that exits at once, as well-behaved forking code does."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return x


def fork_child_returns(x: int, child_delay: float = 0.0) -> tuple[str, int]:
    """Fork, and let both processes return (the child does not exit), the child later."""
    pid = os.fork()
    if pid == 0:
        time.sleep(child_delay)
        return ("child", x)
    return ("parent", x)


def nested_executor_squares(n: int) -> list[int]:
    """Run an Executor inside a worker and use its process lane."""
    import hybridexec

    from . import helpers

    with hybridexec.Executor(max_processes=1) as inner:
        lane = inner.options(kind="process")
        return [f.result(timeout=30) for f in [lane.submit(helpers.square, i) for i in range(n)]]


def nested_default_map(n: int) -> list[int]:
    """Use the module-level ``hybridexec.map`` (the default executor) inside a worker."""
    import hybridexec

    from . import helpers

    return hybridexec.map(helpers.square, range(n), kind="process")


# ---- a fixed set of picklable functions for the property tests -------------------------------
def negate(x: int) -> int:
    return -x


def double(x: int) -> int:
    return 2 * x


def to_text(x: int) -> str:
    return f"<{x}>"


def pair(x: int) -> tuple[int, int]:
    return (x, x % 7)


def bits(x: int) -> int:
    return bin(x).count("1")


def safe_mod(x: int) -> int:
    return 1000 % x if x else -1


def fail_on_seven(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"{x} is a multiple of 7")
    return x


# ---- actors ----------------------------------------------------------------------------------
class Keeper:
    """An actor that echoes, fails on demand and dies on demand."""

    def __init__(self) -> None:
        self.handled = 0

    def echo(self, x: Any) -> Any:
        self.handled += 1
        return x

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def crash(self) -> None:
        os._exit(11)

    def pid(self) -> int:
        return os.getpid()


def array_when_told(directory: str, n: int) -> Any:
    """Ignore SIGTERM, say ``started``, wait for the file ``go``, then return a large array.

    Its worker, told to stop (a cancel), lives on for the kill grace and replies meanwhile.
    """
    import signal

    import numpy as np

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path = Path(directory)
    (path / "started").touch()
    deadline = time.monotonic() + KILL_WAIT_LIMIT
    while not (path / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return np.full(n, 1.0)
