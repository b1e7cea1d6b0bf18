"""Helper processes forked from this process instead of started as new interpreters.

Under ``forkserver`` (the default on Linux), multiprocessing starts its fork server as a fresh
interpreter that imports the worker's modules; the first worker can be forked only once that is
done: 80-100 ms of a cold start, against a few for the stdlib pool under ``fork``. So were its
tracker and our guardian. When it is provably safe, a fork server of hybridexec's own
(``_server``; multiprocessing's loop and protocol) is forked from this process instead, and so
is the guardian; the tracker is forked by the guardian once it is needed, a copy of a copy: each
starts in about a millisecond with every module imported, and each worker is forked from the
server as before. The server's ``__main__`` is blank, as in multiprocessing's: each worker runs
the script afresh. A lane's first worker, at the first process task, is such a copy too when
safe (``run_as_copy``): the first task waits for no process but its own worker to get to run.
The helpers are forked then too, or just before the package starts its first thread, never as
the executor is made: every fork makes each page of this process copy-on-write, each page
written afterwards costs a fault (~8 us on a small VM), and on a busy machine each process
started competes with the first task (``tracker_pipe``), so the forks are few, together and late
(``_supervise.preload_in_forkserver``).

Safe means: this process has a single thread, the calling one (a lock held by any other thread
would stay held forever in the copy, which is why ``fork`` with threads running deadlocks), no
module is half imported (workers would find it so), it is small (a large heap would stay pinned
by the copy, and the fork would copy large page tables), it maps no shared-memory segment (the
copy would pin it likewise), and multiprocessing's fork server is the one this code knows
(Python 3.10 to 3.13; 3.14 authenticates its clients). Otherwise nothing happens and
multiprocessing starts its server the usual way, on the first worker's start.

The copy keeps nothing of this process that a worker must not inherit: ``os.fork`` runs the
package's fork hooks (``_lifecycle``: the lifeline's write end, the lanes' pipes, the guardian's
pipe are closed), then every descriptor but stdin/stdout/stderr and the server's two is replaced
by ``/dev/null``. The numbers stay taken: an object that still holds one (a log file's handler)
writes to ``/dev/null``, never into a pipe that later reuses the number. Signal handlers set in
Python are reset to the default, as ``exec`` would. Objects copied are frozen (``gc.freeze``):
garbage of this process that the copy inherited is never finalized there, nor in a worker
(a finalizer removing a temporary directory would run twice). The copy holds the "alive"
pipe's read end only, so it exits as soon as this process is gone, as multiprocessing's server
does, and with it the death signal of the workers it forked.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
import types
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .. import _lifecycle
from . import _server
from ._child import (
    blank_descriptors,
    prepare_death_signal,
    read_comm,
    reset_signal_handlers,
    resident_memory,
    write_comm,
)

MAX_RSS = 256 << 20
"""Above this resident size the fork server is started the usual way (see the docstring)."""

TRACKER_NAME = "hx-tracker"
"""The resource tracker's process name when it is a copy of this process."""

SERVER_NAME = "hx-forkserver"
"""The fork server's process name (``/proc/<pid>/comm``): its command line is this process's."""

_in_copy = False
"""True in a copy made by ``fork_copy``: it forks no helper of its own."""

_MAIN_ARGS = ("listener_fd", "alive_r", "preload", "main_path", "sys_path")
_SERVER_ATTRIBUTES = ("_forkserver_address", "_forkserver_alive_fd", "_preload_modules")

_listener: tuple[socket.socket, str] | None = None
"""The fork server's socket and address, made by ``prepare_fork_server`` before the forks."""


def prepare_fork_server() -> None:
    """Make the fork server's listening socket (and its temporary directory) now.

    Called before the first fork of a series: what it writes then is not copy-on-write yet,
    while after a fork each page written costs a fault (~8 us on a small VM, ~150 of them
    here). ``start_fork_server`` uses it; a forked child drops it (``_forget_listener``).
    """
    global _listener
    if _listener is None and _startable() is not None:
        _listener = _make_listener()


def _forget_listener() -> None:
    global _listener
    prepared, _listener = _listener, None
    if prepared is not None:
        prepared[0].close()  # this child's descriptor: the parent's socket stays open


_lifecycle.on_fork(_forget_listener)


def _startable() -> Any:
    # A new fork server of hybridexec's own (_server.py), when multiprocessing's is the one
    # this code knows and neither it nor ours runs yet.
    if not sys.platform.startswith("linux") or _server.running():
        return None
    try:
        import multiprocessing.forkserver as forkserver
    except ImportError:
        return None
    server: Any = getattr(forkserver, "_forkserver", None)
    if type(server) is not getattr(forkserver, "ForkServer", None):
        return None  # replaced by someone (a test's stand-in): theirs to start
    if getattr(server, "_forkserver_pid", 0) is not None or not _known_server(forkserver, server):
        return None
    return forkserver.ForkServer()


