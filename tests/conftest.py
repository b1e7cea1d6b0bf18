"""Shared fixtures: every test is checked for leaked processes, threads, /dev/shm segments and
named semaphores; the run as a whole for multiprocessing temporary directories (``pymp-*``) and
semaphores left behind."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import multiprocessing.util
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from typing import Any

import psutil
import pytest

import hybridexec
from hybridexec import _default

SHM_DIR = "/dev/shm"
SHM_PREFIXES = ("hx", "psm_")
SEM_PREFIX = "sem."  # POSIX named semaphores: multiprocessing's (sem.mp-*), loky's, ...
SETTLE_SECONDS = 10.0


# Hook for a test module whose fixture runs long-lived infrastructure that starts and stops
# processes of its own (a Ray runtime's worker pool): it adds the pids of the processes at the
# top of that infrastructure, whose descendants the leak check then ignores, and removes them
# when it stops the infrastructure.
EXEMPT_TREES: set[int] = set()


def _infrastructure(proc: psutil.Process) -> bool:
    # multiprocessing's forkserver and resource tracker, and hybridexec's guardian (which kills
    # the children of a SIGKILLed parent), live for the whole session.
    try:
        cmdline = " ".join(proc.cmdline())
        if EXEMPT_TREES and any(p.pid in EXEMPT_TREES for p in proc.parents()):
            return True
        comm = proc.name()  # the helpers forked from us (_zygote): named, our command line
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return True
    return comm in ("hx-guardian", "hx-tracker") or any(
        name in cmdline for name in ("forkserver", "resource_tracker", "hybridexec-guardian")
    )


def _children() -> set[int]:
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True) if not _infrastructure(p)}


# ---- shared-memory segments ------------------------------------------------------------------
# A test's leak is a segment that appeared while it ran and that this run made; another
# program on the machine (another test run, CI) makes and removes segments in /dev/shm all the
# time, so a new name alone proves nothing. What proves it ours:
# - ``hx<pid>_...`` (hybridexec's names carry their owner's pid): the owner is this process, a
#   process seen in its tree during the test (at setup, at teardown) or a program this process
#   started with ``subprocess`` during the test (a scenario script, SIGKILLed and reaped by
#   then). An owner never seen as ours, dead or alive, is another program's.
# - ``psm_*`` (multiprocessing.shared_memory's names carry no owner): made by this process
#   (``SharedMemory(create=True)`` here, ``_make_filename`` records the names it hands out) or
#   mapped by a process of its tree at teardown. One nobody of ours maps (closed but not yet
#   unlinked, or left by a SIGKILLed program) is another program's.
# - any other ``hx`` name (no owner pid: a test's own stand-in for a foreign name): ours.
# New means absent from the setup listing, raw (a foreign segment that was mapped at setup and
# is not at teardown is not new): a name is made once, so that is "created during the test"
# with no clock involved.

HX_NAME = re.compile(r"hx(\d+)_")

SPAWNED: list[int] = []
"""Pids of the programs this process started with ``subprocess`` (appended, never cleared)."""

MADE_PSM: set[str] = set()
"""``psm_*`` names ``multiprocessing.shared_memory`` handed out in this process."""

_popen_init = subprocess.Popen.__init__


def _recording_popen_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
    _popen_init(self, *args, **kwargs)
    SPAWNED.append(self.pid)


setattr(subprocess.Popen, "__init__", _recording_popen_init)  # noqa: B010

_make_filename: Callable[[], str] | None = getattr(shared_memory, "_make_filename", None)


def _recording_make_filename() -> str:
    assert _make_filename is not None
    name = _make_filename()
    MADE_PSM.add(name.lstrip("/"))
    return name


if _make_filename is not None:
    setattr(shared_memory, "_make_filename", _recording_make_filename)  # noqa: B010


@dataclasses.dataclass(frozen=True)
class SegmentSnapshot:
    """What ``leaked_segments`` compares with: /dev/shm and this process's tree at setup."""

    names: frozenset[str]
    tree: frozenset[int]
    spawned: int  # len(SPAWNED) then


def _shm_names() -> set[str]:
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(SHM_PREFIXES)}


def _tree() -> set[int]:
    me = psutil.Process()
    return {me.pid} | {p.pid for p in me.children(recursive=True)}


