"""Task functions for ``test_timeout_stops.py``: a light module, imported at once by workers."""

from __future__ import annotations

import os


def append_forever(path: str) -> None:
    """Write this process's pid, then append to ``path`` one byte at a time, without end."""
    with open(path + ".pid", "w") as f:
        f.write(str(os.getpid()))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    while True:
        os.write(fd, b"x")


def pid() -> int:
    """The worker's pid (a first call: the worker has imported this module after it)."""
    return os.getpid()
