"""The message pump: actors that own their state and handle one message at a time.

An actor is an instance of an ordinary class living in a thread (``kind="thread"``) or in a
process of its own (``kind="process"``). Other code reaches it only through its handle, an
``ActorRef``: ``ask`` queues a method call and returns a future of its result, ``tell`` queues
one and forgets it. Messages are handled in the order they were sent, one at a time, so the
instance needs no locks.

The room: ``_base`` (states, bounded mailbox, errors, on_error), ``_thread``, ``_process``
(parent side and supervision, on the process room's machinery) and ``_child`` (the child loop).
This module holds the handle, ``spawn`` and the registries that stop actors at executor
shutdown and at interpreter exit.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, Literal, NoReturn, ParamSpec, TypeVar, overload

from .. import _lifecycle
from .._futures import Future
from .._process import get_context
from .._waits import wait_long
from ._base import CoreBase
from ._base import OnError as OnError
from ._process import ProcessCore
from ._thread import ThreadCore

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

ActorKind = Literal["thread", "process"]

EXIT_GRACE = 5.0
"""Seconds actors still running at interpreter exit get to finish their current message."""

_names = itertools.count(1)
_live: set[CoreBase] = set()  # every actor not gone yet: stopped at interpreter exit
_owned: weakref.WeakKeyDictionary[object, set[CoreBase]] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


class ActorRef(Generic[T]):
    """The handle of an actor: send it messages, stop it, kill it.

    Made by :func:`hybridexec.spawn` or :meth:`hybridexec.Executor.spawn`; any thread may use
    it. Messages name a method of the actor's class, ``ref.ask(Account.deposit, 10)``, and
    mypy checks the arguments and the result type against that method.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_core", "_kind")

    def __init__(self, core: CoreBase) -> None:
        self._core = core
        self._kind = core.kind

    @overload
    def ask(
        self,
        method: Callable[Concatenate[T, P], Coroutine[Any, Any, R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Future[R]: ...
    @overload
    def ask(
        self, method: Callable[Concatenate[T, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]: ...
    def ask(
        self, method: Callable[Concatenate[T, P], Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[Any]:
        """Queue ``method(actor, *args, **kwargs)`` and return a future of its result.

        An exception raised by the method goes to the future; the actor goes on. The future
        works with ``concurrent.futures.wait``/``as_completed`` and ``asyncio.wrap_future``;
        cancelling it before the actor starts on the message skips the message.

        Args:
            method: A method of the actor's class (``Account.deposit``) or any callable
                taking the actor instance first; an ``async def`` method is run to its end
                (on an event loop of its own, per message) and the future gets its result.
            *args: Positional arguments for ``method``.
            **kwargs: Keyword arguments for ``method``.

        Returns:
            A future with ``kind`` set to the actor's kind.

        Raises:
            TypeError: ``method`` is not callable.
            ActorClosedError: the actor was stopped.
            ActorBrokenError: the actor died (or was killed) and was not restarted.
            ActorError: an actor asked itself from inside a handler (that would deadlock),
                or a handler sent to its own full mailbox.
            SerializationError: (process actors) an argument cannot be pickled; nothing
                was sent.
        """
        _check_method(method)
        future: Future[Any] = Future(self._kind)
        self._core.send(method, args, kwargs, future)
        return future

    def tell(
        self, method: Callable[Concatenate[T, P], object], /, *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """Queue ``method(actor, *args, **kwargs)`` and do not wait for it.

        An exception raised by the method goes to the actor's ``on_error`` hook (by default
        it is logged on the ``hybridexec`` logger); the actor goes on.

        Raises:
            TypeError: ``method`` is not callable.
            ActorClosedError: the actor was stopped.
            ActorBrokenError: the actor died (or was killed) and was not restarted.
            SerializationError: (process actors) an argument cannot be pickled.
        """
        _check_method(method)
        self._core.send(method, args, kwargs, None)

    def stop(self, drain: bool = True, *, wait: bool = True) -> None:
        """Stop the actor; ``ask`` and ``tell`` raise ``ActorClosedError`` from now on.

        The message being handled always finishes (use :meth:`kill` to interrupt it). Then,
        if the class defines ``on_stop()``, it runs in the actor. Stopping twice is harmless;
        a second call with ``drain=False`` still discards what the first left queued.

        Args:
            drain: Handle the messages already queued first (True), or fail their asks
                with ``ActorClosedError`` without running them (False).
            wait: Return only when the actor is gone (not when called from its own handler).
        """
        self._core.stop(drain)
        if wait:
            self._core.join(None)

    def kill(self) -> None:
        """Stop the actor now, even in the middle of a handler.

        Pending asks, including the one being handled, fail with ``ActorBrokenError``. A
        process actor gets SIGTERM, then SIGKILL after a short grace, with the processes it
        started; this returns when it is gone. A thread cannot be killed: a thread actor gets
        an exception raised inside its running handler at the next Python bytecode, so a
        handler blocked in C code (``time.sleep``, a socket read) finishes that call first.
        A killed actor is not restarted.
        """
        self._core.kill()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the actor is gone (stopped, broken or killed); return whether it is.

        Example, a bounded stop: ``ref.stop(wait=False); ref.join(5) or ref.kill()``.
        """
        if self._core.in_actor():
            return False  # its own handler or hook: it cannot wait for itself, however long
        return wait_long(self._core.join, timeout)

    @property
    def kind(self) -> str:
        """``"thread"`` or ``"process"``."""
        return self._kind

    @property
    def name(self) -> str:
        """The actor's name, its class name and a number: ``"Account-3"``."""
        return self._core.name

    @property
    def restarts(self) -> int:
        """How many times supervision restarted the actor's process."""
        return self._core.restarts

    @property
    def pid(self) -> int | None:
        """The pid of a process actor's process now; None for a thread actor or mid-restart."""
        return self._core.pid

    @property
    def state(self) -> str:
        """``"open"``, ``"stopping"``, ``"stopped"``, ``"broken"`` or ``"killed"``."""
        return self._core.state

    def is_alive(self) -> bool:
        """True until the actor is gone for good."""
        return not self._core.done.is_set()

    def __repr__(self) -> str:
        core = self._core
        return (
            f"<ActorRef {core.name} kind={core.kind} state={core.state} restarts={core.restarts}>"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "an ActorRef cannot be pickled: it only works in the process that spawned the actor"
        )


def spawn(
    cls: Callable[..., T],
    /,
    *args: Any,
    kind: ActorKind = "thread",
    mailbox_size: int | None = None,
    max_restarts: int = 0,
    on_error: OnError | None = None,
    **kwargs: Any,
) -> ActorRef[T]:
    """Start an actor: ``cls(*args, **kwargs)`` built and served in a thread or a process.

    Returns at once; the constructor runs in the actor (a database connection made there
    belongs to the actor's thread). Messages sent meanwhile wait in the mailbox. If the
    constructor raises, the actor is broken: asks fail with ``ActorBrokenError`` (the
    constructor's exception chained) and the exception goes to ``on_error``.

    Args:
        cls: The actor's class (or any callable building the instance). For a process actor
            it and the arguments are pickled with cloudpickle.
        *args: Positional arguments for ``cls``.
        kind: ``"thread"`` (cheap, shares memory, best for I/O) or ``"process"`` (own
            interpreter: true parallelism, killable, crash-isolated).
        mailbox_size: None for an unbounded mailbox, or how many messages may wait (not
            counting the one being handled); ``ask``/``tell`` then block until there is room.
        max_restarts: (process actors) How many times to rebuild the actor, by running
            ``cls(*args, **kwargs)`` again, when its process dies; waits 0.1 s, 0.2 s, 0.4 s
            ... (at most 5 s) before each restart. Asks pending at the death fail with
            ``ActorBrokenError``; later messages go to the new instance.
        on_error: Called with each exception no future can take: a failed ``tell``, a failed
            constructor or ``on_stop``. Runs in the actor's thread (for a process actor, in
            its supervisor thread in this process). Default: log on the ``hybridexec`` logger.
        **kwargs: Keyword arguments for ``cls``.

    Returns:
        The actor's handle.

    Raises:
        ValueError: unknown ``kind``, ``mailbox_size`` below 1, negative ``max_restarts``.
        TypeError: ``cls`` or ``on_error`` is not callable.
        SerializationError: (process actors) ``cls`` or its arguments cannot be pickled.

    .. versionadded:: 0.1
    """
    return spawn_actor(
        cls,
        args,
        kwargs,
        kind=kind,
        mailbox_size=mailbox_size,
        max_restarts=max_restarts,
        on_error=on_error,
    )


def spawn_actor(
    cls: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    kind: str = "thread",
    mailbox_size: int | None = None,
    max_restarts: int = 0,
    on_error: OnError | None = None,
    start_method: str | None = None,
    owner: object = None,
) -> ActorRef[T]:
    """``spawn`` with the start method for process actors and an owner that stops them."""
    if not callable(cls):
        raise TypeError(f"cls must be a class or a callable, not {cls!r}")
    if kind not in ("thread", "process"):
        raise ValueError(f"kind must be 'thread' or 'process', not {kind!r}")
    if mailbox_size is not None and (
        isinstance(mailbox_size, bool) or not isinstance(mailbox_size, int) or mailbox_size < 1
    ):
        raise ValueError(f"mailbox_size must be None or an int of at least 1, not {mailbox_size!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int of at least 0, not {max_restarts!r}")
    if on_error is not None and not callable(on_error):
        raise TypeError(f"on_error must be callable or None, not {on_error!r}")
    name = f"{getattr(cls, '__name__', 'actor')}-{next(_names)}"
    core: CoreBase
    if kind == "thread":
        core = ThreadCore(
            cls,
            args,
            kwargs,
            name,
            mailbox_size=mailbox_size,
            max_restarts=max_restarts,
            on_error=on_error,
        )
    else:
        get_context(start_method)  # an unknown start method fails here, in the caller
        core = ProcessCore(
            cls,
            args,
            kwargs,
            name,
            start_method=start_method,
            mailbox_size=mailbox_size,
            max_restarts=max_restarts,
            on_error=on_error,
        )
    _register(core, owner)
    core.start()
    return ActorRef(core)


def _register(core: CoreBase, owner: object) -> None:
    _lifecycle.on_exit(_lifecycle.ACTORS, _stop_all)
    with _registry_lock:
        # The owner's shutdown closes it, then stops what is registered (stop_actors, under
        # this lock): an actor is either stopped by it or refused here, never left running.
        if getattr(owner, "closed", False):
            raise RuntimeError("cannot spawn actors after shutdown")
        _live.add(core)
        core.registries.append(_live)
        if owner is not None:
            owned = _owned.setdefault(owner, set())
            owned.add(core)
            core.registries.append(owned)


def stop_actors(owner: object, *, drain: bool = True, wait: bool = True) -> None:
    """Stop every actor ``owner`` (an Executor's router) spawned: its shutdown, its drop."""
    with _registry_lock:
        cores = list(_owned.get(owner, ()))
    for core in cores:
        core.stop(drain)
    if wait:
        for core in cores:
            core.join(None)


def _stop_all() -> None:
    # At interpreter exit: queued messages are dropped, running ones get EXIT_GRACE seconds,
    # then process actors are killed (thread actors are daemon threads and die with us).
    with _registry_lock:
        cores = list(_live)
    for core in cores:
        core.stop(False)
    # Ctrl-C ended the program: nothing is waited for (process actors are killed at once).
    deadline = time.monotonic() + (0.0 if _lifecycle.interrupted() else EXIT_GRACE)
    for core in cores:
        if not core.join(max(0.0, deadline - time.monotonic())) and core.kind == "process":
            core.kill()


def _forget_after_fork() -> None:
    # In a forked child every actor alive belongs to the parent.
    global _registry_lock
    _registry_lock = threading.Lock()
    parent = os.getppid()
    for core in list(_live):
        core.forget_after_fork(parent)
    _live.clear()
    _owned.clear()


_lifecycle.on_fork(_forget_after_fork)


def _check_method(method: object) -> None:
    if not callable(method):
        raise TypeError(
            f"method must be a callable taking the actor first (such as Account.deposit), "
            f"not {type(method).__qualname__}"
        )
