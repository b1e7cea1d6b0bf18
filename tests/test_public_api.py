"""The public surface: ``hybridexec/__init__.py`` exports, docstrings, picklable errors."""

from __future__ import annotations

import inspect
import pickle
import signal
import types
from collections.abc import Callable
from typing import Any

import pytest

import hybridexec

PUBLIC = sorted(name for name in hybridexec.__all__ if name != "__version__")


def _public_objects() -> list[tuple[str, Any]]:
    return [(name, getattr(hybridexec, name)) for name in PUBLIC]


def test_all_is_sorted_and_unique() -> None:
    assert hybridexec.__all__ == sorted(hybridexec.__all__)
    assert len(set(hybridexec.__all__)) == len(hybridexec.__all__)


def test_all_names_exist() -> None:
    missing = [name for name in hybridexec.__all__ if not hasattr(hybridexec, name)]
    assert not missing


def test_all_is_complete() -> None:
    # Anything importable from the package without an underscore is public, so it must be
    # listed; submodules (hybridexec._x), dunder names and __future__ features are not.
    exported = {
        name
        for name, value in vars(hybridexec).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and type(value).__name__ != "_Feature"  # from __future__ import annotations
    }
    assert exported <= set(hybridexec.__all__), sorted(exported - set(hybridexec.__all__))


def test_version_is_a_string_from_one_place() -> None:
    from hybridexec import _version

    assert isinstance(hybridexec.__version__, str)
    assert hybridexec.__version__ == _version.__version__


@pytest.mark.parametrize(("name", "obj"), _public_objects(), ids=PUBLIC)
def test_public_name_has_a_docstring(name: str, obj: Any) -> None:
    assert inspect.getdoc(obj), f"hybridexec.{name} has no docstring"


@pytest.mark.parametrize(("name", "obj"), _public_objects(), ids=PUBLIC)
def test_public_name_reports_the_package_as_its_module(name: str, obj: Any) -> None:
    assert getattr(obj, "__module__", "hybridexec") == "hybridexec"


def _own_methods(cls: type) -> list[tuple[str, Callable[..., Any]]]:
    # Methods and properties the class itself defines (inherited stdlib ones are documented
    # by the standard library).
    found: list[tuple[str, Callable[..., Any]]] = []
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            assert value.fget is not None
            value = value.fget
        if callable(value):
            found.append((attr, value))
    return found


_CLASSES = [(name, obj) for name, obj in _public_objects() if isinstance(obj, type)]


@pytest.mark.parametrize(("name", "cls"), _CLASSES, ids=[name for name, _ in _CLASSES])
def test_public_methods_have_docstrings(name: str, cls: type) -> None:
    undocumented = [attr for attr, fn in _own_methods(cls) if not inspect.getdoc(fn)]
    assert not undocumented, f"hybridexec.{name}: {undocumented} have no docstring"


# ---- every error pickles and keeps its attributes ------------------------------------------

# Errors whose constructor takes more than a message; anything not listed is built from a
# message alone.
_SPECIAL: dict[str, Callable[[], BaseException]] = {
    "WorkerCrashedError": lambda: hybridexec.WorkerCrashedError(
        "worker died", exitcode=-9, pid=4242
    ),
    "RemoteTraceback": lambda: hybridexec.RemoteTraceback("Traceback (most recent call last):"),
}

_ERRORS = sorted(
    name
    for name, obj in _public_objects()
    if isinstance(obj, type) and issubclass(obj, BaseException)
)


def _make(name: str) -> BaseException:
    if name in _SPECIAL:
        return _SPECIAL[name]()
    cls: type[BaseException] = getattr(hybridexec, name)
    return cls(f"a {name} message")


def test_error_list_is_not_empty() -> None:
    assert "HybridExecError" in _ERRORS
    assert "WorkerCrashedError" in _ERRORS


@pytest.mark.parametrize("name", _ERRORS)
def test_error_pickles_with_its_attributes(name: str) -> None:
    err = _make(name)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert str(copy) == str(err)
    assert copy.args == err.args
    assert vars(copy) == vars(err)


def test_library_errors_derive_from_the_base() -> None:
    for name in _ERRORS:
        cls = getattr(hybridexec, name)
        if name != "RemoteTraceback":
            assert issubclass(cls, hybridexec.HybridExecError), name


def test_errors_keep_their_stdlib_bases() -> None:
    import concurrent.futures
    import concurrent.futures.process

    assert issubclass(hybridexec.TaskTimeoutError, TimeoutError)
    assert issubclass(hybridexec.BrokenExecutorError, concurrent.futures.BrokenExecutor)
    assert issubclass(hybridexec.WorkerCrashedError, concurrent.futures.process.BrokenProcessPool)
    assert issubclass(hybridexec.BackendUnavailableError, ImportError)


def test_worker_crashed_error_decodes_the_signal() -> None:
    err = pickle.loads(pickle.dumps(_make("WorkerCrashedError")))
    assert isinstance(err, hybridexec.WorkerCrashedError)
    assert (err.exitcode, err.signal, err.pid) == (-9, signal.SIGKILL, 4242)
    assert err.signal is not None
    assert err.signal.name == "SIGKILL"
