"""Helper processes forked from this process instead of started as new interpreters.

Under ``forkserver`` (the default on Linux), multiprocessing starts its resource tracker as a
fresh interpreter, and so did hybridexec its guardian: tens of milliseconds of CPU each, on
the first worker's path. When it is provably safe, the guardian is forked from this process
instead (``fork_copy``), and the tracker is forked by the guardian once it is needed, a copy
of a copy: each starts in about a millisecond. Neither ever runs user code: the guardian runs
its own loop, the tracker multiprocessing's.

Workers are never such copies, nor is the fork server they come from (multiprocessing's, a
new interpreter). A copy of this process holds every module as the program left it: locks
held by the forking thread, objects whose finalizers act by name (a ``TemporaryDirectory``
a task rebinding a global would drop, and remove), what the script registered at its top
level (which a worker running the script again would register twice). Round 17 (17a's
A1-A4) removed those copies.

The helpers are forked at the process lane's first task or just before the package starts
its first thread, never as the executor is made: every fork makes each page of this process
copy-on-write, and each page written afterwards costs a fault (~8 us on a small VM).

Safe means: this process has a single thread, the calling one (a lock held by any other thread
would stay held forever in the copy, which is why ``fork`` with threads running deadlocks), no
module is half imported, it is small (a large heap would stay pinned by the copy, and the fork
would copy large page tables), and it maps no shared-memory segment (the copy would pin it
likewise). Otherwise the guardian starts as a new interpreter with the first child.

The copy keeps nothing of this process that it must not: ``os.fork`` runs the package's fork
hooks (``_lifecycle``: the lifeline's write end, the lanes' pipes, the guardian's pipe are
closed), then every descriptor but stdin/stdout/stderr and its own is replaced by
``/dev/null``. Signal handlers set in Python are reset to the default, as ``exec`` would.
Objects copied are frozen (``gc.freeze``): garbage of this process that the copy inherited is
never finalized there.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any

from ._child import (
    blank_descriptors,
    reset_signal_handlers,
    resident_memory,
    write_comm,
)

MAX_RSS = 256 << 20
"""Above this resident size the guardian starts as a new interpreter (see the docstring)."""

TRACKER_NAME = "hx-tracker"
"""The resource tracker's process name when it is a copy of this process."""

_in_copy = False
"""True in a copy made by ``fork_copy``: it forks no helper of its own."""


def tracker_pipe() -> tuple[int, int] | None:
    """Make the pipe of multiprocessing's resource tracker; a copy forks the tracker later.

    The caller made sure that it is ``safe_to_fork()``, hands the read end to a copy of this
    process (the guardian), which forks the tracker (``fork_tracker``) as the first message
    arrives (a resource to track, or a fork server start's check that it runs), and gives
    the write end to multiprocessing (``adopt_tracker``). Until then no process runs for it:
    a cold start that never needs it pays nothing (a tracker forked with the first worker
    cost ~10% of what follows the import, at load 15), and the pipe holds what is written
    meanwhile. None when the tracker runs already or is not the one this code knows.
    """
    return os.pipe() if _startable_tracker() is not None else None


def adopt_tracker(write: int) -> None:
    """Make ``write`` multiprocessing's pipe to its resource tracker (see ``tracker_pipe``).

    Its pid stays None: not our child, multiprocessing's own case of a tracker that another
    process started.
    """
    tracker = _startable_tracker()
    if tracker is None:  # started meanwhile: ours is not needed
        os.close(write)
    else:
        tracker._fd = write


def _startable_tracker() -> Any:
    # multiprocessing's resource tracker when it is the one this code knows and not running.
    try:
        import multiprocessing.resource_tracker as resource_tracker
    except ImportError:
        return None
    tracker: Any = getattr(resource_tracker, "_resource_tracker", None)
    code = getattr(getattr(resource_tracker, "main", None), "__code__", None)
    if (
        type(tracker) is not getattr(resource_tracker, "ResourceTracker", None)
        or getattr(tracker, "_fd", 0) is not None
        or not hasattr(tracker, "_pid")
        or code is None
        or code.co_varnames[: code.co_argcount] != ("fd",)
    ):
        return None
    return tracker


