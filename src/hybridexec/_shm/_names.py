"""Segment names and the OS calls on them: the bottom of the shared-memory room.

Names are ``hx<owner pid>_<16 random hex digits>``: unguessable, created with ``O_EXCL`` and mode
0o600, and the janitor can tell whose they are from the name alone. A worker placing a result
for its parent names it after the parent and adds ``w<its own pid>``: when the worker dies
before the reply arrives, its parent removes exactly those (``remove_made_by``).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from importlib import import_module
from typing import Any

from .. import _faults
from .._exceptions import SharedMemoryError

PREFIX = "hx"
SHM_DIR = "/dev/shm"
_NAME = re.compile(r"hx(\d+)_[0-9a-f]{16}(?:w(\d+))?\Z")
LINUX = sys.platform.startswith("linux")


def new_name(owner_pid: int | None = None) -> str:
    """Return a fresh, unguessable segment name carrying ``owner_pid`` (default: this process).

    Made for another process (a worker's result for its parent), it also names its maker.
    """
    me = os.getpid()
    if owner_pid is None or owner_pid == me:
        return f"{PREFIX}{me}_{os.urandom(8).hex()}"
    return f"{PREFIX}{owner_pid}_{os.urandom(8).hex()}w{me}"


def owner_pid_of(name: str) -> int | None:
    """Return the owner pid encoded in a hybridexec segment name, or None for other names."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def maker_pid_of(name: str) -> int | None:
    """The pid of the worker that made ``name`` for its owner, or None (made by the owner)."""
    match = _NAME.match(name)
    return int(match.group(2)) if match and match.group(2) else None


def _posixshmem() -> Any:
    try:
        return import_module("_posixshmem")
    except ImportError as exc:  # Windows, or a Python built without it
        raise SharedMemoryError("POSIX shared memory is not available on this platform") from exc


def open_segment(name: str, flags: int) -> int:
    # On Linux shm_open(3) is open(2) under /dev/shm with O_NOFOLLOW | O_CLOEXEC; doing it
    # directly avoids the private _posixshmem module where it is not needed.
    if LINUX:
        return os.open(os.path.join(SHM_DIR, name), flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fd: int = _posixshmem().shm_open("/" + name, flags, 0o600)
    return fd


def unlink(name: str) -> bool:
    """Remove the segment ``name``; return False when it was already gone."""
    if _faults.ACTIVE:
        _faults.hit("shm.unlink")
    try:
        if LINUX:
            os.unlink(os.path.join(SHM_DIR, name))
        else:
            _posixshmem().shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def free_bytes() -> int | None:
    """Bytes free for shared memory (``/dev/shm``), or None when that cannot be known."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def describe_space(nbytes: int) -> str:
    free = free_bytes()
    where = f"{free:,} bytes free in {SHM_DIR}" if free is not None else "free space unknown"
    return f"asked for {nbytes:,} bytes, {where}"


def reserve(fd: int, size: int) -> None:
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS: no way to reserve; shm pages are not overcommitted there
        os.ftruncate(fd, size)
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            free = free_bytes()
            if free is not None and free < size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc
            os.ftruncate(fd, size)
            return
        raise
