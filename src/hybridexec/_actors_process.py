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

import multiprocessing
import os
import pickle
import select
import signal
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._actors_base import (
    BROKEN,
    DEAD,
    KILLED,
    OPEN,
    STOPPED,
    STOPPING,
    CoreBase,
    OnError,
    describe,
    logger,
)
from ._actors_child import (
    ACK,
    CTOR_FAILED,
    DISCARDED,
    ERROR,
    HOOK_FAILED,
    OK,
    READY,
    STOP,
    STOP_NOW,
    FrameReader,
    actor_main,
    write_frame,
)
from ._exceptions import SerializationError, WorkerCrashedError, signal_name
from ._futures import Future
from ._process._util import DEFAULT_GRACE, get_context, signal_tree
from ._serialize import dumps, dumps_callable, unpack_exception
from ._shm_place import DEFAULT_THRESHOLD, Placement

BACKOFF_FIRST = 0.1
"""Seconds before the first restart; each further restart waits twice as long."""
BACKOFF_MAX = 5.0
_REF_CACHE_SIZE = 256

Entry = tuple[Future[Any] | None, int, Any]  # (future or None for a tell, bytes, handler)

_lifeline_lock = threading.Lock()
_lifeline_pair: tuple[Any, Any] | None = None
_lifeline_pid = -1


def _lifeline() -> tuple[Any, Any]:
    """A pipe whose write end only this process holds: actor processes read EOF when it dies."""
    global _lifeline_pair, _lifeline_pid
    with _lifeline_lock:
        if _lifeline_pair is None or _lifeline_pid != os.getpid():  # new after a fork
            _lifeline_pair = multiprocessing.Pipe(duplex=False)
            _lifeline_pid = os.getpid()
        return _lifeline_pair


def _pipe_budget(fd: int) -> int:
    """Bytes that may be in flight: half the pipe, so page rounding never makes a write wait."""
    try:
        import fcntl

        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)) // 2
    except (ImportError, AttributeError, OSError):
        return 8192


