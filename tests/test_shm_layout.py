"""Arrays through shared memory keep the layout pickle keeps (Fortran order included).

Large numpy arguments and results travel through shared memory (``_shm/_place.py``,
``_shm/_reply.py``); below the threshold they are pickled. Pickle rebuilds a Fortran-ordered
array in Fortran order, so a process task must see the same layout whatever the array's size:
before, a Fortran array of 8 MB arrived C-ordered (same values, other strides), unlike the
standard library's process pool and unlike the same array of 800 bytes.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest

import hybridexec as hx
from hybridexec._shm import SHM_DIR

np = pytest.importorskip("numpy")

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm"),
]


def layout(a: Any) -> tuple[bool, bool, tuple[int, ...], float]:
    """What a task sees of its argument: its order flags, strides and one element."""
    return (
        a.flags.f_contiguous,
        a.flags.c_contiguous,
        a.strides,
        float(a[(1,) + (0,) * (a.ndim - 1)]),
    )


def fortran_of(a: Any) -> Any:
    """A result in Fortran order (a copy)."""
    return np.asfortranarray(a)


def expected(a: Any) -> tuple[bool, bool, tuple[int, ...], float]:
    """The oracle: what pickle, the standard library's way across processes, rebuilds."""
    copy = pickle.loads(pickle.dumps(a, 5))
    assert np.array_equal(copy, a)
    return layout(copy)


@pytest.mark.parametrize("side", [10, 1000], ids=["pickled", "shared-memory"])
@pytest.mark.parametrize(
    "make",
    [
        lambda n: np.asfortranarray(np.arange(n * n, dtype=float).reshape(n, n)),
        lambda n: np.arange(n * n, dtype=np.int32).reshape(n, n),
        lambda n: np.arange(2 * n * n, dtype=float).reshape(n, 2 * n)[:, ::2],
        lambda n: np.asfortranarray(np.arange(n * n * 2, dtype=float).reshape(n, n, 2)),
    ],
    ids=["fortran", "c", "strided", "fortran-3d"],
)
def test_argument_and_result_keep_their_layout(side: int, make: Any) -> None:
    a = make(side)
    with hx.Executor(max_processes=1) as ex:
        target = ex.options(kind="process")
        assert target.submit(layout, a).result(timeout=30) == expected(a)
        back = target.submit(fortran_of, a).result(timeout=30)
        assert layout(back) == expected(np.asfortranarray(a))
        assert np.array_equal(back, a)
        placed = ex._router.processes.placement.stats["placed"]  # (not in the public stats)
    assert placed == (2 if side == 1000 else 0)  # the large case did go through shared memory