def _make_listener() -> tuple[socket.socket, str]:
    import multiprocessing.connection as connection
    import multiprocessing.util as util

    listener = socket.socket(socket.AF_UNIX)
    try:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
    except BaseException:
        listener.close()
        raise
    return listener, address


def start_fork_server() -> int | None:
    """Fork a fork server (multiprocessing's loop) from this process, hybridexec's own; its pid.

    It serves hybridexec's children only (``_server``). The caller made sure that it is
    ``safe_to_fork()``. Returns None, and changes nothing, when a server runs already (ours,
    or multiprocessing's, which then serves hybridexec too), or when this Python's
    multiprocessing is not the one this code knows.
    """
    global _listener
    server = _startable()
    if server is None:
        return None
    import multiprocessing.forkserver as forkserver
    import multiprocessing.spawn as spawn

    programs: Any = forkserver._forkserver
    server._preload_modules = preload = list(programs._preload_modules)  # with our worker's
    prepared, _listener = _listener, None
    listener, address = prepared if prepared is not None else _make_listener()
    with listener:
        listener_fd = listener.fileno()
        alive_r, alive_w = os.pipe()
        comm = read_comm()

        def serve() -> None:
            # Each worker it forks gets this process's name back (see fork_copy).
            if comm is not None:
                os.register_at_fork(after_in_child=lambda: write_comm(comm))
            # Every module is imported already, but "__main__" must not be this process's:
            # the script may be half run (the executor made at its top, a class defined
            # below), and workers would find it so. A blank __main__, as in multiprocessing's
            # own server (which never imports the script: its ensure_running passes no
            # main_path), so each worker runs the script afresh as __mp_main__, its guarded
            # part excepted, as before. The old one stays referenced, as multiprocessing keeps
            # it: nothing of it is finalized here.
            spawn.old_main_modules.append(sys.modules["__main__"])
            sys.modules["__main__"] = types.ModuleType("__main__")
            # Loaded before its first fork, not as it starts: the first worker is seldom its
            # (see run_as_copy), and ctypes' import (2-3 ms of CPU) would compete with it.
            os.register_at_fork(before=prepare_death_signal)
            forkserver.main(listener_fd, alive_r, preload)

        pid = fork_copy(SERVER_NAME, {listener_fd, alive_r}, serve)
        os.close(alive_r)
        if pid is None:
            os.close(alive_w)
            return None
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    _server.install(server)
    return pid


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


def run_as_copy(main: Callable[..., object], *args: Any) -> None:
    """Run ``main(*args)`` in a child forked from this process as a fork server's would run.

    The target of a ``fork`` context process: the lane's first worker, forked straight from
    the submitting thread while ``safe_to_fork()`` held, rather than asked of the fork server
    (a round trip through a process that may not have run yet). What it keeps of this process
    is what ``fork_copy`` keeps (descriptors but stdio, the connections in ``args`` and
    multiprocessing's parent sentinel point at ``/dev/null``; handlers set in Python are reset;
    the objects copied are frozen), and ``__main__`` is what a fork server's worker finds: a
    blank module, then the script run afresh as ``__mp_main__`` (its guarded part excepted).
    """
    global _in_copy
    _in_copy = True
    gc.freeze()
    keep = {arg.fileno() for arg in args if isinstance(arg, Connection)}
    sentinel = getattr(multiprocessing.parent_process(), "_sentinel", None)
    if isinstance(sentinel, int):
        keep.add(sentinel)
    blank_descriptors({0, 1, 2, *keep})
    reset_signal_handlers()
    import multiprocessing.spawn as spawn

    data = spawn.get_preparation_data(multiprocessing.current_process().name)
    spawn.old_main_modules.append(sys.modules["__main__"])
    sys.modules["__main__"] = types.ModuleType("__main__")
    process = multiprocessing.current_process()
    process._inheriting = True  # type: ignore[attr-defined]  # as spawn._main sets it
    try:
        spawn.prepare(data)  # runs the script as __mp_main__: no process starts from there
    finally:
        del process._inheriting  # type: ignore[attr-defined]
    main(*args)


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


def _known_server(forkserver: Any, server: Any) -> bool:
    # The layout of CPython 3.10-3.13: main()'s parameters, the attributes ensure_running sets,
    # and no client authentication (3.14 adds it, and a key this code would have to pass).
    code = getattr(getattr(forkserver, "main", None), "__code__", None)
    return (
        code is not None
        and code.co_varnames[: code.co_argcount] == _MAIN_ARGS
        and code.co_kwonlyargcount == 0
        and not hasattr(server, "_forkserver_authkey")
        and all(hasattr(server, name) for name in _SERVER_ATTRIBUTES)
    )


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
