"""Child scripts and task functions for ``test_limit_faults.py`` (issue 15, items 4 and 6).

Each script runs as ``python -m tests.limit_scripts NAME ARGS...`` with the repository root on
``PYTHONPATH``: resource limits (open files, processes) are set in that child only, never in
the test runner. A script prints one JSON line, what the test asserts on. Task functions live
here so that worker processes import them by reference under every start method.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
import time
from typing import Any

ITEMS = 24


def square(x: int) -> int:
    """The task of every map here."""
    return x * x


CALLS: list[int] = []  # the items square_counted ran, in this process


def square_counted(x: int) -> int:
    """``square``, counting its calls (the thread lane runs it in this process)."""
    CALLS.append(x)
    return x * x


def held_in_place(x: int, directory: str, hold: float) -> int:
    """Mark this call running in ``directory`` (a file named after the pid) for ``hold`` s."""
    path = os.path.join(directory, f"running-{os.getpid()}-{x}")
    with open(path, "w"):
        pass
    names = [n for n in os.listdir(directory) if n.startswith("running-")]
    running = [n for n in names if _alive(int(n.split("-")[1]))]
    with open(os.path.join(directory, "seen"), "a") as seen:
        seen.write(f"{len(running)}\n")
    time.sleep(hold)  # in C: a process call is stopped only by its kill
    os.unlink(path)
    return x


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a killed worker not yet reaped is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _outcome(value: Any) -> Any:
    """A result as JSON: the value, or the exception's class name and message."""
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)[:200]}
    return value


_loops: list[Any] = []


def _loop() -> Any:
    """The event loop of ``amap``: made before the limit (it needs descriptors itself)."""
    import asyncio

    if not _loops:
        _loops.append(asyncio.new_event_loop())
    return _loops[0]


def _map_every_kind(kinds: list[str], return_exceptions: bool, **options: Any) -> dict[str, Any]:
    """Map ``square`` once per kind; what each map returned or raised."""
    import hybridexec as hx

    out: dict[str, Any] = {}
    for kind in [*kinds, "amap"]:
        began = time.monotonic()
        with hx.Executor(max_processes=2) as ex:
            try:
                if kind == "amap":  # its map is consumed by a thread of its own
                    got = _loop().run_until_complete(
                        hx.amap(square, range(ITEMS), executor=ex,
                                return_exceptions=return_exceptions, **options)
                    )  # fmt: skip
                else:
                    fn = square_counted if kind == "thread" else square
                    got = hx.map(
                        fn, range(ITEMS), kind=kind, executor=ex,
                        return_exceptions=return_exceptions, **options,
                    )  # fmt: skip
                out[kind] = {"results": [_outcome(v) for v in got]}
            except Exception as exc:
                out[kind] = {"raised": _outcome(exc)}
        out[kind]["seconds"] = round(time.monotonic() - began, 2)
        # Every thread gone (the executor's shutdown waited): no call can still run.
        out[kind]["ran"] = [CALLS.count(x) for x in range(ITEMS)]
        CALLS.clear()
    return out


def few_descriptors(free: int, return_exceptions: bool) -> dict[str, Any]:
    """Maps with ``free`` descriptors to spare (RLIMIT_NOFILE just above those in use)."""
    import hybridexec  # noqa: F401 - its modules loaded before the limit: not what is tested

    _loop()
    in_use = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + free, hard))
    try:
        out = _map_every_kind(["thread", "process", "auto"], return_exceptions, limit=4)
    finally:
        # multiprocessing's exit handlers need descriptors to remove their temporary files.
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return out


def _executor_maps() -> dict[str, Any]:
    """``Executor.map`` per lane and shape: the values it gave, then what it raised."""
    import hybridexec as hx

    out: dict[str, Any] = {}
    for kind in ("thread", "process"):
        for shape in ({}, {"limit": 4}, {"chunksize": 3, "limit": 6}, {"buffersize": 2}):
            values: list[int] = []
            with hx.Executor(max_processes=2) as ex:
                try:
                    values.extend(ex.options(kind=kind).map(square, range(ITEMS), **shape))
                    error = None
                except Exception as exc:
                    error = _outcome(exc)
            out[f"{kind} {shape}"] = {"values": values, "raised": error}
    return out


def executor_map_few_descriptors(free: int) -> dict[str, Any]:
    """``Executor.map`` with ``free`` descriptors to spare."""
    import hybridexec  # noqa: F401 - loaded before the limit

    in_use = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + free, hard))
    try:
        return _executor_maps()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE = 21, 24


def _limit_processes(spare: int, later: int = 0) -> str | None:
    """Allow ``spare`` more processes or threads for this user; None, or why it cannot.

    ``later``: how many more the soft limit may be raised to afterwards (the hard limit).

    RLIMIT_NPROC does not bind root. As root, the real user becomes one that no process has
    (the effective one stays root: files stay readable) and the two capabilities that lift the
    limit go, from this process and everything it starts. A user of its own: processes of
    another run of these scripts (``nobody``'s, as it was) counted against the limit, and
    came and went while the map ran.
    """
    uid = _unused_uid()
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                return f"cannot drop capability {cap}: errno {ctypes.get_errno()}"
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; x2 (64 bits)
        if libc.capget(header, data) != 0:
            return "capget failed"
        for cap in (_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE):
            for field in (0, 1):  # effective, permitted
                data[field] &= ~(1 << cap)
        if libc.capset(header, data) != 0:
            return f"capset failed: errno {ctypes.get_errno()}"
        os.setresuid(uid, 0, 0)
    else:
        uid = os.getuid()
    tasks = 0  # processes and threads of this user: what the limit counts
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid or int(pid) == os.getpid():
                    tasks += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks + spare, tasks + spare + later))
    return None


def _unused_uid() -> int:
    """A user id that no process has now, different in each script (see _limit_processes)."""
    taken = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                taken.add(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                pass
    uid = 100_000 + os.getpid() % 100_000
    while uid in taken:
        uid += 1
    return uid


def few_processes(spare: int, return_exceptions: bool, kinds: list[str]) -> dict[str, Any]:
    """Maps with ``spare`` processes or threads to spare for this user (RLIMIT_NPROC)."""
    import hybridexec  # noqa: F401 - loaded before the limit

    _loop()
    why = _limit_processes(spare)
    if why is not None:
        return {"skip": why}
    return _map_every_kind(kinds, return_exceptions, limit=4)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    started = time.monotonic()
    if name == "few_descriptors":
        result = few_descriptors(int(args[0]), args[1] == "1")
    elif name == "executor_map_few_descriptors":
        result = executor_map_few_descriptors(int(args[0]))
    elif name == "few_processes":
        result = few_processes(int(args[0]), args[1] == "1", args[2].split(","))
    else:
        raise SystemExit(f"unknown script {name}")
    result["seconds"] = time.monotonic() - started
    print(json.dumps(result), flush=True)