def _run_tracker(read: int) -> None:
    import multiprocessing.resource_tracker as resource_tracker

    # Leaked resources are reported as a new interpreter would: as warnings printed, never
    # raised (a filter of ours turning them into errors would stop the clean-up).
    warnings.resetwarnings()
    resource_tracker.main(read)


def fork_tracker(read: int) -> None:
    """In a copy (the guardian): fork the resource tracker, reading ``read``, then close it.

    Forked twice (the middle process exits at once): an orphan, never a zombie of the copy.
    As multiprocessing does, SIGINT and SIGTERM stay blocked in it until its main() ignores
    them. If the fork fails the pipe has no reader left: multiprocessing, finding the tracker
    dead at its next use, starts a new one (with a warning).
    """
    ignored = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, ignored)
    try:
        middle = os.fork()
    except OSError:
        middle = -1
    if middle == 0:
        try:
            if os.fork() == 0:
                blank_descriptors({1, 2, read})  # 0: the guardian's pipe
                write_comm(TRACKER_NAME)
                _run_tracker(read)
        finally:
            os._exit(0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ignored)
    os.close(read)
    if middle > 0:
        try:
            os.waitpid(middle, 0)
        except ChildProcessError:
            pass


def fork_copy(name: str, keep: set[int], run: Callable[[], object]) -> int | None:
    """Fork a copy of this process that runs ``run()`` then exits; return its pid.

    The caller made sure that it is ``safe_to_fork()``. In the copy, every descriptor but
    stdin, stdout, stderr and ``keep`` points at ``/dev/null``, handlers set in Python are
    reset, the objects copied are frozen (``gc.freeze``: never collected, so never finalized,
    there nor in the workers it forks), and the process is named ``name`` (``ps``,
    ``psutil.Process.name()``). None when the fork failed.
    """
    for stream in (sys.stdout, sys.stderr):  # or the copy would write it out a second time
        try:
            stream.flush()
        except (AttributeError, ValueError):  # None, or closed
            pass
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid:
        return pid
    try:  # the copy: never returns into the caller's code
        global _in_copy
        _in_copy = True
        # Garbage of ours not collected yet (a cycle holding a temporary directory's
        # finalizer, say) is ours to finalize, never the copy's nor its workers'.
        gc.freeze()
        blank_descriptors({0, 1, 2, *keep})
        reset_signal_handlers()
        write_comm(name)
        run()
    finally:
        os._exit(0)


def safe_to_fork() -> bool:
    """True when a fork now copies no lock held by another thread and no half-imported module.

    Check once, then fork what is needed back to back: every page this process writes after a
    fork is copied once, and a check walking every module between two forks would pay that
    twice.
    """
    if _in_copy or threading.current_thread() is not threading.main_thread():
        return False  # a copy never forks helpers of its own
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        return False  # a fork server or spawned child importing the script: not ours to fork
    if threading.active_count() != 1:
        return False
    try:
        if len(os.listdir("/proc/self/task")) != 1:  # threads of C libraries count too
            return False
    except OSError:
        return False
    # A module is executed by the thread importing it, this one: a module being imported
    # right now (perhaps the one creating the executor) has its body on this stack. Reading
    # the stack, not every module: each read would copy a page the helpers forked share.
    frame: types.FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            module = sys.modules.get(frame.f_globals.get("__name__", ""))
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return False
        frame = frame.f_back
    rss = resident_memory()
    return rss is not None and rss <= MAX_RSS and not _maps_shared_memory()


def _maps_shared_memory() -> bool:
    """Whether this process maps a ``/dev/shm`` segment (a copy would pin its memory: 13b B1)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return b" /dev/shm/" in maps.read()
    except OSError:
        return True  # not known: no copy
