"""Round 17's fixes (fixer x): the cases of tester 17b's B6, B1, B3 and B5 widened to their
class: a map's bookkeeping after an item killed by SIGKILL (every front, order and batching),
the cleanup of a map ended by any ``BaseException`` wherever it is raised, a batch that stops
at its first failure (threads and processes, ``hx.map`` and ``Executor.map``), and the per-item
timeout example of docs/timeouts-and-killing.md.

Scenarios that need a fresh interpreter run as scripts (``tests/scenario.py``).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from hybridexec._mapitems import MapState
from hybridexec._views import MapIterator

from .scenario import run_script

pytestmark = pytest.mark.timeout(90)


def _last_json(stdout: str, stderr: str) -> Any:
    lines = stdout.strip().splitlines()
    assert lines, f"the scenario printed nothing: {stderr[-3000:]}"
    return json.loads(lines[-1])


_KILLED_ITEM_ON_EVERY_FRONT = """
import asyncio, json, os, signal, sys, time
import hybridexec as hx

def item(label, i):
    with open(f"runs-{label}-{i}", "a") as fh:
        fh.write("x")
    if i == 0 and not os.path.exists(f"killed-{label}"):
        open(f"killed-{label}", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does: run once more, alone
    time.sleep(0.05)
    return i

def runs(label, n):
    counts = []
    for i in range(n):
        try:
            with open(f"runs-{label}-{i}") as fh:
                counts.append(len(fh.read()))
        except FileNotFoundError:
            counts.append(0)
    return counts

if __name__ == "__main__":
    out = {}
    n = 10
    with hx.Executor(max_processes=2) as ex:
        for front in ("map", "imap", "amap"):
            for ordered in (False, True):
                for chunksize in (1, None, 3):
                    label = f"{front}-{ordered}-{chunksize}"
                    labels = [label] * n
                    kw = dict(kind="process", executor=ex, ordered=ordered,
                              chunksize=chunksize, return_exceptions=True)
                    try:
                        if front == "map":
                            got = hx.map(item, labels, range(n), **kw)
                        elif front == "imap":
                            got = list(hx.imap(item, labels, range(n), **kw))
                        else:
                            got = asyncio.run(hx.amap(item, labels, range(n), **kw))
                        out[label] = [repr(v) if isinstance(v, BaseException) else v
                                      for v in got]
                    except BaseException as exc:
                        out[label] = repr(exc)
                    out[label + " runs"] = runs(label, n)
    print(json.dumps(out), flush=True)
"""


def test_an_item_killed_by_sigkill_gets_its_result_once_on_every_front(tmp_path: Path) -> None:
    """B6 widened: ``hx.map``/``imap``/``amap``, ordered or not, ``chunksize=1``, automatic
    batches or batches of 3, with the first item's worker killed by SIGKILL once: every map
    ends with its ten results, each once, in its place (sorted for ``ordered=False``); the
    killed item ran twice, every other once (a batch the lane split as its worker died runs
    each item not yet run once)."""
    result = run_script(tmp_path, _KILLED_ITEM_ON_EVERY_FRONT, timeout=80)
    out = _last_json(result.stdout, result.stderr)
    for front in ("map", "imap", "amap"):
        for ordered in (False, True):
            for chunksize in (1, None, 3):
                label = f"{front}-{ordered}-{chunksize}"
                got = out[label]
                assert isinstance(got, list), (label, got)
                assert (got if ordered else sorted(got)) == list(range(10)), (label, got)
                assert out[label + " runs"] == [2] + [1] * 9, (label, out[label + " runs"])


def _bookkeeping_error() -> Generator[list[int], None, None]:
    yield [1, 2]
    next(iter([]))  # a StopIteration that is no item's: a bookkeeping error of the run


def test_a_stop_iteration_that_is_no_items_never_leaves_a_map_bare() -> None:
    """B6 widened: PEP 479 makes any StopIteration in a map's run a RuntimeError; ``collect``
    (``hx.map``) raises an item's own StopIteration again, as ``result()`` does, but never
    one of the map's own bookkeeping (a bare StopIteration would end a caller's loop as if
    the map were done)."""
    results = MapIterator(_bookkeeping_error(), MapState(False, None, False))
    with pytest.raises(RuntimeError, match="generator raised StopIteration"):
        results.collect()


_ANY_BASE_EXCEPTION_WHILE_THE_FIRST_ITEMS_ARE_READ = """
import io, json, os, sys, time
import tqdm.auto
import hybridexec as hx

