"""Wire types between the manager thread and a worker process.

Each worker has one private duplex pipe, so a message never needs a task id: the manager knows
which task it sent to which worker.

parent -> worker
    ``Call`` pickled: ``(fn_bytes, items, batch)``; ``fn_bytes`` is the callable pickled once
    (cloudpickle where needed), ``items`` a list of ``(args, kwargs)``.
    ``STOP`` (empty bytes): finish and exit.

worker -> parent
    ``Reply`` pickled: ``(outcomes, elapsed, cpu, rss)``. ``outcomes`` holds one
    ``(True, value)`` or ``(False, packed_exception)`` per item; ``elapsed`` and ``cpu`` are the
    wall and CPU seconds the calls took; ``rss`` the worker's resident memory afterwards (or
    None). A worker whose initializer failed answers every call with that error, then exits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from .._exceptions import SerializationError
from .._serialize import dumps, dumps_callable
from .._shm import reply_policy

if TYPE_CHECKING:
    import concurrent.futures

    from .._shm import Placement

STOP = b""


class Reply(NamedTuple):
    """How a call or batch ended in a worker."""

    outcomes: list[tuple[bool, Any]]
    elapsed: float
    cpu: float
    rss: int | None


def encode_call(
    fn: Any,
    items: list[tuple[tuple[Any, ...], dict[str, Any]]],
    batch: bool,
    placement: Placement | None = None,
    future: concurrent.futures.Future[Any] | None = None,
) -> bytes:
    """Pickle a call in the caller's thread, so that pickling errors reach the right future.

    With a ``placement``, large numpy arguments go through shared memory (held until
    ``future`` is done) and the worker learns the lane's threshold for its results.

    Raises:
        SerializationError: the callable or an argument cannot be pickled.
    """
    fn_bytes = dumps_callable(fn)
    try:
        if placement is None:
            return dumps((fn_bytes, items, batch))
        fn_bytes = reply_policy(fn_bytes, placement.threshold)
        return placement.dumps_call((fn_bytes, items, batch), future)
    except SerializationError as exc:
        raise _name_culprit(items) or exc from exc.__cause__


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
