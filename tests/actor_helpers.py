"""Actor classes for the actor tests: importable by reference under every start method."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BLOCK_LIMIT = 30.0  # a blocked handler gives up after this long, so a failed test cannot hang


def wait_for_file(path: str, limit: float = BLOCK_LIMIT) -> bool:
    """Poll for ``path`` in Python (so a thread actor's kill can land between polls)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class Counter:
    """State, order, errors and controllable blocking, for either kind of actor."""

    def __init__(self, start: int = 0, *, journal: str | None = None) -> None:
        self.value = start
        self.items: list[Any] = []
        self.active = 0
        self.max_active = 0
        self.journal = journal
        if journal is not None:  # one line per construction, to count restarts
            with open(journal, "a") as f:
                f.write(f"built {os.getpid()}\n")

    def add(self, n: int = 1) -> int:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        value = self.value
        time.sleep(0)  # let other threads run between the read and the write
        self.value = value + n
        self.active -= 1
        return self.value

    def get(self) -> int:
        return self.value

    def record(self, item: Any) -> None:
        self.items.append(item)

    def recorded(self) -> list[Any]:
        return list(self.items)

    def concurrency(self) -> int:
        return self.max_active

    def fail(self, message: str = "boom") -> int:
        raise ValueError(message)

    def pid(self) -> int:
        return os.getpid()

    def crash(self, code: int = 3) -> None:
        os._exit(code)

    def block(self, started: str, release: str) -> str:
        """Say it started (a file), then wait for the release file."""
        Path(started).touch()
        return "released" if wait_for_file(release) else "gave up"

    def start_grandchild(self) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.items.append(proc)
        return proc.pid

    def ignore_sigterm(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def make_lock(self) -> Any:
        return threading.Lock()

    def echo(self, value: Any) -> Any:
        return value

    def inspect_array(self, array: Any) -> tuple[float, bool]:
        """The array's sum and whether it arrived writable (placed arrays arrive read-only)."""
        return float(array.sum()), bool(array.flags.writeable)

    def size(self, data: bytes) -> int:
        self.value += len(data)
        return self.value

    def on_stop(self) -> None:
        if self.journal is not None:
            with open(self.journal, "a") as f:
                f.write(f"stopped {self.value}\n")


class Broken:
    """A class whose constructor raises."""

    def __init__(self) -> None:
        raise ValueError("cannot build")

    def ping(self) -> str:
        return "pong"


def peek(counter: Counter, extra: int = 0) -> int:
    """A plain function used as a handler: called with the instance first."""
    return counter.value + extra
