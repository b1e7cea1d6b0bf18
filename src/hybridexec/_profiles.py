"""How much of its calls' time each function spends on a CPU, as the thread lane sees it.

The thread lane (``_threads.py``) starts a thread for a queued task unless one is idle, except
for a function seen to compute (CPU time close to its wall time): more threads than CPUs would
not run those any faster.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

COMPUTE_SHARE = 0.5
"""A function whose calls use a CPU this share of their wall time or more computes."""
PROFILE_SAMPLES = 4
"""Calls whose CPU time is read before a function is judged (then one call in 64)."""
PROFILES_MAX = 1024
"""Functions profiled per lane before the profiles start over (functions made on the fly)."""


class Profile:
    """How much of its calls' time a function spends on the CPU; updated unlocked."""

    __slots__ = ("calls", "computes", "cpu_share", "samples")

    def __init__(self) -> None:
        self.calls, self.samples, self.cpu_share = 0, 0, 0.0
        self.computes = False  # its calls keep a CPU busy most of their time (no waiting)

    def sample(self) -> bool:
        """Count a call; True if its CPU time is to be read (the first ones, then 1 in 64)."""
        self.calls += 1
        return self.samples < PROFILE_SAMPLES or not self.calls & 63

    def add(self, wall: float, cpu: float) -> None:
        share = min(1.0, cpu / wall) if wall > 0 else 1.0
        self.cpu_share += (share - self.cpu_share) * (0.3 if self.samples else 1.0)
        self.samples += 1
        self.computes = self.samples >= PROFILE_SAMPLES and self.cpu_share >= COMPUTE_SHARE


def code_of(fn: Callable[..., Any]) -> object:
    """What identifies a function across calls (its code object), or None for a builtin."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__code__", None)


class Profiles(dict[object, Profile]):
    """A lane's profiles by code object, bounded (functions made on the fly start it over)."""

    def of(self, fn: Callable[..., Any]) -> Profile | None:
        """The profile of ``fn``'s calls (None for a builtin: no code to key it on)."""
        code = getattr(fn, "__code__", None) or code_of(fn)
        if code is None:
            return None
        profile = self.get(code)
        if profile is None:
            if len(self) >= PROFILES_MAX:
                self.clear()
            profile = self.setdefault(code, Profile())
        return profile


def name_of(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable, looking through partials (for warnings)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name