BARS = []

class Bar(tqdm.auto.tqdm):  # a bar that writes nowhere, and is kept to be looked at
    monitor_interval = 0
    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        BARS.append(self)

tqdm.auto.tqdm = Bar

def hold(pair):
    label, i = pair
    with open(f"pid-{label}-{i}", "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(30)  # stopped only by a kill
    return i

def items(label, raised):
    for i in (0, 1):
        yield label, i
    deadline = time.monotonic() + 8
    while not all(os.path.exists(f"pid-{label}-{i}") for i in (0, 1)):  # both running
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    raise raised("from the input")

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead
        return fh.read().split(")")[-1].split()[0] != "Z"

if __name__ == "__main__":
    out = {}
    for front in ("map", "imap"):
        for raised in (SystemExit, GeneratorExit, KeyboardInterrupt):
            label = f"{front}-{raised.__name__}"
            ex = hx.Executor(max_processes=4)  # four probes: the third read is among them
            BARS.clear()
            run = hx.map if front == "map" else lambda *a, **k: list(hx.imap(*a, **k))
            try:
                run(hold, items(label, raised), kind="process",
                    executor=ex, progress=True)
                out[label] = "no exception"
            except BaseException as exc:
                out[label] = type(exc).__name__
            pids = [int(open(f"pid-{label}-{i}").read()) for i in (0, 1)]
            deadline = time.monotonic() + 5
            while any(map(alive, pids)) and time.monotonic() < deadline:
                time.sleep(0.02)
            out[label + " alive"] = [alive(pid) for pid in pids]
            out[label + " bar closed"] = [bool(bar.disable) for bar in BARS]
            ex.shutdown(wait=False, cancel_futures=True)
            ex.kill_workers()
    print(json.dumps(out), flush=True)
"""


def test_any_base_exception_of_the_input_while_the_first_items_are_read_kills_them(
    tmp_path: Path,
) -> None:
    """B1 widened: ``SystemExit``, ``GeneratorExit`` or ``KeyboardInterrupt`` raised by the
    input while ``hx.map``/``hx.imap`` reads its first items (the probes, sent one by one)
    ends the map with that exception, kills the items already running in their processes
    and closes the map's progress bar."""
    pytest.importorskip("tqdm")
    result = run_script(tmp_path, _ANY_BASE_EXCEPTION_WHILE_THE_FIRST_ITEMS_ARE_READ, timeout=80)
    out = _last_json(result.stdout, result.stderr)
    for front in ("map", "imap"):
        for raised in ("SystemExit", "GeneratorExit", "KeyboardInterrupt"):
            label = f"{front}-{raised}"
            assert out[label] == raised, (label, out)
            assert out[label + " alive"] == [False, False], (label, out)
            assert out[label + " bar closed"] == [True], (label, out)


_A_BATCH_STOPS_AT_ITS_FIRST_FAILURE = """
import json, os, sys, time
import hybridexec as hx

def item(label, i):
    open(f"ran-{label}-{i}", "w").close()
    if i == 2:
        raise ValueError(i)
    if i == 5:
        raise KeyboardInterrupt  # (items 0-4 only, in the case that reaches it)
    time.sleep(0.02)
    return i

def ran(label):
    names = [n for n in os.listdir(".") if n.startswith(f"ran-{label}-")]
    return sorted(int(n.rsplit("-", 1)[1]) for n in names)

if __name__ == "__main__":
    out = {}
    with hx.Executor(max_processes=2, max_threads=2) as ex:
        for kind in ("thread", "process"):
            for how in ("map", "imap", "Executor.map", "return_exceptions"):
                label = f"{kind}-{how}"
                labels, items = [label] * 5, range(5)
                try:
                    if how == "map":
                        got = hx.map(item, labels, items, kind=kind, executor=ex, chunksize=5)
                    elif how == "imap":
                        got = list(hx.imap(item, labels, items, kind=kind, executor=ex,
                                           chunksize=5, ordered=False))
                    elif how == "Executor.map":
                        got = list(ex.options(kind=kind).map(item, labels, items, chunksize=5))
                    else:
                        got = hx.map(item, labels, items, kind=kind, executor=ex, chunksize=5,
                                     return_exceptions=True)
                    out[label] = [repr(v) if isinstance(v, BaseException) else v for v in got]
                except Exception as exc:
                    out[label] = repr(exc)
                out[label + " ran"] = ran(label)
            for keep in (False, True):  # Ctrl-C ends a map, return_exceptions or not
                label = f"{kind}-interrupt-{keep}"
                try:
                    hx.map(item, [label] * 10, range(3, 10), kind=kind, executor=ex,
                           chunksize=7, return_exceptions=keep)
                except KeyboardInterrupt:
                    out[label] = "KeyboardInterrupt"
                out[label + " ran"] = ran(label)
    print(json.dumps(out), flush=True)
"""


def test_a_batch_stops_at_its_first_failed_item_on_threads_and_processes(tmp_path: Path) -> None:
    """B3 widened: without ``return_exceptions`` a batch (``hx.map``/``imap`` ``chunksize``,
    ``Executor.map`` ``chunksize``) stops at its first failed item, on threads and in
    processes, as the standard library's ``_process_chunk`` does: the map raises that item's
    exception and no later item of the batch runs. With ``return_exceptions=True`` every item
    still runs, the exception in its place; but an item raising ``KeyboardInterrupt`` ends
    its map either way, and its batch there."""
    result = run_script(tmp_path, _A_BATCH_STOPS_AT_ITS_FIRST_FAILURE, timeout=80)
    out = _last_json(result.stdout, result.stderr)
    for kind in ("thread", "process"):
        for how in ("map", "imap", "Executor.map"):
            label = f"{kind}-{how}"
            assert out[label] == "ValueError(2)", (label, out)
            assert out[label + " ran"] == [0, 1, 2], (label, out)
        label = f"{kind}-return_exceptions"
        assert out[label] == [0, 1, "ValueError(2)", 3, 4], (label, out)
        assert out[label + " ran"] == [0, 1, 2, 3, 4], (label, out)
        for keep in (False, True):
            label = f"{kind}-interrupt-{keep}"
            assert out[label] == "KeyboardInterrupt", (label, out)
            assert out[label + " ran"] == [3, 4, 5], (label, out)


_A_BASE_EXCEPTION_FROM_A_SUBMIT_AMONG_THE_FIRST_ITEMS = """
import json, os, sys, time
import hybridexec as hx

class Refuses:  # its pickling (in submit, in this thread) raises SystemExit
    def __reduce__(self):
        raise SystemExit("no pickling for me")

def hold(i):
    open(f"started-{i}-{os.getpid()}", "w").close()
    time.sleep(30)  # stopped only by a kill
    open(f"ended-{i}", "w").close()
    return i

def items():
    yield 0
    yield 1
    deadline = time.monotonic() + 8
    while sum(n.startswith("started-") for n in os.listdir(".")) < 2:  # both running
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    yield Refuses()
    yield 3

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is dead
        return fh.read().split(")")[-1].split()[0] != "Z"

if __name__ == "__main__":
    ex = hx.Executor(max_processes=4)
    try:
        hx.map(hold, items(), kind="process", executor=ex)
        out = {"raised": None}
    except SystemExit as exc:
        out = {"raised": str(exc)}
    started = [n for n in os.listdir(".") if n.startswith("started-")]
    pids = [int(n.rsplit("-", 1)[1]) for n in started]
    deadline = time.monotonic() + 10
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    out["alive"] = [alive(pid) for pid in pids]
    out["ended"] = sorted(n for n in os.listdir(".") if n.startswith("ended-"))
    out["started"] = len(pids)
    ex.shutdown(wait=False, cancel_futures=True)
    ex.kill_workers()
    print(json.dumps(out), flush=True)
"""


def test_a_base_exception_from_a_submit_among_the_first_items_stops_those_sent(
    tmp_path: Path,
) -> None:
    """B1 widened: an item whose pickling raises ``SystemExit`` in ``submit`` (a
    ``__reduce__`` of the user's: it propagates from ``submit`` itself, docs/hostile-input.md)
    among the probes of ``hx.map(kind="process")`` ends the map with it, and the items sent
    before it (running) are killed."""
    script = _A_BASE_EXCEPTION_FROM_A_SUBMIT_AMONG_THE_FIRST_ITEMS
    out = _last_json(*_ran(run_script(tmp_path, script, timeout=60)))
    assert out["raised"] == "no pickling for me", out
    assert out["started"] == 2, out
    assert not any(out["alive"]), out
    assert out["ended"] == [], out


def _ran(result: Any) -> tuple[str, str]:
    return result.stdout, result.stderr
