"""Large results of process tasks through shared memory: the worker side of placement.

- A result array of at least the threshold is copied into a new segment named after the parent
  (the owner-to-be); the parent maps it and unlinks the name at once, so the array it hands to
  the caller owns the memory outright.
- A result that is a view of a task input (shared memory the parent owns) goes back by name.
- A handle the worker owns is handed over: the parent becomes its owner.

The worker learns its executor's threshold from the pickled callable (``reply_policy``), so the
wire format of calls stays ``(fn_bytes, items, batch)``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any

from .._exceptions import SharedMemoryError
from .._serialize import PROTOCOL
from ._place import DEFAULT_THRESHOLD, _attach_array, _ndarray_type, _shared_reference

if TYPE_CHECKING:
    import numpy.typing as npt

    from ._objects import SharedHandle
    from ._segment import Segment

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

    __slots__ = ("created", "handles", "owner_pid")

    def __init__(self) -> None:
        parent = multiprocessing.parent_process()
        self.owner_pid = parent.pid if parent is not None and parent.pid else os.getpid()
        self.created: list[Segment] = []
        self.handles: list[SharedHandle] = []

    def place(self, array: npt.NDArray[Any]) -> tuple[Any, ...] | None:
        import numpy as np

        threshold = _reply_threshold
        if threshold is None or array.nbytes < threshold or array.dtype.hasobject:
            return None
        shared = _shared_reference(array)
        if shared is not None and not shared[0].owned:
            return shared[1]  # a view of a task input: the parent owns it
        from ._segment import Segment

        try:
            segment = Segment.create(array.nbytes, owner_pid=self.owner_pid, owner=False)
        except SharedMemoryError:
            return None
        self.created.append(segment)
        dest = segment.ndarray(array.shape, array.dtype)
        np.copyto(dest, array, casting="no")
        del dest
        return (segment.name, segment.size, 0, array.shape, array.dtype, None, False, True)

    def undo(self) -> None:
        from ._names import unlink

        for segment in self.created:
            unlink(segment.name)
            segment.close()
        self.created.clear()
        self.handles.clear()

    def done(self) -> None:
        for segment in self.created:
            segment.close()  # not the owner: only unmaps
        for handle in self.handles:
            handle._segment.disown()  # the parent owns it now
        self.created.clear()
        self.handles.clear()


def dumps_reply(obj: Any) -> bytes:
    """Pickle a worker's reply, sending large result arrays through shared memory.

    Raises:
        Exception: whatever pickling raised; segments it created are removed first.
    """
    if "numpy" not in sys.modules and not _handles_exist():
        return pickle.dumps(obj, PROTOCOL)
    state = _ReplyState()
    buffer = io.BytesIO()
    try:
        _ReplyPickler(buffer, state).dump(obj)
    except BaseException:
        state.undo()
        raise
    state.done()
    return buffer.getvalue()


def _handles_exist() -> bool:
    # A lookup, not an import statement (~1 us per reply); not loaded: no segment mapped here.
    segments = sys.modules.get("hybridexec._shm._segment")
    return segments is not None and bool(segments._maps)


class _ReplyPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, state: _ReplyState) -> None:
        super().__init__(file, PROTOCOL)
        self._state = state
        self._ndarray = _ndarray_type()

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is self._ndarray:
            args = self._state.place(obj)
            return NotImplemented if args is None else (_attach_array, args)
        objects = sys.modules.get("hybridexec._shm._objects")  # not loaded: no handle exists
        if objects and isinstance(obj, objects.SharedHandle) and obj.owner and not obj.closed:
            self._state.handles.append(obj)
            return obj._hx_transfer()
        return NotImplemented


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
