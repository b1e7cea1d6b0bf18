"""The guardian: a small process that kills every child's process tree when this one dies.

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
import multiprocessing.spawn
import os
import signal
import subprocess
import threading
from multiprocessing.connection import wait
from typing import Any

from .. import _lifecycle
from ._zygote import adopt_tracker, fork_copy, fork_tracker, tracker_pipe

logger = logging.getLogger("hybridexec")

# The guardian: ``python -I -S -c GUARDIAN PID hybridexec-guardian`` (the last word names it in
# process listings). It reads pids from stdin; at EOF it kills their process groups. A pid is
# only killed while it is the process registered (same start time in /proc), or when no process
# has it any more but its group still has members (the kernel never reuses a pid that is still
# a group id, so that group is ours). Entries whose process and group are both gone are pruned.
# Then the shared-memory segments of this process (its parent) and of those it killed go, once
# they are dead (``hx<pid>_<16 hex>``, maybe ``w<maker pid>`` after): nothing else would unlink
# them until the next Executor's janitor. EOF comes as the kernel closes a dying parent's files,
# before it is dead: the guardian waits up to 1 s for it. An orderly stop writes ``x`` first:
# this process is alive and unlinks its own. A live owner's segments are never touched, nor a
# pid no longer ours.
# Last, multiprocessing's temporary directory of a dead parent (``pymp-*``: the fork server's
# socket), which its exit would have removed; ``d<path>`` lines name it. A copy of this process
# also holds the resource tracker's pipe (``TRACKER``: its read end, and what forks the tracker
# on it): the tracker is forked as the first message to it arrives (``_zygote.tracker_pipe``).
GUARDIAN = """
import os, select, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
# PID is ours (OWNER in a copy), not getppid(): started late, it may find us dead already.
owner = OWNER if "OWNER" in globals() else int(__import__("sys").argv[1])
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
tracker = globals().get("TRACKER")
if tracker is not None:
    ready = select.poll()  # not select(): the inherited descriptor may be past FD_SETSIZE
    ready.register(0, select.POLLIN)
    ready.register(tracker[0], select.POLLIN)
while True:
    if tracker is not None and tracker[0] in [fd for fd, _ in ready.poll()]:
        tracker[1](tracker[0])
        tracker = None
        continue
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
if tracker is not None:  # never needed: forked all the same, for what comes after us
    tracker[1](tracker[0])
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
try:  # this PID namespace, as segment names carry it (another's same pids are not ours)
    space = "%04x" % (os.stat("/proc/self/ns/pid").st_ino & 0xFFFF)
except OSError:
    space = None
for name in names:
    pid, _, rest = name[2:].partition("_")
    tag = rest[17:21] if rest[16:17] == "t" else None
    if tag is not None and space is not None and tag != space:
        continue
    tail = rest[25:] if rest[16:17] == "t" else rest[16:]  # past the owner's identity, if any
    made = tail[:1] == "w" and tail[1:].isdigit()  # a worker's result for its parent
    if name[:2] == "hx" and pid.isdigit() and int(pid) in owners and (not tail or made):
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
    guardian as a new interpreter with the first child, as before. The copy also holds the
    resource tracker's pipe, and forks the tracker once it is needed (``tracker_pipe``).
    """
    global _guardian, _tempdir_told
    if os.name != "posix":
        return
    with _guardian_lock:
        if _guardian is not None:
            return
        read, write = os.pipe()
        tracker = tracker_pipe()
        names: dict[str, Any] = {"__name__": "guardian", "OWNER": os.getpid()}
        if tracker is not None:
            names["TRACKER"] = (tracker[0], fork_tracker)

        def run() -> None:
            os.setsid()  # no Ctrl-C nor group signal meant for us
            os.dup2(read, 0)
            os.close(read)
            exec(compile(GUARDIAN, "<hybridexec-guardian>", "exec"), names)

        try:
            pid = fork_copy(GUARDIAN_COMM, {read} | ({tracker[0]} if tracker else set()), run)
        finally:
            os.close(read)
            if tracker is not None:
                os.close(tracker[0])
        if pid is None:
            os.close(write)
            if tracker is not None:
                os.close(tracker[1])
            return
        if tracker is not None:
            adopt_tracker(tracker[1])
        _guardian = _Guardian(pid, write, None)
        _tempdir_told = None
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
    global _guardian, _tempdir_told
    if os.name != "posix":
        return
    with _guardian_lock:
        try:
            if _guardian is None or not _guardian.alive():
                if _guardian is not None:
                    _guardian.close()  # it died (killed from outside): our end of its pipe too
                python = multiprocessing.spawn.get_executable()  # an embedding host's (A7)
                popen = subprocess.Popen(
                    [python, "-I", "-S", "-c", GUARDIAN, str(os.getpid()), GUARDIAN_NAME],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,  # no Ctrl-C nor group signal meant for us
                )
                assert popen.stdin is not None
                _guardian = _Guardian(popen.pid, popen.stdin.fileno(), popen)
                _tempdir_told = None  # named to the new guardian below, as to the one before
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


def forget_after_fork() -> None:
    """In a forked child: the parent's guardian is not ours; drop our end without a wait.

    Our copy of its pipe must not stay open here, or the parent's children would outlive a
    SIGKILLed parent for as long as this child lives. This child starts its own guardian with
    its first child; the temporary directory it inherited stays the parent's.
    """
    global _guardian, _guardian_lock, _tempdir_inherited
    _tempdir_inherited = _tempdir()  # the parent's: this child's guardian must never remove it
    _guardian_lock = threading.Lock()
    guardian, _guardian = _guardian, None
    if guardian is not None:
        guardian.close()
        if guardian.popen is not None:
            guardian.popen.returncode = 0  # not ours to reap: keeps Popen.__del__ from it
