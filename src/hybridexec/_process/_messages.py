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

from typing import Any, NamedTuple

from .._serialize import dumps, dumps_callable

STOP = b""


class Reply(NamedTuple):
    """How a call or batch ended in a worker."""

    outcomes: list[tuple[bool, Any]]
    elapsed: float
    cpu: float
    rss: int | None


def encode_call(fn: Any, items: list[tuple[tuple[Any, ...], dict[str, Any]]], batch: bool) -> bytes:
    """Pickle a call in the caller's thread, so that pickling errors reach the right future.

    Raises:
        SerializationError: the callable or an argument cannot be pickled.
    """
    return dumps((dumps_callable(fn), items, batch))
