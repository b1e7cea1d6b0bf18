"""The parent side of every hybridexec child process (lane workers and actors alike).

Start methods, the lifeline pipe by which every child notices that this process died, the
guardian that kills every child's process tree when this process dies.

Why a guardian (I4: a SIGKILLed parent leaves no descendant after 1 s): a child watches the
lifeline from a thread, and that thread needs the GIL to act on the EOF. A task stuck in C code
that holds the GIL (a catastrophic regex) never lets it run. ``PR_SET_PDEATHSIG`` does not need
the GIL, but it kills the child alone (its own children are orphaned), fires when the *thread*
that started the child ends, and under forkserver comes from the fork server, which lived as
long as any child held its "alive" pipe: the children did (see ``_child.py``). So one small
guardian process per parent, started with the first child, reads a pipe only this process
writes (the pid of every child it starts); at EOF, that is when this process is gone however
it ended, it SIGKILLs each child's process group. It runs no user code: it always gets to run.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from .. import _lifecycle
from ._child import let_go_of_fork_server
from ._zygote import (
    fork_copy,
    prepare_fork_server,
    safe_to_fork,
    start_fork_server,
    start_resource_tracker,
)

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


def preload_in_forkserver(first: Callable[[], bool] | None = None) -> bool:
    """Prepare the fork server, if not started yet: preload the worker module, fork it.

    Every worker is forked with hybridexec already imported, so a replacement worker starts in
    milliseconds instead of paying the package import (~0.1-0.2 s). The user's own preload
    list is kept: our module is added to it, never substituted; so is what the user chose for
    a module that fails to import there (``on_error``, Python 3.15+). Where it is safe, the
    fork server, the guardian and the resource tracker are forked from this process now
    (``_zygote``): they start with every module imported, in about a millisecond each, so even
    the first worker starts in milliseconds. Otherwise multiprocessing starts the server as a
    new interpreter on the first worker's start, and ``guard`` the guardian, as before. Each
    helper is forked once: a later call forks only those missing.

    The forks are made back to back, after the process lane's first task or before the
    package's first thread (never with the executor: ``_lifecycle.before_first_thread``): each
    fork makes every page of this process copy-on-write, and each page written afterwards
    costs a fault (~8 us on a small VM), so the forks come together and late.

    Args:
        first: Called first when it is safe: the lane's first worker forked from this thread
            (``_lane``, the guardian right before it), its call sent, so the server and the
            tracker start while that call runs. Its exceptions propagate.

    Returns:
        ``first()`` when it was called, else True when it was safe (it still is on return).
    """
    running = _set_preload()
    if first is None and running and _guardian is not None:
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
        start_fork_server()  # before the guardian and the tracker when there is no worker:
        start_guardian_early()  # what the server makes (a socket, a temporary directory) is
        start_resource_tracker()  # written before any fork makes its pages copy-on-write
    except Exception as exc:
        logger.debug("fork server not forked: %r", exc)
    return went


def _set_preload() -> bool:
    # True when the server runs already: its preload list can no longer change.
    try:
        import multiprocessing.forkserver as forkserver

        server: Any = forkserver._forkserver  # 3.15's on_error is not in the stubs yet
        if getattr(server, "_forkserver_pid", None) is not None:
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


# The guardian: ``python -I -S -c GUARDIAN hybridexec-guardian`` (the last word names it in
# process listings). It reads pids from stdin; at EOF it kills their process groups. A pid is
# only killed while it is the process registered (same start time in /proc), or when no process
# has it any more but its group still has members (the kernel never reuses a pid that is still
# a group id, so that group is ours). Entries whose process and group are both gone are pruned.
# Then the shared-memory segments of this process (its parent) and of those it killed go, once
# they are dead (names ``hx<pid>_<16 hex>``): nothing else would unlink them until the next
# Executor's janitor. EOF comes as the kernel closes a dying parent's files, before it is dead:
# the guardian waits up to 1 s for it. An orderly stop writes ``x`` first: this process is alive
# and unlinks its own. A live owner's segments are never touched, nor a pid no longer ours.
# Last, multiprocessing's temporary directory of a dead parent (``pymp-*``: the fork server's
# socket), which its exit would have removed; ``d<path>`` lines name it.
GUARDIAN = """
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
owner = os.getppid()
def started(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None
def ours(pid, when):
    now = started(pid)
    return now is None or when is None or now == when
def group_alive(pid):
    try:
        os.killpg(pid, 0)
        return True
    except OSError:
        return False
pids = {}
rest = b""
orderly = False
tempdirs = set()
while True:
    chunk = os.read(0, 4096)
    if not chunk:
        break
    *lines, rest = (rest + chunk).split(b"\\n")
    for line in lines:
        if line == b"x":
            orderly = True
        elif line[:1] == b"d":
            tempdirs.add(line[1:])
        else:
            pids[int(line)] = started(int(line))
    if len(pids) > 64:
        pids = {p: w for p, w in pids.items() if started(p) == w or group_alive(p)}
for pid, when in pids.items():
    if ours(pid, when):
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
                break
            except OSError:
                pass
def dead(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] in (b"Z", b"X")
owners = {pid for pid, when in pids.items() if ours(pid, when)}
if not orderly:
    owners.add(owner)
deadline = time.monotonic() + 1.0
while not all(dead(pid) for pid in owners) and time.monotonic() < deadline:
    time.sleep(0.01)
owners = {pid for pid in owners if dead(pid)}
try:
    names = os.listdir("/dev/shm")
except OSError:
    names = []
for name in names:
    pid, _, rest = name[2:].partition("_")
    if name[:2] == "hx" and pid.isdigit() and int(pid) in owners and len(rest) == 16:
        try:
            if os.lstat("/dev/shm/" + name).st_uid == os.getuid():
                os.unlink("/dev/shm/" + name)
        except OSError:
            pass
if owner in owners:
    for top in tempdirs:
        if os.path.basename(top).startswith(b"pymp-"):
            for root, dirs, files in os.walk(top, topdown=False):
                for name in files + dirs:
                    try:
                        (os.rmdir if name in dirs else os.unlink)(os.path.join(root, name))
                    except OSError:
                        pass
            try:
                os.rmdir(top)
            except OSError:
                pass
"""

GUARDIAN_NAME = "hybridexec-guardian"
"""The last word of the guardian's command line when it is a new interpreter."""

GUARDIAN_COMM = "hx-guardian"
"""The guardian's process name (``/proc/<pid>/comm``) when it is a copy of this process."""


class _Guardian:
    """The guardian as this process holds it: its pid and the write end of its pipe.

    ``popen`` is the ``Popen`` when it was started as a new interpreter, None when it is a copy
    of this process (our child all the same).
    """

    __slots__ = ("fd", "pid", "popen")

    def __init__(self, pid: int, fd: int, popen: subprocess.Popen[bytes] | None) -> None:
        self.pid = pid
        self.fd = fd
        self.popen = popen

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def close(self) -> None:
        """Close our end of its pipe: the guardian kills what is registered, and exits."""
        if self.popen is not None:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        elif self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def wait(self, timeout: float) -> None:
        """Wait for it to exit; kill it after ``timeout`` seconds."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            return
        if not _wait_child(self.pid, timeout):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_child(self.pid, None)


def _wait_child(pid: int, timeout: float | None) -> bool:
    """Reap the child ``pid``, waiting at most ``timeout`` seconds; False if it is alive."""
    if timeout is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            try:
                wait([pidfd], timeout)
            finally:
                os.close(pidfd)
    try:
        return os.waitpid(pid, os.WNOHANG if timeout is not None else 0)[0] != 0
    except ChildProcessError:
        return True


_guardian_lock = threading.Lock()
_guardian: _Guardian | None = None


def start_guardian_early() -> None:
    """Fork the guardian from this process now; the caller made sure that it is safe.

    A copy of this process starts in about a millisecond and has Python running already; a
    new interpreter costs several on the first child's path, and tens of milliseconds of CPU
    that the first worker's start has to share. Where it is not safe, ``guard`` starts the
    guardian as a new interpreter with the first child, as before.
    """
    global _guardian
    if os.name != "posix":
        return
    with _guardian_lock:
        if _guardian is not None:
            return
        read, write = os.pipe()

        def run() -> None:
            os.setsid()  # no Ctrl-C nor group signal meant for us
            os.dup2(read, 0)
            os.close(read)
            exec(compile(GUARDIAN, "<hybridexec-guardian>", "exec"), {"__name__": "guardian"})

        try:
            pid = fork_copy(GUARDIAN_COMM, {read}, run)
        finally:
            os.close(read)
        if pid is None:
            os.close(write)
            return
        _guardian = _Guardian(pid, write, None)
        try:
            _tell_tempdir(write)  # the fork server's, when it was forked first
        except OSError:
            pass  # it died already: guard() starts another
        _lifecycle.on_exit(_lifecycle.SEGMENTS, _stop_guardian)


def guard(pid: int) -> None:
    """Have the guardian kill ``pid``'s process tree when this process dies, however it dies.

    Called by whoever starts a child, right after the start. Best effort: if the guardian
    cannot be started, the child's lifeline thread and death signal remain.
    """
    global _guardian
    if os.name != "posix":
        return
    with _guardian_lock:
        try:
            if _guardian is None or not _guardian.alive():
                if _guardian is not None:
                    _guardian.close()  # it died (killed from outside): our end of its pipe too
                popen = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", GUARDIAN, GUARDIAN_NAME],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,  # no Ctrl-C nor group signal meant for us
                )
                assert popen.stdin is not None
                _guardian = _Guardian(popen.pid, popen.stdin.fileno(), popen)
                _lifecycle.on_exit(_lifecycle.SEGMENTS, _stop_guardian)
            os.write(_guardian.fd, b"%d\n" % pid)
            _tell_tempdir(_guardian.fd)
        except OSError as exc:
            logger.warning("hybridexec: no guardian for child %d: %r", pid, exc)


_tempdir_told: str | None = None
_tempdir_inherited: str | None = None  # a forked child's copy of its parent's: never to remove


def _tempdir() -> str | None:
    # multiprocessing's per-process temporary directory, if made (``util.get_temp_dir`` makes it).
    config = getattr(multiprocessing.current_process(), "_config", None)
    tempdir = config.get("tempdir") if isinstance(config, dict) else None
    return tempdir if isinstance(tempdir, str) else None


def _tell_tempdir(fd: int) -> None:
    """Name multiprocessing's temporary directory to the guardian, once: it is ours to remove."""
    global _tempdir_told
    tempdir = _tempdir()
    if tempdir is not None and tempdir not in (_tempdir_told, _tempdir_inherited):
        os.write(fd, b"d" + os.fsencode(tempdir) + b"\n")
        _tempdir_told = tempdir


def _stop_guardian() -> None:
    # At exit, after the lanes and actors stopped their children: EOF makes the guardian kill
    # whatever is still registered and alive, and exit; it takes milliseconds.
    global _guardian
    with _guardian_lock:
        guardian, _guardian = _guardian, None
    if guardian is None:
        return
    try:
        os.write(guardian.fd, b"x\n")  # orderly: it must not wait for us to die
    except OSError:
        pass  # it died: nothing to tell
    guardian.close()
    guardian.wait(1.0)


def _after_fork() -> None:
    # In a forked child: the lifeline's and the guardian's write ends must not stay open here,
    # or the parent's children would outlive a SIGKILLed parent for as long as this child
    # lives. The lifeline's read end is dropped, not closed: under the fork start method it is
    # the very object the new worker watches. The guardian stays the parent's (this child
    # starts its own with its first child); it is dropped without a wait.
    global _lifeline_pair, _lifeline_lock, _guardian, _guardian_lock, _tempdir_inherited
    _tempdir_inherited = _tempdir()  # the parent's: this child's guardian must never remove it
    _lifeline_lock = threading.Lock()
    pair, _lifeline_pair = _lifeline_pair, None
    if pair is not None:
        pair[1].close()
    _guardian_lock = threading.Lock()
    guardian, _guardian = _guardian, None
    if guardian is not None:
        guardian.close()
        if guardian.popen is not None:
            guardian.popen.returncode = 0  # not ours to reap: keeps Popen.__del__ from it
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
    let_go_of_fork_server()  # what a fork-server child does as it starts, the same way
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    if server is not None and hasattr(server, "_lock"):
        server._lock = threading.Lock()  # the forking thread alone is left: never take it


_lifecycle.on_fork(_after_fork)
