"""Per-task memory limits (``max_memory=``): enforced in the worker, around each call.

The router wraps a task's function in ``MemoryLimited`` when the task has a ``max_memory``;
the wrapper travels to the worker inside the pickled call, so the lane's messages do not
change, and only a worker that runs such a task loads this module. Around each call, in the
worker:

- on Linux, ``RLIMIT_DATA`` is lowered to the worker's private writable memory as the call
  starts (``data`` of ``/proc/self/statm``) plus ``max_memory``, and put back as the call
  ends. An allocation past it fails at once: Python and numpy raise ``MemoryError``, which
  the wrapper turns into ``MemoryLimitError``. Since Linux 4.7 that limit counts what a call
  allocates (heap, anonymous maps, the stacks of threads it starts: 8 MiB each by default)
  even before it is touched, and not what ``RLIMIT_AS`` would also count: address space
  reserved but inaccessible (glibc reserves 64 MiB per thread's malloc arena that way: under
  a 256 MiB ``RLIMIT_AS`` a call could start 7 threads; under ``RLIMIT_DATA``, 30, or 16
  and then 128 MiB more), shared memory, mapped files.
- a watchdog thread reads the worker's resident memory every ``WATCH_SECONDS``; when it is
  ``max_memory`` over what it was as the call started (memory the data limit does not see:
  shared memory the call maps, pages reserved before the call and touched during it, or a
  platform without the limit), the worker exits at once with ``EXIT_OVER_LIMIT``, and the
  manager fails the task with ``MemoryLimitError``. The watchdog is Python code: it runs
  while the call runs bytecode or releases the GIL, not inside C code that holds the GIL.

Either way the worker is replaced (a ``MemoryError`` can leave C libraries in a poor state):
a worker whose call went over is retired once it has answered, or has exited already.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._exceptions import MemoryLimitError
from .._serialize import adopt, dumps_callable, loads
from ._child import resident_memory

# macOS does not enforce RLIMIT_DATA (nor RLIMIT_AS); Windows has neither: the watchdog alone.
# ``resource`` is imported by the first limited call, not with every lane (a cold start's cost).
_RLIMITS = sys.platform.startswith("linux")

EXIT_OVER_LIMIT = 0x6D
"""Exit code of a worker that the watchdog ended: its call went over its ``max_memory``."""

WATCH_SECONDS = 0.01
"""How often the watchdog reads the resident memory while a limited call runs."""

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryLimited:
    """``fn`` run under a memory limit of ``max_memory`` bytes (see the module docstring)."""

    __slots__ = ("fn", "max_memory")

    def __init__(self, fn: Callable[..., Any], max_memory: int) -> None:
        self.fn = fn
        self.max_memory = max_memory

    def __reduce__(self) -> tuple[Any, ...]:
        # The function pickled as every task's is (by reference and cached where it can be).
        return (_load, (dumps_callable(self.fn), self.max_memory))

    def __repr__(self) -> str:
        return f"<{name_of(self.fn)} with max_memory={self.max_memory}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        limit = self.max_memory
        try:
            before = _enter(limit)
            try:
                return self.fn(*args, **kwargs)
            finally:
                _leave(before)
        except MemoryError as exc:
            if isinstance(exc, MemoryLimitError):
                raise
            raise over_limit(self.fn, limit) from exc


def _load(fn_bytes: bytes, max_memory: int) -> MemoryLimited:
    return MemoryLimited(adopt(loads(fn_bytes)), max_memory)


def name_of(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable, as error messages print it."""
    target = getattr(fn, "func", fn)  # a functools.partial
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', type(target).__qualname__)}"


def over_limit(fn: Callable[..., Any], limit: int) -> MemoryLimitError:
    """The error of a call of ``fn`` that went over ``limit`` bytes."""
    name = name_of(fn)
    return MemoryLimitError(
        f"{name} went over its memory limit (max_memory={limit} bytes, "
        f"{limit / 2**20:.1f} MiB); its worker process is replaced",
        limit=limit,
        function=name,
    )


