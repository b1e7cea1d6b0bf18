"""Pickling rules shared by every lane that crosses a process boundary.

Callables go through cloudpickle (lambdas, closures and ``__main__`` functions must work);
data goes through the C pickler first, which is several times faster, and falls back to
cloudpickle only when the C pickler refuses. Exceptions travel with their formatted traceback
so the parent can chain it as ``__cause__``.
"""

from __future__ import annotations

import pickle
import sys
import threading
import traceback
import types
import weakref
from typing import Any

from ._exceptions import RemoteTraceback, SerializationError

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _cloudpickle() -> Any:
    # Imported on first use (~7 ms): a worker that only runs plain functions never needs it.
    # Called outside the try blocks that make a SerializationError of what pickling raised: an
    # import that fails for lack of descriptors (EMFILE) raises its OSError to the caller.
    import cloudpickle

    return cloudpickle


def main_by_value(data: bytes) -> bool:
    """Return True when ``data`` refers to ``__main__`` and workers cannot import it.

    The C pickler stores classes and functions by reference. One defined in a ``__main__``
    without a file (``python -c``, a REPL, Jupyter) cannot be found by a worker, so such a
    pickle must be redone by value with cloudpickle. Scanning the bytes costs next to nothing.
    """
    if b"__main__" not in data:
        return False
    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is None


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with the C pickler, falling back to cloudpickle.

    Raises:
        SerializationError: neither pickler could handle ``obj``; the cause is chained.
    """
    try:
        data = pickle.dumps(obj, PROTOCOL)
        if not main_by_value(data):
            return data
        raise pickle.PicklingError("refers to a __main__ that workers cannot import")
    except Exception as first:
        cloudpickle = _cloudpickle()
        try:
            return cloudpickle.dumps(obj, PROTOCOL)  # type: ignore[no-any-return]
        except Exception as exc:
            raise SerializationError(f"cannot pickle {_describe(obj)}: {exc!r}") from first


_by_reference: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_by_reference_lock = threading.Lock()
_BY_REFERENCE_MAX = 256


def dumps_callable(fn: Any, main_imported: bool = False) -> bytes:
    """Pickle a callable by value where needed (cloudpickle).

    A plain function that its module names (``module.qualname`` finds this very object, and
    the module is not ``__main__``) pickles by reference: its bytes never change, so they are
    cached per function object, held weakly (a function that goes away leaves the cache; a
    new one at the same address is another key). Everything else (lambdas, closures,
    ``__main__`` functions, bound methods, partials) is pickled by value on every call, since
    what it captures may have changed since the last one.

    With ``main_imported`` (the receiver imported the script as ``__main__``, as a process
    lane's worker does, its guarded part excepted), a function the script defines at its top
    level goes by reference too, as ``concurrent.futures`` sends it: the worker's own copy of
    the script then runs it, so an initializer and the tasks share the script's globals
    (by value, each call would carry a copy of them of its own).

    Raises:
        SerializationError: the callable cannot be pickled; the cause is chained.
    """
    plain = type(fn) is types.FunctionType
    cached = _by_reference.get(fn) if plain else None
    if cached is not None:
        return cached
    if main_imported and plain and fn.__module__ == "__main__":
        cached = _main_references.get(fn)
        if cached is not None:
            return cached
        if _top_level_in_main(fn):
            try:
                ref: bytes = pickle.dumps(fn, PROTOCOL)
            except Exception:
                pass  # by value after all
            else:
                _remember(fn, ref, _main_references)
                return ref
    if "cloudpickle" not in sys.modules and (
        (plain and fn.__module__ != "__main__")
        or (type(fn) is types.BuiltinFunctionType and type(fn.__self__) is types.ModuleType)
    ):
        # For a function its module names (or a module's builtin) the C pickler's bytes are
        # cloudpickle's (nothing can be registered to go by value before cloudpickle is
        # imported): cloudpickle stays unimported (~7 ms) until a callable needs it.
        try:
            data: bytes = pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass  # a local function, a lambda: by value
        else:
            if plain:
                _remember(fn, data)
            return data
    cloudpickle = _cloudpickle()
    try:
        data = cloudpickle.dumps(fn, PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle the callable {_describe(fn)}: {exc!r}") from exc
    if type(fn) is types.FunctionType and fn.__module__ != "__main__":
        try:
            by_reference = pickle.dumps(fn, PROTOCOL)
        except Exception:
            return data  # not found under its name: pickled by value
        if by_reference == data:  # cloudpickle agreed: by reference
            _remember(fn, data)
    return data


_main_references: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_main_defs: dict[str, dict[str, set[int]]] = {}  # script path -> top-level def name -> lines


def _top_level_in_main(fn: types.FunctionType) -> bool:
    """Whether ``fn`` is a top-level ``def`` of the ``__main__`` script (in no block).

    That is the one a worker that imports the script finds under its name.

    The script is parsed once (``ast``); a function defined in the ``if __name__ ==
    "__main__":`` block, in any other block, or redefined after, does not qualify.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    name = fn.__name__
    if not isinstance(path, str) or fn.__qualname__ != name or getattr(main, name, None) is not fn:
        return False
    defs = _main_defs.get(path)
    if defs is None:
        defs = _main_defs[path] = _parse_top_level_defs(path)
    return fn.__code__.co_firstlineno in defs.get(name, ())


def _parse_top_level_defs(path: str) -> dict[str, set[int]]:
    import ast  # on first use: only scripts that send their own functions to processes

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}  # nothing qualifies: by value, as before
    defs: dict[str, set[int]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # co_firstlineno is the first decorator's line, if any
            lines = {node.lineno, *(d.lineno for d in node.decorator_list)}
            defs.setdefault(node.name, set()).update(lines)
    return defs


def _remember(
    fn: Any, data: bytes, cache: weakref.WeakKeyDictionary[Any, bytes] | None = None
) -> None:
    # Bounded: a program that makes functions on the fly does not grow it for ever.
    cache = _by_reference if cache is None else cache
    with _by_reference_lock:
        if len(cache) >= _BY_REFERENCE_MAX:
            cache.clear()
        cache[fn] = data


def loads(data: bytes) -> Any:
    """Unpickle ``data``.

    Raises:
        SerializationError: unpickling failed; the cause is chained.
    """
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle a {len(data)}-byte message: {exc!r}") from exc


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{name} ({text})" if name not in text else text


def pack_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its formatted traceback; never raises.

    An exception that will not pickle (or unpickle) is replaced by a ``SerializationError``
    whose message says what was raised, so the caller still learns what happened.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = dumps((exc, tb))
        pickle.loads(data)  # an exception whose __reduce__ is wrong fails here, not in the parent
        return data
    except Exception as err:
        substitute = SerializationError(
            f"the task raised {type(exc).__qualname__}: {exc}, "
            f"which could not be sent back ({err!r})"
        )
        return pickle.dumps((substitute, tb), PROTOCOL)


def unpack_exception(data: bytes) -> BaseException:
    """Rebuild an exception packed by :func:`pack_exception`, remote traceback as cause."""
    try:
        exc, tb = pickle.loads(data)
    except Exception as err:
        return SerializationError(f"cannot unpickle the exception raised by a task: {err!r}")
    return chain_remote(exc, tb)


def chain_remote(exc: BaseException, tb: str) -> BaseException:
    """Attach the worker's formatted traceback to ``exc`` as ``__cause__``."""
    exc.__cause__ = RemoteTraceback(tb)
    return exc
