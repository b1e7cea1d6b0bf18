"""Per-task memory limits (``max_memory=``): enforced in the worker, around each call.

The router wraps a task's function in ``MemoryLimited`` when the task has a ``max_memory``;
the wrapper travels to the worker inside the pickled call, so the lane's messages do not
change, and only a worker that runs such a task loads this module. Around each call, in the
worker:

- ``RLIMIT_AS`` (where the platform has and enforces it: Linux) is lowered to the worker's
  address space as the call starts plus ``max_memory``, and put back as the call ends. An
  allocation past it fails at once: Python and numpy raise ``MemoryError``, which the wrapper
  turns into ``MemoryLimitError``. The limit counts address space, not resident pages: each
  thread the call starts reserves its stack (8 MiB by default), and memory mapped but not
  touched counts in full.
- a watchdog thread reads the worker's resident memory every ``WATCH_SECONDS``; when it is
  ``max_memory`` over what it was as the call started (memory the address-space limit does
  not see: pages already reserved before the call and touched during it, or a platform
  without ``RLIMIT_AS``), the worker exits at once with ``EXIT_OVER_LIMIT``, and the manager
  fails the task with ``MemoryLimitError``. The watchdog is Python code: it runs while the
  call runs bytecode or releases the GIL, not inside C code that holds the GIL throughout.

Either way the worker is replaced (a ``MemoryError`` can leave C libraries in a poor state):
a worker whose call went over is retired once it has answered, or has exited already.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from .._exceptions import MemoryLimitError
from .._serialize import dumps_callable, loads
from ._child import resident_memory

try:
    import resource
except ImportError:  # pragma: no cover - Windows: the watchdog alone
    resource = None  # type: ignore[assignment]

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
    return MemoryLimited(loads(fn_bytes), max_memory)


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
_INFINITY = getattr(resource, "RLIM_INFINITY", -1)


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _enter(limit: int) -> tuple[int, int] | None:
    """Arm the watchdog and lower ``RLIMIT_AS``; return the limits to restore (or None)."""
    _watchdog.arm(limit)
    size = _address_space()
    if resource is None or size is None:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        new = size + limit
        if soft != _INFINITY:
            new = min(new, soft)  # a limit already lower (an outer call's, the user's) holds
        if hard != _INFINITY:
            new = min(new, hard)
        resource.setrlimit(resource.RLIMIT_AS, (new, hard))
    except (OSError, ValueError):  # not enforced here (macOS): the watchdog alone
        return None
    return soft, hard


def _leave(before: tuple[int, int] | None) -> None:
    if before is not None:
        resource.setrlimit(resource.RLIMIT_AS, before)
    _watchdog.disarm()


class _Watchdog:
    """One thread per worker, started by its first limited call (before any limit is set)."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        # Resident bytes each running limited call may reach: one per level of nesting (a
        # limited function calling another), the innermost last and never above the outer.
        self.ceilings: list[int | None] = []
        self.pid = 0

    def arm(self, limit: int) -> None:
        rss = resident_memory()
        with self.cond:
            if self.pid != os.getpid():  # the first limited call here (or in a forked child)
                self.pid = os.getpid()
                self.ceilings = []
                threading.Thread(
                    target=self._watch, name="hybridexec-memory-watchdog", daemon=True
                ).start()
            ceiling = None if rss is None else rss + limit
            outer = self.ceilings[-1] if self.ceilings else None
            if outer is not None and (ceiling is None or outer < ceiling):
                ceiling = outer
            self.ceilings.append(ceiling)
            self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            if self.ceilings:
                self.ceilings.pop()

    def _watch(self) -> None:
        cond = self.cond
        with cond:
            while True:
                ceiling = self.ceilings[-1] if self.ceilings else None
                if ceiling is None:
                    cond.wait()
                    continue
                rss = resident_memory()
                if rss is not None and rss > ceiling:
                    # Under the lock: the call cannot end (disarm) and its reply go out now.
                    os._exit(EXIT_OVER_LIMIT)
                cond.wait(WATCH_SECONDS)


_watchdog = _Watchdog()
