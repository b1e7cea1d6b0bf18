"""Fault injection for the tests: named points at every boundary, each able to fail on demand.

Production code marks a boundary with one line::

    if _faults.ACTIVE:
        _faults.hit("worker.start")

which costs one truth test of an empty dict while no fault is injected (always, outside the
tests). Nothing in the public API reaches this module; tests import ``hybridexec._faults``.

A fault is declarative (``Fault("raise", OSError(errno.EAGAIN))``, ``Fault("delay", 0.2)``,
``Fault("kill", signal.SIGKILL)``, ``Fault("exit", 3)``) so that it pickles: points that fire in
a child process (the ``worker.*``, ``child.*`` and ``actor.*`` points) travel to the child with
its start arguments (``snapshot()`` in the parent, ``install()`` in the child), only while faults
are on.

``times`` bounds how often a fault fires (then it is spent: a transient fault); ``after`` skips
that many hits first. A fault that travels to children counts its ``times`` in each process
on its own, unless ``shared`` names a path prefix: then every fire, in any process, claims one
token file ``<shared>-<n>`` (``n < times``), so a fault that kills its worker fires ``times`` times
in all and the replacement workers live (``fired(shared)`` counts them).
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from typing import Any

POINTS: dict[str, str] = {
    # parent side, process lane
    "lane.pipe": "creating a worker's pipe (EMFILE, ENFILE)",
    "lane.start": "starting a worker process (EAGAIN from fork, ENOMEM)",
    "lane.pickle_call": "pickling a call in the submitting thread",
    "lane.send": "writing a call to a worker's pipe",
    "lane.unpickle_reply": "unpickling a worker's reply in the manager thread",
    "lane.loop": "each turn of the manager thread's loop",
    # child side, process lane (raise: the item fails; after_call raise: the worker crashes)
    "worker.before_call": "in the worker, before each call of a task runs",
    "worker.after_call": "in the worker, after the task's calls returned, before the reply",
    "worker.pickle_reply": "in the worker, pickling the reply (falls back item by item)",
    "child.lifeline": "in the worker, starting its lifeline thread (RuntimeError: no thread)",
    # threads and futures
    "thread.before_call": "on a lane thread, before a call runs",
    "future.callback": "running a future's done-callbacks",
    # shared memory
    "shm.create": "creating a shared-memory segment (ENOSPC, EMFILE)",
    "shm.attach": "attaching a segment in a worker",
    "shm.unlink": "removing a segment",
    # actors
    "actor.start": "starting an actor's process",
    "actor.before_handler": "in the actor's process, before a handler runs",
}


class Fault:
    """What happens at a point: ``raise`` an exception, ``delay`` seconds, ``kill`` or ``exit``.

    (A plain class, not a dataclass: this module loads with every executor and worker.)
    """

    def __init__(
        self,
        kind: str,
        arg: Any = None,
        times: int | None = None,
        after: int = 0,
        shared: str | None = None,
        hits: int = 0,
    ) -> None:
        self.kind, self.arg, self.times, self.after = kind, arg, times, after
        self.shared, self.hits = shared, hits

    def __repr__(self) -> str:
        return (
            f"Fault(kind={self.kind!r}, arg={self.arg!r}, times={self.times!r}, "
            f"after={self.after!r}, shared={self.shared!r}, hits={self.hits!r})"
        )

    def __eq__(self, other: object) -> bool:  # hits are not compared
        if not isinstance(other, Fault):
            return NotImplemented
        mine = (self.kind, self.arg, self.times, self.after, self.shared)
        return mine == (other.kind, other.arg, other.times, other.after, other.shared)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def fire(self) -> None:
        """Act as ``kind`` says, unless skipped (``after``) or spent (``times``)."""
        self.hits += 1
        if self.hits <= self.after:
            return
        if self.shared is not None and self.times is not None:
            if not _claim(self.shared, self.times):
                return
        elif self.times is not None:
            if self.times <= 0:
                return
            self.times -= 1
        if self.kind == "raise":
            exc = self.arg
            # A fresh copy each time: raising one instance again and again chains its
            # tracebacks (and their frames) without end, until pickling it recurses too deep.
            raise copy.copy(exc).with_traceback(None) if isinstance(exc, BaseException) else exc()
        if self.kind == "delay":
            time.sleep(float(self.arg))
        elif self.kind == "kill":
            os.kill(os.getpid(), int(self.arg or signal.SIGKILL))
            while True:  # a signal sent to oneself lands at once; a caught one may take a moment
                time.sleep(0.01)
        elif self.kind == "exit":
            os._exit(int(self.arg or 1))
        else:
            raise ValueError(f"unknown fault kind {self.kind!r}")


def _claim(prefix: str, times: int) -> bool:
    for n in range(times):
        try:
            os.close(os.open(f"{prefix}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        return True
    return False


def fired(shared: str) -> int:
    """How many times the faults sharing the token prefix ``shared`` fired, in all processes."""
    directory, base = os.path.split(shared)
    return sum(1 for name in os.listdir(directory or ".") if name.startswith(base + "-"))


ACTIVE: dict[str, Fault] = {}
_lock = threading.Lock()


def hit(point: str) -> None:
    """Fire the fault injected at ``point``, if any (call only when ``ACTIVE`` is not empty)."""
    with _lock:
        fault = ACTIVE.get(point)
    if fault is not None:
        fault.fire()


def inject(point: str, fault: Fault) -> None:
    """Make ``point`` fail as ``fault`` says, until ``clear()``."""
    if point not in POINTS:
        raise ValueError(f"unknown injection point {point!r}")
    with _lock:
        ACTIVE[point] = fault


def clear() -> None:
    """Remove every injected fault."""
    with _lock:
        ACTIVE.clear()


def snapshot() -> dict[str, Fault] | None:
    """The faults to hand to a child process as it starts; None when there are none."""
    with _lock:
        return dict(ACTIVE) if ACTIVE else None


def install(faults: dict[str, Fault] | None) -> None:
    """In a child: take the faults its parent handed over."""
    if faults:
        with _lock:
            ACTIVE.update(faults)
