"""Results rebuilt in the parent: by the manager thread, or by whoever reads them first.

A worker pickles each result that is not a plain value alone (``_outcomes.Pickled``). The
manager thread settles its future with a ``Deferred`` around those bytes (``_futures``): the
reading thread unpickles them, so that one slow to rebuild holds up none of the lane's other
results, timeouts and crashes (it did: outside tester 8a's A3). Results whose large arrays
came through shared memory are rebuilt at once (unpickling them is what frees the segments).

So are a call's exceptions (``failure``): one whose pickle names only classes of the standard
library and of hybridexec is rebuilt at once (no user code runs for it); any other is left to
the reader, the future settled as failed (``wait(FIRST_EXCEPTION)`` sees it) with a
``Deferred`` in place of the exception. An exception whose ``__setstate__`` took seconds, or
asked the same executor for work, held up the lane (outside tester 11c's C3).
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import re
import sys
import threading
from typing import Any

from .._exceptions import SerializationError
from .._futures import Deferred, Outcome
from .._serialize import chain_remote, unpack_exception
from .._shm import discard_reply, unlink
from ._outcomes import Pickled, unwrap


def _decode(value: Any, reader: bool = False) -> Outcome:
    # reader: called by the future's reader (Deferred), not by a lane's own thread.
    try:
        return (True, unwrap(value))
    except KeyboardInterrupt as exc:  # Ctrl-C in a reading main thread: a later read tries
        if reader and threading.current_thread() is threading.main_thread():  # again; never
            raise  # out of a lane's own reading of a reply (its task would be lost)
        err = unpickle_error(exc)
    except BaseException as exc:  # SystemExit from a __setstate__ too: the call's failure
        err = unpickle_error(exc)
    if _SHARED in value.data:
        _free_made_for_us(value.data)  # those its unpickling did not reach
    return (False, err)


def unpickle_error(exc: BaseException) -> SerializationError:
    """The call's error for a result that would not unpickle here (``exc``: why)."""
    cause = exc.__cause__ if isinstance(exc, SerializationError) else exc
    why = str(exc) if isinstance(exc, SerializationError) else repr(exc)
    err = SerializationError(f"the task's result could not be unpickled: {why}")
    err.__cause__ = cause
    return err


def _free_made_for_us(data: bytes) -> None:
    """Unlink the segments a worker made for this process's result in ``data``.

    Unpickling a result adopts them (drops each name); one that failed midway left the
    rest, which would stay in ``/dev/shm`` until we exit. Only names made for us by a
    worker (``hx<our pid>_<hex>[t<identity>]w<its pid>``) are touched: a handle the task
    handed over, renamed so, included (nobody owns it once its rebuild failed).
    """
    pattern = rb"hx%d_[0-9a-f]{16}(?:t[0-9a-f]{8})?w[0-9]+" % os.getpid()
    for name in set(re.findall(pattern, data)):
        unlink(name.decode())


_SHARED = b"hybridexec._shm"  # in a reply whose large arrays came through shared memory
_QUICK_MAX = 16384
"""A result pickled in at most this many bytes, of plain data only, is rebuilt at once."""
_RUNS_CODE = re.compile(rb"[\x82-\x84\x93]").search
"""Finds the opcodes (STACK_GLOBAL, EXT1-4: protocol >= 4 has no GLOBAL) without which a
pickle imports nothing, so it can call no ``__reduce__``/``__setstate__`` of anyone's: such
a small one rebuilds in microseconds (a byte of data that looks like one only defers it)."""


def _at_once(data: bytes) -> bool:
    """Rebuild now: shared memory to free, or plain data too small to hold anyone up."""
    return _SHARED in data or (len(data) <= _QUICK_MAX and _RUNS_CODE(data) is None)


def runs_no_code(data: bytes) -> bool:
    """Whether a service thread is to unpickle ``data`` now rather than leave it to a reader.

    True for shared memory to free (or to mark kept), and for plain data of any size: no
    ``__reduce__`` of anyone's runs for it.
    """
    return _SHARED in data or _RUNS_CODE(data) is None


def deferred(value: Pickled) -> Outcome:
    """A result pickled alone, for its future: rebuilt by whoever reads it (``Deferred``).

    Not for a result holding shared-memory segments: unpickling it is what frees them, so it
    is rebuilt now, lest a future never read leave them in ``/dev/shm`` until we exit.
    """
    if _at_once(value.data):  # a small list or dict of numbers: no Deferred to pay for
        return _decode(value)
    return (True, Deferred(functools.partial(_decode, reader=True), value))


def deferred_outcomes(outcomes: list[Outcome]) -> Outcome:
    """A batch's outcomes, for its future: those pickled alone rebuilt by its reader."""
    late = [index for index, (_, value) in enumerate(outcomes) if type(value) in _LATE]
    if not late:
        return (True, outcomes)
    datas = [outcomes[index][1].data for index in late]
    if any(_SHARED in data for data in datas) or all(map(_at_once, datas)):
        return rebuild_outcomes(outcomes)  # segments to free, or nothing slow to rebuild
    return (True, Deferred(functools.partial(rebuild_outcomes, reader=True), outcomes))


