"""Pickled callables kept per callable, reused only while the pickle would come out the same.

A function its module names goes by reference: its bytes never change (``remember``). One no
worker can import by name (``__main__``'s functions, lambdas, closures, partials of them) goes
by value with cloudpickle: its code, defaults, closure cells, ``__dict__``, annotations and the
globals its code uses, and so on for the functions it reaches by value (~30 us a call). So next
to the bytes this module records every object the pickle was made of, and reuses the bytes
while each is still the very same object: identity checks in C loops, a fraction of a pickle.
A rebound global, a redefined helper, a changed default or closure cell: a new pickle at once.

Same object means same pickle only for objects immutable in depth: ``None``, ``bool``, numbers,
``str``, ``bytes``, ``...``, tuples and frozensets of such, ``list[int]``-style aliases,
modules, and functions, builtins and classes that pickle by reference (checked on every call
too), and functions by value that pass the same checks. Anything else (a list, a dict, an
instance, an array, a ``__main__`` class) leaves the callable uncached for good: pickled on
every call, so a worker sees a mutable global as it is at each call, as a thread would (I2).
Also checked, as cloudpickle's output depends on them: the modules registered with
``cloudpickle.register_pickle_by_value``, and for a callable using a package, the count of
``sys.modules`` (cloudpickle sends the package's submodules imported so far).

A callable is kept from its second pickle on (a lambda made for one call costs one entry), at
most ``MAX_ENTRIES`` of them, each only while it lives (15b's B2), ``MAX_BYTES`` of pickles in
all. The one race left: while the pickle that fills an entry is made, another thread
rebinds a global and then binds the very same object back.
"""

from __future__ import annotations

import functools
import operator
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

MAX_ENTRIES = 256
"""Callables remembered at most (each only while it lives)."""
MAX_BYTES = 1 << 26
"""Bytes of pickles kept in all: a large one (data a closure or partial carries by value) that
would pass it is not kept this time (pickled again, and kept once there is room)."""
BACKOFF_MAX = 64
"""A pickle that went stale before its first use is kept again only after up to this many."""

_MISSING = object()  # a global name not bound (a builtin, or not defined yet)
_SEEN = object()  # pickled once by value: cached from the next pickle on
_NEVER = object()  # reaches something mutable: pickled on every call

