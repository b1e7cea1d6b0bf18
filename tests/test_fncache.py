"""Callables pickled by value are kept, and pickled again the moment their pickle would differ.

``dumps_callable`` keeps the cloudpickle bytes of a function that goes by value (``__main__``
functions, lambdas, closures: the local functions of these tests go by value too) and reuses
them while everything the pickle was made of is the same immutable object (``_fncache``). Each
change test runs twice: with the checks (the bytes equal a fresh cloudpickle's) and with the
checks switched off (the bytes are stale): the change is one the cache must see, and does.
"""

from __future__ import annotations

import functools
import gc
import sys
import textwrap
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from hybridexec import _fncache
from hybridexec._serialize import PROTOCOL, dumps_callable

pytestmark = pytest.mark.timeout(60)

THIS = sys.modules[__name__]
SCALE = 1
NAMES = ("a", "b")
ITEMS: list[int] = []
NESTED: tuple[Any, ...] = (1, ("x", [2]))


def helper(x: int) -> int:
    return x


def _fresh(fn: Any) -> bytes:
    return cloudpickle.dumps(fn, PROTOCOL)  # type: ignore[no-any-return]


def _warm(fn: Any) -> bytes:
    """Pickle ``fn`` until it is kept; return the kept bytes."""
    dumps_callable(fn)
    data = dumps_callable(fn)
    assert dumps_callable(fn) is data, "kept from the second pickle on"
    assert data == _fresh(fn)
    return data


@pytest.fixture(params=["checked", "unchecked"])
def checks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """True: the real cache. False: its checks switched off, to show a stale pickle is caught."""
    on: bool = request.param == "checked"
    if not on:
        monkeypatch.setattr(_fncache._Entry, "valid", lambda self, fn: True)
    return on


def _after(fn: Any, change: Callable[[], object], checks: bool) -> None:
    before = _warm(fn)
    change()
    fresh = _fresh(fn)
    assert fresh != before, "the change alters the pickle"
    if checks:
        assert dumps_callable(fn) == fresh
        assert dumps_callable(fn) == _fresh(fn)
    else:
        assert dumps_callable(fn) is before  # what a cache without checks would send


