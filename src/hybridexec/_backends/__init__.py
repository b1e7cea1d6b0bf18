"""Distributed backends: the same Executor on a Dask or Ray cluster.

A backend is a module ``_backends._<name>`` imported only when an executor asks for it (so
neither ``distributed`` nor ``ray`` is imported otherwise). Each one provides
``open_lane(target, options, remote_all)`` returning a ``RemoteLane`` (``_lane.py``), which the
executor treats like its local thread and process lanes: ``submit(task)``,
``shutdown(wait, cancel_futures)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import BackendUnavailableError
from .._lazy import exports, loaded

if TYPE_CHECKING:  # loaded with a backend: a plain executor imports only the checks below
    from .._routing import Decision, Explanation
    from ._lane import RemoteLane

__all__ = [
    "REMOTE_MODES",
    "RemoteAll",
    "RemoteLane",
    "check_remote",
    "open_lane",
    "parse_backend",
]

BACKENDS = ("dask", "ray")
REMOTE_MODES = ("process", "all")
_PACKAGES = {"dask": ("dask", "distributed"), "ray": ("ray",)}

__getattr__, __dir__ = exports(__name__, {"RemoteLane": "._lane"})


def parse_backend(backend: object) -> tuple[str, Any]:
    """Return ``(backend name, target)`` for a ``backend=`` argument.

    Raises:
        ValueError: not a backend this library knows.
    """
    if backend in BACKENDS:
        return str(backend), None
    if isinstance(backend, str):
        if backend.startswith("ray://"):
            return "ray", backend
        if "://" in backend:
            return "dask", backend
    distributed = loaded("distributed")  # a Client exists only if it was imported
    if distributed is not None and isinstance(backend, distributed.Client):
        return "dask", backend
    raise ValueError(
        f"unknown backend {backend!r}: expected 'dask', 'ray', a scheduler address such as "
        "'tcp://127.0.0.1:8786' (or 'ray://host:10001'), or a distributed.Client"
    )


def check_remote(backend: object, remote: object) -> None:
    """Validate ``backend`` and ``remote`` without importing anything.

    Raises:
        ValueError: unknown backend or ``remote`` mode.
    """
    if remote not in REMOTE_MODES:
        raise ValueError(f"remote must be one of {REMOTE_MODES}, not {remote!r}")
    parse_backend(backend)


def open_lane(backend: object, options: Mapping[str, Any] | None, remote: str) -> RemoteLane:
    """Import the backend named by ``backend`` and connect its lane.

    Raises:
        ValueError: unknown backend or ``remote`` mode.
        BackendUnavailableError: the backend's extra is not installed.
    """
    check_remote(backend, remote)
    name, target = parse_backend(backend)
    try:
        module = importlib.import_module(f"hybridexec._backends._{name}")
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing.startswith("hybridexec"):
            raise
        raise BackendUnavailableError(
            f"backend {name!r} needs {' and '.join(_PACKAGES[name])}: "
            f"pip install 'hybridexec[{name}]' (import failed: {exc})"
        ) from exc
    lane: RemoteLane = module.open_lane(target, dict(options or {}), remote == "all")
    return lane


class RemoteAll:
    """The classifier of an executor whose every call goes to its cluster (``remote="all"``).

    Nothing to measure: each call is routed to the cluster, but as a routing choice, not as a
    ``kind="process"`` the user asked for. A call that will not pickle therefore runs on a
    local thread, as docs/distributed.md says; one given ``kind="process"`` fails.
    """

    def classify(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Decision:
        """Every call: to the cluster (the process kind, which the remote lane takes)."""
        from .._routing import Decision

        return Decision("process", "remote='all': every call runs on the cluster")

    def record(
        self, fn: Callable[..., Any], kind: str, elapsed: float, cpu: float, **_: Any
    ) -> None:
        """Nothing is learned."""

    def explain(self, fn: Callable[..., Any], args: Any = None, kwargs: Any = None) -> Explanation:
        """Where calls of ``fn`` go: the cluster."""
        from .._routing import Explanation

        name = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', fn)}"
        return Explanation(name, "process", self.classify(fn, (), {}).reason)
