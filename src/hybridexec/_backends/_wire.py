"""The wire form of a remote call, and the side of it that runs in an engine's worker.

Data flow (the engine is Dask or Ray; both only ever see opaque bytes and handles)::

    client                                          engine worker
    ------                                          -------------
    Task --encode()--> payload bytes  --submit-->   run_call(token, payload, *shared)
         large arguments --scatter/put once-->        loads, puts shared arguments back,
                                                      runs each item, never raises
    settle(task, outcomes) <-----------------------   [(True, value) | (False, packed exc)]

Packing the call ourselves is what makes the engine's defaults harmless: the user's keyword
arguments (``key=``, ``workers=``, ``pure=``, ...) are inside the payload, not keyword arguments
of the engine's ``submit``; a user's tuple that starts with a callable is not mistaken for a
Dask task; a call that cannot be pickled fails at ``submit`` with ``SerializationError``, as on
the process lane; and exceptions come back with their remote traceback as ``__cause__``.

Large top-level arguments (numpy arrays and bytes of ``LARGE_BYTES`` or more) are replaced by
``Shared`` placeholders and sent once through the engine's object store; while tasks that use
the same object are in flight, they share one copy (see ``RemoteLane._share``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._exceptions import SerializationError, TaskTimeoutError
from .._futures import Items, Outcome, Task
from .._lazy import loaded
from .._serialize import dumps, dumps_callable, loads, pack_exception, unpack_exception
from .._task import ends_map, not_run
from .._threads import interrupt_thread

LARGE_BYTES = 1 << 20
"""Top-level arguments at least this large go through the engine's object store."""


