"""Pickling rules shared by every lane that crosses a process boundary.

Callables go through cloudpickle (lambdas, closures and ``__main__`` functions must work);
data goes through the C pickler first, which is several times faster, and falls back to
cloudpickle only when the C pickler refuses. Exceptions travel with their formatted traceback
so the parent can chain it as ``__cause__``.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import threading
import traceback
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

from . import _fncache
from ._exceptions import RemoteTraceback, SerializationError

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _cloudpickle() -> Any:
    # Imported on first use (~7 ms): a worker that only runs plain functions never needs it.
    # Called outside the try blocks that make a SerializationError of what pickling raised: an
    # import that fails for lack of descriptors (EMFILE) raises its OSError to the caller.
    import cloudpickle

    return cloudpickle


@functools.cache
def cloud_pickler() -> Any:
    """The pickler of cloudpickle, but an open text file (not a standard stream) does not pickle.

    cloudpickle sends a file opened for reading as an ``io.StringIO`` of its text: what a
    process task wrote to it was lost without a word (15d's D1). Refused, as the C pickler
    refuses every other file: an automatically routed task runs on a thread instead.
    """
    base = _cloudpickle().Pickler
    table = base.dispatch_table
    by_name = table.get(io.TextIOWrapper)

    def reduce_file(obj: Any) -> Any:
        if by_name is not None and obj in (sys.stdout, sys.stderr, sys.stdin):
            return by_name(obj)  # by name: the worker's own stream
        raise TypeError(f"cannot pickle {type(obj).__name__!r} object (an open file)")

    files = {io.TextIOWrapper: reduce_file}
    maps = getattr(table, "maps", [table])  # a ChainMap in cloudpickle 2.2 to 3.1
    return type("Pickler", (base,), {"dispatch_table": ChainMap(files, *maps)})


def dumps_by_value(obj: Any) -> bytes:
    """``obj`` pickled whole with ``cloud_pickler`` (what names ``__main__`` goes by value).

    Raises:
        Exception: what pickling raised.
    """
    buffer = io.BytesIO()
    cloud_pickler()(buffer, protocol=PROTOCOL).dump(obj)
    return buffer.getvalue()


def main_by_value(data: bytes) -> bool:
    """Return True when ``data`` refers to ``__main__``: such a pickle is redone by value.

    The C pickler stores classes and functions by reference, and a worker's ``__main__`` is
    not the program's: it has none of what ``python -c``, a REPL, a notebook, a package's
    ``__main__.py`` (15a's A1) or the script's guarded block (15d's D2) define, and what it
    has is its own run of the script: a second class beside the one a function sent by value
    brings (an enum member unequal to itself: 15e's E4), without what the program changed in
    it (15h's H1). By value (cloudpickle), the class is one in the worker (cloudpickle tracks
    it) and comes back as the program's own; a worker's reply naming script objects that came
    by value goes by value too (under ``python -m cProfile`` the parent's ``__main__`` is the
    launcher's: 15d's D6). Scanning the bytes costs next to nothing.
    """
    return b"__main__" in data


class MainByValue(pickle.PicklingError):
    """A pickle names ``__main__`` objects: the caller makes it again by value."""


def checked_main(data: bytes) -> bytes:
    """``data``, unless it names ``__main__`` objects the other side may not find.

    Raises:
        MainByValue: it does (``main_by_value``): the caller pickles by value.
    """
    if main_by_value(data):
        raise MainByValue("refers to __main__ objects the other side cannot import")
    return data


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` with the C pickler, falling back to cloudpickle.

    Raises:
        SerializationError: neither pickler could handle ``obj``; the cause is chained.
    """
    try:
        return checked_main(pickle.dumps(obj, PROTOCOL))
    except Exception as first:
        _cloudpickle()
        try:
            return dumps_by_value(obj)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {_describe(obj)}: {exc!r}") from first


def dumps_callable(fn: Any) -> bytes:
    """Pickle a callable, by value where needed (cloudpickle); the bytes are kept per callable.

    A plain function that its module names (``module.qualname`` finds this very object, and
    the module is not ``__main__``) pickles by reference: its bytes never change. Everything
    else (lambdas, closures, ``__main__`` functions, bound methods, partials) is pickled by
    value, with the values of the globals it uses as they are now: what a thread would see if
    the call ran here (guarantee I2, whichever lane the router picks). Those bytes are reused
    only while everything they were made of is still the same immutable object
    (``_fncache``): a function that reaches a mutable global is pickled again on every call.
    A global that a worker's initializer touched is the worker's own, as with
    ``concurrent.futures`` (``adopt``).

    Raises:
        SerializationError: the callable cannot be pickled; the cause is chained.
    """
    data = _fncache.cached(fn)
    if data is not None:
        return data
    plain = type(fn) is types.FunctionType
    if "cloudpickle" not in sys.modules and (
        (plain and fn.__module__ != "__main__")
        or (type(fn) is types.BuiltinFunctionType and type(fn.__self__) is types.ModuleType)
    ):
        # For a function its module names (or a module's builtin) the C pickler's bytes are
        # cloudpickle's (nothing can be registered to go by value before cloudpickle is
        # imported): cloudpickle stays unimported (~7 ms) until a callable needs it.
        try:
            data = pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass  # a local function, a lambda: by value
        else:
            if plain:
                _fncache.remember(fn, data)
            return data
    _cloudpickle()  # imported outside the try below (an OSError is not a pickling error)
    try:
        data = _fncache.dumps(fn, dumps_by_value)
    except Exception as exc:
        raise SerializationError(f"cannot pickle the callable {_describe(fn)}: {exc!r}") from exc
    if plain and fn.__module__ != "__main__":
        try:
            by_reference = pickle.dumps(fn, PROTOCOL)
        except Exception:
            return data  # not found under its name: pickled by value
        if by_reference == data:  # cloudpickle agreed: by reference
            _fncache.remember(fn, data)
    return data


def cached_callable(fn: Any) -> bytes | None:
    """The bytes ``dumps_callable`` keeps for ``fn`` if it pickles by reference, or None."""
    return _fncache.by_reference(fn) if type(fn) is types.FunctionType else None


# ---- a worker's side: the globals its initializer set -----------------------------------------
# A ``__main__`` function arrives by value with a globals dict of its own, holding the parent's
# values of the globals it uses. The stdlib idiom "the initializer sets a global, the tasks read
# it" needs the worker's values of what its initializer touched: ``run_initializer`` keeps them,
# and ``adopt`` lays them over each task's globals as the task is unpickled.

_initialized: dict[str, Any] = {}


def _by_value_globals(fn: Any) -> dict[str, Any] | None:
    """The globals of a ``__main__`` function that came by value, or None.

    Partials and bound methods are looked through.
    """
    for _ in range(8):  # a partial of a partial of ...
        inner = getattr(fn, "func", None) if type(fn) is functools.partial else None
        if inner is None and type(fn) is types.MethodType:
            inner = fn.__func__
        if inner is None:
            break
        fn = inner
    if type(fn) is not types.FunctionType:
        return None
    found: dict[str, Any] = fn.__globals__
    main = sys.modules.get("__main__")
    if found.get("__name__") != "__main__" or found is getattr(main, "__dict__", None):
        return None
    return found


def run_initializer(fn: Any, args: tuple[Any, ...]) -> None:
    """Run a worker's initializer; keep the ``__main__`` globals it set or used, for ``adopt``.

    Raises:
        BaseException: what the initializer raised.
    """
    fn(*args)
    found = _by_value_globals(fn)
    if found is None:  # under fork: the script's own function, in the worker's __main__
        found = _main_globals_used(fn)
    _initialized.update((name, value) for name, value in found.items() if name[:2] != "__")


def _main_globals_used(fn: Any) -> dict[str, Any]:
    """The ``__main__`` globals a function of the script itself names (15a's A4).

    Under ``fork`` the initializer is not pickled: it runs with the worker's real
    ``__main__``, where it set its globals, which tasks (sent by value) must see too. Those
    the script's functions it names name are counted too (a helper that sets them: 15e's E6),
    and a bound method is looked through (E7).
    """
    for _ in range(8):  # a partial of a bound method of ...
        fn = fn.func if type(fn) is functools.partial else getattr(fn, "__func__", fn)
    space = getattr(sys.modules.get("__main__"), "__dict__", None)
    if type(fn) is not types.FunctionType or fn.__globals__ is not space:
        return {}
    names: set[str] = set()
    codes, seen = [fn.__code__], set()
    while codes:
        code = codes.pop()
        if code in seen:
            continue
        seen.add(code)
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in code.co_names:  # a function of the script it calls: what that one names
            value = getattr(space.get(name), "__func__", space.get(name))
            if type(value) is types.FunctionType and value.__globals__ is space:
                codes.append(value.__code__)
    return {name: space[name] for name in names if name in space}


def adopt(fn: Any) -> Any:
    """Lay the globals this worker's initializer set over those ``fn`` brought; return ``fn``.

    Called once per callable unpickled in a worker (the worker caches them by their bytes).
    The script's functions and classes that came with it by value (``fn`` and those its
    globals name) are also made the worker's ``__main__``'s: the standard pickler, which
    pickles them by name, must find these very objects there (a task that runs a
    ``ProcessPoolExecutor`` of its own on another function of the script; outside tester
    13c's C5), as in a ``ProcessPoolExecutor``'s worker, where the script is what it runs.
    """
    found = _by_value_globals(fn)
    if found is not None:
        if _initialized:
            found.update(_initialized)
        main = sys.modules.get("__main__")
        if main is not None:
            for value in (fn, *found.values()):
                if type(value) in _DEFINED and getattr(value, "__module__", None) == "__main__":
                    name = getattr(value, "__qualname__", None)
                    if isinstance(name, str) and name.isidentifier():  # top level only
                        setattr(main, name, value)
    return fn


_DEFINED = (types.FunctionType, type)


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
    try:  # formatting reads attributes: a __getattr__ of the user's may raise anything
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException as err:
        tb = f"{type(exc).__qualname__} (its traceback could not be formatted: {err!r})\n"
    try:
        data = dumps((exc, tb))
        pickle.loads(data)  # an exception whose __reduce__ is wrong fails here, not in the parent
        return data
    except BaseException as err:  # a __reduce__ may raise SystemExit too: never raises
        substitute = SerializationError(
            f"the task raised {type(exc).__qualname__}: {_text(exc, str)}, "
            f"which could not be sent back ({_text(err, repr)})"
        )
        return pickle.dumps((substitute, tb), PROTOCOL)


def _text(exc: BaseException, how: Callable[[object], str]) -> str:
    """``str(exc)`` or ``repr(exc)``, or a stand-in when the user's method raises."""
    try:
        return how(exc)
    except BaseException:
        return f"<{type(exc).__qualname__}: its {how.__name__}() raised>"


def unpack_exception(data: bytes) -> BaseException:
    """Rebuild an exception packed by :func:`pack_exception`, remote traceback as cause."""
    try:
        exc, tb = pickle.loads(data)
    except BaseException as err:  # SystemExit from a __setstate__ too: the task's failure
        if (
            isinstance(err, KeyboardInterrupt)
            and threading.current_thread() is threading.main_thread()
        ):
            raise  # a Ctrl-C (a read in the main thread tries again)
        failed = SerializationError(f"cannot unpickle the exception raised by a task: {err!r}")
        failed.__cause__ = err
        return failed
    return chain_remote(exc, tb)


def chain_remote(exc: BaseException, tb: str) -> BaseException:
    """Attach the worker's formatted traceback to ``exc`` as ``__cause__``."""
    exc.__cause__ = RemoteTraceback(tb)
    return exc
