"""Names of a package loaded on first use (PEP 562), so that importing it costs almost nothing.

The public package and every room use it: ``import hybridexec`` loads no room, and a worker
process that imports ``hybridexec._process._worker`` loads only what running a task needs.
Type checkers see the names through ``if TYPE_CHECKING:`` imports next to each table.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any


def loaded(name: str, *, wait: bool = False) -> ModuleType | None:
    """The module ``name`` if its import has finished, else None (nothing imported it yet).

    ``sys.modules`` holds a module from the start of its import: while another thread runs
    its top level, its names are not all defined (reading one raised ``AttributeError`` in
    a submit racing the first import of ``inspect`` or ``asyncio``; outside tester 11a).
    Such a module counts as not imported, or, with ``wait``, is waited for (the import lock
    returns it once the other thread's import ends). One this very thread is importing (a
    garbage collection, which runs finalizers, in the middle of its top level) is not
    imported yet either way: the lock would return it half made.
    """
    module = sys.modules.get(name)
    if module is None or not _initializing(module):
        return module
    if not wait:
        return None
    module = importlib.import_module(name)
    return None if _initializing(module) else module


def _initializing(module: ModuleType) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def exports(
    package: str, table: dict[str, str], *, public: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: The package's ``__name__``.
        table: Each exported name -> the submodule (relative, e.g. ``"._lane"``) defining it.
        public: Rename the objects' ``__module__`` to ``package`` as they load, so that users
            see ``hybridexec.Executor``, not ``hybridexec._executor.Executor``, in reprs,
            tracebacks and docs.
    """

    def __getattr__(name: str) -> Any:
        where = table.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where, package), name)
        if public and getattr(value, "__module__", "").startswith(package + "._"):
            try:
                value.__module__ = package
            except (AttributeError, TypeError):
                pass
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
