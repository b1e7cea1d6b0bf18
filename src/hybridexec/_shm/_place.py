"""Automatic placement: large numpy arguments and results travel through shared memory.

Parent -> worker (``Placement.dumps_call``, used by the process lane for every task):

- An array that already lives in hybridexec shared memory (a ``SharedArray``'s array, or any
  view of one, whatever its size) is sent as a reference: name, offset, shape, strides. No
  copy at all, and the task's writes are seen.
- Any other array of at least ``threshold`` bytes is copied once into a segment the lane owns
  and sent as a reference; the worker maps it read-only. The same array object passed to
  several tasks in flight is placed once, as long as it still holds the same bytes (compared
  in full, see ``_reuse``), and the segment is released when the last of those tasks ends.
- Released segments go to a small pool and are reused: copying into fresh shared memory is
  dominated by page faults (about 60 ms per 100 MB), into a reused one by memcpy (about 6 ms).
  A segment a worker kept a view of (the task stored its argument; the reply says so, see
  ``_reply.note_lent``) is never reused: its name goes, its memory stays the worker's.
- Shared-memory handles in the arguments are kept alive until the task ends, so passing a
  temporary ``SharedArray`` to ``submit`` is safe.

References (what a placed array pickles to) and the worker side are in ``_reply.py``.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._exceptions import SerializationError, SharedMemoryError
from .._serialize import PROTOCOL, checked_main
from ._names import free_bytes
from ._reply import (
    DEFAULT_THRESHOLD,
    _attach_array,
    _ndarray_type,
    _shared_reference,
    copy_into,
)

if TYPE_CHECKING:  # segments (with mmap) and handles load when first used: ~1 ms a cold start
    import concurrent.futures

    import numpy.typing as npt

    from ._reuse import Copies, Share
    from ._segment import Segment

logger = logging.getLogger("hybridexec")


POOL_MAX_BYTES = 1 << 30
POOL_IDLE_SECONDS = 30.0
_PAGE = 4096


def check_threshold(threshold: int | None) -> int | None:
    """Validate an ``shm_threshold`` option.

    Raises:
        TypeError: not an int or None.
        ValueError: negative.
    """
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise TypeError(f"shm_threshold must be an int or None, not {threshold!r}")
    if threshold < 0:
        raise ValueError(f"shm_threshold must not be negative, not {threshold}")
    return threshold


class _Placed:
    """A lane-owned segment holding a copy of one array, and the reduce arguments naming it."""

    __slots__ = ("args", "segment")

    def __init__(
        self, array: npt.NDArray[Any], segment: Segment, strides: tuple[int, ...] | None
    ) -> None:
        self.segment = segment
        self.args = (segment.name, segment.size, 0, array.shape, array.dtype, strides, True, False)

    def view(self) -> npt.NDArray[Any]:
        _, _, _, shape, dtype, strides, _, _ = self.args
        return self.segment.ndarray(shape, dtype, strides=strides)


class _Lease:
    """What one task holds until it ends: placed arrays and handles kept alive."""

    __slots__ = ("__weakref__", "copies", "keep", "placed", "released")

    def __init__(self, copies: bool) -> None:
        self.placed: list[Share[_Placed]] = []
        self.keep: list[object] = []
        self.released = False
        self.copies = copies  # whether arrays may be copied into the lane's segments

    def __bool__(self) -> bool:
        return bool(self.placed or self.keep)


# ---- the parent side -----------------------------------------------------------------------
class Placement:
    """Per process lane: places large arguments, tracks who uses them, pools segments.

    Args:
        threshold: Arrays of at least this many bytes are placed; None switches placement
            off (handles in arguments are still kept alive).
    """

    def __init__(self, threshold: int | None = DEFAULT_THRESHOLD) -> None:
        self.threshold = check_threshold(threshold)
        self._lock = threading.Lock()
        # Imported here: workers load this module for _attach_array alone, and their import
        # budget is counted (tests/test_architecture.py).
        from ._reuse import Copies

        self._placed: Copies[_Placed] = Copies()  # copies of arrays, while tasks use them
        self._free: list[tuple[float, Segment]] = []
        self._closed = False
        total = free_bytes()
        self.pool_max = POOL_MAX_BYTES if total is None else min(POOL_MAX_BYTES, total // 8)
        # placed: copies made (pool_hits of them into reused segments); reused: tasks that
        # shared a copy made for an earlier task in flight; by_reference: views of shared
        # memory sent by name without a copy; lent: copies a worker kept, never pooled.
        self.stats = {"placed": 0, "reused": 0, "by_reference": 0, "pool_hits": 0, "lent": 0}

    def dumps_call(
        self,
        obj: Any,
        future: concurrent.futures.Future[Any] | None,
        *,
        copies: bool = True,
        held: list[object] | None = None,
    ) -> bytes:
        """Pickle a call, placing large arrays; release them when ``future`` is done.

        Views of shared memory go by name whatever their size. With ``copies`` False (a call
        nothing will say the end of, such as an actor's tell) other arrays are pickled; the
        handles whose names it carries go into ``held``, for the caller to keep until the
        call was read (a temporary ``SharedArray`` would be unlinked before).

        Raises:
            SerializationError: the call cannot be pickled.
        """
        lease = _Lease(copies)
        try:
            data = _dump(obj, self, lease)
        except BaseException:
            self.release(lease)
            raise
        if lease:
            if future is None:
                if held is not None:
                    held.extend(lease.keep)
                self.release(lease)  # nobody will say when the task ends: only pickle
            else:
                on_done = getattr(future, "_hx_add_inline", future.add_done_callback)  # ours: now
                on_done(lambda _f: self.release(lease))
                # A future dropped without ever running (submit failed) must free it too.
                weakref.finalize(future, self.release, lease)
        return data

    def place(self, array: npt.NDArray[Any], lease: _Lease) -> tuple[Any, ...] | None:
        """Return reduce arguments for ``array``, or None to pickle it by value."""
        shared = _shared_reference(array)  # any size: a task's writes must be seen
        if shared is not None:
            info, args = shared
            owner = info.segment_ref() if info.segment_ref is not None else None
            if not info.owned or owner is not None:
                lease.keep.append(owner)  # the owner's handle keeps the name alive meanwhile
                self.stats["by_reference"] += 1
                return args
        threshold = self.threshold
        if threshold is None or array.nbytes < threshold or array.dtype.hasobject:
            return None
        if not lease.copies:
            return None
        with self._lock:
            if self._closed:
                return None
            # The copy placed for this very array by a task still in flight stands for it only
            # if the array still holds the same bytes (I2: never hand a task old data).
            found = self._placed.find(array, compared=True)
            if found is not None:
                lease.placed.append(found)  # released with the lease, whatever happens next
        if found is not None:
            from ._reuse import same_bytes, unchanging

            if unchanging(array) or same_bytes(array, found.copy.view()):
                with self._lock:
                    self.stats["reused"] += 1
                return found.copy.args
            with self._lock:
                lease.placed.remove(found)
            self._release_shares([found])
        with self._lock:
            segment = self._take(array.nbytes)
        entry = self._copy(array, segment)
        if entry is None:
            return None
        with self._lock:
            lease.placed.append(self._placed.add(array, entry))
            self.stats["placed"] += 1
        return entry.args

    def _copy(self, array: npt.NDArray[Any], segment: Segment | None) -> _Placed | None:
        if segment is None:
            try:
                from ._segment import Segment

                segment = Segment.create(-(-max(array.nbytes, 1) // _PAGE) * _PAGE)
            except SharedMemoryError as exc:
                logger.info("not placing a %d-byte array in shared memory: %s", array.nbytes, exc)
                return None
        return _Placed(array, segment, copy_into(segment, array))

    def _take(self, nbytes: int) -> Segment | None:
        # Under the lock: the best-fitting pooled segment, after dropping stale ones.
        self._expire(time.monotonic())
        best: tuple[float, Segment] | None = None
        for item in self._free:
            size = item[1].size
            if nbytes <= size <= 2 * nbytes + _PAGE and (best is None or size < best[1].size):
                best = item
        if best is None:
            return None
        self._free.remove(best)
        if best[1].has_views() or best[1].lent:  # pragma: no cover - checked when pooled
            best[1].close()
            return None
        self.stats["pool_hits"] += 1
        return best[1]

    def _expire(self, now: float) -> None:
        while self._free and now - self._free[0][0] > POOL_IDLE_SECONDS:
            self._free.pop(0)[1].close()

    def release(self, lease: _Lease) -> None:
        """Let go of what a finished task held; idempotent."""
        with self._lock:
            if lease.released:
                return
            lease.released = True
            lease.keep.clear()
            shares, lease.placed = lease.placed, []
        self._release_shares(shares)

    def _release_shares(self, shares: list[Share[_Placed]]) -> None:
        to_close: list[Segment] = []
        with self._lock:
            for share in shares:
                if self._placed.release(share):
                    to_close.extend(self._pool(share.copy.segment))
        for segment in to_close:
            segment.close()

    def _pool(self, segment: Segment) -> list[Segment]:
        # Under the lock: keep ``segment`` for reuse when nothing maps it here and it fits.
        if segment.lent:  # a worker keeps a view of it (_reply.note_lent): never reuse it
            self.stats["lent"] += 1
            return [segment]
        if self._closed or segment.size > self.pool_max or segment.has_views():
            return [segment]
        now = time.monotonic()
        evicted: list[Segment] = []
        self._expire(now)
        while self._free and sum(s.size for _, s in self._free) + segment.size > self.pool_max:
            evicted.append(self._free.pop(0)[1])
        self._free.append((now, segment))
        return evicted

    @property
    def pooled_bytes(self) -> int:
        """Bytes held in idle pooled segments."""
        with self._lock:
            return sum(s.size for _, s in self._free)

    def close(self) -> None:
        """Free the pool; segments still used by tasks go when those tasks end."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for _, segment in free:
            segment.close()


# ---- picklers ------------------------------------------------------------------------------
def _placed(obj: Any, ndarray: type | None, placement: Placement, lease: _Lease) -> Any:
    """What both call picklers do: a large array goes by shared memory, a handle is kept.

    Returns the array's reduction, or None to pickle ``obj`` as the pickler would.
    """
    array: Any = obj  # an ndarray when the type test below holds (numpy stays optional)
    if type(obj) is ndarray:
        args = placement.place(array, lease)
        return None if args is None else (_attach_array, args)
    # Not loaded (or not yet: getattr): no handle exists.
    handle = getattr(sys.modules.get("hybridexec._shm._objects"), "SharedHandle", None)
    if handle is not None and isinstance(obj, handle):
        lease.keep.append(obj)
    return None


class _CallPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, placement: Placement, lease: _Lease) -> None:
        super().__init__(file, PROTOCOL)
        self._placement, self._lease = placement, lease
        self._ndarray = _ndarray_type()

    def reducer_override(self, obj: Any) -> Any:
        placed = _placed(obj, self._ndarray, self._placement, self._lease)
        return NotImplemented if placed is None else placed


