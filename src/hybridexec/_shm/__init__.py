"""The shared-memory room: segments, the janitor, shared objects, placement of large arguments.

What the rest of the package may use is named here; everything else in the room is private.

Layers inside the room (each imports only those above it)::

    _names      segment names, shm_open / unlink / fallocate
    _janitor    removes segments of dead owners; sweeps our own at exit
    _kept       the mappings a process attached lately, kept a while for reuse
    _segment    Segment: create, attach, ownership; the per-process registry of mappings
    _objects    SharedBuffer, SharedArray (numpy optional)
    _list       SharedList
    _reuse      Copies: when a copy made for one task may stand for the same object again
    _reply      references to arrays in shared memory; the worker side: large numpy results
                through shared memory, and which placed arguments a task kept
    _place      Placement: large numpy arguments of process tasks through shared memory
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ._janitor import cleanup_shared_memory as cleanup_shared_memory
    from ._janitor import remove_made_by as remove_made_by
    from ._list import SharedList as SharedList
    from ._names import SHM_DIR as SHM_DIR
    from ._names import free_bytes as free_bytes
    from ._names import owner_pid_of as owner_pid_of
    from ._names import unlink as unlink
    from ._objects import SharedArray as SharedArray
    from ._objects import SharedBuffer as SharedBuffer
    from ._objects import SharedHandle as SharedHandle
    from ._place import Placement as Placement
    from ._place import check_threshold as check_threshold
    from ._reply import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
    from ._reply import discard_reply as discard_reply
    from ._reply import dumps_answer as dumps_answer
    from ._reply import dumps_reply as dumps_reply
    from ._reply import note_lent as note_lent
    from ._reply import reply_policy as reply_policy
    from ._reuse import Copies as Copies
    from ._reuse import Share as Share
    from ._reuse import unchanging as unchanging
    from ._segment import Segment as Segment
    from ._segment import mapping_of as mapping_of

__all__ = [
    "DEFAULT_THRESHOLD",
    "Copies",
    "SHM_DIR",
    "Placement",
    "Segment",
    "SharedArray",
    "SharedBuffer",
    "SharedHandle",
    "Share",
    "SharedList",
    "check_threshold",
    "cleanup_shared_memory",
    "discard_reply",
    "dumps_answer",
    "dumps_reply",
    "free_bytes",
    "mapping_of",
    "note_lent",
    "owner_pid_of",
    "remove_made_by",
    "reply_policy",
    "sweep_while_idle",
    "unchanging",
    "unlink",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "Copies": "._reuse",
        "DEFAULT_THRESHOLD": "._reply",
        "SHM_DIR": "._names",
        "Placement": "._place",
        "Segment": "._segment",
        "Share": "._reuse",
        "SharedArray": "._objects",
        "SharedBuffer": "._objects",
        "SharedHandle": "._objects",
        "SharedList": "._list",
        "check_threshold": "._place",
        "cleanup_shared_memory": "._janitor",
        "discard_reply": "._reply",
        "dumps_answer": "._reply",
        "dumps_reply": "._reply",
        "free_bytes": "._names",
        "mapping_of": "._segment",
        "note_lent": "._reply",
        "owner_pid_of": "._names",
        "remove_made_by": "._janitor",
        "reply_policy": "._reply",
        "unchanging": "._reuse",
        "unlink": "._names",
    },
)


def sweep_while_idle(poll: Callable[[int], object]) -> None:
    """A worker about to wait for its next call: ``_kept.sweep_while_idle`` if loaded.

    Nothing to sweep (and nothing loaded) while this process never attached a segment.
    """
    kept = sys.modules.get(__name__ + "._kept")
    if kept is not None:
        kept.sweep_while_idle(poll)
