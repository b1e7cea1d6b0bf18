"""What the classifier knows of a callable: its name, the call its partials make, its kind.

``function_name`` names the verdict's function (through partials and methods); ``bound_call``
adds what partials bound to a call's arguments, so that they key the verdict too (14d's D1).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .._lazy import loaded

_CO_COROUTINE = 0x80
"""``inspect.CO_COROUTINE``: the code flag of an ``async def`` function."""


def function_name(fn: Callable[..., Any]) -> tuple[str, str, int]:
    """``(module, qualname, first line)`` of a callable, looking through partials and methods."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable instance
        cls = type(target)
        return cls.__module__, f"{cls.__qualname__}.__call__", 0
    module = getattr(target, "__module__", None)
    if not isinstance(module, str):  # e.g. a method of a C type: re.Pattern.match
        module = type(getattr(target, "__self__", None)).__module__
    code = getattr(target, "__code__", None)
    return module, qualname, code.co_firstlineno if code is not None else 0


def bound_call(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """The arguments of a call of ``fn`` with those its partials bound in front (14d's D1).

    ``partial(convert, mode="io")`` and ``partial(convert, mode="cpu")`` are keyed apart, as
    ``convert(x, mode="io")`` and ``convert(x, mode="cpu")`` are.
    """
    while isinstance(fn, functools.partial):
        args = fn.args + args
        if fn.keywords:
            kwargs = {**fn.keywords, **(kwargs or {})}
        fn = fn.func
    return args, kwargs


def is_coroutine_function(fn: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction`` without importing ``inspect`` (2-5 ms on a first call).

    Until something imported ``inspect``, nothing can have marked a function as a coroutine
    function (``inspect.markcoroutinefunction``): its code flags are enough then.
    """
    inspect = loaded("inspect")  # mid-import in another thread: not marked anything yet
    if inspect is not None:
        return bool(inspect.iscoroutinefunction(fn))
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    code = getattr(getattr(target, "__func__", target), "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


class Lazy:
    """A log argument made into text only when the record is emitted.

    ``Lazy(entry.explanation)``: an explanation costs a dataclass (and ~1 ms to import on a
    first verdict), for a debug record that is usually dropped.
    """

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make

    def __str__(self) -> str:
        return str(self.make())
