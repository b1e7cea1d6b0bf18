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
    """The names the script at ``path`` binds at its top level outside ``__main__`` guards.

    None if it cannot be read or parsed: nothing is then taken for guarded.
    """
    if path in _static:
        return _static[path]
    import ast  # on first use: only scripts that pickle their own objects need it

    found: set[str] = set()

    def bind(stmts: list[Any]) -> None:
        for node in stmts:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If) and _is_main_guard(node.test):
                bind(node.orelse)  # its body runs only where the script is __main__
            else:  # assignments, and what other blocks (if, try, with, for) bind
                stores = (n for n in ast.walk(node) if isinstance(n, ast.Name))
                found.update(n.id for n in stores if isinstance(n.ctx, ast.Store))
                for field in ("body", "orelse", "finalbody", "handlers"):
                    bind(getattr(node, field, None) or [])
                if isinstance(node, ast.ExceptHandler) and node.name:
                    found.add(node.name)

    try:
        with open(path, "rb") as file:
            bind(ast.parse(file.read()).body)
    except (OSError, SyntaxError, ValueError, RecursionError):
        _static[path] = None
        return None
    names = _static[path] = frozenset(found)
    return names


def _is_main_guard(test: Any) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    sides = [test.left, test.comparators[0]]
    named = any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
    return named and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides)
