"""The child side of every hybridexec process (lane workers and actors alike).

``enter_child`` is the first thing a child runs: lead a process group of its own (so the parent
can kill the whole tree, and the terminal's Ctrl-C stays with the parent), ask the kernel for a
death signal where that is safe, and watch the lifeline pipe whose EOF means the parent died.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any

from .. import _faults
from .._serialize import loads


def become_group_leader() -> None:
    """Called in a worker: lead a process group so the parent can kill the whole tree.

    Being in a group of its own also keeps the terminal's Ctrl-C away from the worker: the
    parent handles KeyboardInterrupt and decides what the workers do.
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


def set_parent_death_signal() -> None:
    """Called in a worker: ask Linux to SIGKILL us when the process that started us dies.

    This catches a parent death even while a task holds the GIL in C code, where the lifeline
    thread cannot run. It is tied to the thread (or forkserver) that started the worker, so it
    only backs up the lifeline and is never the sole guard.
    """
    if not sys.platform.startswith("linux"):
        return
    prepare_death_signal()
    try:
        pr_set_pdeathsig = 1
        _prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


_prctl: Any = None


def prepare_death_signal() -> None:
    """Load what ``set_parent_death_signal`` calls: ctypes and ``prctl``.

    That costs 1-2 ms (more on a busy machine): the fork server does it before its first
    fork, so that the workers it forks need not.
    """
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except Exception:
            pass


def watch_lifeline(lifeline: Any) -> bool:
    """Start a thread that kills this worker's process group when the parent dies.

    ``lifeline`` is the read end of a pipe whose write end only the parent holds: when the
    parent exits, for any reason, the read returns EOF. Returns False when no thread can be
    started.
    """

    def watch() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        # The parent is gone: take our own children with us, then go.
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(1)

    # A bare thread, not threading's: Thread.start() waits until the new thread has run, a
    # wait of milliseconds on a busy machine before the worker takes its first task.
    try:
        if _faults.ACTIVE:
            _faults.hit("child.lifeline")
        _thread.start_new_thread(watch, ())
    except RuntimeError:
        # No thread to spare (RLIMIT_NPROC, a container's pids.max). Exiting would fail the
        # call this worker was started for, and its replacement would meet the same limit:
        # the guardian (and the death signal, under forkserver) guard it alone; an idle
        # worker also exits at its call pipe's EOF.
        return False
    return True


def let_go_of_fork_server() -> None:
    """Close the fork server's "alive" pipe that multiprocessing handed this child.

    A child started by a fork server receives the write end of the server's "alive" pipe (so
    that it could start processes through the same server). The server exits only when every
    write end is closed: while any child held one, a SIGKILLed parent left the server alive,
    and with it the children's death signal, which the server's exit sends. A child that
    starts processes of its own starts its own fork server.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is None:
        return
    try:
        os.close(alive)
    except OSError:
        pass
    for name in ("_forkserver_alive_fd", "_forkserver_address", "_forkserver_pid"):
        if hasattr(server, name):
            setattr(server, name, None)


def enter_child(lifeline: Any, death_signal: bool) -> None:
    """The prelude of every child: own process group, death signal, Ctrl-C ignored, lifeline.

    The parent registers the child with its guardian (``_guardian.guard``), which kills the
    child's process group when the parent dies even while a task holds the GIL in C code.

    Args:
        lifeline: The read end of the parent's lifeline pipe.
        death_signal: Ask the kernel for SIGKILL when the starting thread's process ends.
            Under forkserver that process is the fork server, which outlives the parent by a
            moment, so the lifeline thread kills the child's children first. Under spawn and
            fork it would fire at the same instant as the lifeline and orphan them.
    """
    become_group_leader()
    let_go_of_fork_server()
    if death_signal:
        set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    watch_lifeline(lifeline)


def resident_memory() -> int | None:
    """Return this process's resident set size in bytes, or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional helper

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def reset_signal_handlers() -> None:
    """In a copy of this process (``_zygote``): signal handlers set in Python to the default."""
    # As exec would: a handler set in Python goes back to the default; an ignored signal stays
    # ignored; SIGINT raises KeyboardInterrupt as in any fresh interpreter.
    # Numbers, not valid_signals(), and _signal's getsignal, not signal's: no enum member made
    # per signal (a tenth of a millisecond in each copy, right after its fork).
    getsignal = getattr(signal, "_signal", signal).getsignal
    for sig in range(1, signal.NSIG):
        try:
            handler = getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    if callable(signal.getsignal(signal.SIGINT)):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)  # an event loop's, pointing at a descriptor now blank


def write_comm(name: str) -> None:
    """Name this process ``name`` (``ps``, ``psutil.Process.name()``), where it can be."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def blank_descriptors(keep: set[int]) -> None:
    """Point every open descriptor not in ``keep`` at ``/dev/null`` (see ``_zygote``).

    A copy (the guardian, the tracker) holds nothing of this process's: no pipe's end, no
    file (a lock, a deleted file's space: 15e's E5).
    """
    fds = [int(name) for name in os.listdir("/proc/self/fd")]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in fds:
        if fd in keep or fd == null:
            continue
        try:
            os.fstat(fd)  # still open (the listing's own descriptor is not)
        except OSError:
            continue
        try:
            os.dup2(null, fd, inheritable=False)
        except OSError:
            pass
    os.close(null)
    logging = sys.modules.get("logging")
    handlers = [ref() for ref in getattr(logging, "_handlerList", ())]
    files = () if logging is None else logging.FileHandler
    for handler in handlers:
        if isinstance(handler, files) and handler.stream and "a" in handler.mode:
            stream, handler.stream = handler.stream, None
            with contextlib.suppress(Exception):  # /dev/null now: what it buffered goes
                stream.close()


unpickling: int | None = None
"""The thread that unpickles a task in a worker, while it does: a module imported then (the
callable's) may not start a process lane (``Manager``): each of its workers would import it
too, without end. Another thread of the worker (one a task left running) may."""


def flush_log_queues() -> None:
    """Push out what a ``QueueHandler`` on a multiprocessing queue holds, before any reply.

    Such a queue hands records to a feeder thread; ProcessPoolExecutor's worker exits (which
    joins it) before its pool is seen broken, so code that reads the queue once the pool broke
    finds the record. This worker fails every call from now on: its queues are closed here.
    """
    logger: logging.Logger | None = logging.getLogger("concurrent.futures")
    while logger is not None:
        for handler in logger.handlers:
            queue: Any = getattr(handler, "queue", None)
            if hasattr(queue, "join_thread") and hasattr(queue, "close"):
                try:
                    queue.close()
                    queue.join_thread()
                except Exception:  # best effort: the record may come late
                    pass
        logger = logger.parent if logger.propagate else None


def unpickle(data: bytes) -> Any:
    """``_serialize.loads(data)`` with ``unpickling`` set to this thread."""
    global unpickling
    unpickling = threading.get_ident()
    try:
        return loads(data)
    finally:
        unpickling = None
