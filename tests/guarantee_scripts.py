"""Task functions, actor classes and child scripts for ``test_guarantees.py`` (issue 13).

Everything here is importable by reference (``tests.guarantee_scripts``) in worker processes
under every start method. The scripts are run by the tests as ``python -c SCRIPT`` with the
repository root on ``PYTHONPATH``; each one talks to the test through single JSON lines on
stdout (``say``), so the test reads state without sleeping for it.

Only the public API (``import hybridexec as hx``), the standard library and numpy are used;
faults are provoked by patching *standard library* functions for a while.
"""

from __future__ import annotations

import os
import time
from typing import Any

# ---- task functions ---------------------------------------------------------------------------


def job(x: int) -> int:
    """Half a second of work, then the answer."""
    time.sleep(0.5)
    return 2 * x


def spin_forever() -> None:
    """Never returns: pure Python, holds the GIL between switch intervals."""
    while True:
        pass


def leave_thread(seconds: float) -> int:
    """Return at once, leaving a non-daemon thread that delays this process's exit."""
    import threading

    threading.Thread(target=time.sleep, args=(seconds,), daemon=False).start()
    return os.getpid()


def sleep_then_exit(seconds: float, code: int = 7) -> None:
    time.sleep(seconds)
    os._exit(code)


def sleep_then_sum(seconds: float, array: Any) -> float:
    time.sleep(seconds)
    return float(array.sum())


class Dummy:
    """A weak-referenceable result or argument."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def method(self) -> int:
        return self.value + 1


def make_dummy(x: int) -> Dummy:
    return Dummy(x)


def value_of(obj: Dummy) -> int:
    return obj.value


def make_segment_then(action: str, seconds: float = 30.0) -> str:
    """Create a segment owned by this process, then exit, crash or sleep (to be killed)."""
    import signal

    import hybridexec

    global _kept
    _kept = hybridexec.SharedBuffer(4096)
    if action == "keep":
        return str(os.getpid())
    if action == "exit":
        os._exit(5)
    if action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(seconds)
    return "slept"


_kept: Any = None


# ---- actor classes ----------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def swallow(self, data: bytes) -> int:
        return len(data)

    def make_segment_then(self, action: str, seconds: float = 30.0) -> str:
        return make_segment_then(action, seconds)

    def exit_now(self, code: int = 5) -> None:
        os._exit(code)

    def kill_self(self) -> None:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class NeverReady:
    """An actor whose constructor never returns."""

    def __init__(self) -> None:
        while True:
            time.sleep(0.05)

    def swallow(self, data: bytes) -> int:  # pragma: no cover - never reached
        return len(data)


# ---- child scripts ----------------------------------------------------------------------------

PRELUDE = """
import json, os, signal, sys, threading, time
import hybridexec as hx
from tests import helpers
from tests import guarantee_scripts as gs

def say(**fields):
    print(json.dumps(fields), flush=True)

def outcome(future, timeout):
    # ["ok", value]; ["pending"] if not done within timeout; or [exception name, message].
    try:
        value = future.result(timeout=timeout)
    except BaseException as exc:
        if not future.done():
            return ["pending"]
        return [type(exc).__name__, str(exc)]
    return ["ok", value]

def until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting in the script")
        time.sleep(0.005)
"""


def script(body: str) -> str:
    """The prelude followed by ``body`` (dedented by the caller)."""
    return PRELUDE + body


# A stdlib patch that makes starting a process fail with EAGAIN (a container at its pids.max)
# while ``FAULT["on"]`` holds, then recover: multiprocessing's Process.start is patched.
START_FAULT = """
import errno
import multiprocessing.process as _mpp
_real_start = _mpp.BaseProcess.start
FAULT = {"until": 0.0, "hits": 0}
def _start(self):
    if time.monotonic() < FAULT["until"]:
        FAULT["hits"] += 1
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
    return _real_start(self)
_mpp.BaseProcess.start = _start
"""

# Running out of file descriptors while a pipe is made: multiprocessing.connection.Pipe (what
# ctx.Pipe() calls) raises EMFILE while ``FAULT["until"]`` is in the future, then works again.
PIPE_FAULT = """
import errno
import multiprocessing.connection as _mpc
_real_pipe = _mpc.Pipe
FAULT = {"until": 0.0, "hits": 0}
def _pipe(*args, **kwargs):
    if time.monotonic() < FAULT["until"]:
        FAULT["hits"] += 1
        raise OSError(errno.EMFILE, "Too many open files (injected)")
    return _real_pipe(*args, **kwargs)
_mpc.Pipe = _pipe
"""
