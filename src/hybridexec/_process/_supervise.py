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
from typing import Any

from .. import _lifecycle
from . import _guardian
from ._child import let_go_of_fork_server
from ._guardian import start_guardian_early
from ._zygote import safe_to_fork

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
    return multiprocessing.get_context(method)


WORKER_MODULE = "hybridexec._process._worker"


def preload_in_forkserver() -> None:
    """Prepare the fork server, if not started yet: preload the worker module; fork the guardian.

    Every worker is forked with hybridexec already imported, so a replacement worker starts in
    milliseconds instead of paying the package import (~0.1-0.2 s). The user's own preload
    list is kept: our module is added to it, never substituted; so is what the user chose for
    a module that fails to import there (``on_error``, Python 3.15+). The server itself is
    multiprocessing's, started the usual way (a new interpreter) on the first worker's start:
    never a copy of this process, whose modules hold the program's live state (its locks, held
    or not, its finalizers, what its script registered: 17a's A1-A4), which a worker must not
    inherit. Where it is safe, the guardian is forked from this process now (``_zygote``: no
    user code ever runs there), and the resource tracker from the guardian once it is needed.

    Called at the process lane's first task, or before the package's first thread (never with
    the executor: ``_lifecycle.before_first_thread``): a fork makes every page of this process
    copy-on-write, and each page written afterwards costs a fault (~8 us on a small VM).
    """
    _set_preload()
    if _guardian._guardian is not None:
        return
    try:
        if safe_to_fork():  # else ``guard`` starts it as a new interpreter with the first child
            start_guardian_early()  # it forks the tracker when needed
    except Exception as exc:  # never worse than a guardian started the usual way
        logger.debug("guardian not forked: %r", exc)


def _set_preload() -> None:
    # Add the worker module to the fork server's preload list, unless it runs already (its
    # list can no longer change then).
    try:
        import multiprocessing.forkserver as forkserver

        server: Any = forkserver._forkserver  # 3.15's on_error is not in the stubs yet
        if getattr(server, "_forkserver_pid", None) is not None:
            return
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
    # multiprocessing's temporary directory (pymp-*, where a fork server's socket goes) is
    # the parent's, removed when the parent ends: a child outliving it (the daemon idiom)
    # could start no fork server of its own (17a's A5). Its own is made on first use; the
    # parent's finalizer of the old one does nothing here (it checks the pid).
    config: Any = getattr(multiprocessing.current_process(), "_config", None)
    if isinstance(config, dict):
        config.pop("tempdir", None)
    for module, name in (("forkserver", "_forkserver"), ("resource_tracker", "_resource_tracker")):
        helper: Any = getattr(sys.modules.get(f"multiprocessing.{module}"), name, None)
        lock = getattr(helper, "_lock", None)
        if lock is not None:  # the forking thread alone is left: a new lock of the same kind
            helper._lock = threading.RLock() if "RLock" in type(lock).__name__ else threading.Lock()


_lifecycle.on_fork(_after_fork)
