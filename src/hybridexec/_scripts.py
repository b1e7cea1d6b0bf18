"""What a worker has of the program's ``__main__``: which of its objects a pickle may name.

A worker imports the script as ``__mp_main__`` without running its ``if __name__ ==
"__main__":`` block, and runs nothing of a package's or a zip app's ``__main__.py``. A pickle
naming what the worker lacks must be made by value (``_serialize.main_by_value``).
"""

from __future__ import annotations

import types
from typing import Any


def unimported(main: Any) -> bool:
    """Whether a worker runs none of ``main``: it has no file, or multiprocessing skips it.

    A package's or zip app's ``__main__.py`` (``python -m app``, ``python app.pyz``,
    ``python app/``) is never run in a worker (``spawn._fixup_main_from_*``): 15a's A1.
    """
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    return name == "__main__" or name.endswith(".__main__") or path.endswith("__main__.py")


def shared(main: Any, name: str, obj: object) -> bool:
    """Whether a worker's run of the script binds ``name`` as this process's ``main`` does.

    A class defined at the top level, outside every guard, and not again under one.
    """
    if main is None or unimported(main) or getattr(main, "__dict__", {}).get(name) is not obj:
        return False
    static = _top_level_names(str(main.__file__))
    return static is not None and name in static


_static: dict[str, frozenset[str] | None] = {}  # script -> names its top level binds, unguarded
_hidden: list[Any] = [None, -1, ()]  # main's namespace, its size, the markers of guarded()


def guarded(main: Any) -> tuple[bytes, ...]:
    """How a pickle names the script's classes and functions that a worker will not have.

    Those of ``__main__`` that its top level does not bind outside a ``__main__`` guard, as
    the protocol's short strings (their names); made again when the namespace changes size.
    """
    space = getattr(main, "__dict__", None)
    if type(space) is not dict:
        return ()
    if _hidden[0] is space and _hidden[1] == len(space):
        markers: tuple[bytes, ...] = _hidden[2]
        return markers
    static = _top_level_names(str(main.__file__)) or frozenset(space)  # None: unknown, all in
    found = []
    for name, value in list(space.items()):
        if name in static or not isinstance(value, (type, types.FunctionType)):
            continue
        raw = name.encode("utf-8", "replace")
        if getattr(value, "__module__", None) == "__main__" and len(raw) < 256:
            found.append(b"\x8c" + bytes([len(raw)]) + raw)  # SHORT_BINUNICODE
    _hidden[:] = [space, len(space), tuple(found)]
    return tuple(found)


def _top_level_names(path: str) -> frozenset[str] | None:
    """The names a worker's run of the script at ``path`` binds as this process's do.

    Those its top level binds outside ``__main__`` guards, less those a guarded block binds
    too (a class defined again under the guard is not the worker's: 15e's E1). A guard is
    ``__name__ == "__main__"`` alone or in an ``and`` (its body is guarded), or ``!=`` (its
    ``else`` is); blocks (``try``, ``with``, ``for``, ``if``) are looked into (15e's E2, E3).
    None if the script cannot be read or parsed: nothing is then taken for guarded.
    """
    if path in _static:
        return _static[path]
    import ast  # on first use: only scripts that pickle their own objects need it

    top: set[str] = set()
    guarded_names: set[str] = set()

    def bind(stmts: list[Any], found: set[str]) -> None:
        for node in stmts:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If) and (main_only := _guard(node.test)) is not None:
                inside, outside = (
                    (node.body, node.orelse) if main_only else (node.orelse, node.body)
                )
                bind(inside, guarded_names)  # runs only where the script is __main__
                bind(outside, found)
            elif any(isinstance(getattr(node, f, None), list) for f in _BLOCKS):
                for field in _BLOCKS:  # a block: its own targets, then its statements
                    value = getattr(node, field, None)
                    if isinstance(value, list):
                        bind(value, found)
                    elif isinstance(value, ast.AST):
                        found.update(_stores(ast, value))
                for item in getattr(node, "items", ()):  # with ... as name
                    found.update(_stores(ast, item))
                if isinstance(node, ast.ExceptHandler) and node.name:
                    found.add(node.name)
            else:  # a simple statement: every name it stores
                found.update(_stores(ast, node))

    try:
        with open(path, "rb") as file:
            bind(ast.parse(file.read()).body, top)
    except (OSError, SyntaxError, ValueError, RecursionError):
        _static[path] = None
        return None
    names = _static[path] = frozenset(top - guarded_names)
    return names


_BLOCKS = ("target", "test", "iter", "body", "orelse", "finalbody", "handlers", "cases")


def _stores(ast: Any, node: Any) -> list[str]:
    return [
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    ]


def _guard(test: Any) -> bool | None:
    """True: ``test`` holds only where the script is ``__main__``; False: only where it is not."""
    import ast

    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return True if any(_guard(value) for value in test.values) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    sides = [test.left, test.comparators[0]]
    named = any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
    if not named or not any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides):
        return None
    return (
        True
        if isinstance(test.ops[0], ast.Eq)
        else False
        if isinstance(test.ops[0], ast.NotEq)
        else None
    )
