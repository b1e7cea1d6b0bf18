"""Process actors, parent side: senders write to the child's pipe, one supervisor thread reads.

```
ask/tell (any thread)                            supervisor thread (one per actor)
  pickle (ref, args, kwargs, is_ask)               start the process; restart it with backoff
  lock: state, bound, FIFO of messages in flight   poll(answer pipe, process sentinel)
  fits the pipe budget: write it now  ---------->  child --answer--> pop the FIFO head
  else: append to overflow, flushed in order        settle its future, or on_error(exc)
        by the supervisor as answers come back      child gone: fail what was in flight,
                                                    then restart, or break, or finish
```

Senders write themselves because a hop through another thread costs a thread switch per
message; the pipe is the mailbox already. A write never blocks: the bytes in flight (written,
not answered yet) bound the bytes sitting in the pipe and are kept under half its capacity.
What does not fit waits in ``overflow``, in order, and every later message queues behind it.

The supervisor starts every incarnation of the child itself: ``PR_SET_PDEATHSIG`` fires when
the *thread* that started a process ends, and this thread lives exactly as long as the actor.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .._callbacks import serve
from .._exceptions import ActorError
from .._futures import Future
from .._process import (
    DEFAULT_GRACE,
    Child,
    get_context,
    write_frame,
)
from .._serialize import dumps, dumps_callable
from .._shm import DEFAULT_THRESHOLD, Placement
from .._waits import join_thread
from ._base import (
    KILLED,
    OPEN,
    STOPPING,
    CoreBase,
    OnError,
)
from ._child import (
    STOP,
    STOP_NOW,
)
from ._supervisor import Entry, Supervisor

_REF_CACHE_SIZE = 256


@contextlib.contextmanager
def _held(lock: threading.Lock) -> Iterator[None]:
    """Release ``lock``, acquired by the caller, when the block ends."""
    try:
        yield
    finally:
        lock.release()


class ProcessCore(Supervisor, CoreBase):
    """An actor living in a child process of its own."""

    kind = "process"

    def __init__(
        self,
        cls: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        *,
        start_method: str | None,
        mailbox_size: int | None,
        max_restarts: int,
        on_error: OnError | None,
    ) -> None:
        super().__init__(
            cls, name, mailbox_size=mailbox_size, max_restarts=max_restarts, on_error=on_error
        )
        self.context = get_context(start_method)
        self.placement = Placement(DEFAULT_THRESHOLD)
        self.cls_bytes = dumps_callable(cls)
        self.init_bytes = dumps((args, kwargs))
        self.refs: dict[Any, str | bytes] = {}  # handler -> what the child looks up
        self.inflight: deque[Entry] = deque()
        self.inflight_bytes = 0
        self.overflow: deque[tuple[bytes, Entry | None]] = deque()  # None: a control message
        self.discarding = False
        self.conn: Any = None  # the request pipe's write end while a child is up
        # Once the child said READY (its constructor returned): until then, messages wait here
        # (a message larger than the pipe, written while the constructor runs, would hold the
        # lock, every sender and stop() with it, until the child reads; outside tester 13a A8).
        self.ready = False
        self.tells_counted = False
        self.fd = -1  # its file descriptor
        self.budget = 0
        self.parent_ends: tuple[Any, ...] = ()  # this side's pipe ends of the current child
        self.child: Child | None = None  # the current incarnation, until it is reaped
        self.killing = False  # kill() began: a death seen from now on is no crash to restart
        self.wakeup = threading.Event()  # cuts a restart backoff short (kill)
        self.supervisor = threading.Thread(
            target=serve(self.supervise), name=f"hybridexec-actor-{name}", daemon=True
        )

    def start(self) -> None:
        self.supervisor.start()

    def forget_after_fork(self, parent_pid: int) -> None:
        super().forget_after_fork(parent_pid)
        for conn in self.parent_ends:
            conn.close()  # the child's process must see EOF when the parent goes
        self.parent_ends = ()
        self.conn = None
        self.ready = False
        self.fd = -1
        self.child = None  # never signal the parent's actor process from here
        self.inflight.clear()
        self.overflow.clear()

    @property
    def pid(self) -> int | None:
        child = self.child
        return None if child is None else child.pid

    def in_actor(self) -> bool:
        return threading.current_thread() is self.supervisor  # on_error hooks run there

    # ---- senders --------------------------------------------------------------------------
    def send(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Future[Any] | None,
    ) -> None:
        own = self.in_actor()  # an on_error hook, run by the thread that reads the answers
        if own and future is not None:
            raise ActorError(
                f"an on_error hook of actor {self.name} asked its own actor: the answer is read "
                "by the thread running the hook, so waiting for it would deadlock; use tell"
            )
        ref = self.refs.get(fn)
        if ref is None:
            ref = self._wire_ref(fn)
        held: list[object] | None = None
        if future is not None:
            # Large numpy arguments of an ask travel through shared memory, held until its
            # answer arrives. A tell has no answer to say when it was handled: it pickles them
            # (views of shared objects still go by name, so that the handler's writes are seen;
            # their handles are held until the child acknowledges the tell).
            data = self.placement.dumps_call((ref, args, kwargs, True), future)
        elif "numpy" in sys.modules or "hybridexec._shm._segment" in sys.modules:
            held = []
            data = self.placement.dumps_call(
                (ref, args, kwargs, False), None, copies=False, held=held
            )
        else:
            data = dumps((ref, args, kwargs, False))
        entry: Entry = (future, len(data) + 8, fn, held or None)
        with self.lock:
            if self.state != OPEN:
                self.refuse()
            if self.mailbox_size is not None:
                self.admit(own)  # the hook's thread is the one that makes room
            if (
                self.ready
                and not self.overflow
                and (not self.inflight_bytes or self.inflight_bytes + entry[1] <= self.budget)
            ):
                self._put(data, entry)
            else:
                self.overflow.append((data, entry))

    def _wire_ref(self, fn: Callable[..., Any]) -> str | bytes:
        # A method of the class goes by name (the child finds it on its own class, which
        # also works for classes pickled by value), remembered here; anything else is pickled
        # at each message by ``dumps_callable``, whose cache reuses the bytes only while the
        # pickle would come out the same (a closure cell or a global rebound since: new bytes,
        # as the executor sends them; guarantee I2).
        name = getattr(fn, "__name__", None)
        if not (isinstance(name, str) and getattr(self.cls, name, None) is fn):
            return dumps_callable(fn)
        if len(self.refs) >= _REF_CACHE_SIZE:
            self.refs.clear()
        self.refs[fn] = name
        return name

    def _put(self, data: bytes, entry: Entry) -> None:
        """Write one message to the child; lock held, the budget checked by the caller."""
        future = entry[0]
        if future is not None and not future.set_running_or_notify_cancel():
            if self.mailbox_size is not None:
                self.finished()
            return  # cancelled while it waited in overflow
        self.inflight.append(entry)
        self.inflight_bytes += entry[1]
        try:
            write_frame(self.fd, data)
        except OSError:
            pass  # the child is dying: the supervisor fails this message with the others

    def _control(self, data: bytes) -> None:
        """Queue STOP or STOP_NOW behind everything sent before; lock held."""
        if self.ready and not self.overflow:
            try:
                write_frame(self.fd, data)
            except OSError:
                pass
        else:
            self.overflow.append((data, None))

    def _flush(self) -> None:
        """Move overflow into the pipe while the budget allows; lock held."""
        overflow = self.overflow
        while overflow and self.ready:
            data, entry = overflow[0]
            if entry is None:
                overflow.popleft()
                self._control(data)
                continue
            if self.inflight_bytes and self.inflight_bytes + entry[1] > self.budget:
                return
            overflow.popleft()
            self._put(data, entry)

    def stop(self, drain: bool) -> None:
        dropped: list[Entry] = []
        with self.lock:
            if self.state == OPEN:
                self.state = STOPPING
                self.space.notify_all()
                if drain:
                    self._control(STOP)
                    return
            elif self.state != STOPPING or drain or self.discarding:
                return
            self.discarding = True
            dropped = [entry for _, entry in self.overflow if entry is not None]
            self.overflow.clear()
            self._control(STOP_NOW)
        for future, _, fn, _ in dropped:
            self.drop(future, fn)

    def kill(self) -> None:
        if not self.lock.acquire(blocking=False):
            # A sender may hold the lock in a write the child does not read (a message larger
            # than the pipe, sent while the constructor runs): the lock comes back only once the
            # child is gone, so signal it first, and harder after the grace.
            self.killing = True
            self._signal(signal.SIGTERM)
            if not self.lock.acquire(timeout=DEFAULT_GRACE):
                self._signal(signal.SIGKILL)
                self.lock.acquire()
        with _held(self.lock):
            if self.done.is_set() or self.state == KILLED:
                return
            self.state = KILLED
            dropped = [entry for _, entry in self.overflow if entry is not None]
            self.overflow.clear()
            self.space.notify_all()
        self.wakeup.set()
        for future, _, fn, _ in dropped:
            self.drop(future, fn)
        self._signal(signal.SIGTERM)
        if self.in_actor() or self.supervisor.ident is None:
            return
        if not self.done.wait(DEFAULT_GRACE):
            self._signal(signal.SIGKILL)
        self.supervisor.join()

    def _signal(self, sig: int) -> None:
        child = self.child
        if child is not None:
            child.signal(sig)  # a no-op once reaped: never a recycled pid

    def join(self, timeout: float | None) -> bool:
        if self.in_actor():
            return False
        if self.supervisor.ident is None:
            return self.done.is_set()
        return join_thread(self.supervisor, timeout, self.done)  # a Ctrl-C leaves it joinable
