"""Shared-memory segments: creation, attachment, ownership and the janitor.

Everything shared between processes in hybridexec lives in a ``Segment``: a POSIX shared-memory
object mapped with ``mmap``. The rules (DESIGN.md, "Shared memory rules"):

- Only the owner unlinks. Nothing here registers with ``multiprocessing``'s resource tracker,
  on any Python version: a tracker that sees a worker attach destroys the segment when that
  worker exits, while the owner still uses it (CPython issue 82300).
- Names are ``hx<owner pid>_<16 random hex digits>``: unguessable, created with ``O_EXCL`` and
  mode 0o600, and the janitor (``_janitor.py``) can tell whose they are.
- Space is reserved with ``os.posix_fallocate`` before anything is mapped: a full ``/dev/shm``
  then fails with ``SharedMemoryError`` instead of killing the process with SIGBUS on first write.
- A mapping is never unmapped under a live view: closing a segment drops this handle's reference
  and the ``mmap`` goes when its last view (numpy array, memoryview) goes.

Each process keeps a registry of the mappings it holds (by ``id`` of the ``mmap``, weakly), so
an array that already lives in shared memory can be sent by name instead of by value.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .. import _faults, _lifecycle
from .._exceptions import SharedMemoryError
from . import _kept
from ._janitor import ADOPTED, cleanup_shared_memory
from ._names import (
    LINUX,
    SHM_DIR,
    describe_space,
    new_name,
    open_segment,
    owner_pid_of,
    reserve,
    unlink,
)

if TYPE_CHECKING:
    import numpy.typing as npt

logger = logging.getLogger("hybridexec")


# ---- the per-process registry of mappings ----------------------------------------------------
# Guards what reads and then changes _maps, _names or a view count (no GIL on
# free-threaded builds; single dict operations are atomic there). Reentrant: a finalizer
# may run from the garbage collector while this thread holds it.
_lock = threading.RLock()


class MapInfo:
    """What this process knows about one of its mappings."""

    __slots__ = ("address", "mm_ref", "name", "owned", "segment_ref", "size", "views", "writable")

    def __init__(self, name: str, size: int, mm: mmap.mmap, writable: bool, owned: bool) -> None:
        self.name = name
        self.size = size
        self.writable = writable
        self.owned = owned
        self.mm_ref = weakref.ref(mm)
        # The owning Segment, so that a task sent a view can keep the name alive meanwhile.
        self.segment_ref: weakref.ref[Segment] | None = None
        self.address: int | None = None  # where the mapping starts (set by _place, with numpy)
        # Live numpy views (Segment.ndarray): sys.getrefcount cannot tell from 3.14 on, where
        # references are borrowed.
        self.views = 0


_maps: dict[int, MapInfo] = {}  # id(mmap) -> info, while the mmap lives and the name is valid
_names: dict[str, MapInfo] = {}  # name -> the best live mapping of it here, for reuse


def _register(info: MapInfo, mm: mmap.mmap) -> None:
    key = id(mm)
    with _lock:
        _maps[key] = info
        current = _names.get(info.name)
        if current is None or current.mm_ref() is None or (info.writable and not current.writable):
            _names[info.name] = info
    weakref.finalize(mm, _forget_mapping, key, info)


def _forget_mapping(key: int, info: MapInfo) -> None:
    with _lock:
        if _maps.get(key) is info:
            del _maps[key]
        if _names.get(info.name) is info:
            del _names[info.name]


def _drop_view(info: MapInfo) -> None:
    with _lock:
        info.views -= 1


def forget_name(name: str) -> None:
    """Stop offering mappings of ``name`` for sharing by name (it was unlinked)."""
    with _lock:
        for key, info in list(_maps.items()):
            if info.name == name:
                _maps.pop(key, None)
        _names.pop(name, None)


def mapping_of(buffer_owner: object) -> MapInfo | None:
    """Return the registry entry of ``buffer_owner`` if it is a live hybridexec mapping."""
    info = _maps.get(id(buffer_owner))
    if info is not None and info.mm_ref() is buffer_owner:
        return info
    return None


def _reset_after_fork() -> None:
    # A forked child inherits the registry but owns none of it (only the forking thread runs).
    global _lock
    _lock = threading.RLock()
    for info in list(_maps.values()):
        info.owned = False
    _names.clear()


_lifecycle.on_fork(_reset_after_fork)


# ---- segments --------------------------------------------------------------------------------
class Segment:
    """One mapped shared-memory object; the owner unlinks it on ``close`` or when collected.

    Attributes:
        name: The segment's name (without the leading slash).
        size: Usable bytes.
        writable: Whether this mapping may be written.
        owner: Whether this process created it and must unlink it.
    """

    __slots__ = ("__weakref__", "_finalizer", "lent", "mm", "name", "owner", "size", "writable")

    def __init__(self, name: str, size: int, mm: mmap.mmap, writable: bool, owner: bool) -> None:
        self.name = name
        self.size = size
        self.mm: mmap.mmap | None = mm
        self.writable = writable
        self.owner = owner
        self.lent = False  # another process keeps a view of it: its memory is theirs too
        self._finalizer: weakref.finalize[Any, Any] | None = None
        if owner:
            # Unlink when the handle is collected without close(); also runs at exit.
            self._finalizer = weakref.finalize(self, _unlink_owned, name, os.getpid())

    @classmethod
    def create(cls, size: int, *, owner_pid: int | None = None, owner: bool = True) -> Segment:
        """Create, reserve and map a new zero-filled segment of ``size`` bytes.

        Args:
            size: Bytes wanted (0 is allowed; one byte is mapped).
            owner_pid: The pid to put in the name (a worker creating a result names it after
                the parent that will take it over).
            owner: Whether this process unlinks it (False for a segment handed over).

        Raises:
            SharedMemoryError: not enough space, or the segment could not be created.
        """
        if size < 0:
            raise ValueError(f"size must not be negative, not {size}")
        # The helpers (the guardian, which removes our segments if we are killed) are forked
        # now, while no segment is mapped here (a copy would pin it), not after (14a's A4).
        _lifecycle.starting_thread()
        mapped = max(size, 1)
        for attempt in (1, 2):
            name = new_name(owner_pid)
            try:
                fd = open_segment(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
            except FileExistsError:  # pragma: no cover - 64 random bits collided
                continue
            except OSError as exc:
                raise SharedMemoryError(f"cannot create a shared-memory segment: {exc}") from exc
            try:
                if _faults.ACTIVE:  # after the name exists: a failure must remove it
                    _faults.hit("shm.create")
                reserve(fd, mapped)
                mm = mmap.mmap(fd, mapped)
            except OSError as exc:
                unlink(name)
                if exc.errno == errno.ENOSPC and attempt == 1 and cleanup_shared_memory():
                    continue  # leftovers of dead owners were removed: try once more
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise SharedMemoryError(
                        f"not enough shared memory: {describe_space(size)}"
                    ) from exc
                raise SharedMemoryError(f"cannot create a shared-memory segment: {exc}") from exc
            except BaseException:
                unlink(name)
                raise
            finally:
                os.close(fd)
            segment = cls(name, size, mm, True, owner)
            info = MapInfo(name, size, mm, True, owner)
            info.segment_ref = weakref.ref(segment)
            _register(info, mm)
            return segment
        raise SharedMemoryError("cannot find a free shared-memory name")  # pragma: no cover

    @classmethod
    def attach(
        cls, name: str, *, readonly: bool = False, size: int | None = None, keep: bool = True
    ) -> Segment:
        """Map an existing segment, untracked: this process will never unlink it.

        A mapping of ``name`` this process already holds is reused. With ``keep``, the new
        mapping is also kept a while after its last view goes, for the next attach to reuse.

        Raises:
            SharedMemoryError: no such segment (its owner closed it or exited), or no access.
        """
        if _kept.kept and LINUX:
            _kept.sweep()
        with _lock:
            known = _names.get(name)
            mm = None if known is None or not (known.writable or readonly) else known.mm_ref()
            if known is not None and mm is not None and not mm.closed:
                if size is not None and known.size < max(size, 1):  # as for a new mapping
                    raise SharedMemoryError(
                        f"shared-memory segment {name!r} holds {known.size} bytes, {size} expected"
                    )
                _kept.touch(mm)
                return cls(name, known.size if size is None else size, mm, known.writable, False)
        flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            if _faults.ACTIVE:
                _faults.hit("shm.attach")
            fd = open_segment(name, flags)
        except FileNotFoundError:
            raise SharedMemoryError(
                f"no shared-memory segment named {name!r}: its owner closed it or exited"
            ) from None
        except OSError as exc:
            raise SharedMemoryError(f"cannot attach shared memory {name!r}: {exc}") from exc
        try:
            st = os.fstat(fd)
            actual = st.st_size
            if size is None:
                size = actual
            if actual < max(size, 1):
                raise SharedMemoryError(
                    f"shared-memory segment {name!r} holds {actual} bytes, {size} expected"
                )
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            mm = mmap.mmap(fd, max(size, 1), prot=prot)
        except OSError as exc:
            raise SharedMemoryError(f"cannot map shared memory {name!r}: {exc}") from exc
        finally:
            os.close(fd)
        _register(MapInfo(name, size, mm, not readonly, False), mm)
        if keep and LINUX:
            _kept.keep(mm, name, st.st_ino)
        return cls(name, size, mm, not readonly, False)

    @property
    def closed(self) -> bool:
        return self.mm is None

    def require(self) -> mmap.mmap:
        """Return the mapping.

        Raises:
            SharedMemoryError: the segment was closed here.
        """
        mm = self.mm
        if mm is None:
            raise SharedMemoryError(f"shared memory {self.name!r} is closed")
        return mm

    def ndarray(
        self, shape: Any, dtype: Any, *, offset: int = 0, strides: tuple[int, ...] | None = None
    ) -> npt.NDArray[Any]:
        """Return a numpy array over the mapping, a view that ``has_views`` counts.

        Every numpy view the package makes of a segment is made here; a view derived from it
        keeps it alive, and so counted. Raises ``SharedMemoryError`` if it was closed here.
        """
        import numpy as np

        mm = self.require()
        array: npt.NDArray[Any] = np.ndarray(
            shape, dtype, buffer=mm, offset=offset, strides=strides
        )
        with _lock:
            info = _maps.get(id(mm))
            if info is not None:
                info.views += 1
        if info is not None:
            weakref.finalize(array, _drop_view, info)
        return array

    def has_views(self) -> bool:
        """Return True while a numpy view of the mapping (``ndarray``) is alive here."""
        mm = self.mm
        if mm is None:
            return False
        info = _maps.get(id(mm))
        return info is not None and info.views > 0

    def close(self) -> None:
        """Drop this mapping (the owner also unlinks); views taken earlier stay valid."""
        mm = self.mm
        if mm is None:
            return
        if self.owner:
            self.unlink()
        _kept.drop(mm)  # closed on purpose: do not keep it for reuse
        self.mm = None  # the mmap is unmapped when its last view goes

    def unlink(self) -> None:
        """Remove the name (owner only); existing mappings stay valid.

        Interrupted (a Ctrl-C), the finalizer stays armed: the next ``close()`` or the
        collection of this handle removes the name, never left behind.
        """
        finalizer = self._finalizer
        if finalizer is None:
            return
        armed = finalizer.peek()
        if armed is not None:
            _unlink_owned(*armed[2])  # in the owning process only; idempotent
            finalizer.detach()
        self._finalizer = None

    def adopt(self) -> None:
        """Take over ownership of a segment another process created and handed over.

        On Linux the segment carries this process's pid, so that the janitor does not remove
        it once the process that created it (a worker) is gone: named so by the worker as it
        handed it over, or renamed here.
        """
        if self.owner:
            return
        if LINUX and owner_pid_of(self.name) != os.getpid():
            self._rename(new_name())
        ADOPTED.add(self.name)  # made for us by a worker: not removed as its leftover
        self.owner = True
        self._finalizer = weakref.finalize(self, _unlink_owned, self.name, os.getpid())
        info = _names.get(self.name)
        if info is not None and info.mm_ref() is self.mm:
            info.owned = True
            info.segment_ref = weakref.ref(self)

    def rename(self, fresh: str) -> bool:
        """Name this process's segment ``fresh``; False when it keeps its name.

        A worker handing a handle over to its parent names it for the parent (``_reply``):
        a handle the worker keeps, returned again, still names it.
        """
        if not LINUX or not self._rename(fresh):
            return False
        if self._finalizer is not None and self._finalizer.detach() is not None:  # by name
            self._finalizer = weakref.finalize(self, _unlink_owned, self.name, os.getpid())
        return True

    def _rename(self, fresh: str) -> bool:
        try:
            os.rename(os.path.join(SHM_DIR, self.name), os.path.join(SHM_DIR, fresh))
        except OSError:
            return False  # keep the old name: still valid while the janitor spares it
        with _lock:
            for mapped in list(_maps.values()):
                if mapped.name == self.name:
                    mapped.name = fresh
            known = _names.pop(self.name, None)
            if known is not None:
                _names[fresh] = known
        self.name = fresh
        return True

    def disown(self) -> None:
        """Give up ownership without unlinking (the segment was handed to another process)."""
        self.owner = False
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __repr__(self) -> str:
        state = "closed" if self.mm is None else ("rw" if self.writable else "ro")
        return f"<Segment {self.name} {self.size} bytes {state}{' owner' if self.owner else ''}>"


def _unlink_owned(name: str, pid: int) -> None:
    if os.getpid() == pid:  # never from a forked child that inherited the handle
        try:
            unlink(name)  # first: what must never be left behind
        finally:
            ADOPTED.discard(name)
            forget_name(name)
