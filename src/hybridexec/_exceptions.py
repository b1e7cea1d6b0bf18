"""The error hierarchy of hybridexec.

```
HybridExecError(Exception)
├── BrokenExecutorError(HybridExecError, concurrent.futures.BrokenExecutor)
│   └── WorkerCrashedError(BrokenExecutorError, concurrent.futures.process.BrokenProcessPool)
├── TaskTimeoutError(HybridExecError, TimeoutError)
├── MemoryLimitError(HybridExecError, MemoryError)   a task went over its max_memory
├── SerializationError(HybridExecError)
├── ActorError(HybridExecError)
│   ├── ActorClosedError      you stopped it
│   └── ActorBrokenError      it died; the cause is chained
├── SharedMemoryError(HybridExecError)
└── BackendUnavailableError(HybridExecError, ImportError)
```

Every error pickles (workers send them to the parent), so each class that takes extra
constructor arguments implements ``__reduce__``.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import signal
import sys
import threading
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "ActorBrokenError",
    "ActorClosedError",
    "ActorError",
    "BackendUnavailableError",
    "BrokenExecutorError",
    "HybridExecError",
    "MemoryLimitError",
    "RemoteTraceback",
    "SerializationError",
    "SharedMemoryError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "signal_name",
]


class HybridExecError(Exception):
    """Raised by hybridexec; the base of every error the library defines."""


class BrokenExecutorError(HybridExecError, BrokenExecutor):
    """Raised by an executor or lane when it can no longer run work."""


def signal_name(exitcode: int | None) -> str | None:
    """Return the name of the signal that ended a process, from its ``exitcode``.

    ``multiprocessing`` reports death by signal N as ``exitcode == -N``.
    """
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _signal_of(exitcode: int | None) -> signal.Signals | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode)
    except ValueError:  # a real-time signal without a name
        return None


if TYPE_CHECKING:  # what type checkers see; made by _worker_crashed_error() at first use

    class WorkerCrashedError(BrokenExecutorError, BrokenProcessPool):
        exitcode: int | None
        pid: int | None
        signal: signal.Signals | None

        def __init__(
            self, message: str, *, exitcode: int | None = None, pid: int | None = None
        ) -> None: ...


def _worker_crashed_error() -> type[WorkerCrashedError]:
    # Made on first use: its base, BrokenProcessPool, is defined in concurrent.futures.process,
    # whose import (with queue and multiprocessing.queues) cost a cold start ~1.3 ms while no
    # worker had crashed. Made once, under a lock: one class, whichever thread asks first.
    with _crash_lock:
        made = globals().get("WorkerCrashedError")
        if made is not None:
            return made  # type: ignore[no-any-return]
        from concurrent.futures.process import BrokenProcessPool

        class WorkerCrashedError(BrokenExecutorError, BrokenProcessPool):
            """Raised on a task's future when the worker process running it died.

            Attributes:
                exitcode: The worker's exit code (negative: killed by that signal number).
                signal: The signal that killed it, a ``signal.Signals`` member
                    (``err.signal == signal.SIGKILL``; ``err.signal.name == "SIGKILL"``), or
                    None.
                pid: The worker's process id.
            """

            def __init__(
                self, message: str, *, exitcode: int | None = None, pid: int | None = None
            ):
                self.exitcode: int | None = exitcode
                self.pid: int | None = pid
                self.signal: signal.Signals | None = _signal_of(exitcode)
                super().__init__(message)

            def __reduce__(self) -> tuple[Any, ...]:
                return (_rebuild_crash, (str(self), self.exitcode, self.pid))

        WorkerCrashedError.__qualname__ = "WorkerCrashedError"  # pickled by reference
        globals()["WorkerCrashedError"] = WorkerCrashedError
        return WorkerCrashedError  # type: ignore[return-value]  # the class declared above


_crash_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """``WorkerCrashedError`` is made on first use (see ``_worker_crashed_error``)."""
    if name == "WorkerCrashedError":
        return _worker_crashed_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rebuild_crash(message: str, exitcode: int | None, pid: int | None) -> WorkerCrashedError:
    return _worker_crashed_error()(message, exitcode=exitcode, pid=pid)


if sys.version_info >= (3, 11):  # concurrent.futures.TimeoutError is TimeoutError since 3.11

    class TaskTimeoutError(HybridExecError, TimeoutError):
        """Raised on a task's future when its deadline passed; a process worker was killed."""

else:  # pragma: no cover - Python 3.10

    class TaskTimeoutError(HybridExecError, concurrent.futures.TimeoutError, TimeoutError):
        """Raised on a task's future when its deadline passed; a process worker was killed."""


class MemoryLimitError(HybridExecError, MemoryError):
    """Raised on a task's future when the task went over its ``max_memory``.

    Its worker process is replaced (retired, or killed when the memory grew where no
    ``MemoryError`` could be raised); the other tasks go on. A ``MemoryError``, as code that
    handles running out of memory expects.

    Attributes:
        limit: The task's ``max_memory``, in bytes.
        function: ``module.qualname`` of the task's function.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, limit: int | None = None, function: str | None = None):
        self.limit: int | None = limit
        self.function: str | None = function
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_memory, (str(self), self.limit, self.function))


def _rebuild_memory(message: str, limit: int | None, function: str | None) -> MemoryLimitError:
    return MemoryLimitError(message, limit=limit, function=function)


class SerializationError(HybridExecError, pickle.PicklingError):
    """Raised when a task, its arguments or its result cannot be pickled or unpickled.

    A ``pickle.PicklingError``, as code written for the standard pools expects.
    """


class ActorError(HybridExecError):
    """Raised by actor handles; the base of the actor errors."""


class ActorClosedError(ActorError):
    """Raised by an actor handle used after ``stop()``, or on messages dropped by it."""


class ActorBrokenError(ActorError):
    """Raised on asks pending when an actor died or was killed; the cause is chained."""


class SharedMemoryError(HybridExecError):
    """Raised by the shared-memory helpers: no space, use after close, bad attach."""


class BackendUnavailableError(HybridExecError, ImportError):
    """Raised when a backend or optional feature needs an extra that is not installed."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker, chained as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