def rebuild_outcomes(outcomes: list[Outcome], reader: bool = False) -> Outcome:
    return (True, [_rebuild_one(ok, value, reader) for ok, value in outcomes])


def _rebuild_one(ok: bool, value: Any, reader: bool) -> Outcome:
    if type(value) is Pickled:  # a result pickled alone
        return _decode(value, reader)
    if type(value) is PackedError:  # an exception left to its reader
        return _rebuild_failure(value, reader)
    return (ok, value)


class PackedError:
    """A call's exception as its worker packed it (``pack_exception``), for its reader."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


_LATE = (Pickled, PackedError)


def failure(packed: bytes) -> BaseException | PackedError:
    """A call's exception: rebuilt now if no user code runs for it, else left to its reader."""
    try:
        exc, tb = _Trusted(io.BytesIO(packed)).load()
    except BaseException:  # user code ahead, or a failure: the reader's rebuild says which
        return PackedError(packed)
    return chain_remote(exc, tb)


def failed(error: BaseException | PackedError) -> BaseException | Deferred:
    """What a future settled as failed holds: the exception, or a ``Deferred`` around it."""
    if type(error) is PackedError:
        return Deferred(functools.partial(_rebuild_failure, reader=True), error)
    return error  # type: ignore[return-value]


def exception_of(error: BaseException | PackedError) -> BaseException:
    """The exception itself, rebuilt here if it was not yet (an initializer's: the lane's)."""
    return unpack_exception(error.data) if type(error) is PackedError else error  # type: ignore[return-value]


def _rebuild_failure(error: PackedError, reader: bool = False) -> Outcome:
    try:
        return (False, unpack_exception(error.data))
    except KeyboardInterrupt as exc:  # as _decode: a Ctrl-C in the main thread, read again
        if reader and threading.current_thread() is threading.main_thread():
            raise
        cause: BaseException = exc
    except BaseException as exc:  # SystemExit from a __setstate__: still the call's failure
        cause = exc
    err = SerializationError(f"cannot unpickle the exception raised by a task: {cause!r}")
    err.__cause__ = cause
    return (False, err)


_TRUSTED = frozenset(sys.stdlib_module_names) | {"hybridexec"}
_checked: dict[str, bool] = {}  # top-level module -> trusted (a user's may shadow a stdlib name)


class _Untrusted(Exception):
    pass


class _Trusted(pickle.Unpickler):
    """Unpickles only what names classes of the standard library and of hybridexec."""

    def find_class(self, module: str, name: str) -> Any:
        top = module.partition(".")[0]
        trusted = _checked.get(top)
        if trusted is None:
            trusted = _checked[top] = _is_trusted(top)
        if not trusted:
            raise _Untrusted
        return super().find_class(module, name)


def _is_trusted(top: str) -> bool:
    """Whether ``top`` is hybridexec or the standard library's module of that name.

    Not a module of the user's that shadows it (a ``calendar.py`` beside their script), nor an
    installed package of that name.
    """
    if top not in _TRUSTED:
        return False
    import importlib.util  # here: ~1 ms of a cold start otherwise (a rare path)

    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    origin = getattr(found, "origin", None)
    if top == "hybridexec" or origin in (None, "built-in", "frozen"):
        return True
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib")}
    where = os.path.realpath(origin)
    if "site-packages" in where or "dist-packages" in where:
        return False
    return any(where.startswith(root + os.sep) for root in roots)


def deferred_batch(whole: Pickled, ahead: list[Outcome] | None, count: int) -> Outcome:
    """A batch's ``count`` results pickled whole, after those that came ahead: for its future."""
    parts = (whole, ahead, count)
    if _at_once(whole.data):
        return _from_whole(parts)
    return (True, Deferred(functools.partial(_from_whole, reader=True), parts))


def _from_whole(parts: tuple[Pickled, list[Outcome] | None, int], reader: bool = False) -> Outcome:
    whole, ahead, count = parts
    ok, value = _decode(whole, reader)
    if not ok:  # the batch would not unpickle: each of its items fails with it
        value = [(False, value)] * count
    return rebuild_outcomes([*(ahead or ()), *value], reader)


def discard(data: bytes) -> None:
    """Free the shared-memory segments of a reply nobody will read (``discard_reply``).

    Those of the results pickled alone (``Pickled``) too: they are bytes in the reply, and
    only unpickling them unlinks their segments.
    """
    try:
        reply = pickle.loads(data)
    except BaseException:  # a task nobody waits for: its failure has no one to go to
        _free_made_for_us(data)
        return
    _free_inner(reply, 3)


def _free_inner(obj: Any, depth: int) -> None:
    # The layouts (_worker.py): (outcomes or Pickled, ...), outcomes of (ok, value), a
    # group's (values, ...): Pickled sits at most three containers down.
    if type(obj) is Pickled:
        if _SHARED in obj.data:
            discard_reply(obj.data)
            _free_made_for_us(obj.data)  # a rebuild that failed midway left some
    elif depth and type(obj) in (tuple, list):
        for item in obj:
            _free_inner(item, depth - 1)
