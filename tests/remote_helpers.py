"""Task functions for the distributed-backend tests (Dask, Ray), importable by their workers."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import hybridexec as hx


@hx.cpu_bound
def worker_pid(_: object = None) -> int:
    return os.getpid()


@hx.io_bound
def local_pid(_: object = None) -> int:
    return os.getpid()


@hx.cpu_bound
def plus_one(x: int) -> int:
    return x + 1


@hx.cpu_bound
def fresh_token() -> str:
    return uuid.uuid4().hex


@hx.cpu_bound
def echo_kwargs(**kwargs: Any) -> dict[str, Any]:
    return kwargs


@hx.cpu_bound
def array_sum(arr: Any, *, scale: Any = None) -> float:
    total = float(arr.sum())
    return total if scale is None else total * float(scale.sum())


def spin_marked(path: str, seconds: float) -> int:
    """Create ``path``, then hold the GIL in pure Python for ``seconds`` (interruptible)."""
    Path(path).touch()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def sleep_marked(path: str, seconds: float) -> float:
    """Create ``path``, then block in C (``time.sleep``): only a kill stops it early."""
    Path(path).touch()
    time.sleep(seconds)
    return seconds
