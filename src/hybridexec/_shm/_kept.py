"""Mappings this process attached lately, kept (strongly) for reuse.

A worker that sums the same 200 MB segment task after task would otherwise fault every page
in again each time. A kept mapping holds the memory of a segment unlinked since (its owner
closed it): entries whose name was unlinked (or now names another object) are dropped at the
next attach, and by a worker that waits for its next call (``sweep_while_idle``), so a kept
mapping never holds freed memory for long; and all of them together hold at most a sixteenth
of ``/dev/shm`` (Docker gives it 64 MB: a 40 MB array is not kept).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _lifecycle
from ._names import SHM_DIR

if TYPE_CHECKING:
    import mmap

MAX_PAUSE_MS = 100
"""Milliseconds at most between two sweeps of an idle process (a few stat calls each)."""
MAX_COUNT = 8
MAX_BYTES = 1 << 30
kept: collections.OrderedDict[int, tuple[mmap.mmap, str, int]] = collections.OrderedDict()
_budget: list[int] = []  # once known (statvfs)
_lock = threading.Lock()


def budget() -> int:
    """Bytes all kept mappings may hold: a sixteenth of ``/dev/shm``, at most ``MAX_BYTES``."""
    if not _budget:
        try:
            st = os.statvfs(SHM_DIR)
            _budget.append(min(MAX_BYTES, st.f_blocks * st.f_frsize // 16))
        except OSError:
            _budget.append(MAX_BYTES)
    return _budget[0]


def keep(mm: mmap.mmap, name: str, inode: int) -> None:
    """Keep ``mm`` (of segment ``name``, file ``inode``) for the next attach of ``name``.

    In a child process only (a worker, a process actor, which sweep as they wait): the main
    program has no idle moment to let go of them (13d's D2).
    """
    most = budget()
    if len(mm) > most or multiprocessing.parent_process() is None:
        return
    with _lock:
        kept[id(mm)] = (mm, name, inode)
        while len(kept) > MAX_COUNT or sum(len(m) for m, _, _ in kept.values()) > most:
            kept.popitem(last=False)


def touch(mm: mmap.mmap) -> None:
    """``mm`` was used again: the last to go."""
    with _lock:
        if id(mm) in kept:
            kept.move_to_end(id(mm))


def drop(mm: mmap.mmap) -> None:
    """Stop keeping ``mm`` (closed on purpose)."""
    with _lock:
        kept.pop(id(mm), None)


def sweep() -> None:
    """Drop the mappings whose name was unlinked or now names another object."""
    with _lock:
        for key, (_, name, inode) in list(kept.items()):  # a copy: at most MAX_COUNT entries
            try:
                stale = os.stat(os.path.join(SHM_DIR, name)).st_ino != inode
            except OSError:
                stale = True
            if stale:
                kept.pop(key, None)


def sweep_while_idle(poll: Callable[[int], object]) -> None:
    """Wait until ``poll(milliseconds)`` is true, dropping kept mappings of unlinked segments.

    A worker calls it before it waits for its next call: the owner closing a segment the
    worker kept must get its memory back (``/dev/shm`` fills up otherwise), and the worker
    would not see that before its next attach. Returns at once when nothing is kept.
    """
    pause = 10
    while kept and not poll(pause):
        sweep()
        pause = min(2 * pause, MAX_PAUSE_MS)


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    kept.clear()


_lifecycle.on_fork(_reset_after_fork)
