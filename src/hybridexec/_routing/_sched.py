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


def _open(path: str) -> int | None:
    if _gil_holding_pread() is None:
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class ThreadSched:
    """Open handles on one thread's scheduler figures; readable from any thread of the process.

    Args:
        tid: The thread's native id (``threading.get_native_id()`` on that thread).
    """

    __slots__ = ("sched_fd", "stat_fd")

    def __init__(self, tid: int) -> None:
        self.stat_fd = _open(f"/proc/self/task/{tid}/stat")
        self.sched_fd = _open(f"/proc/self/task/{tid}/schedstat")

    def waited(self) -> float | None:
        """Seconds the thread has spent runnable on a run queue without a CPU, since it began.

        Returns:
            The figure, or None where the kernel does not provide it.
        """
        return _waited(_read(self.sched_fd))

    def runnable(self) -> bool | None:
        """Whether the thread is runnable (state ``R``) now; None if it cannot be read."""
        data = _read(self.stat_fd)
        if data is None:
            return None
        end = data.rfind(b")")  # the thread name may hold spaces and parentheses
        if end < 0 or end + 2 >= len(data):
            return None
        return data[end + 2 : end + 3] == b"R"

    def detach(self) -> list[int]:
        """Forget the handles and return them, for whoever closes them once no read runs."""
        fds = [fd for fd in (self.stat_fd, self.sched_fd) if fd is not None]
        self.stat_fd = self.sched_fd = None
        return fds


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
