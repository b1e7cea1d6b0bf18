"""Encoding the lane's calls in the submitting thread (the messages are defined in ``_worker``).

Each worker has two private pipes, so a message never needs a task id: the manager knows which
calls it sent to which worker, and the worker answers them in order.

A call is ``(fn_bytes, items, batch)``: ``fn_bytes`` is the callable pickled once (cached per
function when it pickles by reference; see ``_serialize.dumps_callable``), ``items`` a list of
``(args, kwargs)``. Plain data (numbers, strings, bytes and tuples, lists, dicts and sets of
them) goes through the C pickler alone; anything else through the placement's pickler, which
sends large numpy arrays through shared memory and keeps shared-memory handles alive.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from .._exceptions import SerializationError
from .._serialize import PROTOCOL, dumps, dumps_callable
from .._shm import reply_policy
from ._worker import STOP, Reply

if TYPE_CHECKING:
    import concurrent.futures

    from .._shm import Placement

__all__ = ["STOP", "Reply", "encode_call"]

_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
_PLAIN_BUDGET = 512
"""Objects looked at before giving up on the fast path (the slow one is right, only slower)."""


def encode_call(
    fn: Any,
    items: list[tuple[tuple[Any, ...], dict[str, Any]]],
    batch: bool | int,
    placement: Placement | None = None,
    future: concurrent.futures.Future[Any] | None = None,
    fn_bytes: bytes | None = None,
) -> bytes:
    """Pickle a call in the caller's thread, so that pickling errors reach the right future.

    With a ``placement``, large numpy arguments go through shared memory (held until
    ``future`` is done) and the worker learns the lane's threshold for its results.
    ``fn_bytes``: ``fn`` as ``dumps_callable`` gave it just now (it is not pickled again).
    ``batch``: False for a call; True, or its number (``_group.number_batch``), for a batch.

    Raises:
        SerializationError: the callable or an argument cannot be pickled.
    """
    if fn_bytes is None:
        fn_bytes = dumps_callable(fn)
    try:
        if placement is None:
            return dumps((fn_bytes, items, batch))
        fn_bytes = reply_policy(fn_bytes, placement.threshold)
        if _plain(items):
            # Nothing to place and nothing to keep alive: the C pickler with no Python-level
            # hook on each object (reducer_override costs +70% on argument-heavy calls).
            return pickle.dumps((fn_bytes, items, batch), PROTOCOL)
        return placement.dumps_call((fn_bytes, items, batch), future)
    except SerializationError as exc:
        raise _name_culprit(items) or exc from exc.__cause__


def _plain(items: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> bool:
    """True when the arguments are plain data only (no arrays, handles, classes, functions)."""
    scalars, containers = _SCALARS, _CONTAINERS
    if len(items) == 1:  # the common case, one call of scalars: no walk
        args, kwargs = items[0]
        if not kwargs and type(args) is tuple:
            for arg in args:
                if type(arg) not in scalars:
                    break
            else:
                return True
    stack: list[Any] = [items]
    budget = _PLAIN_BUDGET
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if kind in scalars:
            continue
        if kind not in containers:
            return False
        budget -= len(obj)
        if budget < 0:
            return False
        if kind is dict:
            stack.extend(obj)
            stack.extend(obj.values())
        else:
            stack.extend(obj)
    return True


def _name_culprit(items: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> SerializationError | None:
    """Say which argument would not pickle (the error for the whole call shows only bytes)."""
    for index, (args, kwargs) in enumerate(items):
        where = f" of item {index}" if len(items) > 1 else ""
        named = [(f"argument {i}", a) for i, a in enumerate(args)]
        named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for name, value in named:
            try:
                dumps(value)
            except SerializationError as exc:
                return SerializationError(f"{name}{where} cannot be pickled: {exc}")
    return None
