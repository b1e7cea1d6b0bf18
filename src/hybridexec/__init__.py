"""hybridexec: one Executor that runs each task where it runs best.

Threads for I/O and GIL-releasing C code, processes for GIL-bound Python work; killable
workers with per-task timeouts; crash isolation; the same API everywhere.
"""

from __future__ import annotations

import logging as _logging

from ._actors import ActorRef as ActorRef
from ._actors import spawn as spawn
from ._asyncio import amap as amap
from ._asyncio import arun as arun
from ._classifier import LearningClassifier as LearningClassifier
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
from ._routing import cpu_bound as cpu_bound
from ._routing import io_bound as io_bound
from ._routing import task as task
from ._shm_janitor import cleanup_shared_memory as cleanup_shared_memory
from ._shm_list import SharedList as SharedList
from ._shm_objects import SharedArray as SharedArray
from ._shm_objects import SharedBuffer as SharedBuffer
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

# Users see hybridexec.X, not hybridexec._module.X, in reprs, tracebacks and docs.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("hybridexec._"):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):
            pass
del _name, _obj

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
