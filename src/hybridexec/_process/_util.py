"""Process helpers shared by the process lane and process actors.

Start methods, killing a worker with its whole process tree, and the lifeline pipe by which a
worker notices that its parent died.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import threading
from typing import Any

DEFAULT_GRACE = 0.2
"""Seconds between SIGTERM and SIGKILL when a worker is killed."""

START_METHODS = ("fork", "forkserver", "spawn")


def default_start_method() -> str:
    """``forkserver`` on Linux (``fork`` with threads running can deadlock), else ``spawn``."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def get_context(start_method: str | None) -> multiprocessing.context.BaseContext:
    """Return the multiprocessing context for ``start_method`` (None: the default).

    Raises:
        ValueError: unknown or unavailable start method.
    """
    method = start_method or default_start_method()
    if method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS} or None, not {method!r}")
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start method {method!r} is not available on this platform")
    return multiprocessing.get_context(method)


WORKER_MODULE = "hybridexec._process._worker"


def preload_in_forkserver() -> None:
    """Ask the forkserver, if not started yet, to import the worker module once.

    Every worker is then forked with hybridexec already imported, so a replacement worker
    starts in milliseconds instead of paying the package import (~0.1-0.2 s). The user's own
    preload list is kept: our module is added to it, never substituted.
    """
    try:
        import multiprocessing.forkserver as forkserver

        server = forkserver._forkserver
        if getattr(server, "_forkserver_pid", None) is not None:
            return  # already running: its preload list can no longer change
        modules = list(getattr(server, "_preload_modules", ["__main__"]))
        if WORKER_MODULE not in modules:
            server.set_forkserver_preload([*modules, WORKER_MODULE])
    except Exception:  # a private detail moved: workers just import the package themselves
        pass


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (the worker and its children).

    Workers make themselves group leaders as they start; a worker killed before it got that far
    has no group yet, so the signal then goes to the process alone.
    """
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def watch_lifeline(lifeline: Any) -> threading.Thread:
    """Start a daemon thread that kills this worker's process group when the parent dies.

    ``lifeline`` is the read end of a pipe whose write end only the parent holds: when the
    parent exits, for any reason, the read returns EOF.
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

    thread = threading.Thread(target=watch, name="hybridexec-lifeline", daemon=True)
    thread.start()
    return thread


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
