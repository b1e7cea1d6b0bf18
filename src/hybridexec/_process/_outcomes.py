"""How a worker's replies are pickled, and what the parent unwraps of them.

A result that is not a plain value is pickled alone first (``alone``): if it will not unpickle
in the parent, only its call fails. A reply that the C pickler refuses is pickled again value
by value, so that only the calls whose results do not pickle fail. Message layouts: see
``_worker.py``.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

from .. import _faults
from .._exceptions import SerializationError
from .._serialize import PROTOCOL, MainByValue, dumps, dumps_by_value, loads, pack_exception
from .._shm import dumps_reply
from .._task import ends_map as ends_map  # (for _worker)
from .._task import not_run as task_not_run

PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
"""Result types sent as they are (nothing in them can fail to unpickle)."""


def not_run(count: int) -> list[tuple[bool, Any]]:
    """The outcomes of the ``count`` items after the failed one of a batch that stops there."""
    return [(False, pack_exception(task_not_run()))] * count  # (one pickle, memoized)


def alone(value: Any) -> Any:
    """A result pickled on its own: if it will not unpickle in the parent, it fails alone."""
    try:
        return Pickled(_by_value_if_main(value))
    except BaseException:  # a __reduce__ may raise SystemExit too: the worker lives on
        return value  # it does not pickle here: _encode_reply finds it, item by item


def _by_value_if_main(value: Any) -> bytes:
    # What dumps_reply makes, or by value when it names __main__: still rebuilt by its reader,
    # not by the manager thread (a script class's slow rebuild holds up no other result).
    try:
        return dumps_reply(value)
    except MainByValue:
        return dumps_by_value(value)


def set_apart(outcomes: list[tuple[bool, Any]]) -> Any:
    """A call's outcomes, with what the parent should not rebuild on its manager thread apart.

    A lone call's result that is not a plain value is pickled alone; a batch whose calls all
    returned and whose results are not all plain is pickled whole (one ``Pickled``, the items'
    order kept). The parent's manager thread then hands the bytes to the future's reader
    (``_rebuild``). A batch with a failure goes as it is (the parent looks at the failures).
    """
    if len(outcomes) == 1:
        ok, value = outcomes[0]
        if ok and type(value) not in PLAIN:
            return [(True, alone(value))]
        return outcomes
    plain = True
    for ok, value in outcomes:
        if not ok:
            return outcomes
        if plain and type(value) not in PLAIN:
            plain = False
    if plain:
        return outcomes
    try:
        return Pickled(_by_value_if_main(outcomes))
    except BaseException:  # a __reduce__ may raise SystemExit too: encode_reply finds which
        return outcomes


def encode_group_reply(
    values: list[Any],
    failures: dict[int, bytes] | None,
    seconds: list[float],
    cpu: float,
    rss: int | None,
) -> bytes:
    head = len(values).to_bytes(4, "big")
    try:
        if _faults.ACTIVE:
            _faults.hit("worker.pickle_reply")
        return head + dumps_reply((values, failures, seconds, cpu, rss))
    except MainByValue:  # results of the script's classes: one pickle by value, not one each
        with contextlib.suppress(Exception):
            return head + dumps_by_value((values, failures, seconds, cpu, rss))
    except BaseException:  # a __reduce__ may raise SystemExit too: the worker lives on
        pass
    # A value does not pickle with the C pickler: find which, so the others still arrive.
    failures = dict(failures or {})
    fixed: list[Any] = []
    for index, value in enumerate(values):
        if index in failures or type(value) is Pickled:  # pickled alone already (_alone)
            fixed.append(value)
            continue
        try:
            fixed.append(Pickled(_dumps_result(value)))
        except SerializationError as exc:
            failures[index] = pack_exception(exc)
            fixed.append(None)
    return head + pickle.dumps((fixed, failures or None, seconds, cpu, rss), PROTOCOL)


def encode_reply(outcomes: Any, elapsed: float | list[float], cpu: float, rss: int | None) -> bytes:
    try:
        if _faults.ACTIVE:
            _faults.hit("worker.pickle_reply")
        # A Reply, as a plain tuple; large numpy results go through shared memory.
        return dumps_reply((outcomes, elapsed, cpu, rss))
    except MainByValue:  # results of the script's classes: one pickle by value, not one each
        with contextlib.suppress(Exception):
            return dumps_by_value((outcomes, elapsed, cpu, rss))
    except BaseException:  # a __reduce__ may raise SystemExit too: the worker lives on
        pass
    # Some result does not pickle with the C pickler: find which, item by item, so the others
    # still arrive.
    fixed: list[tuple[bool, Any]] = []
    for ok, value in outcomes:
        if not ok or type(value) is Pickled:  # pickled alone already (_alone)
            fixed.append((ok, value))
            continue
        try:
            fixed.append((True, Pickled(_dumps_result(value))))
        except SerializationError as exc:
            fixed.append((False, pack_exception(exc)))
    return pickle.dumps((fixed, elapsed, cpu, rss), PROTOCOL)


def _dumps_result(value: Any) -> bytes:
    """``dumps(value)`` for a result; every failure, a ``SystemExit`` too, a SerializationError."""
    try:
        return dumps(value)
    except SerializationError as exc:
        err = SerializationError(f"the task's result could not be pickled: {exc}")
        err.__cause__ = exc.__cause__
    except BaseException as exc:  # not an Exception: dumps() let it through
        err = SerializationError(f"the task's result could not be pickled: {exc!r}")
        err.__cause__ = exc
    raise err


class Pickled:
    """A result pickled on its own (by cloudpickle), unwrapped by the parent."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pickled, (self.data,))


def unwrap(value: Any) -> Any:
    """Undo ``Pickled`` on the parent side.

    Raises:
        SerializationError: the result could not be unpickled.
    """
    if type(value) is Pickled:
        return loads(value.data)
    return value