def segment_snapshot() -> SegmentSnapshot:
    """Take the setup side of the segment leak check."""
    tree = _tree()  # before the listing: a process that makes a segment after it is seen
    return SegmentSnapshot(frozenset(_shm_names()), frozenset(tree), len(SPAWNED))


def leaked_segments(before: SegmentSnapshot) -> set[str]:
    """The segments this run made since ``before`` that are still in /dev/shm."""
    new = _shm_names() - before.names
    if not new:
        return set()
    tree = _tree()
    seen = before.tree | tree | set(SPAWNED[before.spawned :])
    ours: set[str] = set()
    unowned: set[str] = set()
    for name in new:
        match = HX_NAME.match(name)
        if match is not None:
            if int(match.group(1)) in seen:
                ours.add(name)
        elif name.startswith("psm_") and name not in MADE_PSM:
            unowned.add(name)
        else:
            ours.add(name)
    return ours | _mapped_by(unowned, tree)


def _mapped_by(names: set[str], pids: set[int]) -> set[str]:
    """Those of ``names`` (in /dev/shm) that one of ``pids`` maps."""
    if not names:
        return set()
    inodes: dict[int, str] = {}
    for name in names:
        try:
            inodes[os.stat(os.path.join(SHM_DIR, name)).st_ino] = name
        except OSError:
            continue
    found: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                held = {int(line.split()[4]) for line in maps if f" {SHM_DIR}/" in line}
        except (OSError, ValueError, IndexError):
            continue
        found.update(inodes[ino] for ino in held & inodes.keys())
    return found


# multiprocessing names its semaphores "<semprefix>-<random>"; processes forked from this one
# (workers, hybridexec's fork server) inherit the run's prefix, so a name of the run is known
# even once the process that made it is gone.
RUN_SEMPREFIX = f"/mp-hxrun{os.getpid()}"
getattr(multiprocessing.current_process(), "_config", {})["semprefix"] = RUN_SEMPREFIX


def _semaphores() -> set[str]:
    """The run's named semaphores in /dev/shm: made with its prefix, or held by its processes."""
    inodes: dict[int, str] = {}
    try:
        for entry in os.scandir(SHM_DIR):
            if entry.name.startswith(SEM_PREFIX):
                try:
                    inodes[entry.inode()] = entry.name
                except OSError:  # unlinked meanwhile
                    continue
    except FileNotFoundError:
        return set()
    own_prefix = SEM_PREFIX + RUN_SEMPREFIX.lstrip("/") + "-"
    ours = {name for name in inodes.values() if name.startswith(own_prefix)}
    if len(ours) == len(inodes):
        return ours
    # Other names (a spawned process's, loky's) carry no owner. sem_open maps the file into
    # the process that opens it, under the temporary name it made it with (so by inode): those
    # mapped by this process or its descendants are the run's.
    tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
    for proc in tree:
        try:
            with open(f"/proc/{proc.pid}/maps") as maps:
                held = {int(line.split()[4]) for line in maps if f" {SHM_DIR}/" in line}
        except (OSError, ValueError, IndexError):
            continue
        ours.update(inodes[ino] for ino in held & inodes.keys())
    return ours


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Wait for ``predicate()`` to hold, up to ``timeout`` seconds; return whether it did."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def process_gone(proc: psutil.Process | int) -> bool:
    """Whether a process has ended (exited, reaped or a zombie), race-free.

    ``is_running()`` then ``status()`` is a race: the process may be reaped between the two
    (``NoSuchProcess``: CI failed on it once); every question here counts that as ended.
    """
    try:
        if isinstance(proc, int):
            proc = psutil.Process(proc)
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---- multiprocessing temporary directories --------------------------------------------------
# multiprocessing makes one ``pymp-*`` directory per process that needs one (a fork server's
# socket) in TMPDIR, and removes it at that process's exit; a process that is SIGKILLed or
# ends with os._exit leaves it, unless hybridexec's guardian removes it. The run sets TMPDIR
# (and ``tempfile.tempdir`` here) to a directory of its own: every process of the run (this
# one, child scripts, workers) makes its directories there, so the check below counts the
# run's alone, whatever else runs on the machine.

RUN_TMPDIR: str | None = None
"""The run's TMPDIR while the session runs."""

_PYMP_FIRST_SEEN: dict[str, str] = {}  # directory -> the test during which it appeared


