"""``SharedList``: a fixed-length list of scalars in shared memory.

It replaces ``multiprocessing.shared_memory.ShareableList``, which stores ``bytes`` and ``str``
without their length: it strips trailing NUL bytes from ``bytes`` and miscounts multi-byte
text. Every slot here records its kind and exact length.

Layout (native byte order; the segment never leaves the machine)::

    header   magic b"hxlist01", count: uint64
    slots    count x (offset, capacity, kind, length): 4 x uint64
    data     each slot's bytes at its offset, capacity rounded up to 8 bytes

A slot keeps the capacity it was created with: a new value must fit in it (ints take as many
bytes as their two's complement needs, text its UTF-8 length). Writes are not atomic; guard
slots that several processes write at once with a lock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any, Union, overload

from .._exceptions import SharedMemoryError
from ._objects import SharedHandle
from ._segment import Segment

Scalar = Union[int, float, bool, str, bytes, None]  # noqa: UP007 - a runtime alias on 3.10

_MAGIC = b"hxlist01"
_HEADER = struct.Struct("=8sQ")
_SLOT = struct.Struct("=QQQQ")
_FLOAT = struct.Struct("=d")
_NONE, _FALSE, _TRUE, _INT, _FLOAT_KIND, _STR, _BYTES = range(7)
_MIN_CAPACITY = 8


def _encode(value: object) -> tuple[int, bytes]:
    if value is None:
        return _NONE, b""
    if value is True:
        return _TRUE, b""
    if value is False:
        return _FALSE, b""
    if isinstance(value, int):
        length = (value.bit_length() + 8) // 8  # room for the sign bit
        return _INT, value.to_bytes(length, "little", signed=True)
    if isinstance(value, float):
        return _FLOAT_KIND, _FLOAT.pack(value)
    if isinstance(value, str):
        return _STR, value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BYTES, bytes(value)
    raise TypeError(
        f"SharedList holds int, float, bool, str, bytes and None, not {type(value).__qualname__}"
    )


def _decode(kind: int, data: bytes) -> Scalar:
    if kind == _NONE:
        return None
    if kind == _TRUE:
        return True
    if kind == _FALSE:
        return False
    if kind == _INT:
        return int.from_bytes(data, "little", signed=True)
    if kind == _FLOAT_KIND:
        value: float = _FLOAT.unpack(data)[0]
        return value
    if kind == _STR:
        return data.decode("utf-8", "surrogatepass")
    if kind == _BYTES:
        return data
    raise SharedMemoryError(f"corrupt SharedList slot (kind {kind})")


def _round8(n: int) -> int:
    return (n + 7) & ~7


class SharedList(SharedHandle):
    r"""A fixed-length list of ``int``, ``float``, ``bool``, ``str``, ``bytes`` or ``None``.

    Items keep their exact value: ``bytes`` with trailing NULs and multi-byte text come back
    unchanged (the stdlib ``ShareableList`` corrupts both). Each slot keeps the byte capacity
    of its first value (at least 8 bytes, or ``slot_size``); assigning a value that needs more
    raises ``ValueError``.

    Example::

        with hybridexec.SharedList(["idle", 0, b"\\x00"], slot_size=32) as shared:
            executor.submit(report_progress, shared).result()  # sets shared[0], shared[1]

    Args:
        items: The initial values.
        slot_size: The minimum capacity in bytes of every slot, for values that grow.

    Raises:
        TypeError: an item of an unsupported type, or ``slot_size`` is not an int.
        ValueError: ``slot_size`` is negative.
        SharedMemoryError: not enough shared memory.

    .. versionadded:: 0.1
    """

    __slots__ = ("_count",)

    def __init__(self, items: Iterable[Scalar] = (), *, slot_size: int = 0) -> None:
        if type(slot_size) is not int:  # (a bool is no size)
            raise TypeError(f"slot_size must be an int, not {type(slot_size).__qualname__}")
        if slot_size < 0:
            raise ValueError(f"slot_size must not be negative, not {slot_size}")
        encoded = [_encode(item) for item in items]
        count = len(encoded)
        table_end = _HEADER.size + count * _SLOT.size
        offset = _round8(table_end)
        slots: list[tuple[int, int, int, int]] = []
        for kind, data in encoded:
            capacity = _round8(max(len(data), slot_size, _MIN_CAPACITY))
            slots.append((offset, capacity, kind, len(data)))
            offset += capacity
        segment = Segment.create(offset)
        try:
            mm = segment.require()
            _HEADER.pack_into(mm, 0, _MAGIC, count)
            for index, ((start, capacity, kind, length), (_, data)) in enumerate(
                zip(slots, encoded, strict=True)
            ):
                _SLOT.pack_into(
                    mm, _HEADER.size + index * _SLOT.size, start, capacity, kind, length
                )
                mm[start : start + length] = data
        except BaseException:
            segment.close()
            raise
        self._segment = segment
        self._count = count

    @classmethod
    def attach(cls, name: str) -> SharedList:
        """Attach a list created by another process, without taking ownership.

        Raises:
            SharedMemoryError: no such segment, or it does not hold a SharedList.
        """
        return cls._from_segment(Segment.attach(name))

    @classmethod
    def _from_segment(cls, segment: Segment) -> SharedList:
        mm = segment.require()
        if segment.size < _HEADER.size:
            raise SharedMemoryError(f"shared memory {segment.name!r} does not hold a SharedList")
        magic, count = _HEADER.unpack_from(mm, 0)
        if magic != _MAGIC:
            raise SharedMemoryError(f"shared memory {segment.name!r} does not hold a SharedList")
        handle = cls.__new__(cls)
        handle._segment = segment
        handle._count = count
        return handle

    # ---- the sequence protocol --------------------------------------------------------------
    def __len__(self) -> int:
        self._segment.require()  # closed: SharedMemoryError, as every other use of the handle
        return self._count

    def _index(self, index: int) -> int:
        if not isinstance(index, int):
            raise TypeError(f"SharedList indices must be integers, not {type(index).__qualname__}")
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("SharedList index out of range")
        return index

    def _slot(self, mm: Any, index: int) -> tuple[int, int, int, int]:
        slot: tuple[int, int, int, int] = _SLOT.unpack_from(mm, _HEADER.size + index * _SLOT.size)
        return slot

    @overload
    def __getitem__(self, index: int) -> Scalar: ...

    @overload
    def __getitem__(self, index: slice) -> list[Scalar]: ...

    def __getitem__(self, index: int | slice) -> Scalar | list[Scalar]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        mm = self._mapping()
        offset, _, kind, length = self._slot(mm, self._index(index))
        return _decode(kind, bytes(mm[offset : offset + length]))

    def __setitem__(self, index: int, value: Scalar) -> None:
        mm = self._mapping()
        index = self._index(index)
        kind, data = _encode(value)
        offset, capacity, _, _ = self._slot(mm, index)
        if len(data) > capacity:
            raise ValueError(
                f"the value needs {len(data)} bytes; slot {index} holds at most {capacity} "
                "(create the SharedList with a larger slot_size)"
            )
        mm[offset : offset + len(data)] = data
        _SLOT.pack_into(mm, _HEADER.size + index * _SLOT.size, offset, capacity, kind, len(data))

    def __iter__(self) -> Iterator[Scalar]:
        for i in range(self._count):
            yield self[i]

    def capacity(self, index: int) -> int:
        """Return how many bytes slot ``index`` can hold."""
        return self._slot(self._mapping(), self._index(index))[1]

    def count(self, value: Scalar) -> int:
        """Return how many items equal ``value``."""
        return sum(1 for item in self if item == value)

    def index(self, value: Scalar) -> int:
        """Return the index of the first item equal to ``value``.

        Raises:
            ValueError: no item equals ``value``.
        """
        for i, item in enumerate(self):
            if item == value:
                return i
        raise ValueError(f"{value!r} is not in the SharedList")

    def tolist(self) -> list[Scalar]:
        """Return the items as a plain list."""
        return list(self)

    def __reduce__(self) -> tuple[Any, ...]:
        self._mapping()
        return (_rebuild_list, (self.name, False))

    def _hx_transfer(self) -> tuple[Any, ...]:
        return (_rebuild_list, (self.name, True))

    def __repr__(self) -> str:
        if self.closed:
            return f"<SharedList {self.name} closed>"
        return f"<SharedList {self.name} {self.tolist()!r} {self._state()}>"


def _rebuild_list(name: str, adopt: bool) -> SharedList:
    segment = Segment.attach(name, keep=not adopt)
    if adopt:
        segment.adopt()
    return SharedList._from_segment(segment)
