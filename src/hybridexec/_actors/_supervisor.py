"""Process actors, the supervisor thread: start the child, read its answers, restart it.

A mixin of ``ProcessCore`` (``_process.py``, where the data flow is drawn); everything here
runs on the actor's supervisor thread. The supervisor starts every incarnation of the child
itself: ``PR_SET_PDEATHSIG`` fires when the *thread* that started a process ends, and this
thread lives exactly as long as the actor.
"""

from __future__ import annotations

import pickle
import select
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from .. import _faults
from .._exceptions import SerializationError, WorkerCrashedError, signal_name
from .._futures import Deferred, Future
from .._process import (
    START_BACKOFF,
    START_GIVE_UP,
    Child,
    FrameReader,
    exception_of,
    failed,
    failure,
    lifeline,
    pipe_budget,
    runs_no_code,
)
from .._serialize import unpack_exception
from .._shm import Placement, cleanup_shared_memory
from ._base import BROKEN, DEAD, KILLED, OPEN, STOPPED, STOPPING, CoreBase, describe, logger
from ._child import ACK, CTOR_FAILED, DISCARDED, ERROR, HOOK_FAILED, OK, READY, actor_main

BACKOFF_FIRST = 0.1
"""Seconds before the first restart; each further restart waits twice as long."""
BACKOFF_MAX = 5.0

# (future or None for a tell, bytes, handler, what a tell's pickle names: kept until acknowledged)
Entry = tuple[Future[Any] | None, int, Any, list[object] | None]