def _pymp_dirs() -> set[str]:
    if RUN_TMPDIR is None:
        return set()
    own = _own_pymp_dir()
    try:
        names = os.listdir(RUN_TMPDIR)
    except OSError:
        return set()
    return {n for n in names if n.startswith("pymp-") and os.path.join(RUN_TMPDIR, n) != own}


def _own_pymp_dir() -> str | None:
    # This process's, which multiprocessing removes as it exits (after the session).
    config = getattr(multiprocessing.current_process(), "_config", {})
    tempdir = config.get("tempdir")
    return tempdir if isinstance(tempdir, str) else None


def _remove_run_tmpdir(path: str, pid: int) -> None:
    if os.getpid() == pid:  # never in a forked child exiting
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_pymp_dirs_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run if it leaves ``pymp-*`` directories behind (see the comment above)."""
    global RUN_TMPDIR
    tmp_path_factory.getbasetemp()  # pytest's own directories stay where they were
    run_dir = tempfile.mkdtemp(prefix="hx-run-")  # short: AF_UNIX paths end at 107 bytes
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = RUN_TMPDIR = run_dir
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        wait_until(lambda: not _pymp_dirs(), 5)  # a guardian at work for a killed script
        left = sorted(_pymp_dirs())
        RUN_TMPDIR = None
        own = _own_pymp_dir()
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            if path != own:
                shutil.rmtree(path, ignore_errors=True)
        # The directory itself goes after multiprocessing removed this process's (-100).
        multiprocessing.util.Finalize(
            None, _remove_run_tmpdir, args=(run_dir, os.getpid()), exitpriority=-200
        )
        where = [f"{name} (appeared in {_PYMP_FIRST_SEEN.get(name, '?')})" for name in left]
        assert not left, f"the run left multiprocessing temporary directories: {where}"


@pytest.fixture(scope="session", autouse=True)
def no_semaphores_left() -> Iterator[None]:
    """Fail the run if named semaphores created during it are left in /dev/shm.

    Only names that appeared during the run count (those there before belong to others); a
    module-scoped fixture that leaves one at its teardown escapes ``no_leaks`` but not this.
    """
    before = _semaphores()
    yield
    gc.collect()  # a multiprocessing lock unlinks its name when it is collected
    assert wait_until(lambda: not (_semaphores() - before), 5), (
        f"the run left named semaphores {sorted(_semaphores() - before)}"
    )


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves child processes, threads, shared-memory segments or named
    semaphores behind."""
    children = _children()
    threads = _threads()
    segments = segment_snapshot()
    semaphores = _semaphores()
    pymp = _pymp_dirs()
    yield
    for name in _pymp_dirs() - pymp:  # the run fails if it stays (no_pymp_dirs_left)
        _PYMP_FIRST_SEEN.setdefault(name, request.node.nodeid)
    if _default._default is not None:
        _default._default.shutdown(wait=True, cancel_futures=True)
        _default._default = None

    def clean() -> bool:
        return not (_children() - children) and not (_threads() - threads)

    if not wait_until(clean, SETTLE_SECONDS):
        leaked_procs = _children() - children
        leaked_threads = _threads() - threads
        for pid in leaked_procs:  # do not let one leak poison the next tests
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        pytest.fail(
            f"test leaked processes {sorted(leaked_procs)} "
            f"and threads {sorted(t.name for t in leaked_threads)}"
        )
    leaked = leaked_segments(segments)
    assert not leaked, f"test leaked shared-memory segments {sorted(leaked)}"
    if _semaphores() - semaphores:
        gc.collect()  # a multiprocessing lock unlinks its name when it is collected
        # (a program elsewhere whose semaphore this run saw may still be unlinking it)
        wait_until(lambda: not (_semaphores() - semaphores), 2)
    leaked_semaphores = _semaphores() - semaphores
    assert not leaked_semaphores, f"test leaked named semaphores {sorted(leaked_semaphores)}"


@pytest.fixture(params=["forkserver", "spawn", "fork"])
def start_method(request: pytest.FixtureRequest) -> str:
    """Each start method the process lane supports."""
    method: str = request.param
    return method


@pytest.fixture
def executor() -> Iterator[hybridexec.Executor]:
    """An executor with two worker processes, shut down after the test."""
    ex = hybridexec.Executor(max_processes=2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def ex(executor: hybridexec.Executor) -> hybridexec.Executor:
    """The ``executor`` fixture under a shorter name."""
    return executor