def crash_error(fn: Callable[..., Any], exitcode: int | None) -> MemoryLimitError | None:
    """For the manager: the error of a limited task whose worker the watchdog ended, or None."""
    if type(fn) is MemoryLimited and exitcode == EXIT_OVER_LIMIT:
        return over_limit(fn.fn, fn.max_memory)
    return None


def went_over(fn: Callable[..., Any], outcomes: list[tuple[bool, Any]]) -> bool:
    """For the manager: True when a limited task's reply holds a ``MemoryLimitError``."""
    if type(fn) is not MemoryLimited:
        return False
    return any(not ok and isinstance(value, MemoryLimitError) for ok, value in outcomes)


# ---- in the worker -------------------------------------------------------------------------
def _enter(limit: int) -> tuple[int, int] | None:
    """Arm the watchdog and lower ``RLIMIT_DATA``; return the limits to restore (or None)."""
    usage = _watchdog.arm(limit)
    if not _RLIMITS or usage is None:
        return None
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        new = usage[1] + limit
        if soft != resource.RLIM_INFINITY:
            new = min(new, soft)  # a limit already lower (an outer call's, the user's) holds
        if hard != resource.RLIM_INFINITY:
            new = min(new, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (new, hard))
    except (OSError, ValueError, OverflowError):  # refused, or past a C long: the watchdog alone
        return None
    return soft, hard


def _leave(before: tuple[int, int] | None) -> None:
    if before is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, before)
    _watchdog.disarm()


class _Watchdog:
    """One thread per worker, started by its first limited call (before any limit is set).

    It polls every ``WATCH_SECONDS`` while limited calls run, and for ``IDLE_SECONDS`` after
    the last one ended; then it sleeps until the next one, so that a stream of short limited
    calls does not wake it once per call.
    """

    IDLE_SECONDS = 1.0

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        # Resident bytes each running limited call may reach: one per level of nesting (a
        # limited function calling another), the innermost last and never above the outer.
        self.ceilings: list[int | None] = []
        self.pid = 0
        self.fd = -1  # /proc/self/statm, open: a read costs a fraction of an open and a read
        self.sleeping = False

    def usage(self) -> tuple[int, int] | None:
        """Resident and private writable (``data``) bytes of this process, or None."""
        try:
            fields = os.pread(self.fd, 256, 0).split()
            return int(fields[1]) * _PAGE, int(fields[5]) * _PAGE
        except (OSError, ValueError, IndexError):
            rss = resident_memory()  # no /proc: psutil, if it is installed
            return None if rss is None else (rss, -1)

    def arm(self, limit: int) -> tuple[int, int] | None:
        """Watch a call that may add ``limit`` bytes; return the usage as it starts."""
        with self.cond:
            if self.pid != os.getpid():  # the first limited call here (or in a forked child)
                self._start()
            usage = self.usage()
            ceiling = None if usage is None else usage[0] + limit
            outer = self.ceilings[-1] if self.ceilings else None
            if outer is not None and (ceiling is None or outer < ceiling):
                ceiling = outer
            self.ceilings.append(ceiling)
            if self.sleeping:
                self.cond.notify()
        return None if usage is None or usage[1] < 0 else usage

    def disarm(self) -> None:
        with self.cond:
            if self.ceilings:
                self.ceilings.pop()

    def _start(self) -> None:
        self.pid = os.getpid()
        self.ceilings = []
        try:
            self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1
        self.sleeping = False
        threading.Thread(target=self._watch, name="hybridexec-memory-watchdog", daemon=True).start()

    def _watch(self) -> None:
        cond = self.cond
        idle_polls = int(self.IDLE_SECONDS / WATCH_SECONDS)
        quiet = 0
        with cond:
            while True:
                ceiling = self.ceilings[-1] if self.ceilings else None
                if ceiling is not None:
                    quiet = 0
                    usage = self.usage()
                    if usage is not None and usage[0] > ceiling:
                        # Under the lock: the call cannot end (disarm) and its reply go out now.
                        os._exit(EXIT_OVER_LIMIT)
                elif not self.ceilings:
                    quiet += 1
                    if quiet > idle_polls:
                        self.sleeping = True
                        cond.wait()  # until a limited call starts
                        self.sleeping = False
                        quiet = 0
                        continue
                cond.wait(WATCH_SECONDS)


_watchdog = _Watchdog()