def test_a_rebound_global_int_is_pickled_again(
    checks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scaled(x: int) -> int:
        return x * SCALE + len(NAMES)

    _after(scaled, lambda: monkeypatch.setattr(THIS, "SCALE", 7), checks)


def test_a_redefined_helper_is_pickled_again(checks: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    def uses(x: int) -> int:
        return helper(x) + 1

    def other(x: int) -> int:
        return -x

    _after(uses, lambda: monkeypatch.setattr(THIS, "helper", other), checks)


def test_a_changed_default_is_pickled_again(checks: bool) -> None:
    def add(x: int, k: int = 1, *, j: int = 2) -> int:
        return x + k + j

    def change() -> None:
        add.__defaults__ = (5,)

    _after(add, change, checks)


def test_a_keyword_default_changed_in_place_is_pickled_again(checks: bool) -> None:
    def add(x: int, *, j: int = 2) -> int:
        return x + j

    def change() -> None:
        assert add.__kwdefaults__ is not None
        add.__kwdefaults__["j"] = 40

    _after(add, change, checks)


def test_a_closure_cell_set_again_is_pickled_again(checks: bool) -> None:
    k = 1

    def closure(x: int) -> int:
        return x + k

    def change() -> None:
        nonlocal k
        k = 2

    _after(closure, change, checks)


def test_a_helper_reached_by_value_changing_is_seen(
    checks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inner(x: int, k: int = 1) -> int:
        return x * k * SCALE

    def outer(x: int) -> int:
        return helper(x)

    monkeypatch.setattr(THIS, "helper", inner)

    def change() -> None:
        inner.__defaults__ = (3,)

    _after(outer, change, checks)
    if checks:  # the helper's own global, two levels down
        _after(outer, lambda: monkeypatch.setattr(THIS, "SCALE", 9), checks)


def test_a_function_attribute_or_annotation_change_is_seen(checks: bool) -> None:
    def annotated(x: list[int]) -> int:
        return len(x)

    def change() -> None:
        annotated.tag = "new"  # type: ignore[attr-defined]

    _after(annotated, change, checks)
    if checks:
        _after(annotated, lambda: annotated.__annotations__.update(x=dict[str, int]), checks)


def test_a_global_shadowing_a_builtin_is_seen(
    checks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def counts(x: tuple[int, ...]) -> int:
        return len(x)

    _after(counts, lambda: monkeypatch.setattr(THIS, "len", lambda x: 0, raising=False), checks)


def test_a_partial_changed_in_place_is_pickled_again(checks: bool) -> None:
    def add(x: int, k: int = 0) -> int:
        return x + k

    bound = functools.partial(add, 1, k=2)
    _after(bound, lambda: bound.keywords.update(k=3), checks)
    if checks:
        setstate = bound.__setstate__  # type: ignore[attr-defined]
        _after(bound, lambda: setstate((helper, (4,), {}, None)), checks)


def test_a_newly_imported_submodule_of_a_used_package_is_seen(
    checks: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cloudpickle sends the submodules of a package a function uses that are imported now.
    name = f"hxfnc_pkg_{checks}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(THIS, "PKG", __import__(name), raising=False)

    def reads() -> int:
        return PKG.sub.VALUE  # type: ignore[name-defined,no-any-return]  # noqa: F821

    try:
        _after(reads, lambda: __import__(f"{name}.sub"), checks)
    finally:
        for module in (f"{name}.sub", name):
            sys.modules.pop(module, None)


def test_a_module_registered_to_go_by_value_is_seen(
    checks: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"hxfnc_mod_{checks}"
    (tmp_path / f"{name}.py").write_text("def named():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    monkeypatch.setattr(THIS, "helper", module.named)

    def calls() -> int:
        return helper(0) + 1

    try:
        _after(calls, lambda: cloudpickle.register_pickle_by_value(module), checks)
    finally:
        if name in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(name, None)


@pytest.mark.parametrize("where", ["list", "list in a tuple"])
def test_a_function_reaching_a_mutable_value_is_pickled_every_call(where: str) -> None:
    def reads_items() -> object:
        return ITEMS

    def reads_nested() -> object:
        return NESTED

    fn, mutable = (reads_items, ITEMS) if where == "list" else (reads_nested, NESTED[1][1])
    sends = [dumps_callable(fn) for _ in range(3)]
    assert sends[1] is not sends[2]
    mutable.append(len(mutable))  # what a thread would see on the next call
    try:
        assert dumps_callable(fn) == _fresh(fn) != sends[2]
    finally:
        mutable.pop()


def test_a_kept_function_is_not_kept_alive() -> None:
    def local(x: int) -> int:
        return x * SCALE

    _warm(local)
    ref = weakref.ref(local)
    del local
    gc.collect()
    assert ref() is None


def test_a_by_reference_function_keeps_its_bytes() -> None:
    assert dumps_callable(helper) is dumps_callable(helper)
    assert dumps_callable(textwrap.dedent) is dumps_callable(textwrap.dedent)


def test_threads_rebinding_a_global_end_with_the_right_pickle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def scaled(x: int) -> int:
        return x * SCALE

    _warm(scaled)
    stop = threading.Event()

    def pickle_on() -> None:
        while not stop.is_set():
            dumps_callable(scaled)

    threads = [threading.Thread(target=pickle_on) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for value in range(300):
            monkeypatch.setattr(THIS, "SCALE", value + 1000)
            assert dumps_callable(scaled) == _fresh(scaled)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert dumps_callable(scaled) == _fresh(scaled)


def test_a_global_rebound_before_every_call_does_not_cost_a_check_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A loop rebinding a global the function reads makes every kept pickle stale before its
    # first use: the checks are then made ever less often (at most 1 in BACKOFF_MAX calls),
    # and every call still gets the pickle of the moment.
    def scaled(x: int) -> int:
        return x * SCALE

    builds = []
    build = _fncache._build

    def counted(fn: Any) -> Any:
        builds.append(fn)
        return build(fn)

    monkeypatch.setattr(_fncache, "_build", counted)
    for value in range(400):
        monkeypatch.setattr(THIS, "SCALE", value + 1000)
        assert dumps_callable(scaled) == _fresh(scaled)
    assert len(builds) <= 20
    # Left alone, it is kept again within BACKOFF_MAX calls, and right.
    sends = [dumps_callable(scaled) for _ in range(_fncache.BACKOFF_MAX + 2)]
    assert sends[-1] is sends[-2] == _fresh(scaled)
