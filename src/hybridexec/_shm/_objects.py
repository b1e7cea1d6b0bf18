"""``SharedBuffer`` and ``SharedArray``: owned shared memory that pickles by name.

The process that creates one owns it and unlinks it on ``close()``, at the end of a ``with``
block, or when the handle is collected. Pickling sends only the name and layout (a few hundred
bytes), so a worker attaches the same memory without copying; the worker never unlinks it. A
handle returned from a process task hands its ownership over to the process that receives it.

After ``close()`` the handle refuses every access with ``SharedMemoryError``; a numpy array or
memoryview taken from it earlier stays valid (the mapping lives until its last view goes), so
closing never leaves a dangling pointer behind.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._exceptions import BackendUnavailableError
from ._segment import Segment

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Self


class SharedHandle:
    """The part common to every shared-memory handle: name, ownership, closing."""

    __slots__ = ("__weakref__", "_segment")

    _segment: Segment

    @property
    def name(self) -> str:
        """The segment's name; pass it to ``attach`` in an unrelated process."""
        return self._segment.name

    @property
    def owner(self) -> bool:
        """Whether this process owns the memory (and unlinks it on ``close``)."""
        return self._segment.owner

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called on this handle."""
        return self._segment.closed

    def close(self) -> None:
        """Release this handle; the owner also removes the segment's name.

        Views taken earlier (numpy arrays, memoryviews) stay valid until they are dropped;
        the handle itself raises ``SharedMemoryError`` from now on. Closing twice is harmless.
        """
        self._drop_views()
        self._segment.close()

    def _drop_views(self) -> None:
        pass

    def _hx_transfer(self) -> tuple[Any, ...]:
        # How to pickle this handle when its ownership moves to the receiving process.
        raise NotImplementedError

    def _mapping(self) -> Any:
        return self._segment.require()

    def __enter__(self) -> Self:
        self._segment.require()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _state(self) -> str:
        if self.closed:
            return "closed"
        return "owner" if self.owner else "attached"


class SharedBuffer(SharedHandle):
    """A block of raw shared memory, zero-filled, exposed as a ``memoryview``.

    Example::

        with hybridexec.SharedBuffer(1024) as shared:
            shared.buf[:5] = b"hello"
            executor.submit(work_on, shared)   # the worker attaches the same bytes

    Args:
        nbytes: The size in bytes.

    Raises:
        SharedMemoryError: not enough shared memory (the message gives the bytes asked and
            the bytes free).
        ValueError: a negative size.

    .. versionadded:: 0.1
    """

    __slots__ = ("_readonly", "_view")

    def __init__(self, nbytes: int) -> None:
        nbytes = operator.index(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must not be negative, not {nbytes}")
        self._setup(Segment.create(nbytes), readonly=False)

    def _setup(self, segment: Segment, *, readonly: bool) -> None:
        self._segment = segment
        self._readonly = readonly or not segment.writable
        self._view: memoryview | None = None

    @classmethod
    def attach(cls, name: str, *, readonly: bool = False) -> SharedBuffer:
        """Attach a buffer created by another process, without taking ownership.

        Raises:
            SharedMemoryError: no such segment, or no access to it.
        """
        handle = cls.__new__(cls)
        handle._setup(Segment.attach(name, readonly=readonly), readonly=readonly)
        return handle

    @property
    def nbytes(self) -> int:
        """The size in bytes."""
        return self._segment.size

    @property
    def readonly(self) -> bool:
        """Whether ``buf`` refuses writes."""
        return self._readonly

    @property
    def buf(self) -> memoryview:
        """The shared bytes.

        Raises:
            SharedMemoryError: the buffer was closed.
        """
        view = self._view
        if view is None:
            view = memoryview(self._mapping())[: self._segment.size]
            if self._readonly and not view.readonly:
                view = view.toreadonly()
            self._view = view
        elif self._segment.closed:
            self._mapping()  # raises
        return view

    def __len__(self) -> int:
        return self.nbytes

    def _drop_views(self) -> None:
        self._view = None

    def __reduce__(self) -> tuple[Any, ...]:
        self._mapping()
        return (_rebuild_buffer, (self.name, self.nbytes, self._readonly, False))

    def _hx_transfer(self) -> tuple[Any, ...]:
        return (_rebuild_buffer, (self.name, self.nbytes, self._readonly, True))

    def __repr__(self) -> str:
        return f"<SharedBuffer {self.name} nbytes={self._segment.size} {self._state()}>"


def _rebuild_buffer(name: str, nbytes: int, readonly: bool, adopt: bool) -> SharedBuffer:
    handle = SharedBuffer.__new__(SharedBuffer)
    segment = Segment.attach(name, readonly=readonly and not adopt, size=nbytes, keep=not adopt)
    if adopt:
        segment.adopt()
    handle._setup(segment, readonly=readonly)
    return handle


def _require_numpy() -> None:
    try:
        import numpy  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            "SharedArray needs numpy: pip install 'hybridexec[numpy]'"
        ) from exc


def _dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    _require_numpy()
    import numpy as np

    result = np.dtype(dtype)
    if result.hasobject:
        raise TypeError(f"dtype {result} holds Python objects; it cannot live in shared memory")
    return result


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (operator.index(shape),) if not isinstance(shape, Sequence) else tuple(shape)
    dims = tuple(operator.index(d) for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    return dims


class SharedArray(SharedHandle):
    """A numpy array in shared memory: ``.array`` is a view every attached process shares.

    numpy is imported only when a ``SharedArray`` is made. Writes through ``.array`` in any
    process are seen by all of them (no locking: coordinate writers yourself).

    Example::

        with hybridexec.SharedArray.zeros((1000, 1000)) as shared:
            executor.submit(fill, shared).result()   # fill() writes shared.array[...]
            print(shared.array.sum())

    Args:
        shape: The array's shape (an int for one dimension).
        dtype: Any numpy dtype without Python objects (default float64).

    Raises:
        SharedMemoryError: not enough shared memory.
        TypeError: an object dtype.
        ValueError: a negative dimension.

    .. versionadded:: 0.1
    """

    __slots__ = ("_array", "_dtype", "_readonly", "_shape")

    def __init__(self, shape: int | Sequence[int], dtype: npt.DTypeLike = "float64") -> None:
        dims = _shape(shape)
        kind = _dtype(dtype)
        nbytes = math.prod(dims) * kind.itemsize
        self._setup(Segment.create(nbytes), dims, kind, readonly=False)

    def _setup(
        self, segment: Segment, shape: tuple[int, ...], dtype: np.dtype[Any], *, readonly: bool
    ) -> None:
        self._segment = segment
        self._shape = shape
        self._dtype = dtype
        self._readonly = readonly or not segment.writable
        self._array: npt.NDArray[Any] | None = None

    @classmethod
    def zeros(cls, shape: int | Sequence[int], dtype: npt.DTypeLike = "float64") -> SharedArray:
        """Return a new zero-filled shared array (fresh shared memory is zeroed).

        Raises:
            SharedMemoryError: not enough shared memory.
        """
        return cls(shape, dtype)

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike) -> SharedArray:
        """Return a new shared array holding a copy of ``array`` (C order).

        Raises:
            SharedMemoryError: not enough shared memory.
            TypeError: an object dtype.
        """
        _require_numpy()
        import numpy as np

        source = np.asarray(array)
        shared = cls(source.shape, source.dtype)
        np.copyto(shared.array, source)
        return shared

    @classmethod
    def attach(
        cls,
        name: str,
        shape: int | Sequence[int],
        dtype: npt.DTypeLike = "float64",
        *,
        readonly: bool = False,
    ) -> SharedArray:
        """Attach an array created by another process, without taking ownership.

        Raises:
            SharedMemoryError: no such segment, too small for ``shape``, or no access.
        """
        dims = _shape(shape)
        kind = _dtype(dtype)
        size = math.prod(dims) * kind.itemsize
        handle = cls.__new__(cls)
        handle._setup(
            Segment.attach(name, readonly=readonly, size=size), dims, kind, readonly=readonly
        )
        return handle

    @property
    def array(self) -> npt.NDArray[Any]:
        """The shared numpy array (read-only when attached read-only).

        Raises:
            SharedMemoryError: the handle was closed.
        """
        array = self._array
        if array is None:
            array = self._segment.ndarray(self._shape, self._dtype)
            if self._readonly and array.flags.writeable:
                array.flags.writeable = False
            self._array = array
        elif self._segment.closed:
            self._mapping()  # raises
        return array

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        import numpy as np

        if copy:
            return np.array(self.array, dtype=dtype, copy=True)
        if dtype is None or np.dtype(dtype) == self._dtype:
            return self.array
        if copy is False:  # numpy 2's "never copy", as numpy refuses it for its own arrays
            raise ValueError(
                f"a SharedArray of {self._dtype} cannot be viewed as {np.dtype(dtype)} "
                "without a copy (copy=False)"
            )
        return self.array.astype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """The array's dtype."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """The array's size in bytes."""
        return self._segment.size

    @property
    def readonly(self) -> bool:
        """Whether ``array`` refuses writes."""
        return self._readonly

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d SharedArray")
        return self._shape[0]

    def _drop_views(self) -> None:
        self._array = None

    def __reduce__(self) -> tuple[Any, ...]:
        self._mapping()
        return (_rebuild_array, (self.name, self._shape, self._dtype, self._readonly, False))

    def _hx_transfer(self) -> tuple[Any, ...]:
        return (_rebuild_array, (self.name, self._shape, self._dtype, self._readonly, True))

    def __repr__(self) -> str:
        return f"<SharedArray {self.name} shape={self._shape} dtype={self._dtype} {self._state()}>"


def _rebuild_array(
    name: str, shape: tuple[int, ...], dtype: np.dtype[Any], readonly: bool, adopt: bool
) -> SharedArray:
    handle = SharedArray.__new__(SharedArray)
    size = math.prod(shape) * dtype.itemsize
    segment = Segment.attach(name, readonly=readonly and not adopt, size=size, keep=not adopt)
    if adopt:
        segment.adopt()
    handle._setup(segment, shape, dtype, readonly=readonly)
    return handle