class Supervisor(CoreBase):
    """The supervisor thread's half of a process actor."""

    context: Any
    cls_bytes: bytes
    init_bytes: bytes
    inflight: deque[Entry]
    inflight_bytes: int
    overflow: deque[tuple[bytes, Entry | None]]
    conn: Any
    ready: bool
    tells_counted: bool  # the crash's warning counted the queued tells lost
    discarding: bool  # stop(drain=False) was asked: messages not started are dropped
    fd: int
    budget: int
    parent_ends: tuple[Any, ...]
    child: Child | None
    killing: bool
    wakeup: threading.Event
    placement: Placement

    def _flush(self) -> None:
        raise NotImplementedError  # the senders' side writes

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
            child = self.child
            if child is not None:
                child.signal(signal.SIGKILL)
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
            for future, _, fn, _ in left:
                self.drop(future, fn)  # a tell never sent is lost too: on_error hears of it
            tells = sum(1 for future, _, _, _ in left if future is None)
            told = self.tells_counted  # by the crash's warning
            if tells and self.on_error is None and self.state in (BROKEN, KILLED) and not told:
                logger.warning("actor %s: %d queued tell(s) lost", self.name, tells)
            self.placement.close()
            self.finish()

    def _run_child(self) -> bool:
        """Run one incarnation of the child; return True to start another."""
        try:
            process, req_r, req_w, rep_r, rep_w = self._start_child()
        except BaseException as exc:
            with self.lock:
                # Still short of a resource: a restart spent, the next after its backoff (stopping
                # too: the messages queued for it, to be handled first, reached no process).
                again = self.state in (OPEN, STOPPING) and self.restarts < self.max_restarts
                again = again and isinstance(exc, (OSError, MemoryError))
                if not again and self.state != KILLED:
                    self.state = BROKEN
                self.reason = exc if not again else self.reason
            if not again:
                self.report("starting the process", exc)
            return again
        req_r.close()
        rep_w.close()
        child = Child(process)
        with self.lock:
            self.child = child
            self.conn = req_w
            self.fd = req_w.fileno()
            self.budget = pipe_budget(req_w.fileno())
            killed = self.state == KILLED
            if not killed:
                self._flush()
        if killed:
            child.signal(signal.SIGKILL)
        try:
            self._serve(child.sentinel, rep_r)
            wait([child.sentinel])
            # What it left in its process group goes before the reap frees the group's id.
            exitcode = child.reap(kill_group=True)
        finally:
            rep_r.close()
        return self._after_death(child, exitcode)

    def _start_child(self) -> tuple[Any, Any, Any, Any, Any]:
        """Start the child: the process and its pipes' four ends.

        A start that fails for want of a resource for a moment (EMFILE making a pipe, EAGAIN
        forking, ENOMEM) is tried again with a backoff for ``START_GIVE_UP`` seconds, as the
        process lane's workers are (I6): it broke the actor for good, restarts left or not.
        """
        ctx, pause = self.context, START_BACKOFF[0]
        give_up = time.monotonic() + START_GIVE_UP
        while True:
            ends: list[Any] = []
            try:
                ends.extend(ctx.Pipe(duplex=False))
                ends.extend(ctx.Pipe(duplex=False))
                # The parent's ends must not stay open in a forked child (forget_after_fork).
                self.parent_ends = (ends[1], ends[2])
                process = ctx.Process(
                    target=actor_main,
                    args=(ends[0], ends[3], lifeline()[0], self.cls_bytes, self.init_bytes),
                    name=f"hybridexec-actor-{self.name}",
                )
                if _faults.ACTIVE:
                    _faults.hit("actor.start")
                process.start()
                return process, *ends
            except BaseException as exc:
                for conn in ends:
                    conn.close()
                late = time.monotonic() + pause > give_up or self.state == KILLED
                if late or not isinstance(exc, (OSError, MemoryError)):
                    raise
                logger.warning("actor %s: could not start (%r); retrying", self.name, exc)
            self.wakeup.wait(pause)  # a kill cuts it short
            pause = min(2 * pause, START_BACKOFF[1])

    def _serve(self, sentinel: int, replies: Any) -> None:
        """Read answers until the child is gone."""
        reader = FrameReader(replies.fileno())
        poller = select.poll()
        poller.register(reader.fd, select.POLLIN)
        poller.register(sentinel, select.POLLIN)
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
                    with self.lock:  # what was sent meanwhile goes now
                        self.ready = True
                        self._flush()
                    continue
                answer(data)
        except (EOFError, OSError):
            return

    def _answer(self, data: bytes) -> None:
        tag: int | None = None
        value: Any = None
        if data != ACK and data != DISCARDED:
            inflight = self.inflight  # only this thread takes from it
            if inflight and inflight[0][0] is not None and not runs_no_code(data):
                # An answer to an ask, whose unpickling runs the user's code: its reader
                # rebuilds it, as a task's result (one that asks this actor would wait here
                # for good; outside tester 11c's C3b).
                tag, value = OK, Deferred(self._decode, data)
            else:
                tag, value = self._decode(data, reader=False)
                if tag == HOOK_FAILED:
                    self.report("on_stop", exception_of(value))
                    return
                if tag == ERROR and inflight and inflight[0][0] is None:
                    value = exception_of(value)  # a tell's: reported here
        with self.lock:
            future, nbytes, fn, _ = self.inflight.popleft()
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
            future.settle(tag == OK, value if tag == OK else failed(value))
        elif tag == ERROR:
            self.report(f"tell {describe(fn)}", value)

    def _decode(self, data: bytes, reader: bool = True) -> Any:
        """``(tag, value)`` of an answer; an error's exception as ``failure`` gives it.

        ``reader``: called by the ask's reader (``Deferred``): ``(ok, value)``, rebuilt.
        """
        try:
            tag, value = pickle.loads(data)
        except KeyboardInterrupt:
            if reader and threading.current_thread() is threading.main_thread():
                raise  # a Ctrl-C in the main thread reading it: a later read tries again
            tag, value = ERROR, self._unpickle_error(KeyboardInterrupt())
        except BaseException as exc:  # SystemExit from a __setstate__: still the ask's failure
            tag, value = ERROR, self._unpickle_error(exc)
        else:
            if tag in (ERROR, HOOK_FAILED):
                value = failure(value)
        if reader:
            return (True, value) if tag == OK else (False, exception_of(value))
        return tag, value

    def _unpickle_error(self, exc: BaseException) -> SerializationError:
        err = SerializationError(f"an answer of actor {self.name} would not unpickle")
        err.__cause__ = exc
        return err

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

    def _after_death(self, child: Child, exitcode: int | None) -> bool:
        pid = child.pid
        child.close()
        if exitcode != 0:
            # Segments it made (named after its pid, now dead) go now, not at the next start.
            cleanup_shared_memory()
        name = signal_name(exitcode)
        how = f"was killed by {name}" if name else f"exited with code {exitcode}"
        crash = WorkerCrashedError(
            f"the process of actor {self.name} (pid {pid}) {how}", exitcode=exitcode, pid=pid
        )
        with self.lock:
            self.conn.close()
            self.conn = None
            self.ready = False
            self.fd = -1
            self.child = None
            lost = list(self.inflight)
            self.inflight.clear()
            self.inflight_bytes = 0
            if self.mailbox_size is not None:
                self.finished(len(lost))
            state = self.state
            restart = state == OPEN and not self.killing and self.restarts < self.max_restarts
            if (state == OPEN and not restart) or (state == STOPPING and (exitcode or lost)):
                self.state = BROKEN
                self.reason = crash
            # Broken, the tells still queued here are lost too (dropped as the thread ends):
            # counted in this one warning (outside tester 13a's A3).
            queued = (
                0
                if self.state != BROKEN
                else sum(1 for _, entry in self.overflow if entry is not None and entry[0] is None)
            )
        cause: BaseException = crash
        if state == KILLED:
            what = "was killed while this message was pending"
        elif state == BROKEN and self.reason is not None:  # its constructor raised
            what, cause = "could not start: its constructor raised", self.reason
        else:
            what = "died while this message was pending"
        tells = 0
        for index, (future, _, fn, _) in enumerate(lost):
            if index and self.discarding:  # never started: dropped by stop(drain=False)
                if future is not None:
                    future.settle(False, self.closed_error())
                continue
            if future is not None:
                future.settle(False, self.broken_error(what, cause))
                continue
            tells += 1
            if self.on_error is not None:  # a lost tell is a failed tell: its one report
                self.report(f"tell {describe(fn)}", self.broken_error(what, cause))
        if state in (OPEN, STOPPING) and (exitcode or lost or state == OPEN):
            tells += queued if self.on_error is None else 0
            self.tells_counted = queued > 0
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
