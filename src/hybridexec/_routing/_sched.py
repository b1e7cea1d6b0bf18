"""What the kernel's scheduler says about one thread: run-queue wait and state.

A thread off the CPU is in one of two very different situations:

- **runnable** (state ``R``), waiting on a run queue because every core is busy (another
  process hogs the CPU, BLAS helper threads still spin after a matrix product): it *could not
  get a CPU*. Linux counts that time in the second field of
  ``/proc/self/task/<tid>/schedstat`` (nanoseconds spent waiting on a run queue);
- **sleeping** (``S``/``D``): it waits for something: the GIL (a futex), I/O, a timer.

The GIL probe must not confuse the first with the second: a CPU-bound thread denied a CPU
looks, by its CPU clock alone, exactly like one that waits for I/O or for the GIL. The figures
here let it discount run-queue time before judging.

A sleeping thread may wait for the GIL or for anything else. ``/proc/self/task/<tid>/syscall``
tells: a thread waiting for the GIL sleeps in ``futex`` on the GIL's condition variable (or its
mutex), one fixed address per interpreter, found once per process by ``gil_futex`` (a helper
thread that wants the GIL while the prober holds it). Other threads of the process running
beside a measured call (Python loops holding the GIL in turns, preempted while holding it) then
cannot pass its waits for the GIL off as I/O, nor its waits for I/O as GIL waits.

Reads go through ``pread`` called with the GIL held (``ctypes.PyDLL``): the probe reads them
while it stalls the GIL on purpose, and a read that released the GIL would end the stall. Where
``/proc`` or ``pread`` is missing (macOS), every read returns None and the probe works without
(as it did before these figures existed).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

_BUFFER = 512

clock_of: Callable[[int], int] | None = getattr(time, "pthread_getcpuclockid", None)


@functools.cache
def _gil_holding_pread() -> Callable[[int, Any, int, int], int] | None:
    import ctypes  # on first use: ~1 ms, and only measured calls and the probe read here

    try:
        pread = ctypes.PyDLL(None).pread
    except (OSError, AttributeError):
        return None
    pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
    pread.restype = ctypes.c_ssize_t
    return pread


def _read(fd: int | None) -> bytes | None:
    pread = _gil_holding_pread()
    if fd is None or pread is None:
        return None
    import ctypes

    buf = ctypes.create_string_buffer(_BUFFER)
    n = pread(fd, buf, _BUFFER, 0)
    return buf.raw[:n] if n > 0 else None


@functools.cache
def _gil_holding_open() -> Callable[[bytes, int], int] | None:
    import ctypes

    try:
        open_ = ctypes.PyDLL(None).open
    except (OSError, AttributeError):
        return None
    open_.argtypes = [ctypes.c_char_p, ctypes.c_int]  # no O_CREAT: no mode argument
    open_.restype = ctypes.c_int
    return open_


def _open(path: str) -> int | None:
    # Opened with the GIL held, as the reads are: the probe thread opens its own handles
    # as it starts, beside the Python loop it is to measure, and an ``os.open`` that let
    # the GIL go cost it a switch interval (5 ms) to get it back: the first stall, and a
    # GIL-bound verdict, came that much later.
    if _gil_holding_pread() is None:
        return None
    flags = os.O_RDONLY | os.O_CLOEXEC
    open_ = _gil_holding_open()
    if open_ is not None:
        fd = open_(os.fsencode(path), flags)
        return fd if fd >= 0 else None
    try:
        return os.open(path, flags)
    except OSError:
        return None


class ThreadSched:
    """Open handles on one thread's scheduler figures; readable from any thread of the process.

    Args:
        tid: The thread's native id (``threading.get_native_id()`` on that thread).
    """

    __slots__ = ("sched_fd", "stat_fd", "sys_fd")

    def __init__(self, tid: int, syscall: bool = True) -> None:
        self.stat_fd = _open(f"/proc/self/task/{tid}/stat")
        self.sched_fd = _open(f"/proc/self/task/{tid}/schedstat")
        self.sys_fd = _open(f"/proc/self/task/{tid}/syscall") if syscall else None

    def waited(self) -> float | None:
        """Seconds the thread has spent runnable on a run queue without a CPU, since it began.

        Returns:
            The figure, or None where the kernel does not provide it.
        """
        return _waited(_read(self.sched_fd))

    def runnable(self) -> bool | None:
        """Whether the thread is runnable (state ``R``) now; None if it cannot be read."""
        return _state_runnable(_read(self.stat_fd))

    def on_gil(self) -> bool | None:
        """Whether the thread, asleep, waits for the GIL (None: unknown, or it is not asleep).

        Read while the caller holds the GIL (the probe's stall): a thread that wants the GIL
        then sleeps on it for sure.
        """
        gil = _GIL[0]
        if gil is None or self.sys_fd is None:
            return None
        return _futex_near(_read(self.sys_fd), gil)

    def detach(self) -> list[int]:
        """Forget the handles and return them, for whoever closes them once no read runs."""
        fds = [fd for fd in (self.stat_fd, self.sched_fd, self.sys_fd) if fd is not None]
        self.stat_fd = self.sched_fd = self.sys_fd = None
        return fds


_FUTEX = {"x86_64": b"202", "aarch64": b"98"}.get(os.uname().machine)
"""The ``futex`` system call's number, as ``/proc/<tid>/syscall`` shows it."""
GIL_SPAN = 256
"""Bytes either side of the calibrated futex that belong to the GIL (its condition variables
and mutexes, one struct of about 200 bytes)."""
_GIL: list[int | None] = [None]  # the calibrated address, once ``gil_futex`` found it


def _futex_near(data: bytes | None, address: int) -> bool | None:
    # True: asleep in futex within GIL_SPAN of ``address``; False: another wait; None: running.
    fields = data.split() if data is not None else []
    if len(fields) < 2 or fields[0] == b"running":
        return None
    try:
        return fields[0] == _FUTEX and abs(int(fields[1], 16) - address) <= GIL_SPAN
    except ValueError:
        return False


def gil_futex() -> int | None:
    """Find (once) the futex address a thread waiting for the GIL sleeps on; call holding it.

    A helper thread waits in ``read`` on a pipe (the GIL let go); the caller, keeping the GIL,
    writes to it: the helper wakes and sleeps on the GIL, where ``/proc`` shows it. A thread
    start and a stall of about 0.2 ms, once per process, on the probe thread (tried again at
    its next start, a few times, if the helper got no CPU meanwhile on a loaded machine).
    """
    write = _gil_holding_write()
    if _GIL[0] is not None or _FUTEX is None or write is None or _TRIES[0] <= 0:
        return _GIL[0]
    _TRIES[0] -= 1
    r, w = os.pipe()
    helper = threading.Thread(target=os.read, args=(r, 1), name=PROBE_THREAD, daemon=True)
    helper.start()
    fd = _open(f"/proc/self/task/{helper.native_id}/syscall")
    try:
        write(w, b"x", 1)  # the GIL kept: the helper's read returns, then it waits for the GIL
        for _ in range(10):
            stall_sleep(0.0002)
            fields = (_read(fd) or b"").split()
            if len(fields) >= 2 and fields[0] == _FUTEX:  # its only possible futex: the GIL
                _GIL[0] = int(fields[1], 16)
                break
    finally:
        helper.join()
        for f in (r, w) if fd is None else (r, w, fd):
            os.close(f)
    return _GIL[0]


_TRIES = [3]


def gil_known() -> bool:
    """Whether ``gil_futex`` found the GIL's futex: ``ThreadSched.on_gil`` can tell then."""
    return _GIL[0] is not None


@functools.cache
def _gil_holding_write() -> Callable[[int, bytes, int], int] | None:
    import ctypes

    try:
        write = ctypes.PyDLL(None).write
    except (OSError, AttributeError):
        return None
    write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    write.restype = ctypes.c_ssize_t
    return write


def queued_seconds(tid: int | None = None) -> float | None:
    """Seconds a thread of this process has waited on a run queue without a CPU, so far.

    A one-off read (``ThreadSched`` keeps handles for repeated ones, and reads with the GIL
    held). Time a busy machine denied a thread a CPU is not time the thread waited of its own.

    Args:
        tid: The thread's native id; None for the calling thread.

    Returns:
        The figure, or None where the kernel does not provide it.
    """
    path = "/proc/thread-self/schedstat" if tid is None else f"/proc/self/task/{tid}/schedstat"
    try:
        with open(path, "rb") as f:
            return _waited(f.read())
    except OSError:
        return None


def running_now(tid: int) -> bool:
    """Whether a thread of this process is on a CPU or waiting for one now (state ``R``).

    A one-off read: a run-queue wait is booked in ``schedstat`` only when it ends, so a thread
    starved of a CPU for a while looks idle there meanwhile; its state says it is not.
    """
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            return _state_runnable(f.read()) is True
    except OSError:
        return False


def _state_runnable(data: bytes | None) -> bool | None:
    """Whether a ``stat`` line says runnable (state ``R``); None if it cannot be read."""
    if data is None:
        return None
    end = data.rfind(b")")  # the thread name may hold spaces and parentheses
    if end < 0 or end + 2 >= len(data):
        return None
    return data[end + 2 : end + 3] == b"R"


def _waited(data: bytes | None) -> float | None:
    """The run-queue wait in seconds from a ``schedstat`` line (its second field)."""
    fields = data.split() if data is not None else []
    try:
        return int(fields[1]) / 1e9 if len(fields) >= 2 else None
    except ValueError:
        return None


@functools.cache
def _gil_holding_sleep() -> Callable[[float], None] | None:
    # ctypes.PyDLL calls foreign functions without releasing the GIL. Made on first use:
    # importing ctypes costs ~1 ms, and only the probe stalls.
    import ctypes

    try:
        usleep = ctypes.PyDLL(None).usleep
    except (OSError, AttributeError):
        return None
    usleep.argtypes = [ctypes.c_uint]
    usleep.restype = ctypes.c_int

    def sleep(seconds: float) -> None:
        usleep(int(seconds * 1e6))

    return sleep


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def stall_sleep(seconds: float) -> None:
    """Sleep ``seconds`` holding the GIL (a spin where ``usleep`` cannot be called so)."""
    (_gil_holding_sleep() or _spin)(seconds)


PROBE_THREAD = "hybridexec-gil-probe"


def python_threads_cpu() -> dict[int, tuple[int, float]]:
    """Clock id and CPU time of each other Python thread (not the caller, not the probe).

    Those are the threads that can hold the GIL; threads of C libraries are not listed.
    """
    if clock_of is None:
        return {}
    me = threading.get_ident()
    clocks: dict[int, tuple[int, float]] = {}
    for t in threading.enumerate():
        ident = t.ident
        if ident is None or ident == me or t.name == PROBE_THREAD:
            continue
        try:
            clock = clock_of(ident)
            clocks[ident] = (clock, time.clock_gettime(clock))
        except OSError:  # it ended meanwhile
            continue
    return clocks


def others_cpu_since(clocks: dict[int, tuple[int, float]]) -> float:
    """CPU seconds the threads of ``python_threads_cpu()`` used since it was read."""
    total = 0.0
    for clock, cpu in clocks.values():
        try:
            total += max(0.0, time.clock_gettime(clock) - cpu)
        except OSError:
            continue
    return total
