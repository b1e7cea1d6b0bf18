"""Shared memory never aliases what a caller or a worker keeps (guarantee I2).

The first three cases are the outside tester's (round 5, defects 2, 6 and 4, from branch
``outsider5``); the others are the same defects through the other doors: a process-lane task
that keeps its argument, a small result, a tell.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

import hybridexec as hx
from hybridexec._shm import SHM_DIR

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm"),
]

SIDE = 1000  # SIDE x SIDE float64: 8 MB, placed in shared memory


# ---- defect 2: what a worker or actor keeps stays as it was sent ------------------------------
class _Model:
    def __init__(self) -> None:
        self.weights: Any = None

    def load(self, weights: Any) -> float:
        self.weights = weights  # a stateful actor keeps what it is given
        return float(self.weights.sum())

    def score(self, x: Any) -> float:
        return float(x.sum())

    def total(self) -> float:
        return float(self.weights.sum())


def test_process_actor_keeps_an_array_it_was_asked_to_load() -> None:
    # The segment went back to the pool when the ask ended and the next ask's array was copied
    # into it: the actor's state silently became the later argument.
    np = pytest.importorskip("numpy")
    ref = hx.spawn(_Model, kind="process")
    try:
        assert ref.ask(_Model.load, np.full((SIDE, SIDE), 1.0)).result(30) == 1e6
        for k in (2.0, 3.0, 4.0):
            ref.ask(_Model.score, np.full((SIDE, SIDE), k)).result(30)
        assert ref.ask(_Model.total).result(30) == 1e6
    finally:
        ref.stop()


_CACHE: dict[str, Any] = {}  # in a worker: what its tasks keep between calls


def _keep_whole(a: Any) -> float:
    _CACHE["kept"] = a
    return float(a.sum())


def _keep_slice(a: Any) -> float:
    _CACHE["kept"] = a[: SIDE // 2]  # a view keeps the whole mapping
    return float(_CACHE["kept"].sum())


def _score(a: Any) -> float:
    return float(a.sum())


def _kept_sum() -> float:
    return float(_CACHE["kept"].sum())


@pytest.mark.parametrize("keep", [_keep_whole, _keep_slice])
def test_process_task_keeps_its_argument_in_a_global_cache(keep: Callable[[Any], float]) -> None:
    np = pytest.importorskip("numpy")
    with hx.Executor(kind="process", max_processes=1) as ex:
        first = ex.submit(keep, np.full((SIDE, SIDE), 1.0)).result(30)
        for k in (2.0, 3.0, 4.0):
            assert ex.submit(_score, np.full((SIDE, SIDE), k)).result(30) == k * SIDE * SIDE
        assert ex.submit(_kept_sum).result(30) == first
        placement = ex._router.processes.placement
        assert placement.stats["lent"] == 1  # the kept copy left the pool, the others did not
        assert placement.stats["pool_hits"] >= 2


def test_segments_not_kept_are_still_reused() -> None:
    np = pytest.importorskip("numpy")
    with hx.Executor(kind="process", max_processes=1) as ex:
        for k in (1.0, 2.0, 3.0, 4.0):
            assert ex.submit(_score, np.full((SIDE, SIDE), k)).result(30) == k * SIDE * SIDE
        placement = ex._router.processes.placement
        assert placement.stats["lent"] == 0
        assert placement.stats["pool_hits"] == 3


# ---- defect 6: a result that aliases a placed argument owns its memory ------------------------
def _same(a: Any) -> Any:
    return a


def _head(a: Any) -> Any:
    return a[:600]  # 600 x 1000 float64: 4.8 MB, a view of the argument


def _tiny(a: Any) -> Any:
    return a[:1]  # 8 kB: pickled, but from read-only memory


@pytest.mark.parametrize("fn", [_same, _head, _tiny])
def test_large_result_is_writable(fn: Callable[[Any], Any]) -> None:
    # docs/shared-memory.md: "A result array of 1 MiB or more comes back the same way. The
    # array you get owns its memory and is writable, like any unpickled array." A task that
    # returned its placed argument (or a view of it) handed back a read-only view of a segment
    # of the pool, which the next task's argument would overwrite.
    np = pytest.importorskip("numpy")
    data = np.ones((2_000, SIDE))
    with hx.Executor(kind="process", max_processes=1) as ex:
        result = ex.submit(fn, data).result(60)
        assert result.flags.writeable
        result += 1  # what downstream code does with a result
        assert float(result[0, 0]) == 2.0
        ex.submit(_score, np.full((2_000, SIDE), 7.0)).result(60)  # reuses the pooled segment
        assert float(result[0, 0]) == 2.0
        assert float(data[0, 0]) == 1.0


# ---- defect 4: any view of a SharedArray goes by name, whatever its size ----------------------
def _fill(view: Any, value: float) -> bool:
    view[...] = value
    return bool(view.flags.writeable)


class _Filler:
    def fill(self, view: Any, value: float) -> bool:
        return _fill(view, value)


def test_small_view_of_a_shared_array_is_sent_by_name() -> None:
    # docs/shared-memory.md: "An array that is already in shared memory (a SharedArray's
    # .array, or any view of it, slices and strides included) is sent by name with no copy at
    # all, and stays writable." A view under shm_threshold was pickled: the writes were lost.
    pytest.importorskip("numpy")
    with (
        hx.Executor(kind="process", max_processes=1) as ex,
        hx.SharedArray.zeros((SIDE, SIDE)) as shared,
    ):
        rows = shared.array[10:20]  # 80 kB
        assert ex.submit(_fill, rows, 2.0).result(30)
        assert float(shared.array[10, 0]) == 2.0
        assert float(shared.array[19, 999]) == 2.0
        assert ex.submit(_fill, shared.array[5, ::100], 3.0).result(30)  # strided, 80 bytes
        assert shared.array[5, ::100].tolist() == [3.0] * 10
        assert float(shared.array[5, 1]) == 0.0


def test_threshold_none_still_sends_shared_views_by_name() -> None:
    pytest.importorskip("numpy")
    with (
        hx.Executor(kind="process", max_processes=1, shm_threshold=None) as ex,
        hx.SharedArray.zeros((4, SIDE)) as shared,
    ):
        assert ex.submit(_fill, shared.array[1], 5.0).result(30)
        assert float(shared.array[1, 999]) == 5.0


def test_actor_ask_and_tell_send_shared_views_by_name() -> None:
    pytest.importorskip("numpy")
    ref = hx.spawn(_Filler, kind="process")
    try:
        with hx.SharedArray.zeros((4, SIDE)) as shared:
            assert ref.ask(_Filler.fill, shared.array[1], 1.0).result(30)
            ref.tell(_Filler.fill, shared.array[2:], 2.0)
            ref.ask(_Filler.fill, shared.array[0, :1], 3.0).result(30)  # after the tell (FIFO)
            assert shared.array[:, 0].tolist() == [3.0, 1.0, 2.0, 2.0]
    finally:
        ref.stop()
