"""Large results of process tasks through shared memory: the worker side of placement.

- A result array of at least the threshold is copied into a new segment named after the parent
  (the owner-to-be); the parent maps it and unlinks the name at once, so the array it hands to
  the caller owns the memory outright.
- A result that is a view of a shared object the parent owns (a ``SharedArray`` it passed)
  goes back by name, whatever its size: the caller's result views it, as a thread's would.
- A handle the worker owns is handed over: the parent becomes its owner.

The worker learns its executor's threshold from the pickled callable (``reply_policy``), so the
wire format of calls stays ``(fn_bytes, items, batch)``.

What a task keeps (guarantee I2): the parent pools the segment of a placed argument once the
task ends, and copies the next task's array into it. So the worker checks, after the call and
once its reply no longer holds anything, which read-only arrays it attached for the call are
still alive (a global cache, an actor's state), and the reply says so (``note_lent``): the
parent never reuses those segments. A result that is, or views, a read-only argument is copied:
the caller gets memory of its own, writable, that no later task overwrites.

This module also holds the references both sides use (``_attach_array``: what an array in
shared memory pickles to), so that a worker loads it and not the parent's placement.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import sys
import weakref
from typing import TYPE_CHECKING, Any

from .._exceptions import SharedMemoryError
from .._lazy import loaded
from .._serialize import PROTOCOL, checked_main, dumps

if TYPE_CHECKING:  # segments (with mmap) and handles load when first used: ~1 ms a cold start
    import numpy as np
    import numpy.typing as npt

    from ._objects import SharedHandle
    from ._segment import MapInfo, Segment

DEFAULT_THRESHOLD = 1 << 20
"""Numpy arrays of this many bytes or more go through shared memory by default (1 MiB)."""


def _ndarray_type() -> type | None:
    np = loaded("numpy")
    return None if np is None else np.ndarray


# ---- references: what a placed array pickles to ----------------------------------------------
def _attach_array(
    name: str,
    size: int,
    offset: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...] | None,
    readonly: bool,
    adopt: bool,
) -> npt.NDArray[Any]:

    if adopt:
        # A result handed over by a worker: map it, then drop the name at once; the array
        # returned owns the mapping and nothing can leak once it is gone.
        from ._segment import Segment

        segment = Segment.attach(name, size=size, keep=False)
        segment.adopt()
        array = segment.ndarray(shape, dtype, offset=offset, strides=strides)
        segment.close()
        return array
    from ._segment import Segment

    segment = Segment.attach(name, readonly=readonly, size=size)
    array = segment.ndarray(shape, dtype, offset=offset, strides=strides)
    if readonly:
        array.flags.writeable = False
        # Maybe a copy the sender pools once the task ends: ``note_lent`` tells it when the
        # task kept the array. Pruned here too, where nothing drains the list (a parent).
        global _prune_at
        if len(_attached) >= _prune_at:
            _attached[:] = [entry for entry in _attached if entry[0]() is not None]
            _prune_at = max(64, 2 * len(_attached))
        _attached.append((weakref.ref(array), name))
    return array


_attached: list[tuple[weakref.ref[Any], str]] = []  # read-only arrays attached since the reply
_prune_at = 64


def copy_into(segment: Segment, array: npt.NDArray[Any]) -> tuple[int, ...] | None:
    """Copy ``array`` into ``segment`` in the layout pickle would keep; the strides, if not C.

    Pickle sends an array that is Fortran-contiguous (and not C-contiguous) in Fortran order
    and rebuilds it so: a copy through shared memory keeps that layout too (a LAPACK call,
    ``ravel(order="K")`` or the columns' speed must not differ with the array's size).
    """
    import numpy as np

    strides: tuple[int, ...] | None = None
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        step, built = array.dtype.itemsize, []
        for extent in array.shape:
            built.append(step)
            step *= extent
        strides = tuple(built)
    dest = segment.ndarray(array.shape, array.dtype, strides=strides)
    np.copyto(dest, array, casting="no")
    del dest
    return strides


def _root_buffer(array: npt.NDArray[Any]) -> object:
    import numpy as np

    base: object = array
    while isinstance(base, np.ndarray):
        nxt = base.base
        if nxt is None:
            return base  # owns its memory
        base = nxt
    if isinstance(base, memoryview):
        base = base.obj
    return base


def _mapping_address(info: MapInfo) -> int:
    if info.address is None:  # once per mapping: where it starts
        import numpy as np

        mm = info.mm_ref()
        assert mm is not None
        probe = np.frombuffer(mm, dtype=np.uint8, count=1)
        info.address = int(probe.__array_interface__["data"][0])
    return info.address


def _shared_reference(array: npt.NDArray[Any]) -> tuple[MapInfo, tuple[Any, ...]] | None:
    """The reduce arguments that send ``array`` by name, when it lives in shared memory."""
    from ._segment import mapping_of

    info = mapping_of(_root_buffer(array))
    if info is None:
        return None
    offset = int(array.__array_interface__["data"][0]) - _mapping_address(info)
    readonly = not (array.flags.writeable and info.writable)
    args = (info.name, info.size, offset, array.shape, array.dtype, array.strides, readonly, False)
    return info, args


# ---- the worker side ---------------------------------------------------------------------
_reply_threshold: int | None = DEFAULT_THRESHOLD  # in a worker: set by its executor's calls


def reply_policy(fn_bytes: bytes, threshold: int | None) -> bytes:
    """Wrap a pickled callable so that unpickling it in a worker sets the reply threshold."""
    if threshold == DEFAULT_THRESHOLD:
        return fn_bytes
    return pickle.dumps(_ReplyPolicy(fn_bytes, threshold), PROTOCOL)


class _ReplyPolicy:
    """Unpickles as the callable it wraps, setting the threshold the worker uses for results."""

    __slots__ = ("fn_bytes", "threshold")

    def __init__(self, fn_bytes: bytes, threshold: int | None) -> None:
        self.fn_bytes = fn_bytes
        self.threshold = threshold

    def __reduce__(self) -> tuple[Any, ...]:
        return (_apply_reply_policy, (self.threshold, self.fn_bytes))


def _apply_reply_policy(threshold: int | None, fn_bytes: bytes) -> Any:
    global _reply_threshold
    _reply_threshold = threshold
    return pickle.loads(fn_bytes)


class _ReplyState:
    """Segments a reply created, to undo them if the reply cannot be sent."""

    __slots__ = ("created", "handles", "owner_pid", "renamed")

    def __init__(self) -> None:
        parent = multiprocessing.parent_process()
        self.owner_pid = parent.pid if parent is not None and parent.pid else os.getpid()
        self.created: list[Segment] = []
        self.handles: list[SharedHandle] = []
        self.renamed: list[tuple[Segment, str]] = []  # handed over: renamed for the parent

    def hand_over(self, handle: SharedHandle) -> None:
        """A handle this worker owns goes to the parent, its name now the parent's.

        A handle kept here and returned again then names the same segment.
        """
        from ._names import new_name, owner_pid_of

        segment, old = handle._segment, handle._segment.name
        if owner_pid_of(old) != self.owner_pid and segment.rename(new_name(self.owner_pid)):
            self.renamed.append((segment, old))
        self.handles.append(handle)

    def place(self, array: npt.NDArray[Any]) -> tuple[Any, ...] | None:
        if array.dtype.hasobject:
            return None
        if _handles_exist():
            shared = _shared_reference(array)
            if shared is not None and not shared[0].owned and shared[0].writable:
                # A view of a shared object the parent owns (a SharedArray), whatever its size:
                # the caller's result views it, as it would had the task run on a thread.
                return shared[1]
        threshold = _reply_threshold
        if threshold is None or array.nbytes < threshold:
            return None
        # Anything else is copied, views of a placed argument included: that segment goes
        # back to the parent's pool when this task ends.
        try:
            from ._segment import Segment

            segment = Segment.create(array.nbytes, owner_pid=self.owner_pid, owner=False)
        except SharedMemoryError:
            return None
        self.created.append(segment)
        strides = copy_into(segment, array)
        return (segment.name, segment.size, 0, array.shape, array.dtype, strides, False, True)

    def undo(self) -> None:
        from ._names import unlink

        for segment in self.created:
            unlink(segment.name)
            segment.close()
        for segment, name in self.renamed:
            segment.rename(name)  # its own again
        self.created.clear()
        self.handles.clear()
        self.renamed.clear()

    def done(self) -> None:
        for segment in self.created:
            segment.close()  # not the owner: only unmaps
        for handle in self.handles:
            handle._segment.disown()  # the parent owns it now
        self.created.clear()
        self.handles.clear()
        self.renamed.clear()


def dumps_reply(obj: Any) -> bytes:
    """Pickle a worker's reply, sending large result arrays through shared memory.

    Raises:
        Exception: whatever pickling raised; segments it created are removed first.
    """
    if "numpy" not in sys.modules and not _handles_exist():
        return checked_main(pickle.dumps(obj, PROTOCOL))  # (15d's D6 in checked_main)
    state = _ReplyState()
    buffer = io.BytesIO()
    try:
        _ReplyPickler(buffer, state).dump(obj)
        data = checked_main(buffer.getvalue())
    except BaseException:
        state.undo()
        raise
    state.done()
    return data


def _handles_exist() -> bool:
    # A lookup, not an import statement (~1 us per reply); not loaded: no segment mapped here.
    # (getattr: a module another thread is importing has not all its names yet)
    return bool(getattr(sys.modules.get("hybridexec._shm._segment"), "_maps", None))


class _ReplyPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, state: _ReplyState) -> None:
        super().__init__(file, PROTOCOL)
        self._state = state
        self._ndarray = _ndarray_type()

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is self._ndarray:
            args = self._state.place(obj)
            if args is not None:
                return (_attach_array, args)
            if not obj.flags.writeable and _handles_exist() and _read_only_shared(obj):
                # A small view of a placed argument: pickled read-only, it would arrive
                # read-only. A copy arrives as any result does, writable.
                return obj.copy().__reduce_ex__(PROTOCOL)
            return NotImplemented
        # Not loaded (or not yet: getattr): no handle exists.
        handle = getattr(sys.modules.get("hybridexec._shm._objects"), "SharedHandle", None)
        if handle is not None and isinstance(obj, handle) and obj.owner and not obj.closed:
            self._state.hand_over(obj)
            return obj._hx_transfer()
        return NotImplemented


def dumps_answer(obj: Any) -> bytes:
    """Pickle a process actor's answer as ``dumps`` does, read-only shared views copied.

    As a task's result (``_ReplyPickler``), but no placement and no handle handed over: an
    actor keeps its shared objects as its state.
    """
    if "numpy" in sys.modules and _handles_exist():
        buffer = io.BytesIO()
        with contextlib.suppress(Exception):  # else ``dumps`` (cloudpickle) as it always did
            _AnswerPickler(buffer).dump(obj)
            return checked_main(buffer.getvalue())
    return dumps(obj)


class _AnswerPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, PROTOCOL)
        self._ndarray = _ndarray_type()

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is self._ndarray:
            array: Any = obj
            if not array.flags.writeable and _read_only_shared(array):
                return array.copy().__reduce_ex__(PROTOCOL)
        return NotImplemented


def _read_only_shared(array: npt.NDArray[Any]) -> bool:
    from ._segment import mapping_of

    info = mapping_of(_root_buffer(array))
    return info is not None and not info.writable


def note_lent(reply: bytes) -> bytes:
    """Return ``reply``, telling the parent which placed arguments the task kept, if any.

    Call it once the call is over and its reply pickled, with nothing of the call held any
    more: the read-only arrays attached meanwhile that are still alive were kept by the task
    (a cache, an actor's state). The parent must then never reuse their segments; unpickling
    the reply it gets marks them (``_lent``). Costs nothing when no array was attached.
    """
    if not _attached:
        return reply
    names = sorted({name for ref, name in _attached if ref() is not None})
    _attached.clear()
    if not names or reply[:2] != _PICKLE_START:  # nothing kept, or no pickle (an actor's ACK)
        return reply
    return pickle.dumps(_Lent(names, reply), PROTOCOL)


_PICKLE_START = pickle.PROTO + bytes((PROTOCOL,))  # (a count with AHEAD starts with 0x80 too)


class _Lent:
    """Unpickles as the reply it wraps, marking the segments a worker kept first."""

    __slots__ = ("names", "reply")

    def __init__(self, names: list[str], reply: bytes) -> None:
        self.names = names
        self.reply = reply

    def __reduce__(self) -> tuple[Any, ...]:
        return (_lent, (self.names, self.reply))


def _lent(names: list[str], reply: bytes) -> Any:
    # In the parent, before the task's future is settled and its lease released.
    from . import _segment

    for name in names:
        with _segment._lock:
            info = _segment._names.get(name)
            segment = None if info is None or info.segment_ref is None else info.segment_ref()
        if segment is not None:
            segment.lent = True
    return pickle.loads(reply)


def discard_reply(data: bytes) -> None:
    """Unpickle a reply nobody will read, only to free the segments of its large results.

    Such a segment is named after this process (the owner-to-be) and only unpickling it
    unlinks the name: a reply dropped unread (its task was cancelled or timed out meanwhile)
    would leave the segment in ``/dev/shm`` until this process exits.
    """
    try:
        pickle.loads(data)
    except BaseException:  # a task nobody waits for: its failure has no one to go to
        pass
