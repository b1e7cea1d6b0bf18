"""``progress=`` on map/imap: a tqdm bar, a warning without tqdm, or a callback."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

import hybridexec
from hybridexec import Executor

from . import helpers


@pytest.fixture
def tqdm_bars(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Make tqdm write to a buffer, without its monitor thread; collect the bars made."""
    tqdm_auto = pytest.importorskip("tqdm.auto")
    made: list[Any] = []
    original = tqdm_auto.tqdm

    class Recorder(original):  # type: ignore[misc, valid-type]
        monitor_interval = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tqdm_auto, "tqdm", Recorder)
    return made


def test_callback_gets_done_and_total(ex: Executor) -> None:
    seen: list[tuple[int, int | None]] = []
    out = hybridexec.map(
        helpers.square, range(100), executor=ex, progress=lambda d, t: seen.append((d, t))
    )
    assert out == [x * x for x in range(100)]
    assert seen[-1] == (100, 100)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert {t for _, t in seen} == {100}


def test_callback_total_is_none_for_input_without_length(ex: Executor) -> None:
    seen: list[tuple[int, int | None]] = []
    items = (x for x in range(30))
    assert (
        len(hybridexec.map(helpers.square, items, executor=ex, progress=lambda *a: seen.append(a)))
        == 30
    )
    assert seen[-1] == (30, None)


def test_callback_with_unordered_imap_over_processes(ex: Executor) -> None:
    seen: list[int] = []
    results = hybridexec.imap(
        helpers.square,
        range(40),
        kind="process",
        ordered=False,
        executor=ex,
        progress=lambda d, t: seen.append(d),
    )
    assert sorted(results) == [x * x for x in range(40)]
    assert seen[-1] == 40


def test_progress_bar_counts_names_the_lanes_and_closes(ex: Executor, tqdm_bars: list[Any]) -> None:
    out = hybridexec.map(helpers.square, range(50), kind="process", executor=ex, progress=True)
    assert out == [x * x for x in range(50)]
    (bar,) = tqdm_bars
    assert (bar.n, bar.total, bar.unit) == (50, 50, "task")
    assert bar.disable or bar.postfix == "process"
    assert bar.disable is True  # closed: tqdm disables a bar once it is closed


def test_progress_bar_closes_when_the_map_fails(ex: Executor, tqdm_bars: list[Any]) -> None:
    with pytest.raises(ValueError, match="boom"):
        hybridexec.map(helpers.raise_value_error, ["boom"] * 3, executor=ex, progress=True)
    (bar,) = tqdm_bars
    assert bar.disable is True


def test_progress_bar_for_empty_input_is_closed(ex: Executor, tqdm_bars: list[Any]) -> None:
    assert hybridexec.map(helpers.square, [], executor=ex, progress=True) == []
    assert all(bar.disable for bar in tqdm_bars)


def test_without_tqdm_one_warning_names_the_extra_and_work_runs(
    ex: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import tqdm.auto` raise ImportError.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.warns(RuntimeWarning, match=r"hybridexec\[progress\]") as record:
        out = hybridexec.map(helpers.square, range(10), executor=ex, progress=True)
    assert out == [x * x for x in range(10)]
    assert len(record) == 1
    assert record[0].filename == __file__  # the warning points at the caller's line


def test_without_tqdm_imap_warning_points_at_the_caller(
    ex: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.warns(RuntimeWarning, match="tqdm") as record:
        results = hybridexec.imap(helpers.square, range(3), executor=ex, progress=True)
    assert list(results) == [0, 1, 4]
    assert record[0].filename == __file__
