"""Segment names and the OS calls on them: the bottom of the shared-memory room.

Names are ``hx<owner pid>_<16 random hex digits>``: unguessable, created with ``O_EXCL`` and mode
0o600, and the janitor can tell whose they are from the name alone. A worker placing a result
for its parent names it after the parent and adds ``w<its own pid>``: when the worker dies
before the reply arrives, its parent removes exactly those (``remove_made_by``).

On Linux the owner's pid is followed by ``t<8 hex digits>``, its identity beyond the pid
(``identity``): its PID namespace and its start time, 16 bits of each. A pid means something
only in its namespace (two containers sharing ``/dev/shm``, ``docker --ipc=host``), and a
dead owner's pid is soon another process's: the janitor spares the segments of other
namespaces and removes those whose pid now names a process that started at another time.
Names are checked before they reach the file system: one cannot leave ``/dev/shm``.
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
_NAME = re.compile(r"hx(\d+)_[0-9a-f]{16}(?:t([0-9a-f]{8}))?(?:w(\d+))?\Z")
LINUX = sys.platform.startswith("linux")
_identities: dict[int, str] = {}  # pid -> identity: this process's, its parent's (both alive)


def new_name(owner_pid: int | None = None) -> str:
    """Return a fresh, unguessable segment name carrying ``owner_pid`` (default: this process).

    Made for another process (a worker's result for its parent), it also names its maker.
    """
    me = os.getpid()
    owner = me if owner_pid is None else owner_pid
    known = _identities.get(owner)
    if known is None:
        known = _identities[owner] = identity(owner) or ""
    tag = f"t{known}" if known else ""
    made = "" if owner == me else f"w{me}"
    return f"{PREFIX}{owner}_{os.urandom(8).hex()}{tag}{made}"


def owner_pid_of(name: str) -> int | None:
    """Return the owner pid encoded in a hybridexec segment name, or None for other names."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def owner_identity_of(name: str) -> str | None:
    """The owner's identity in a segment name (``identity``), or None when it has none."""
    match = _NAME.match(name)
    return match.group(2) if match else None


def maker_pid_of(name: str) -> int | None:
    """The pid of the worker that made ``name`` for its owner, or None (made by the owner)."""
    match = _NAME.match(name)
    return int(match.group(3)) if match and match.group(3) else None


def identity(pid: int) -> str | None:
    """Eight hex digits: this process's PID namespace and ``pid``'s start time, 16 bits each.

    None when this cannot be read (not Linux, no ``/proc``). The start is ``0000`` (unknown)
    when ``/proc`` shows another PID namespace than this process's (``unshare`` without
    ``--mount-proc``: its pids are not ours) or ``pid`` is not there; the namespace is known
    all the same (``/proc/self`` is this process in any ``/proc``).
    """
    if not LINUX:
        return None
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    started = 0
    try:
        if os.readlink("/proc/self") == str(os.getpid()):
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            started = (int(stat[stat.rindex(b")") + 2 :].split()[19]) & 0xFFFF) or 1  # field 22
    except (OSError, ValueError, IndexError):
        pass
    return f"{namespace & 0xFFFF:04x}{started:04x}"


def check_name(name: str) -> str:
    """Return ``name`` if it names a segment; no path: it must never leave ``/dev/shm``.

    Raises:
        SharedMemoryError: it is empty, has a ``/`` or a NUL, or is ``.`` or ``..``.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise SharedMemoryError(f"not a shared-memory segment name: {name!r}")
    return name


def _posixshmem() -> Any:
    try:
        return import_module("_posixshmem")
    except ImportError as exc:  # Windows, or a Python built without it
        raise SharedMemoryError("POSIX shared memory is not available on this platform") from exc


def open_segment(name: str, flags: int) -> int:
    # On Linux shm_open(3) is open(2) under /dev/shm with O_NOFOLLOW | O_CLOEXEC; doing it
    # directly avoids the private _posixshmem module where it is not needed.
    check_name(name)
    if LINUX:
        return os.open(os.path.join(SHM_DIR, name), flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fd: int = _posixshmem().shm_open("/" + name, flags, 0o600)
    return fd


def unlink(name: str) -> bool:
    """Remove the segment ``name``; return False when it was already gone."""
    if _faults.ACTIVE:
        _faults.hit("shm.unlink")
    check_name(name)
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
