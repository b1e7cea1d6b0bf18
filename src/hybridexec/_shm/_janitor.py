"""The janitor: removes shared-memory segments whose owner process is dead.

Segment names carry the owner's pid and, on Linux, its PID namespace and start time
(``_names.py``). Nothing runs to unlink the segments of a process group killed with SIGKILL,
so they would stay in ``/dev/shm`` for good; the janitor
runs whenever an ``Executor`` starts and as ``hybridexec.cleanup_shared_memory()``. At a normal
exit each process also removes whatever segments still carry its own pid.
"""

from __future__ import annotations

import logging
import os

from .. import _lifecycle
from ._names import SHM_DIR, identity, maker_pid_of, owner_identity_of, owner_pid_of, unlink

logger = logging.getLogger("hybridexec")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _owner_alive(pid: int, tag: str | None, ours: str | None) -> bool:
    """Whether the owner of a segment named with ``pid`` and identity ``tag`` may be alive.

    ``ours``: this process's identity. A tag of another PID namespace: alive, as far as we
    can know (its pid is not ours to look up). A live pid whose start time is not the tag's:
    another process got the dead owner's pid.
    """
    if tag is not None and ours is not None and tag[:4] != ours[:4]:
        return True
    if not _pid_alive(pid):
        return False
    if tag is None or ours is None or tag.endswith(_UNKNOWN):
        return True
    now = identity(pid)
    return now is None or now.endswith(_UNKNOWN) or now == tag


_UNKNOWN = "0000"  # an identity's start time that could not be read


def cleanup_shared_memory() -> list[str]:
    """Remove hybridexec shared-memory segments whose owner process is dead.

    Segments are named after the pid of the process that owns them. When a process is SIGKILLed
    and no guardian outlived it (the guardian starts with the first worker or process actor and
    unlinks the segments of a dead parent and of the workers it kills), nothing runs to unlink
    its segments and they stay in ``/dev/shm`` for good; this removes them. It runs when an
    ``Executor`` starts; call it yourself after a crash.
    Only segments of the current user are touched. A live owner's segments are never touched,
    nor those of a program in another PID namespace sharing ``/dev/shm`` (Linux); an owner
    whose pid another process has taken since is dead.

    Returns:
        The names of the segments removed.

    .. versionadded:: 0.1
    """
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []  # no way to list segments on this platform
    uid = os.getuid()
    ours = identity(os.getpid())
    alive: dict[tuple[int, str | None], bool] = {}
    removed: list[str] = []
    for name in entries:
        pid = owner_pid_of(name)
        if pid is None:
            continue
        key = (pid, owner_identity_of(name))
        if key not in alive:
            alive[key] = _owner_alive(pid, key[1], ours)
        if alive[key]:
            continue
        try:
            if os.stat(os.path.join(SHM_DIR, name), follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        if unlink(name):
            removed.append(name)
    if removed:
        logger.info("removed %d shared-memory segment(s) of dead processes", len(removed))
    return removed


ADOPTED: set[str] = set()
"""Names a worker made for this process whose handles this process adopted: its own now."""


def remove_made_by(worker_pid: int) -> list[str]:
    """Remove the segments a dead worker made for this process: results it never sent.

    A worker copies a large result into a segment named for its parent, then writes the reply
    that names it; killed (a timeout, a cancel) or dead in between, the reply never comes and
    the parent, alive, would keep the segment until it exits. Called once every reply the
    worker did send has been read.
    """
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    me, ours = os.getpid(), identity(os.getpid())
    prefix = f"hx{me}_"
    return [
        name
        for name in entries
        if name.startswith(prefix)
        and maker_pid_of(name) == worker_pid
        and _mine(name, me, ours)
        and name not in ADOPTED
        and unlink(name)
    ]


def _mine(name: str, me: int, ours: str | None) -> bool:
    """Whether segment ``name`` is this process's: its pid, and (named with one) its identity.

    A program in another PID namespace sharing ``/dev/shm`` may have the same pid.
    """
    if owner_pid_of(name) != me:
        return False
    tag = owner_identity_of(name)
    return tag is None or ours is None or tag == ours


def _sweep_own_segments() -> None:
    # At exit: segments named after this process that nobody unlinked (a result whose reply
    # was never read, a handle kept in a global) go now rather than wait for the janitor.
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return
    me, ours = os.getpid(), identity(os.getpid())
    for name in entries:
        if _mine(name, me, ours):
            unlink(name)


# A forked child has a pid of its own, so its sweep never touches the parent's segments.
_lifecycle.on_exit(_lifecycle.SEGMENTS, _sweep_own_segments)
