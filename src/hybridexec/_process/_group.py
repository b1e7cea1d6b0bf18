"""Several calls in one frame: deferred pickling of small plain calls, and their frames.

A storm of tiny calls paid one pickle, one frame and one reply per call, on both sides of the
pipe. So a call whose arguments are a few small plain values (numbers, ``None``, short strings
and bytes, no keyword arguments) of a plain function is not pickled as it is submitted: only
its callable is (``dumps_callable``, cached per function, where an unpicklable callable still
raises at the ``submit`` that passed it; such arguments cannot fail to pickle). The manager
then pickles the calls it sends a worker at once in one ``dumps`` (one frame, the callable's
bytes written once thanks to the pickler's memo), and the worker runs them in order and
answers with one frame for all of them, or for those done so far every ``FLUSH_SECONDS``
(``_worker._run_group``). Every call still ends on its own future.

A group frame is a pickled ``[fn_bytes per call, args per call]`` (two lists: no pair per call
to build and pickle; the callable's bytes are one object, written once). Its reply is a flagged
frame: a 4-byte count of the calls it answers, then a pickled ``(values, failures, seconds per
call, cpu, rss)``, ``failures`` None or ``{index: packed exception}``; the count lets the
manager fail exactly those calls if the rest will not unpickle.

Which call of a group killed its worker is not known when more than one of the group had no
reply (the worker answers a group's calls together): those calls are then sent again one per
frame, each answered before the next starts, so only the culprit fails (it kills its worker a
second time), as a ``map`` batch's items are (``_crashes.py``). Calls with a timeout, with
keyword arguments, of callables other than plain functions, or with larger arguments are
pickled as they are submitted and always travel alone.
"""

from __future__ import annotations

import itertools
import pickle
import types
import weakref
from typing import TYPE_CHECKING, Any

from .. import _faults, _fncache
from .._serialize import PROTOCOL, cached_callable, dumps_callable
from .._shm import reply_policy
from ._frames import HEADER_SIZE
from ._wire import encode_call

if TYPE_CHECKING:
    from .._futures import Task
    from .._shm import Placement

GROUP_MAX = 512
"""At most this many calls in one frame."""

WIRE_MAX = 512
"""Callables whose pickled bytes are longer than this are not deferred (they go by value)."""

_WIRES_MAX = 256
_STRING_MAX = 256
_INT_BOUND = 1 << 62
_FIXED = {float: 9, bool: 1, type(None): 1, complex: 20}
_CALL_COST = 16  # bytes a call adds to a group frame besides its callable and arguments


def defer_int(task: Task, fn: Any, arg: Any, wires: dict[int, tuple[Any, bytes]]) -> bool:
    """``defer`` for a storm's usual call: ``fn(arg)``, one small int, a cached callable.

    The caller knows the call has no keywords, no timeout and is no batch. The same outcome
    in fewer steps; False (nothing done) when ``defer`` must look. (A callable pickled by
    value is checked on the way: ``_Kept``.)
    """
    if type(arg) is not int or not -_INT_BOUND <= arg < _INT_BOUND or _faults.ACTIVE:
        return False
    cached = wires.get(id(fn))
    if cached is None or cached[0]() is not fn:
        return False  # (a cached callable is a plain function: ``defer`` checked it)
    task.wire = cached[1]
    task.size = _CALL_COST + 9
    return True