class Shared:
    """Stands in the payload for the large argument passed as ``shared[index]``."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shared, (self.index,))


def is_large(obj: object) -> bool:
    """Return True for a numpy array or bytes object worth sending once, by reference."""
    if isinstance(obj, (bytes, bytearray)):
        return len(obj) >= LARGE_BYTES
    np = loaded("numpy")  # an array exists only if numpy was imported
    return np is not None and isinstance(obj, np.ndarray) and obj.nbytes >= LARGE_BYTES


def extract_large(items: Items) -> tuple[Items, list[Any]]:
    """Replace large top-level arguments by ``Shared`` placeholders.

    Returns:
        The items to pickle (``items`` itself when nothing is large) and the distinct large
        objects, in placeholder order.
    """
    found: dict[int, int] = {}
    objects: list[Any] = []

    def swap(value: Any) -> Any:
        if not is_large(value):
            return value
        index = found.get(id(value))
        if index is None:
            index = found[id(value)] = len(objects)
            objects.append(value)
        return Shared(index)

    if not any(is_large(a) for args, kwargs in items for a in (*args, *kwargs.values())):
        return items, objects
    swapped: Items = [
        (tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
        for args, kwargs in items
    ]
    return swapped, objects


def encode(task: Task, items: Items) -> bytes:
    """Pickle a call (callable by value where needed) in the caller's thread.

    Raises:
        SerializationError: the callable or an argument cannot be pickled.
    """
    # A batch that stops at its first failed item (Task.stops) goes as -1 (run_call).
    batch = -1 if task.batch and task.stops else task.batch
    return dumps((dumps_callable(task.fn), items, batch))


def outcomes_to_future(task: Task, outcomes: list[Outcome]) -> None:
    """Resolve ``task.future`` from the outcomes a worker returned."""
    settled = [(ok, value if ok else unpack_exception(value)) for ok, value in outcomes]
    if task.batch:
        if len(settled) != len(task.items) and len(settled) == 1 and not settled[0][0]:
            settled = settled * len(task.items)  # the whole batch failed before it ran
        task.future.settle(True, settled)
    else:
        ok, value = settled[0]
        task.future.settle(ok, value)


def timeout_error(task: Task, where: str) -> TaskTimeoutError:
    return TaskTimeoutError(f"task exceeded its {task.timeout:g} s timeout on {where}")


# ---- worker side ------------------------------------------------------------------------------
class Interrupted(BaseException):
    """Raised asynchronously in an engine worker thread whose task was cancelled or timed out."""


class _Running:
    __slots__ = ("done", "ident", "interrupted", "lock")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.lock = threading.Lock()
        self.done = False
        self.interrupted = False


_running: dict[str, _Running] = {}
_running_lock = threading.Lock()
# Calls cancelled before they started here: the engine may still hand one over while its
# cancellation is on the way, and it must not run then.
_cancelled: dict[str, None] = {}
MAX_CANCELLED = 10_000


def interrupt(token: str) -> bool:
    """In a worker: interrupt the call ``token`` if it runs here; return whether it did.

    A call that has not started here yet never will (it ends at once when it arrives).

    Best effort, as on the thread lane: Python code stops at its next bytecode; code blocked in
    C (``time.sleep``, a long C call) stops only when it returns to Python.
    """
    with _running_lock:
        running = _running.get(token)
        if running is None:
            _cancelled[token] = None
            if len(_cancelled) > MAX_CANCELLED:
                del _cancelled[next(iter(_cancelled))]
            return False
    with running.lock:
        if running.done or running.interrupted:
            return False
        running.interrupted = True
        interrupt_thread(running.ident, Interrupted)
    return True


def run_call(
    token: str, payload: bytes, shared: tuple[Any, ...], on_start: Callable[[], None] | None
) -> list[Outcome]:
    """In a worker: run a call or batch packed by ``encode``; never raises.

    Returns:
        One ``(True, value)`` or ``(False, packed_exception)`` per item.
    """
    try:
        fn_bytes, items, batch = loads(payload)
        fn = loads(fn_bytes)
        if shared:
            items = [
                (
                    tuple(shared[a.index] if type(a) is Shared else a for a in args),
                    {k: shared[v.index] if type(v) is Shared else v for k, v in kwargs.items()},
                )
                for args, kwargs in items
            ]
    except BaseException as exc:
        err = SerializationError(f"the worker could not unpickle the task: {exc!r}")
        err.__cause__ = exc
        return [(False, pack_exception(err))]
    running = _Running(threading.get_ident())
    with _running_lock:
        if token in _cancelled:
            del _cancelled[token]
            return [(False, pack_exception(Interrupted("cancelled before it started")))]
        _running[token] = running
    outcomes: list[Outcome] = []
    try:
        try:
            if on_start is not None:
                on_start()
            for args, kwargs in items:
                try:
                    outcomes.append((True, fn(*args, **kwargs)))
                except Interrupted:
                    raise
                except BaseException as exc:  # SystemExit in a task ends the task only
                    outcomes.append((False, pack_exception(exc)))
                    if batch == -1 or ends_map(exc):  # the rest would run for nothing (B3)
                        error = pack_exception(not_run())
                        outcomes += [(False, error)] * (len(items) - len(outcomes))
                        break
        except Interrupted:
            outcomes = [(False, pack_exception(Interrupted("cancelled or timed out")))]
    finally:
        try:
            with running.lock:
                running.done = True
                if running.interrupted:
                    interrupt_thread(running.ident, None)  # withdraw one not raised yet
        except Interrupted:
            pass  # raised between the call's end and the lock: nothing pending any more
        with _running_lock:
            _running.pop(token, None)
    return _sendable(outcomes)


def _sendable(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes, a value that will not pickle as its item's ``SerializationError``.

    Left to the engine, one such value fails every result fetched with it in one request
    (Dask gathers concurrent results from a worker together): innocent items' too (14g's G5,
    under load). Large arrays and bytes are not pickled twice to be checked.
    """
    checked: list[Outcome] = []
    for ok, value in outcomes:
        if ok and not is_large(value):
            try:
                dumps(value)
            except BaseException as exc:  # a __reduce__ may raise anything
                err = SerializationError(f"the task's result would not pickle: {exc!r}")
                ok, value = False, pack_exception(err)
        checked.append((ok, value))
    return checked
