"""The child side of a process actor: build the instance, then handle messages one at a time.

Wire format (two one-way pipes; the request pipe is the actor's FIFO mailbox; every message is
a frame: 8-byte big-endian length, then the bytes)::

    parent -> child    pickled (ref, args, kwargs, is_ask) per message; ref is a method name
                       or a cloudpickled callable (called as ref(instance, *args, **kwargs))
                       STOP      handle what is queued, run on_stop(), exit
                       STOP_NOW  answer DISCARDED to what is queued, run on_stop(), exit
    child -> parent    READY, or (CTOR_FAILED, packed exception), first
                       then one answer per message, in order: ACK (a tell that returned),
                       DISCARDED, or pickled (OK, value) / (ERROR, packed exception)
                       (HOOK_FAILED, packed exception) if on_stop() raised

Exactly one answer per message, in order, so the parent matches answers to messages with a
FIFO and no ids. After each handler the child reads whatever arrived meanwhile (non-blocking),
so a STOP_NOW queued behind other messages is seen before the next handler starts.
"""

from __future__ import annotations

import pickle
import select
from collections import deque
from typing import Any

from .. import _lifecycle
from .._exceptions import SerializationError
from .._process import FrameReader, enter_child, write_frame
from .._serialize import PROTOCOL, loads, pack_exception
from .._shm import dumps_answer, note_lent, sweep_while_idle
from ._base import awaited

# Control messages and constant answers: one byte, never a valid pickle (those start b"\x80").
STOP = b"s"
STOP_NOW = b"n"
READY = b"r"
ACK = b"a"
DISCARDED = b"d"

# Tags of pickled answers.
OK, ERROR, CTOR_FAILED, HOOK_FAILED = 0, 1, 2, 3

_CACHE_SIZE = 64


_born = -1  # the fork generation the actor process started in (-1: not an actor process)


def _exit_if_forked() -> None:
    """End a child that the actor's own code forked, should it return here.

    User code runs as a message is unpickled, handled and its answer pickled (a handler or a
    ``__reduce__`` that forks): only the actor process answers on its pipe, reads the next
    message or handles it.
    """
    if _born >= 0:  # (not in an actor process: nothing to end)
        _lifecycle.exit_if_forked(_born)


def _write(fd: int, data: bytes) -> None:
    _exit_if_forked()
    write_frame(fd, data)


def actor_main(
    requests: Any,
    replies: Any,
    lifeline: Any,
    cls_bytes: bytes,
    init_bytes: bytes,
) -> None:
    """Entry point of an actor process."""
    global _born
    _born = _lifecycle.generation()
    enter_child(lifeline, death_signal=True)
    try:
        cls = loads(cls_bytes)
        args, kwargs = loads(init_bytes)
        instance = cls(*args, **kwargs)
    except BaseException as exc:
        _write(replies.fileno(), pickle.dumps((CTOR_FAILED, pack_exception(exc)), PROTOCOL))
        return
    del args, kwargs
    _write(replies.fileno(), READY)
    if not _serve(instance, requests, replies):
        return  # the parent is gone
    hook = getattr(instance, "on_stop", None)
    if callable(hook):
        try:
            awaited(hook())  # an async def one: run to its end
        except BaseException as exc:
            packed = pickle.dumps((HOOK_FAILED, pack_exception(exc)), PROTOCOL)
            try:
                _write(replies.fileno(), packed)
            except OSError:
                pass


def _serve(instance: Any, requests: Any, replies: Any) -> bool:
    """Handle messages until STOP or STOP_NOW (True) or until the parent is gone (False)."""
    reader = FrameReader(requests.fileno())
    out = replies.fileno()
    poller = select.poll()
    poller.register(reader.fd, select.POLLIN)
    poll = poller.poll
    backlog: deque[bytes] = deque()
    handlers: dict[Any, Any] = {}
    cls = type(instance)
    try:
        while True:
            if not backlog and not reader.has_frame():
                sweep_while_idle(poll)  # kept mappings of segments unlinked since: gone
            data = backlog.popleft() if backlog else reader.read()
            if len(data) == 1:
                if data == STOP_NOW:
                    _discard(backlog, out)
                return True
            # What is still alive of the message once it is handled, the actor kept.
            _write(out, note_lent(_handle(instance, cls, data, handlers)))
            # Take in what arrived while the handler ran: a STOP_NOW behind it must be seen
            # before the next handler starts.
            while True:
                while reader.has_frame():
                    data = reader.read()
                    if data == STOP_NOW:
                        _discard(backlog, out)
                        return True
                    backlog.append(data)
                if not poll(0):
                    break
                reader.fill()
    except (EOFError, OSError):
        return False


def _discard(backlog: deque[bytes], out: int) -> None:
    for data in backlog:
        if len(data) > 1:  # a message, not a STOP sent before the STOP_NOW
            _write(out, DISCARDED)


def _handle(instance: Any, cls: type, data: bytes, handlers: dict[Any, Any]) -> bytes:
    try:
        ref, args, kwargs, is_ask = loads(data)
        fn = handlers.get(ref)
        if fn is None:
            fn = getattr(cls, ref) if type(ref) is str else loads(ref)
            if len(handlers) >= _CACHE_SIZE:
                handlers.clear()
            handlers[ref] = fn
    except BaseException as exc:
        err = SerializationError(f"the actor process could not unpickle a message: {exc!r}")
        err.__cause__ = exc
        return pickle.dumps((ERROR, pack_exception(err)), PROTOCOL)
    finally:
        _exit_if_forked()  # not handled twice
    try:
        value = awaited(fn(instance, *args, **kwargs))
    except BaseException as exc:  # SystemExit in a handler ends the message, not the actor
        return pickle.dumps((ERROR, pack_exception(exc)), PROTOCOL)
    if not is_ask:
        return ACK
    try:
        # Not as a worker's reply (dumps_reply): a shared object the actor made stays its
        # own, as the state it usually is (handed over, it went when the asker dropped it).
        return dumps_answer((OK, value))
    except BaseException as exc:  # a __reduce__ raising SystemExit too: the actor lives on
        err = SerializationError(
            f"the result of {getattr(fn, '__qualname__', fn)} would not pickle"
        )
        err.__cause__ = exc.__cause__ if isinstance(exc, SerializationError) else exc
        return pickle.dumps((ERROR, pack_exception(err)), PROTOCOL)
