"""Module-level functions for tests: picklable by reference under every start method."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
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


def gated(path: str, value: Any = None) -> Any:
    """Return ``value`` once the file ``path`` exists: the test says when, whatever the load.

    With the file there it returns at once, without a sleep (``sleep(0)`` yields the CPU: a
    short call measured long on a loaded machine). It gives up after 30 seconds.
    """
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {path} never opened")
        time.sleep(0.001)
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


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def catastrophic_regex(n: int = 40) -> bool:
    """Backtracks for hours inside the C regex engine without releasing the GIL."""
    import re

    return re.match(r"(a+)+$", "a" * n + "b") is not None


def exit_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(7)
    return x


class Unpicklable:
    """Refuses to be pickled."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")


def _refuse_unpickle() -> None:
    raise RuntimeError("this object refuses to be unpickled")


class FailsToUnpickle:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self) -> Any:
        return (_refuse_unpickle, ())


def _unpickle_only_in(pid: int) -> int:
    if os.getpid() == pid:
        raise RuntimeError("this result refuses to be unpickled in the parent")
    return pid


class FailsToUnpickleIn:
    """Unpickles anywhere but in the process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> Any:
        return (_unpickle_only_in, (self.pid,))


def return_unpicklable() -> Unpicklable:
    return Unpicklable()


def return_fails_to_unpickle_in(pid: int) -> FailsToUnpickleIn:
    return FailsToUnpickleIn(pid)


def fail_at(x: int, bad: int = 15_000) -> int:
    if x == bad:
        raise ValueError(f"item {x} fails")
    return x


def collect_garbage() -> int:
    """Run a full collection in this process; return its pid."""
    import gc

    gc.collect()
    return os.getpid()


def identity(x: Any) -> Any:
    return x


def spawn_grandchild_and_sleep(seconds: float) -> int:
    """Start a grandchild process (its pid is returned through a file) and sleep."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    time.sleep(seconds)
    return child.pid


def rss_grow(megabytes: int) -> int:
    global _ballast
    _ballast = bytearray(megabytes << 20)
    return os.getpid()


_ballast: bytearray | None = None


def make_sleeper() -> Any:
    def sleeper(seconds: float) -> None:
        time.sleep(seconds)

    return sleeper


def sleep_then_write(seconds: float, path: str) -> None:
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")


def _mark_cpu_bound() -> None:
    # Marked here, after the definition, so helpers stays importable without side effects.
    import hybridexec

    hybridexec.cpu_bound(sleep_then_write)


_mark_cpu_bound()


def leave_segment_and_exit() -> None:
    """Create a shared-memory segment owned by this worker, then die without cleaning up."""
    import hybridexec

    global _kept_segment
    _kept_segment = hybridexec.SharedBuffer(4096)
    os._exit(5)


_kept_segment: Any = None


class RebuiltBy:
    """A task's result that the parent rebuilds by calling ``rebuild(arg)`` (``__reduce__``).

    For the tests of results rebuilt by their reader: what the rebuild does (note the thread,
    wait for a gate, raise) is the test's ``rebuild``, a function of its module.
    """

    def __init__(self, rebuild: Callable[[Any], Any], arg: Any) -> None:
        self.rebuild, self.arg = rebuild, arg

    def __reduce__(self) -> tuple[Callable[[Any], Any], tuple[Any]]:
        return (self.rebuild, (self.arg,))