_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis)})
# *_NAME: a class body inside the function (more names than cloudpickle sends)
_GLOBAL_OPNAMES = ["LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "STORE_NAME"]
_GLOBAL_OPNAMES += ["DELETE_NAME", "LOAD_FROM_DICT_OR_GLOBALS"]
_MODULE_KEYS = ("__package__", "__name__", "__path__", "__file__")  # sent with any function

_is = operator.is_
_call: Callable[[Callable[[Any], Any], Any], Any] = getattr(operator, "call", lambda f, x: f(x))
_FN_FIELDS = "__code__ __defaults__ __kwdefaults__ __closure__ __dict__ __annotations__ __name__"
_fn_state = operator.attrgetter(*_FN_FIELDS.split(), "__qualname__", "__module__", "__doc__")
_named = operator.attrgetter("__module__", "__qualname__")
_contents = operator.attrgetter("cell_contents")


def _partial_state(obj: Any) -> tuple[Any, ...]:
    # What pickles: (func, args, keywords, __dict__ or None); reading __dict__ would make one.
    state: tuple[Any, ...] = obj.__reduce__()[2]
    return state


def _cells(cells: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(map(_contents, cells))  # ValueError for a cell emptied since


# id(callable) -> [weak reference, bytes, check, pickles to make before keeping one, backoff];
# check None: by reference (always right).
_cache: dict[int, list[Any]] = {}
_lock = threading.Lock()
_names: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


def cached(fn: Any) -> bytes | None:
    """The bytes kept for ``fn`` if they are what pickling it now gives, else None."""
    slot = _cache.get(id(fn))
    if slot is None or slot[0]() is not fn:
        return None
    check = slot[2]
    if check is None or (type(check) is _Entry and check.valid(fn)):
        if check is not None:
            check.used = True
        data: bytes = slot[1]
        return data
    return None


def kept(fn: Any, data: bytes) -> bool:
    """Whether ``data`` are the very bytes kept for ``fn`` (``cached`` gives them back)."""
    slot = _cache.get(id(fn))
    return slot is not None and slot[1] is data and slot[0]() is fn


def by_reference(fn: Any) -> bytes | None:
    """The bytes kept for ``fn`` when it pickles by reference (they never change), or None."""
    slot = _cache.get(id(fn))
    if slot is None or slot[2] is not None or slot[0]() is not fn:
        return None
    data: bytes = slot[1]
    return data


def remember(fn: Any, data: bytes) -> None:
    """Keep ``data``, the bytes of ``fn`` pickled by reference."""
    _store(fn, data, None)


def dumps(fn: Any, pickler: Callable[[Any], bytes]) -> bytes:
    """Pickle ``fn`` by value with ``pickler``, keeping the bytes where they can be reused.

    Only plain functions and ``functools.partial`` objects are kept; ``cached`` hands the
    bytes back while they are right.

    Raises:
        Exception: what ``pickler`` raised (nothing is kept then).
    """
    kind = type(fn)
    if kind is not types.FunctionType and kind is not functools.partial:
        return pickler(fn)
    slot = _cache.get(id(fn))
    state = slot[2] if slot is not None and slot[0]() is fn else _MISSING
    if state is _MISSING:  # the first pickle
        data = pickler(fn)
        _store(fn, b"", _SEEN)
        return data
    if state is _NEVER or state is None:  # None: by reference (kept, so not called for)
        return pickler(fn)
    assert slot is not None
    backoff = slot[4]
    if type(state) is _Entry:  # stale; if it never served, its globals change call by call:
        backoff = 1 if state.used else min(2 * backoff, BACKOFF_MAX)  # keep one less often
        if backoff > 1:
            _store(fn, b"", _SEEN, backoff - 1, backoff)
            return pickler(fn)
    elif slot[3] > 0:
        slot[3] -= 1
        return pickler(fn)
    # Record what the pickle is made of, pickle, then check that none of it changed meanwhile.
    entry = _build(fn)
    data = pickler(fn)
    if entry is None:
        _store(fn, b"", _NEVER)
    elif entry.valid(fn):
        _store(fn, data, entry, 0, backoff)
    return data


def _store(fn: Any, data: bytes, check: Any, wait: int = 0, backoff: int = 1) -> None:
    if len(data) > 1 << 20:  # a large capture's pickle beside it: only while there is room
        kept = sum(len(slot[1]) for slot in list(_cache.values()))  # (one C-level copy)
        if kept + len(data) > MAX_BYTES:
            data, check = b"", _SEEN  # pickled again next time, kept once there is room
    key = id(fn)
    with _lock:
        if len(_cache) >= MAX_ENTRIES and key not in _cache:
            _cache.clear()  # bounded: a program making functions on the fly does not grow it
        _cache[key] = [weakref.ref(fn, functools.partial(_forget, key)), data, check, wait, backoff]


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    # The callable died: its entry goes. No lock (a collection may run this while this thread
    # holds it); a new callable stored under the same id meanwhile costs one pickle at worst.
    slot = _cache.get(key)
    if slot is not None and slot[0] is ref:
        _cache.pop(key, None)


def _registry() -> Any:
    # cloudpickle's set of modules registered to go by value (None: unknown, never cache).
    return getattr(sys.modules.get("cloudpickle.cloudpickle"), "_PICKLE_BY_VALUE_MODULES", None)


class _Entry:
    """The objects one pickle was made of, to find again, the very same, on the next call."""

    def __init__(self, registry: Any) -> None:
        self.root: Callable[[Any], tuple[Any, ...]] = _fn_state
        self.used = False  # served a call from the cache
        self.head: tuple[Any, ...] = ()  # what root(fn) gave
        self.getters: list[Callable[[Any], Iterable[Any]]] = []
        self.objects: list[Any] = []
        self.expected: list[Any] = []
        self.modules = -1  # len(sys.modules) when a package is used
        self.registry = registry
        self.snapshot = frozenset(registry)
        self.spaces: dict[int, tuple[dict[Any, Any], dict[Any, Any]]] = {}  # namespaces read
        self.wholes: set[int] = set()

    def valid(self, fn: Any) -> bool:
        """True while every recorded object is still the one the pickle was made of.

        Each probe gives an iterable of objects; all of them, end to end, must be the very
        objects recorded (a dict that grew gives more of them).
        """
        try:
            now = [*self.root(fn), *chain.from_iterable(map(_call, self.getters, self.objects))]
        except Exception:  # an emptied cell, a key gone: pickle again
            return False
        if len(now) != len(self.expected) or not all(map(_is, now, self.expected)):
            return False
        if self.modules >= 0 and len(sys.modules) != self.modules:
            return False
        return bool(self.registry == self.snapshot)

    # ---- making one: each method returns False for what cannot be cached ----

    def probe(self, getter: Callable[[Any], Iterable[Any]], obj: Any, now: Iterable[Any]) -> None:
        self.getters.append(getter)
        self.objects.append(obj)
        self.expected.extend(now)

    def lookup(self, space: dict[Any, Any], keys: Iterable[Any]) -> list[Any]:
        """Read and record ``space[key]`` (or its absence) for each key; return the values.

        A key read before keeps the value recorded then: what was checked is what is compared.
        """
        found = self.spaces.setdefault(id(space), (space, {}))[1]
        values = []
        for key in keys:
            value = found.get(key, found)
            if value is found:
                found[key] = value = space.get(key, _MISSING)
            values.append(value)
        return values

    def finish(self) -> None:
        """Turn the namespace lookups into probes; put the root's state first."""
        for space, found in self.spaces.values():
            present = [key for key, value in found.items() if value is not _MISSING]
            if present:
                keys = present if len(present) > 1 else present * 2  # itemgetter: a tuple
                self.probe(operator.itemgetter(*keys), space, [found[key] for key in keys])
            absent = [key for key, value in found.items() if value is _MISSING]
            if absent:  # space.__contains__ of each: False, False, ...
                self.probe(
                    functools.partial(map, space.__contains__), absent, [False] * len(absent)
                )
        self.expected[:0] = self.head

    def whole(self, obj: Any, seen: dict[int, Any]) -> bool:
        """A dict pickled whole: its keys (str), their order and their values must stay."""
        if obj is None:
            return True
        if type(obj) is not dict or id(obj) in self.spaces:
            return False
        if not obj:
            self.probe(tuple, obj, ())  # any key added makes the probe longer
            return True
        if id(obj) in self.wholes:
            return True  # met before (a partial reached twice)
        self.wholes.add(id(obj))
        keys = tuple(obj)
        if not all(type(key) is str for key in keys):
            return False
        values = [obj[key] for key in keys]
        self.probe(tuple, obj, keys)
        self.probe(operator.itemgetter(*keys, *keys), obj, values * 2)
        return all(self.value(value, seen) for value in values)

    def value(self, obj: Any, seen: dict[int, Any]) -> bool:
        """Record what makes ``obj`` pickle the same; False if it could pickle otherwise."""
        kind = type(obj)
        if kind in _SCALARS:
            return True
        if kind is tuple or kind is frozenset:
            return all(self.value(item, seen) for item in obj)
        if kind is types.FunctionType:
            return self.reference(obj) or self.function(obj, seen)
        if kind is types.BuiltinFunctionType:
            return isinstance(obj.__self__, types.ModuleType) and self.reference(obj)
        if isinstance(obj, type):
            return self.reference(obj)  # a class that goes by value is never cached
        if kind is types.ModuleType:
            return self.module(obj)
        if kind is types.GenericAlias:  # list[int]: immutable, pickled by its reduce
            return self.value(obj.__reduce__(), seen)
        if kind is functools.partial:
            state = _partial_state(obj)
            self.probe(_partial_state, obj, state)
            return self.partial(state, seen)
        return False

    def registered(self, module_name: str) -> bool:
        parts = module_name.split(".")
        return any(".".join(parts[:i]) in self.snapshot for i in range(1, len(parts) + 1))

    def reference(self, obj: Any) -> bool:
        """True (and recorded) when ``obj`` pickles by reference, as ``module.name``."""
        module_name, name = _named(obj)
        if type(module_name) is not str or type(name) is not str or module_name == "__main__":
            return False
        module = sys.modules.get(module_name)
        space = getattr(module, "__dict__", None)
        if type(space) is not dict or self.lookup(space, (name,))[0] is not obj:
            return False  # nested (Class.method) or not found there: left alone
        if (
            self.registered(module_name)
            or self.lookup(sys.modules, (module_name,))[0] is not module
        ):
            return False
        self.probe(_named, obj, (module_name, name))
        return True

    def module(self, obj: types.ModuleType) -> bool:
        """A module pickles by its name while ``sys.modules`` holds it under that name."""
        space = getattr(obj, "__dict__", None)
        if type(space) is not dict:
            return False
        name, package = self.lookup(space, ("__name__", "__package__"))
        if type(name) is not str or name == "__main__" or self.registered(name):
            return False
        if self.lookup(sys.modules, (name,))[0] is not obj:
            return False
        if package:  # cloudpickle sends the submodules of a package that are imported now
            self.modules = len(sys.modules)
        return True

    def partial(self, state: tuple[Any, ...], seen: dict[int, Any]) -> bool:
        if len(state) != 4:
            return False
        func, args, keywords, attributes = state
        return (
            self.value(func, seen)
            and self.value(args, seen)
            and self.whole(keywords, seen)
            and self.whole(attributes, seen)
        )

    def function(self, fn: types.FunctionType, seen: dict[int, Any], root: bool = False) -> bool:
        """A function by value: its attributes, closure cells and the globals it uses."""
        if id(fn) in seen:
            return True  # reached again (recursion): checked where first met
        seen[id(fn)] = fn
        state = _fn_state(fn)
        if root:
            self.head = state
        else:
            self.probe(_fn_state, fn, state)
        code, defaults, kwdefaults, closure, attributes, annotations = state[:6]
        if not (
            self.value(defaults, seen)
            and self.value(state[8], seen)  # __module__
            and self.value(state[9], seen)  # __doc__
            and self.whole(kwdefaults, seen)
            and self.whole(attributes, seen)
            and self.whole(annotations, seen)
        ):
            return False
        if closure:
            contents = _cells(closure)  # ValueError: a cell not filled yet
            self.probe(_cells, closure, contents)
            if not all(self.value(item, seen) for item in contents):
                return False
        values = self.lookup(fn.__globals__, (*_global_names(code), *_MODULE_KEYS))
        return all(item is _MISSING or self.value(item, seen) for item in values)


def _build(fn: Any) -> _Entry | None:
    """What ``fn``'s pickle is made of, or None if it may pickle otherwise with those same."""
    registry = _registry()
    if registry is None:
        return None
    entry = _Entry(registry)
    seen: dict[int, Any] = {}
    try:
        if type(fn) is functools.partial:
            entry.root = _partial_state
            entry.head = _partial_state(fn)
            good = entry.partial(entry.head, seen)
        else:
            good = entry.function(fn, seen, root=True)
        entry.finish()
    except Exception:  # an empty cell, a reduce that fails, a tuple nested too deep
        return None
    return entry if good else None


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` and the functions it defines read, write or delete."""
    names = _names.get(code)
    if names is None:
        import dis  # ~3 ms, not on a worker's way: only when a pickle is first kept

        ops = {dis.opmap[name] for name in _GLOBAL_OPNAMES if name in dis.opmap}
        found = {ins.argval: None for ins in dis.get_instructions(code) if ins.opcode in ops}
        for const in code.co_consts:
            if type(const) is types.CodeType:
                found.update(dict.fromkeys(_global_names(const)))
        names = _names[code] = tuple(found)
    return names