@functools.cache
def _cloud_call_pickler() -> Any:
    # Made when the C pickler first refuses a call: cloudpickle costs ~7 ms to import.
    from .._serialize import cloud_pickler

    class _CloudCallPickler(cloud_pickler()):  # type: ignore[misc]
        def __init__(self, file: io.BytesIO, placement: Placement, lease: _Lease) -> None:
            super().__init__(file, PROTOCOL)
            self._placement, self._lease = placement, lease
            self._ndarray = _ndarray_type()

        def reducer_override(self, obj: Any) -> Any:
            placed = _placed(obj, self._ndarray, self._placement, self._lease)
            return super().reducer_override(obj) if placed is None else placed

    return _CloudCallPickler


def _dump(obj: Any, placement: Placement, lease: _Lease) -> bytes:
    # The C pickler first, cloudpickle when it refuses: the rules of _serialize.dumps.
    buffer = io.BytesIO()
    try:
        _CallPickler(buffer, placement, lease).dump(obj)
        return checked_main(buffer.getvalue())
    except Exception as first:
        pickler = _cloud_call_pickler()  # importing cloudpickle may raise OSError (EMFILE)
        buffer = io.BytesIO()
        try:
            pickler(buffer, placement, lease).dump(obj)
            return buffer.getvalue()
        except Exception as exc:
            from .._serialize import _describe

            raise SerializationError(f"cannot pickle {_describe(obj)}: {exc!r}") from first
