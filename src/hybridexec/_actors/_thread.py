"""Thread actors: one daemon thread per actor, a C ``queue.SimpleQueue`` as its mailbox.

```
ask/tell (any thread)                      the actor's thread
  lock: state, mailbox bound                 instance = cls(*args, **kwargs)
  queue.put((fn, args, kwargs, future)) -->  loop: queue.get()
                                                fn(instance, *args, **kwargs)
                                                future.settle(...) or on_error(exc)
stop(): queue.put(STOP) behind the rest  -->  on_stop() if defined, thread ends
```

The lock is held while putting, so no message can slip in behind ``STOP``. The actor thread
takes ``handler_lock`` around each handler so that ``kill()`` knows whether a handler is
running and which future it answers.

``kill()`` is best effort: a thread cannot be stopped from outside. It fails every pending ask
at once, then raises an exception inside the running handler with
``PyThreadState_SetAsyncExc``; the exception lands at the handler's next Python bytecode, so a
handler blocked in C (``time.sleep``, a socket read, a lock) goes on until that call returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .. import _lifecycle
from .._exceptions import ActorError
from .._futures import Future
from .._threads import interrupt_thread
from .._waits import join_thread
from ._base import (
    BROKEN,
    DEAD,
    KILLED,
    OPEN,
    STOPPED,
    STOPPING,
    CoreBase,
    OnError,
    awaited,
    describe,
)

_STOP: Any = object()


class _Killed(BaseException):
    """Raised inside a thread actor's running handler by ``kill()``."""


class ThreadCore(CoreBase):
    """An actor living in a thread of this process."""

    kind = "thread"

    def __init__(
        self,
        cls: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        *,
        mailbox_size: int | None,
        max_restarts: int,
        on_error: OnError | None,
    ) -> None:
        super().__init__(
            cls, name, mailbox_size=mailbox_size, max_restarts=max_restarts, on_error=on_error
        )
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.discard = False  # fail messages instead of handling them (stop(drain=False), kill)
        self.ident: int | None = None
        self.handler_lock = threading.Lock()
        self.in_handler = False
        self.settling = False  # the actor's thread runs the done-callbacks of an answer
        self.current: Future[Any] | None = None
        self.thread = threading.Thread(
            target=self.run, args=(args, kwargs), name=f"hybridexec-actor-{name}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def in_actor(self) -> bool:
        # The thread itself, not its ident: the system reuses an ended thread's ident for a
        # thread started later, which would then pass for the actor's (join() returned False).
        return threading.current_thread() is self.thread

    # ---- senders --------------------------------------------------------------------------
    def send(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Future[Any] | None,
    ) -> None:
        own = self.in_actor()
        if own and future is not None and not self.settling:  # (a done-callback asks no wait)
            raise ActorError(
                f"actor {self.name} asked itself from inside a handler: the answer can only "
                "come after the handler returns, so waiting for it would deadlock; use tell, "
                "or call the method directly"
            )
        with self.lock:
            if self.state != OPEN:
                self.refuse()
            if self.mailbox_size is not None:
                self.admit(own)
            self.queue.put((fn, args, kwargs, future))

    def stop(self, drain: bool) -> None:
        with self.lock:
            if self.state == OPEN:
                self.state = STOPPING
                self.queue.put(_STOP)
                self.space.notify_all()
            elif self.state != STOPPING:
                return
            if drain:
                return
            self.discard = True
        # The queued messages fail now, not once a running handler returns (at exit it may
        # not); the stop goes back in line for the actor's thread.
        self.drain_queue()
        self.queue.put(_STOP)

    def kill(self) -> None:
        with self.lock:
            if self.state in DEAD:
                return
            self.state = KILLED
            self.discard = True
            self.space.notify_all()
        with self.handler_lock:
            current, self.current = self.current, None
            if self.in_handler and self.ident is not None and not self.in_actor():
                interrupt_thread(self.ident, _Killed)
        if current is not None:
            current.settle(False, self.broken_error("was killed while handling this message"))
        self.drain_queue()
        self.queue.put(_STOP)  # wakes an idle actor so that its thread ends

    def join(self, timeout: float | None) -> bool:
        if self.in_actor():
            return False
        if self.thread.ident is None:  # never started
            return self.done.is_set()
        return join_thread(self.thread, timeout, self.done)  # a Ctrl-C leaves it joinable

    # ---- the actor's thread ---------------------------------------------------------------
    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.ident = threading.get_ident()
        try:
            try:
                instance = self.cls(*args, **kwargs)
            except BaseException as exc:
                with self.lock:
                    if self.state != KILLED:
                        self.state = BROKEN
                    self.reason = exc
                    self.space.notify_all()
                self.report("the constructor", exc)
                return
            del args, kwargs
            self.serve(instance)
            if self.state != KILLED:
                hook = getattr(instance, "on_stop", None)
                if callable(hook):
                    try:
                        awaited(hook())  # an async def one: run to its end
                    except Exception as exc:
                        self.report("on_stop", exc)
        except _Killed:
            pass
        finally:
            with self.lock:
                if self.state in (OPEN, STOPPING):
                    self.state = STOPPED
            self.drain_queue()
            self.finish()

    def serve(self, instance: Any) -> None:
        get = self.queue.get
        handler_lock = self.handler_lock
        born = _lifecycle.generation()
        bounded = self.mailbox_size is not None
        while True:
            message = get()
            if message is _STOP:
                return
            fn, args, kwargs, future = message
            with handler_lock:
                run = not self.discard and (future is None or future.set_running_or_notify_cancel())
                if run:
                    self.in_handler = True
                    self.current = future
            if run:
                try:
                    value = awaited(fn(instance, *args, **kwargs))
                    ok = True
                except _Killed:
                    raise
                except BaseException as exc:  # SystemExit in a handler ends the message only
                    value, ok = exc, False
                _lifecycle.exit_if_forked(born)  # a child the handler forked ends here
                with handler_lock:
                    self.in_handler = False
                    self.current = None
                if future is not None:
                    # Its done-callbacks run here: they may chain an ask (never to wait for
                    # it: this thread answers it), as they may on any other actor.
                    self.settling = True
                    try:
                        future.settle(ok, value)
                    finally:
                        self.settling = False
                elif not ok:
                    self.report(f"tell {describe(fn)}", value)
            else:
                self.drop(future, fn)
            # Do not keep the last message's arguments and result alive while idle.
            message = args = kwargs = value = None
            if bounded:
                with self.lock:
                    self.finished()
            if self.state == KILLED:  # a handler swallowed _Killed
                return

    def drain_queue(self) -> None:
        """Fail every message still queued (the actor stopped, broke or was killed)."""
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                return
            if message is not _STOP:
                self.drop(message[3], message[0])
