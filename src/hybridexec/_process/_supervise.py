"""The parent side of every hybridexec child process (lane workers and actors alike).

Start methods, the lifeline pipe by which every child notices that this process died, the
guardian that kills every child's process tree when this process dies.

The guardian (``_guardian``) backs the lifeline up: it kills every child's process tree when
this process dies, however it dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import sys
import threading
from collections.abc import Callable
from typing import Any

from .. import _lifecycle
from . import _guardian, _server
from ._child import let_go_of_fork_server
from ._guardian import start_guardian_early
from ._zygote import prepare_fork_server, safe_to_fork, start_fork_server

START_BACKOFF = (0.01, 0.25)
"""First and longest pause between retries of a worker (or process actor) start that failed."""
START_GIVE_UP = 1.0
"""Seconds of failed starts, with no worker alive, after which the waiting tasks fail (a
process actor: after which it is broken)."""

logger = logging.getLogger("hybridexec")

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
    if method == "forkserver":
        return _server.context()  # through hybridexec's own server, once forked
    return multiprocessing.get_context(method)


WORKER_MODULE = "hybridexec._process._worker"


def preload_in_forkserver(first: Callable[[], bool] | None = None) -> bool:
    """Prepare the fork server, if not started yet: preload the worker module, fork it.

    Every worker is forked with hybridexec already imported, so a replacement worker starts in
    milliseconds instead of paying the package import (~0.1-0.2 s). The user's own preload
    list is kept: our module is added to it, never substituted; so is what the user chose for
    a module that fails to import there (``on_error``, Python 3.15+). Where it is safe, the
    fork server and the guardian are forked from this process now, and the resource tracker
    from the guardian once it is needed (``_zygote``): they start with every module imported,
    in about a millisecond each, so even
    the first worker starts in milliseconds. Otherwise multiprocessing starts the server as a
    new interpreter on the first worker's start, and ``guard`` the guardian, as before. Each
    helper is forked once: a later call forks only those missing.

    The forks are made back to back, after the process lane's first task or before the
    package's first thread (never with the executor: ``_lifecycle.before_first_thread``): each
    fork makes every page of this process copy-on-write, and each page written afterwards
    costs a fault (~8 us on a small VM), so the forks come together and late.

    Args:
        first: Called first when it is safe: the lane's first worker forked from this thread
            (``_lane``, the guardian right before it), its call sent, so the server starts
            while that call runs. Its exceptions propagate.

    Returns:
        ``first()`` when it was called, else True when it was safe (it still is on return).
    """
    running = _set_preload()
    if first is None and running and _guardian._guardian is not None:
        return True  # forked already (the thread hook, after the lane's first task)
    try:
        safe = safe_to_fork()
        if safe and first is not None:
            # Made before any fork: no page faults then. The guardian is forked just before
            # the worker, which it registers as it starts (I4): _supervision._start_worker.
            prepare_fork_server()
    except Exception as exc:  # never worse than multiprocessing's own start
        logger.debug("fork server not forked: %r", exc)
        safe = False
    if not safe:
        return False
    went = first() if first is not None else True
    try:
        start_fork_server()  # before the guardian when there is no worker: what the server
        start_guardian_early()  # makes (a socket, a temporary directory) is written before
        # any fork makes its pages copy-on-write. The guardian forks the tracker when needed.
    except Exception as exc:
        logger.debug("fork server not forked: %r", exc)
    return went


def _set_preload() -> bool:
    # True when the server runs already: its preload list can no longer change.
    try:
        import multiprocessing.forkserver as forkserver

        server: Any = forkserver._forkserver  # 3.15's on_error is not in the stubs yet
        if _server.running() or getattr(server, "_forkserver_pid", None) is not None:
            return True
        modules = list(getattr(server, "_preload_modules", ["__main__"]))
        if WORKER_MODULE not in modules:
            # 3.15: set_forkserver_preload(modules, *, on_error="ignore") stores the choice and
            # a call without it would reset it to "ignore": pass back what was set.
            on_error = getattr(server, "_preload_on_error", None)
            if on_error is None:
                server.set_forkserver_preload([*modules, WORKER_MODULE])
            else:
                server.set_forkserver_preload([*modules, WORKER_MODULE], on_error=on_error)
    except Exception:  # a private detail moved: workers just import the package themselves
        pass
    return False


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
    # children would outlive a SIGKILLed parent for as long as this child lives. Its read end
    # is dropped, not closed: under the fork start method it is the very object the new worker
    # watches. The guardian stays the parent's (``_guardian.forget_after_fork``).
    global _lifeline_pair, _lifeline_lock
    _lifeline_lock = threading.Lock()
    pair, _lifeline_pair = _lifeline_pair, None
    if pair is not None:
        pair[1].close()
    _guardian.forget_after_fork()
    _forget_helper_processes()


def _forget_helper_processes() -> None:
    """In a forked child: let go of the parent's fork server.

    multiprocessing keeps it in module globals, which a fork copies: the child would then wait
    for a process that is not its own (``ChildProcessError`` on the next start), and its copy
    of the fork server's "alive" pipe would keep that server alive after the parent died. The
    child starts its own on first use. The resource tracker is left shared, as multiprocessing
    means it to be (a segment a forked child registers must outlive the child), but not its
    lock: a thread that held either lock at the fork (our manager starting a worker) is not in
    the child, and the child's first worker start would wait for it for ever. Private
    attributes of CPython's ``multiprocessing``: a Python that moved them keeps its behaviour.
    """
    let_go_of_fork_server()  # what a fork-server child does as it starts, the same way
    for module, name in (("forkserver", "_forkserver"), ("resource_tracker", "_resource_tracker")):
        helper: Any = getattr(sys.modules.get(f"multiprocessing.{module}"), name, None)
        lock = getattr(helper, "_lock", None)
        if lock is not None:  # the forking thread alone is left: a new lock of the same kind
            helper._lock = threading.RLock() if "RLock" in type(lock).__name__ else threading.Lock()


_lifecycle.on_fork(_after_fork)
