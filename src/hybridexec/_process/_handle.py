"""``Child``: the one way lanes and actors hold, signal and reap a child process.

A child leads a process group of its own (``enter_child``), so its whole tree is signalled at
once. Signals reach it only while it is not reaped: once reaped, its pid (and with it its group
id) may belong to another process. The child itself is signalled through a pidfd where Linux
has them (5.3+), which names that very process whatever happens to the number; its group while
its zombie still holds the group id. ``reap`` kills what the child left in its group *before*
the wait that frees the id, never after.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from .. import _lifecycle
from ._guardian import guard


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or out of descriptors
        return None


class Child:
    """A started ``multiprocessing`` process, as its parent keeps it until it is reaped."""

    __slots__ = ("_lock", "pid", "pidfd", "process", "reaped", "sentinel")

    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid: int = process.pid
        self.pidfd = _open_pidfd(self.pid)
        # What becomes readable when the child ends. The pidfd where there is one: under
        # forkserver, multiprocessing's sentinel is a pipe from the fork server, which also
        # "fires" if the fork server dies while the child lives on (it then reads as exit code
        # 255), and a call still running there would fail as a crash.
        self.sentinel: int = self.pidfd if self.pidfd is not None else process.sentinel
        self.reaped = False
        self._lock = threading.Lock()
        guard(self.pid)  # killed with its tree if this process dies, GIL or not (I4)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child and its process group, unless it was reaped already."""
        with self._lock:
            if self.reaped:
                return  # the pid may be another process's now
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass  # no group yet (killed before it made one) or gone: the process alone
            try:
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, sig)
                elif self.process.exitcode is None:  # not reaped (polls, never blocks)
                    os.kill(self.pid, sig)
            except (ProcessLookupError, PermissionError, ValueError):
                pass

    def reap(self, kill_group: bool, timeout: float | None = None) -> int | None:
        """Wait for the child to be gone; return its exit code (None if it was not).

        Args:
            kill_group: SIGKILL what the child left in its process group first, while the
                group id is still the child's.
            timeout: Seconds to wait (None: until it is gone; call once its sentinel fired).
        """
        if kill_group:
            with self._lock:
                if not self.reaped:
                    try:
                        os.killpg(self.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        self.process.join(timeout)
        exitcode: int | None = self.process.exitcode
        if exitcode is None:
            return None
        with self._lock:
            # The pidfd stays open until ``close``: a manager takes it off its epoll first. Were
            # it closed while registered, a copy held by a child forked meanwhile would keep it
            # on the epoll, ready for good, and reported under its number: a new worker's once
            # the number came back (taken for dead while it ran; outsider7 D2).
            self.reaped = True
        return exitcode

    def close(self) -> None:
        """Release the pidfd and the process object (after ``reap``, or giving up on it)."""
        with self._lock:
            self.reaped = True  # signalled no more from here
            if self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None
        try:
            self.process.close()
        except ValueError:  # not reaped: its object goes with the last reference
            pass


def _forget_parents_children() -> None:
    """In a child forked by user code: our processes are its parent's children, not its own.

    multiprocessing's exit hook would join them and print ``AssertionError: can only join a
    child process`` as the child exits (a worker, a process actor; outside tester 13a's A4).
    """
    import multiprocessing.process as mp_process

    children: set[Any] = getattr(mp_process, "_children", set())
    me = os.getpid()
    for process in list(children):
        ours = str(getattr(process, "name", "")).startswith("hybridexec-")
        if ours and getattr(process, "_parent_pid", me) != me:
            children.discard(process)


_lifecycle.on_fork(_forget_parents_children)