def defer(task: Task, placement: Placement, wires: dict[int, tuple[Any, bytes]]) -> bool:
    """Mark ``task`` for pickling on the manager's thread if it qualifies; False if not.

    ``wires`` is the lane's cache of the callables whose bytes ``_fncache`` keeps: ``id(fn) ->
    (weakref, bytes)`` (for one pickled by value, a ``_Kept`` that checks them). A call
    whose callable's bytes are too long to travel in a group is pickled here at once (True),
    with the bytes found, not pickled (or checked) a second time.

    Raises:
        SerializationError: the callable cannot be pickled.
    """
    fn = task.fn
    if task.timeout is not None or task.batch or task.kwargs or type(fn) is not types.FunctionType:
        return False
    size = _CALL_COST
    fixed = _FIXED
    for arg in task.args:
        kind = type(arg)
        if kind is int:
            if not -_INT_BOUND <= arg < _INT_BOUND:
                return False
            size += 9
        elif kind in fixed:
            size += fixed[kind]
        elif kind is str or kind is bytes:
            if len(arg) > _STRING_MAX:
                return False
            size += 4 * len(arg) + 9
        else:
            return False
    # A callable whose bytes are kept (by reference; by value while they are right) is one
    # object, written once per frame (the pickler's memo): the first call of a frame pays for
    # it (``first_cost``). One pickled anew for each call has its own bytes in every frame.
    cached = wires.get(id(fn))
    if cached is not None and cached[0]() is fn:
        wire = cached[1]
    else:
        raw = dumps_callable(fn)
        kept = _fncache.kept(fn, raw)
        if len(raw) > WIRE_MAX and not kept:
            return encode_alone(task, placement, raw)
        wire = reply_policy(raw, placement.threshold)
        if not kept:
            size += 2 * WIRE_MAX
        else:
            if len(wires) >= _WIRES_MAX:
                wires.clear()
            by_reference = cached_callable(fn) is raw
            wires[id(fn)] = (weakref.ref(fn) if by_reference else _Kept(fn, raw), wire)
    task.wire = wire
    task.size = size
    return True


class _Kept:
    """The ``wires`` entry of a callable pickled by value, in place of its weak reference.

    Called, it gives the callable back while ``_fncache`` keeps the same bytes for it (checked
    on each call: a rebound global makes a new pickle, guarantee I2), else None.
    """

    __slots__ = ("raw", "ref")

    def __init__(self, fn: Any, raw: bytes) -> None:
        self.ref = weakref.ref(fn)
        self.raw = raw

    def __call__(self) -> Any:
        fn = self.ref()
        return fn if fn is not None and _fncache.cached(fn) is self.raw else None


def encode_alone(task: Task, placement: Placement | None, raw: bytes | None = None) -> bool:
    """Pickle ``task`` now, with the callable's bytes ``raw`` if given (not pickled again)."""
    batch = number_batch(task)
    task.payload = encode_call(task.fn, task.items, batch, placement, task.future, raw)
    task.size = len(task.payload) + HEADER_SIZE
    return True


def seal(task: Task) -> bytes | None:
    """The call's own frame (a deferred call is pickled now, alone from then on)."""
    if task.payload is None and task.wire is not None:
        task.payload = pickle.dumps((task.wire, task.items, False), PROTOCOL)
        task.size = len(task.payload) + HEADER_SIZE
        task.wire = None
    task.group = None
    return task.payload


def first_cost(task: Task) -> int:
    """Bytes ``task`` takes in a worker's call pipe as the first call of its frame."""
    return task.size + (HEADER_SIZE + len(task.wire) if task.wire is not None else 0)


def encode_group(tasks: list[Task]) -> bytes:
    """One frame for deferred calls; each records the group's calls without a reply yet.

    ``group``: those calls, all of them, and the group's number (its worker's ring names the
    group it records by it: ``_ring.py``).
    """
    group = [len(tasks), len(tasks), next(_numbers)]
    for task in tasks:
        task.group = group
    tasks[0].size = first_cost(tasks[0])  # what waits in the pipe, for later dispatches
    return pickle.dumps([[t.wire for t in tasks], [t.args for t in tasks], group[2]], PROTOCOL)


_numbers = itertools.count(1)


def number_batch(task: Task) -> bool | int:
    """``batch`` for a call's message: a batch of several items gets a number, ``task.mark``.

    Its worker records the batch's items under it as they end (``_ring.py``). The number is
    sent negated for a batch that stops at its first failed item (``Task.stops``).
    """
    if not task.batch or len(task.items) < 2:
        return task.batch
    task.mark = number = next(_numbers)
    return -number if task.stops else number


def split_reply(data: bytes) -> tuple[int, memoryview]:
    """A group reply's count of calls, and the pickled rest."""
    return int.from_bytes(data[:4], "big"), memoryview(data)[4:]


def frame_of(tasks: list[Task], start: int) -> tuple[bytes | None, int]:
    """The frame for ``tasks[start]`` and those grouped with it; the index after them."""
    task = tasks[start]
    if task.wire is None:
        task.group = None
        return task.payload, start + 1
    end = start + 1
    limit = min(len(tasks), start + GROUP_MAX)
    while end < limit and tasks[end].wire is not None:
        end += 1
    if end - start == 1:
        return seal(task), end
    return encode_group(tasks[start:end]), end
