"""hybridexec: one Executor that runs each task where it runs best.

Threads for I/O and GIL-releasing C code, processes for GIL-bound Python work; killable
workers with per-task timeouts; crash isolation; the same API everywhere.

Every public name is loaded on first use (PEP 562): ``import hybridexec`` costs a few
milliseconds, and a worker process imports only what running a task needs.
"""

from __future__ import annotations

import logging as _logging
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._lazy import exports as _exports
from ._version import __version__ as __version__

if _TYPE_CHECKING:
    from ._actors import ActorRef as ActorRef
    from ._actors import spawn as spawn
    from ._afront import amap as amap
    from ._afront import arun as arun
    from ._default import default_executor as default_executor
    from ._default import imap as imap
    from ._default import map as map
    from ._default import submit as submit
    from ._exceptions import ActorBrokenError as ActorBrokenError
    from ._exceptions import ActorClosedError as ActorClosedError
    from ._exceptions import ActorError as ActorError
    from ._exceptions import BackendUnavailableError as BackendUnavailableError
    from ._exceptions import BrokenExecutorError as BrokenExecutorError
    from ._exceptions import HybridExecError as HybridExecError
    from ._exceptions import MemoryLimitError as MemoryLimitError
    from ._exceptions import RemoteTraceback as RemoteTraceback
    from ._exceptions import SerializationError as SerializationError
    from ._exceptions import SharedMemoryError as SharedMemoryError
    from ._exceptions import TaskTimeoutError as TaskTimeoutError
    from ._exceptions import WorkerCrashedError as WorkerCrashedError
    from ._executor import Executor as Executor
    from ._futures import Future as Future
    from ._routing import Classifier as Classifier
    from ._routing import Decision as Decision
    from ._routing import Explanation as Explanation
    from ._routing import LearningClassifier as LearningClassifier
    from ._routing import cpu_bound as cpu_bound
    from ._routing import io_bound as io_bound
    from ._routing import task as task
    from ._shm import SharedArray as SharedArray
    from ._shm import SharedBuffer as SharedBuffer
    from ._shm import SharedList as SharedList
    from ._shm import cleanup_shared_memory as cleanup_shared_memory
    from ._version import __version__ as __version__
    from ._views import ExecutorOptions as ExecutorOptions

__all__ = [
    "ActorBrokenError",
    "ActorClosedError",
    "ActorError",
    "ActorRef",
    "BackendUnavailableError",
    "BrokenExecutorError",
    "Classifier",
    "Decision",
    "Executor",
    "ExecutorOptions",
    "Explanation",
    "Future",
    "HybridExecError",
    "LearningClassifier",
    "MemoryLimitError",
    "RemoteTraceback",
    "SerializationError",
    "SharedArray",
    "SharedBuffer",
    "SharedList",
    "SharedMemoryError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "__version__",
    "amap",
    "arun",
    "cleanup_shared_memory",
    "cpu_bound",
    "default_executor",
    "imap",
    "io_bound",
    "map",
    "spawn",
    "submit",
    "task",
]

_getattr, _dir = _exports(
    __name__,
    {
        "ActorBrokenError": "._exceptions",
        "ActorClosedError": "._exceptions",
        "ActorError": "._exceptions",
        "ActorRef": "._actors",
        "BackendUnavailableError": "._exceptions",
        "BrokenExecutorError": "._exceptions",
        "Classifier": "._routing",
        "Decision": "._routing",
        "Executor": "._executor",
        "ExecutorOptions": "._views",
        "Explanation": "._routing",
        "Future": "._futures",
        "HybridExecError": "._exceptions",
        "LearningClassifier": "._routing",
        "MemoryLimitError": "._exceptions",
        "RemoteTraceback": "._exceptions",
        "SerializationError": "._exceptions",
        "SharedArray": "._shm",
        "SharedBuffer": "._shm",
        "SharedList": "._shm",
        "SharedMemoryError": "._exceptions",
        "TaskTimeoutError": "._exceptions",
        "WorkerCrashedError": "._exceptions",
        "__version__": "._version",
        "amap": "._afront",
        "arun": "._afront",
        "cleanup_shared_memory": "._shm",
        "cpu_bound": "._routing",
        "default_executor": "._afront",
        "imap": "._afront",
        "io_bound": "._routing",
        "map": "._afront",
        "spawn": "._actors",
        "submit": "._afront",
        "task": "._routing",
    },
    public=True,
)


def __getattr__(name: str) -> object:
    """Load a public name on first use (PEP 562)."""
    return _getattr(name)


def __dir__() -> list[str]:
    """Every public name, loaded or not."""
    return _dir()


_logging.getLogger(__name__).addHandler(_logging.NullHandler())