class ProcessCore(CoreBase):
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
        self.fd = -1  # its file descriptor
        self.budget = 0
        self._pid: int | None = None
        self.wakeup = threading.Event()  # cuts a restart backoff short (kill)
        self.supervisor = threading.Thread(
            target=self.supervise, name=f"hybridexec-actor-{name}", daemon=True
        )

    def start(self) -> None:
        self.supervisor.start()

    @property
    def pid(self) -> int | None:
        return self._pid

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
        ref = self.refs.get(fn)
        if ref is None:
            ref = self._wire_ref(fn)
        if future is not None:
            # Large numpy arguments of an ask travel through shared memory, held until its
            # answer arrives. A tell has no answer to say when it was handled: it pickles them.
            data = self.placement.dumps_call((ref, args, kwargs, True), future)
        else:
            data = dumps((ref, args, kwargs, False))
        entry: Entry = (future, len(data) + 8, fn)
        with self.lock:
            if self.state != OPEN:
                self.refuse()
            if self.mailbox_size is not None:
                self.admit(False)
            if (
                self.conn is not None
                and not self.overflow
                and (not self.inflight_bytes or self.inflight_bytes + entry[1] <= self.budget)
            ):
                self._put(data, entry)
            else:
                self.overflow.append((data, entry))

    def _wire_ref(self, fn: Callable[..., Any]) -> str | bytes:
        # A method of the class goes by name (the child finds it on its own class, which
        # also works for classes pickled by value); anything else is pickled by cloudpickle.
        name = getattr(fn, "__name__", None)
        ref: str | bytes
        if isinstance(name, str) and getattr(self.cls, name, None) is fn:
            ref = name
        else:
            ref = dumps_callable(fn)
        if len(self.refs) >= _REF_CACHE_SIZE:
            self.refs.clear()
        self.refs[fn] = ref
        return ref

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
        if self.conn is not None and not self.overflow:
            try:
                write_frame(self.fd, data)
            except OSError:
                pass
        else:
            self.overflow.append((data, None))

    def _flush(self) -> None:
        """Move overflow into the pipe while the budget allows; lock held."""
        overflow = self.overflow
        while overflow and self.conn is not None:
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
        for future, _, _ in dropped:
            self.drop(future)

    def kill(self) -> None:
        with self.lock:
            if self.done.is_set() or self.state == KILLED:
                return
            self.state = KILLED
            dropped = [entry for _, entry in self.overflow if entry is not None]
            self.overflow.clear()
            self.space.notify_all()
            pid = self._pid
        self.wakeup.set()
        for future, _, _ in dropped:
            self.drop(future)
        if pid is not None:
            signal_tree(pid, signal.SIGTERM)
        if self.in_actor() or self.supervisor.ident is None:
            return
        if not self.done.wait(DEFAULT_GRACE):
            with self.lock:
                pid = self._pid  # None once reaped: the pid may belong to someone else now
                if pid is not None:
                    signal_tree(pid, signal.SIGKILL)
        self.supervisor.join()

    def join(self, timeout: float | None) -> bool:
        if self.in_actor():
            return False
        if self.supervisor.ident is None:
            return self.done.is_set()
        self.supervisor.join(timeout)
        return not self.supervisor.is_alive()

    # ---- the supervisor thread ------------------------------------------------------------
    def supervise(self) -> None:
        try:
            while self._run_child():
                self.wakeup.wait(min(BACKOFF_FIRST * 2**self.restarts, BACKOFF_MAX))
                with self.lock:
                    if self.state == KILLED:
                        break
                    self.restarts += 1
        except BaseException as exc:  # never leave a future waiting
            logger.exception("the supervisor of actor %s failed", self.name)
            pid = self._pid
            if pid is not None:
                signal_tree(pid, signal.SIGKILL)
            with self.lock:
                if self.state not in DEAD:
                    self.state = BROKEN
                    self.reason = exc
        finally:
            with self.lock:
                if self.state in (OPEN, STOPPING):
                    self.state = STOPPED
                left = list(self.inflight)
                left.extend(entry for _, entry in self.overflow if entry is not None)
                self.inflight.clear()
                self.overflow.clear()
            for future, _, _ in left:
                self.drop(future)
            self.placement.close()
            self.finish()

    def _run_child(self) -> bool:
        """Run one incarnation of the child; return True to start another."""
        ctx = self.context
        req_r, req_w = ctx.Pipe(duplex=False)
        rep_r, rep_w = ctx.Pipe(duplex=False)
        life_r, life_w = _lifeline()
        inherited: tuple[int, ...] = ()
        if ctx.get_start_method() == "fork":
            inherited = (life_w.fileno(), req_w.fileno(), rep_r.fileno())
        process = ctx.Process(  # type: ignore[attr-defined]
            target=actor_main,
            args=(req_r, rep_w, life_r, inherited, self.cls_bytes, self.init_bytes),
            name=f"hybridexec-actor-{self.name}",
        )
        try:
            process.start()
        except BaseException as exc:
            for conn in (req_r, req_w, rep_r, rep_w):
                conn.close()
            with self.lock:
                if self.state != KILLED:
                    self.state = BROKEN
                self.reason = exc
            self.report("starting the process", exc)
            return False
        req_r.close()
        rep_w.close()
        with self.lock:
            self._pid = process.pid
            self.conn = req_w
            self.fd = req_w.fileno()
            self.budget = _pipe_budget(req_w.fileno())
            killed = self.state == KILLED
            if not killed:
                self._flush()
        if killed:
            signal_tree(process.pid, signal.SIGKILL)
        try:
            self._serve(process, rep_r)
            process.join()
        finally:
            rep_r.close()
        return self._after_death(process)

    def _serve(self, process: Any, replies: Any) -> None:
        """Read answers until the child is gone."""
        reader = FrameReader(replies.fileno())
        poller = select.poll()
        poller.register(reader.fd, select.POLLIN)
        poller.register(process.sentinel, select.POLLIN)
        poll = poller.poll
        answer = self._answer
        first = True
        try:
            while True:
                if not reader.has_frame():
                    if not _readable(poll(), reader.fd):
                        return  # only the sentinel: the child is gone, nothing left to read
                    reader.fill()
                data = reader.read()  # blocks only for the rest of a frame being written
                if first:
                    first = False
                    if data != READY:
                        self._constructor_failed(data)
                        return
                    continue
                answer(data)
        except (EOFError, OSError):
            return

    def _answer(self, data: bytes) -> None:
        tag: int | None = None
        value: Any = None
        if data != ACK and data != DISCARDED:
            try:
                tag, value = pickle.loads(data)
            except Exception as exc:
                tag = ERROR
                value = SerializationError(f"an answer of actor {self.name} would not unpickle")
                value.__cause__ = exc
            else:
                if tag == HOOK_FAILED:
                    self.report("on_stop", unpack_exception(value))
                    return
                if tag == ERROR:
                    value = unpack_exception(value)
        with self.lock:
            future, nbytes, fn = self.inflight.popleft()
            self.inflight_bytes -= nbytes
            if self.mailbox_size is not None:
                self.finished()
            if self.overflow:
                self._flush()
        if data == ACK:
            return
        if data == DISCARDED:
            self.drop(future)
        elif future is not None:
            future.settle(tag == OK, value)
        elif tag == ERROR:
            self.report(f"tell {describe(fn)}", value)

    def _constructor_failed(self, data: bytes) -> None:
        try:
            tag, packed = pickle.loads(data)
            assert tag == CTOR_FAILED
            exc = unpack_exception(packed)
        except Exception as err:
            exc = SerializationError(f"actor {self.name} sent a bad first message: {err!r}")
        with self.lock:
            if self.state != KILLED:
                self.state = BROKEN
            self.reason = exc
        self.report("the constructor", exc)

    def _after_death(self, process: Any) -> bool:
        pid, exitcode = process.pid, process.exitcode
        process.close()
        if exitcode != 0:
            signal_tree(pid, signal.SIGKILL)  # what it left behind in its process group
        name = signal_name(exitcode)
        how = f"was killed by {name}" if name else f"exited with code {exitcode}"
        crash = WorkerCrashedError(
            f"the process of actor {self.name} (pid {pid}) {how}", exitcode=exitcode, pid=pid
        )
        with self.lock:
            self.conn.close()
            self.conn = None
            self.fd = -1
            self._pid = None
            lost = list(self.inflight)
            self.inflight.clear()
            self.inflight_bytes = 0
            if self.mailbox_size is not None:
                self.finished(len(lost))
            state = self.state
            restart = state == OPEN and self.restarts < self.max_restarts
            if (state == OPEN and not restart) or (state == STOPPING and (exitcode or lost)):
                self.state = BROKEN
                self.reason = crash
        cause: BaseException = crash
        if state == KILLED:
            what = "was killed while this message was pending"
        elif state == BROKEN and self.reason is not None:  # its constructor raised
            what, cause = "could not start: its constructor raised", self.reason
        else:
            what = "died while this message was pending"
        tells = 0
        for future, _, _ in lost:
            if future is None:
                tells += 1
            else:
                future.settle(False, self.broken_error(what, cause))
        if state in (OPEN, STOPPING) and (exitcode or lost or state == OPEN):
            logger.warning(
                "actor %s: %s%s; %s",
                self.name,
                crash,
                f", {tells} tell(s) lost" if tells else "",
                f"restart {self.restarts + 1} of {self.max_restarts}" if restart else "broken",
            )
        return restart


def _readable(events: list[tuple[int, int]], fd: int) -> bool:
    return any(event[0] == fd for event in events)
