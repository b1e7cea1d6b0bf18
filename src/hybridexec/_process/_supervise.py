"""The parent side of every hybridexec child process (lane workers and actors alike).

Start methods, the lifeline pipe by which every child notices that this process died, and
killing a child with its whole process tree.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import sys
import threading
from typing import Any

from .. import _lifecycle

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


_lifeline_lock = threading.Lock()
_lifeline_pair: tuple[Any, Any] | None = None


def lifeline() -> tuple[Any, Any]:
    """Return this process's lifeline pipe ``(read end, write end)``, made on first use.

    Only this process holds the write end; every child gets the read end and reads EOF when this
    process is gone, however it ended. One pipe serves every lane and actor of the process.
    """
    global _lifeline_pair
    with _lifeline_lock:
        if _lifeline_pair is None:
            _lifeline_pair = multiprocessing.Pipe(duplex=False)
        return _lifeline_pair


def _after_fork() -> None:
    # In a forked child: the lifeline's write end must not stay open here, or the parent's
    # children would outlive a SIGKILLed parent for as long as this child lives. The read end is
    # dropped, not closed: under the fork start method it is the very object the new worker
    # watches.
    global _lifeline_pair, _lifeline_lock
    _lifeline_lock = threading.Lock()
    pair, _lifeline_pair = _lifeline_pair, None
    if pair is not None:
        pair[1].close()
    _forget_helper_processes()


def _forget_helper_processes() -> None:
    """In a forked child: let go of the parent's fork server.

    multiprocessing keeps it in module globals, which a fork copies: the child would then wait
    for a process that is not its own (``ChildProcessError`` on the next start), and its copy
    of the fork server's "alive" pipe would keep that server alive after the parent died. The
    child starts its own on first use. The resource tracker is left shared, as multiprocessing
    means it to be (a segment a forked child registers must outlive the child). Private
    attributes of CPython's ``multiprocessing``: a Python that moved them keeps its behaviour.
    """
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        alive = getattr(server, "_forkserver_alive_fd", None)
        try:
            if alive is not None:
                os.close(alive)
        except OSError:
            pass
        for name in ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid"):
            if hasattr(server, name):
                setattr(server, name, None)
        if hasattr(server, "_lock"):
            server._lock = threading.Lock()


_lifecycle.on_fork(_after_fork)
