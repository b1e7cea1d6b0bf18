"""A worker's record of the group calls it finished and has not answered yet (shared memory).

A worker answers a group's calls every ``FLUSH_SECONDS`` (``_flush.py``): should it die, the
calls it finished since its last reply would be lost, and sent again, run twice. So as each
call of a group ends, the worker also copies its outcome into a small shared mapping (a
``memfd`` the lane made for it, no file and no name to leak) and commits it by a count in
the header; after a reply, the records start afresh. The lane reads the mapping once the
worker is dead (``_supervision._reap``): the calls recorded get their outcomes, the next one
was running and fails alone, and only the calls after it run again, having never started.
A batch of several items (``hx.map``'s) is recorded the same way, item by item, under a number
of its own: when its worker dies, only the items with no record run again, one by one.

Layout: a header ``token, first, count, end`` (the group's number, given by the lane; the
index in the group of the first record; the records committed; where the next one goes),
then the records, each a 4-byte length and a pickle of ``(value, packed failure, seconds)``
(a batch's: ``(ok, value or packed exception)``).
At the end, the lane's marks of cancelled calls (``CANCEL_SLOTS``): a call of a group that was
cancelled while it waited in the worker is not started (``cancelled``), its outcome a
``CancelledError`` that nobody reads.
Without ``os.memfd_create`` (not Linux) there is no ring: a group's unanswered calls run again.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mmap

RING_BYTES = 1 << 16
"""Bytes of the mapping: records, then the cancels (``CANCEL_SLOTS``) at its end."""

CANCEL_SLOTS = 64
"""Calls the lane may mark cancelled, the last ones kept (written by the lane only)."""

_HEADER = struct.Struct("<QIII")
_LENGTH = struct.Struct("<I")
_SLOT = struct.Struct("<Q")  # a cancelled call: its group's number << 16 | its index there
_CANCELS = RING_BYTES - 8 * (CANCEL_SLOTS + 1)  # the count of cancels, then the slots
_RECORDS_END = _CANCELS
_COMMIT = struct.Struct("<II")  # count and end, in the header
_COMMIT_AT = _HEADER.size - _COMMIT.size
_SCALARS = frozenset({int, float, bool, type(None), complex})
_SIZED = frozenset({bytes, str})
_dumps = pickle.dumps


class Ring:
    """A worker's ring, mapped (``attach``): its side only writes."""

    __slots__ = ("count", "end", "map")

    def __init__(self, memory: mmap.mmap) -> None:
        self.map = memory
        self.end = _HEADER.size  # where the next record goes
        self.count = 0

    @classmethod
    def attach(cls, fd: int) -> Ring:
        """Map the ring the lane made (the descriptor may be closed after)."""
        import mmap  # loaded with the worker's first group

        return cls(mmap.mmap(fd, RING_BYTES))

    def begin(self, token: int) -> None:
        """A group numbered ``token`` starts: no record yet."""
        self.end, self.count = _HEADER.size, 0
        _HEADER.pack_into(self.map, 0, token, 0, 0, self.end)

    def add(self, record: bytes) -> bool:
        """Commit one more call's record; False when it does not fit (answer first)."""
        end = self.end
        size = _LENGTH.size + len(record)
        if end + size > _RECORDS_END:
            return False
        memory = self.map
        _LENGTH.pack_into(memory, end, len(record))
        memory[end + _LENGTH.size : end + size] = record
        self.end, self.count = end + size, self.count + 1
        _COMMIT.pack_into(memory, _COMMIT_AT, self.count, self.end)  # one 8-byte store
        return True

    def record_outcome(self, outcome: tuple[bool, Any]) -> bool:
        """Commit a batch item's ``(ok, value or packed exception)``; False if not recorded.

        Only what the C pickler takes whole and in-band is recorded (a value holding arrays
        is not copied here), and nothing that names ``__main__`` (the parent's may not hold
        it: ``_serialize.checked_main``): the worker answers the others at once.
        """
        kind = type(outcome[1])
        if kind in _SCALARS:  # nothing out of band, nothing of __main__: the common case
            return self.add(_dumps(outcome, 5))
        if kind in _SIZED:
            return len(outcome[1]) < _RECORDS_END and self.add(_dumps(outcome, 5))
        buffers: list[Any] = []
        try:
            record = _dumps(outcome, 5, buffer_callback=buffers.append)
        except BaseException:  # a __reduce__ may raise SystemExit too
            return False
        return not buffers and b"__main__" not in record and self.add(record)

    def cancelled(self, token: int, index: int) -> bool:
        """Whether the lane marked call ``index`` of group ``token`` cancelled (``cancel``)."""
        (count,) = _SLOT.unpack_from(self.map, _CANCELS)
        if not count:
            return False
        mark = token << 16 | index
        for slot in range(min(count, CANCEL_SLOTS)):
            if _SLOT.unpack_from(self.map, _CANCELS + 8 * (slot + 1))[0] == mark:
                return True
        return False

    def answered(self, calls: int) -> None:
        """``calls`` more calls were answered: the records start afresh after them.

        (Those recorded, and perhaps one whose record did not fit.)
        """
        token, first, _, _ = _HEADER.unpack_from(self.map, 0)
        self.end, self.count = _HEADER.size, 0
        _HEADER.pack_into(self.map, 0, token, first + calls, 0, self.end)


class RingFile:
    """The lane's side of a worker's ring: its descriptor, read once the worker is dead.

    Mapped only to be read (a lane whose workers never die loads no ``mmap``).
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls) -> RingFile | None:
        """A new, empty ring for a worker about to start; None if not possible."""
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is None:
            return None
        try:
            fd = memfd_create("hybridexec-ring", os.MFD_CLOEXEC)
        except OSError:
            return None
        try:
            os.ftruncate(fd, RING_BYTES)
        except OSError:  # no memory for it: the worker goes without (its groups may run again)
            os.close(fd)
            return None
        return cls(fd)

    def read(self) -> tuple[int, int, list[bytes]] | None:
        """``(token, first, records)`` of the worker's last group; None if unreadable."""
        import mmap

        try:
            memory = mmap.mmap(self.fd, RING_BYTES, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        with memory:
            token, first, count, end = _HEADER.unpack_from(memory, 0)
            if end > _RECORDS_END:
                return None
            records: list[bytes] = []
            at = _HEADER.size
            for _ in range(count):
                (size,) = _LENGTH.unpack_from(memory, at)
                at += _LENGTH.size
                if at + size > end:
                    return None  # (never: the count is written after the record)
                records.append(memory[at : at + size])
                at += size
        return token, first, records

    def cancel(self, token: int, index: int) -> None:
        """Mark call ``index`` of group ``token`` cancelled: the worker will not start it.

        The slot is written before the count that makes it seen (one 8-byte store each).
        """
        import mmap

        if self.fd < 0 or index >= 1 << 16:
            return
        with mmap.mmap(self.fd, RING_BYTES) as memory:
            (count,) = _SLOT.unpack_from(memory, _CANCELS)
            _SLOT.pack_into(memory, _CANCELS + 8 * (count % CANCEL_SLOTS + 1), token << 16 | index)
            _SLOT.pack_into(memory, _CANCELS, count + 1)

    def close(self) -> None:
        """Close the descriptor (the worker is gone, or never started)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def carry(fd: int) -> Any:
    """A ``Connection`` owning ``fd``, which every start method hands to the child.

    Forkserver and spawn pass its descriptor, fork inherits it. Nothing is read from it.
    """
    from multiprocessing.connection import Connection

    return Connection(fd, writable=False)
