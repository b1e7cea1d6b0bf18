"""What thread and process actors share: states, the mailbox bound, errors, the on_error hook.

An actor's life::

    OPEN --stop()--> STOPPING --last message handled--> STOPPED
      |                  |
      |                  +--the process died--> BROKEN
      +--constructor raised / died, no restarts left--> BROKEN
      +--kill()--> KILLED

``ask`` and ``tell`` are accepted only while OPEN: afterwards they raise ``ActorClosedError``
(STOPPING, STOPPED: you stopped it) or ``ActorBrokenError`` (BROKEN, KILLED: it died).

A bounded mailbox counts the messages accepted and not finished yet. The one being handled does
not count against ``mailbox_size``; a sender blocks while the others fill it (back-pressure, as
``queue.Queue.put``), and wakes up with an error if the actor stops or dies meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import CoroutineType
from typing import Any, NoReturn

from .._exceptions import ActorBrokenError, ActorClosedError, ActorError
from .._futures import Future

logger = logging.getLogger("hybridexec")

OPEN, STOPPING, STOPPED, BROKEN, KILLED = "open", "stopping", "stopped", "broken", "killed"
DEAD = (STOPPED, BROKEN, KILLED)

OnError = Callable[[BaseException], object]
"""The tell error hook: called with the exception a ``tell`` handler raised."""


def awaited(value: Any) -> Any:
    """``value``, or what it returns if it is a coroutine, run to its end here.

    A handler or ``on_stop`` that is an ``async def`` runs on an event loop of its own
    (``asyncio.run``), as the executor awaits ``async def`` tasks: the message ends when the
    coroutine does, in order.
    """
    if type(value) is CoroutineType:
        import asyncio

        value = asyncio.run(value)
    return value


def describe(fn: Any) -> str:
    """A short name for a handler in messages: ``Account.deposit``."""
    return str(getattr(fn, "__qualname__", None) or repr(fn))


class CoreBase:
    """The state machine and bookkeeping behind one actor handle.

    Subclasses implement ``send``, ``stop``, ``kill``, ``join`` and ``pid`` for their kind.
    Everything named here is guarded by ``lock`` unless said otherwise.
    """

    kind = "thread"

    def __init__(
        self,
        cls: Callable[..., Any],
        name: str,
        *,
        mailbox_size: int | None,
        max_restarts: int,
        on_error: OnError | None,
    ) -> None:
        self.cls = cls
        self.name = name
        self.mailbox_size = mailbox_size
        self.max_restarts = max_restarts
        self.on_error = on_error
        self.lock: threading.Lock = threading.Lock()
        self.space: threading.Condition = threading.Condition(self.lock)  # senders wait here
        self.state: str = OPEN
        self.reason: BaseException | None = None  # why it broke (chained as the cause)
        self.unfinished: int = 0  # messages accepted and not finished (bounded mailboxes only)
        self.restarts = 0
        self.done: threading.Event = threading.Event()  # set when the actor is gone for good
        self.registries: list[set[CoreBase]] = []  # sets to leave when done (owner, live)

    # ---- used by senders, with the lock held ----------------------------------------------
    def refuse(self) -> NoReturn:
        """Raise the error that says why this actor takes no more messages."""
        if self.state == KILLED:
            raise self.broken_error("was killed; it takes no more messages")
        if self.state == BROKEN:
            raise self.broken_error("is broken; it takes no more messages")
        raise ActorClosedError(f"actor {self.name} was stopped; it takes no more messages")

    def admit(self, own_thread: bool) -> None:
        """Accept one message into a bounded mailbox, waiting for room; lock held."""
        limit = self.mailbox_size
        assert limit is not None
        while self.unfinished > limit:
            if own_thread:
                raise ActorError(
                    f"the mailbox of actor {self.name} is full ({limit} messages) and a "
                    "handler cannot wait for room in its own mailbox"
                )
            self.space.wait()
            if self.state != OPEN:
                self.refuse()
        self.unfinished += 1

    def finished(self, count: int = 1) -> None:
        """Record finished messages and wake a blocked sender; lock held, bounded only."""
        self.unfinished -= count
        self.space.notify(count)

    # ---- errors and hooks -----------------------------------------------------------------
    def broken_error(self, what: str, cause: BaseException | None = None) -> ActorBrokenError:
        """A fresh ``ActorBrokenError`` (each future gets its own), ``cause`` chained.

        ``what`` completes "actor NAME ...", e.g. "died while this message was pending".
        """
        err = ActorBrokenError(f"actor {self.name} {what}")
        err.__cause__ = cause if cause is not None else self.reason
        return err

    def closed_error(self) -> ActorClosedError:
        """A fresh ``ActorClosedError`` for a message dropped because the actor was stopped."""
        return ActorClosedError(f"actor {self.name} was stopped before handling this message")

    def drop(self, future: Future[Any] | None, fn: Any = None) -> None:
        """Fail a message that will not be handled: closed if stopped, broken if it died.

        A tell (no future) of ``fn`` lost as the actor broke or was killed goes to ``on_error``
        (its one report); a stop drops queued tells silently, as documented.
        """
        if future is not None:
            future.settle(False, self.lost_error())
        elif fn is not None and self.on_error is not None and self.state in (BROKEN, KILLED):
            self.report(f"tell {describe(fn)}", self.lost_error())

    def lost_error(self) -> ActorBrokenError | ActorClosedError:
        """What a message that will not be handled fails with, as the actor is now."""
        if self.state == KILLED:
            return self.broken_error("was killed before handling this message")
        if self.state == BROKEN:
            return self.broken_error("broke before handling this message")
        return self.closed_error()

    def report(self, what: str, exc: BaseException) -> None:
        """Hand an exception no future can take to ``on_error``, or log it; never raises.

        ``what`` names where it was raised: ``"tell Account.deposit"``, ``"the constructor"``.
        """
        hook = self.on_error
        if hook is None:
            logger.error(
                "actor %s: %s raised %r (pass on_error= to handle it)",
                self.name,
                what,
                exc,
                exc_info=exc,
            )
            return
        try:
            hook(exc)
        except BaseException:  # SystemExit too: never into the actor's or supervisor's thread
            logger.exception("the on_error hook of actor %s raised", self.name)

    def finish(self) -> None:
        """Called once when the actor is gone for good: leave the registries, wake joiners."""
        for registry in self.registries:
            registry.discard(self)
        with self.lock:
            self.space.notify_all()
        self.done.set()

    def forget_after_fork(self, parent_pid: int) -> None:
        """In a forked child: the actor belongs to the parent; never use, stop or kill it here.

        Only the forking thread exists now, so the locks are replaced, not taken.
        """
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.state = BROKEN
        self.reason = RuntimeError(
            f"actor {self.name} was inherited through os.fork() from pid {parent_pid}; an "
            "actor belongs to the process that spawned it: spawn a new one in the child"
        )
        self.done = threading.Event()
        self.done.set()

    # ---- the interface of a kind ----------------------------------------------------------
    def start(self) -> None:
        """Start the actor (its thread or process) and run the constructor there."""
        raise NotImplementedError

    def send(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Future[Any] | None,
    ) -> None:
        """Queue ``fn(instance, *args, **kwargs)``; ``future`` (None for a tell) gets the end."""
        raise NotImplementedError

    def stop(self, drain: bool) -> None:
        """Stop after the queued messages (``drain``) or failing them with ActorClosedError."""
        raise NotImplementedError

    def kill(self) -> None:
        """Stop at once, even mid-handler; pending asks fail with ActorBrokenError."""
        raise NotImplementedError

    def join(self, timeout: float | None) -> bool:
        """Wait for the actor to be gone; return whether it is."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The actor's process id (process actors), or None."""
        return None

    def in_actor(self) -> bool:
        """True when called from the actor's own thread (a handler or a hook)."""
        return False
