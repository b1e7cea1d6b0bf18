"""The fault-injection sweep (issue 13): every lane point x every fault kind, and seeded races.

``SWEEP`` is a table: one row per (point, fault), each with what the fault may do to the tasks
(``fails``: how many tasks one firing may fail, and with which errors). A row whose point is
not wired into the package yet (no ``_faults.hit("<point>")`` in ``src``) is skipped, so the
table can name points another room adds later. Each row runs one small workload and checks:

- I1 every future ends exactly once (one done-callback each) within ``BOUND`` seconds;
- I2 every result equals a serial run's;
- I6 at most ``fails`` tasks per firing fail, with the listed errors; once the fault is spent
  (or cleared) the lane works again by itself;
- I3 after shutdown, no process, thread, file descriptor or ``/dev/shm`` segment is left
  (processes, threads and segments by the ``no_leaks`` fixture, descriptors here).

``test_seeded_races`` runs random interleavings of submit, cancel, timeout, completion, worker
death and shutdown from a seeded scheduler, with the same invariants. ``HX_SWEEP_SEEDS=<n>``
runs more seeds (``make chaos``); ``HX_SWEEP_SEED=<n>`` replays one.
"""

from __future__ import annotations

import concurrent.futures
import errno
import gc
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx
from hybridexec import _faults
from hybridexec._faults import Fault

from . import helpers
from .conftest import wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/fd and /dev/shm"
)

BOUND = 20.0  # seconds for every future of one run to end (I1); generous for a loaded machine
TASKS = 8
SRC = Path(__file__).resolve().parent.parent / "src" / "hybridexec"

EAGAIN = OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")
EMFILE = OSError(errno.EMFILE, "Too many open files (injected)")
ENOSPC = OSError(errno.ENOSPC, "No space left on device (injected)")
CRASH = (hx.WorkerCrashedError,)


@dataclass(frozen=True)
class Row:
    """One sweep run: ``fault`` at ``point`` on the ``lane``; what one firing may fail."""

    point: str
    kind: str
    fault: Callable[[str], Fault]  # token prefix -> the fault (shared across processes)
    lane: str = "process"
    fails: int = 0  # tasks one firing may fail
    errors: tuple[type[BaseException], ...] = ()
    persistent: bool = False  # fires until cleared: every waiting task may fail

    @property
    def id(self) -> str:
        return f"{self.point}-{self.kind}"


def _raise(exc: OSError, times: int = 2) -> Callable[[str], Fault]:
    return lambda shared: Fault("raise", exc, times=times, shared=shared)


def _delay(seconds: float = 0.05, times: int = 3) -> Callable[[str], Fault]:
    return lambda shared: Fault("delay", seconds, times=times, shared=shared)


def _kill(shared: str) -> Fault:
    return Fault("kill", signal.SIGKILL, times=1, shared=shared)


def _exit(shared: str) -> Fault:
    return Fault("exit", 3, times=1, shared=shared)


SWEEP: list[Row] = [
    # parent side: a start or pipe that fails is retried, no task fails (defects 1, 2)
    Row("lane.pipe", "raise-EMFILE", _raise(EMFILE, 3)),
    Row("lane.pipe", "delay", _delay()),
    Row("lane.start", "raise-EAGAIN", _raise(EAGAIN, 3)),
    Row("lane.start", "delay", _delay()),
    Row(
        "lane.start",
        "raise-EAGAIN-persistent",
        lambda s: Fault("raise", EAGAIN),
        fails=TASKS,
        errors=(hx.BrokenExecutorError,),
        persistent=True,
    ),
    # the submit that meets it raises; nothing else is touched
    Row("lane.pickle_call", "raise-ENOSPC", _raise(ENOSPC), fails=1, errors=(OSError,)),
    Row("lane.pickle_call", "delay", _delay()),
    Row("lane.send", "raise-EAGAIN", _raise(EAGAIN), fails=1, errors=(hx.BrokenExecutorError,)),
    Row("lane.send", "delay", _delay()),
    Row(
        "lane.unpickle_reply",
        "raise-EMFILE",
        _raise(EMFILE),
        fails=1,
        errors=(hx.SerializationError,),
    ),
    Row("lane.unpickle_reply", "delay", _delay()),
    Row("lane.loop", "raise-EAGAIN", _raise(EAGAIN, 5)),
    Row("lane.loop", "delay", _delay(0.02, 10)),
    Row(
        "lane.loop",
        "raise-EAGAIN-persistent",
        lambda s: Fault("raise", EAGAIN),
        fails=TASKS,
        errors=(hx.BrokenExecutorError,),
        persistent=True,
    ),
    # child side (the fault travels with the worker's start arguments)
    Row("worker.before_call", "raise-EAGAIN", _raise(EAGAIN), fails=1, errors=(OSError,)),
    Row("worker.before_call", "delay", _delay()),
    Row("worker.before_call", "kill", _kill, fails=1, errors=CRASH),
    Row("worker.before_call", "exit", _exit, fails=1, errors=CRASH),
    Row("worker.after_call", "raise-EAGAIN", _raise(EAGAIN), fails=1, errors=CRASH),
    Row("worker.after_call", "delay", _delay()),
    Row("worker.after_call", "kill", _kill, fails=1, errors=CRASH),
    Row("worker.after_call", "exit", _exit, fails=1, errors=CRASH),
    Row("worker.pickle_reply", "raise-EMFILE", _raise(EMFILE)),  # falls back item by item
    Row("worker.pickle_reply", "delay", _delay()),
    Row("worker.pickle_reply", "kill", _kill, fails=1, errors=CRASH),
    Row("worker.pickle_reply", "exit", _exit, fails=1, errors=CRASH),
    # thread lane and futures (wired by the thread room; skipped until then)
    Row("thread.before_call", "raise-EAGAIN", _raise(EAGAIN), "thread", 1, (OSError,)),
    Row("thread.before_call", "delay", _delay(), "thread"),
    Row("future.callback", "raise-EAGAIN", _raise(EAGAIN), "thread"),
    Row("future.callback", "delay", _delay(), "thread"),
    Row("future.callback", "raise-EAGAIN", _raise(EAGAIN), "process"),
]


def _wired(point: str) -> bool:
    needle = f'_faults.hit("{point}")'
    return any(needle in path.read_text() for path in SRC.rglob("*.py"))


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_baseline() -> Iterator[set[int]]:
    """The descriptors open before the test (after session-wide helpers started)."""
    with hx.Executor(max_processes=1) as ex:  # the forkserver and resource tracker stay up
        assert ex.options(kind="process").submit(helpers.square, 2).result(timeout=60) == 4
    gc.collect()
    yield open_fds()
    _faults.clear()


def _fds_back(baseline: set[int]) -> None:
    def settled() -> bool:
        gc.collect()  # failed futures' tracebacks sit in cycles holding nothing of ours
        return open_fds() <= baseline

    assert wait_until(settled, 10), f"leaked descriptors {sorted(open_fds() - baseline)}"


# ---- the record of one future ----------------------------------------------------------------


@dataclass
class Watched:
    """A future, what a serial run returns for it, and how often its callbacks ran."""

    future: concurrent.futures.Future[Any]
    expected: Any
    calls: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def of(cls, future: concurrent.futures.Future[Any], expected: Any) -> Watched:
        w = cls(future, expected)

        def count(_f: Any) -> None:
            w.calls[0] += 1

        future.add_done_callback(count)
        return w


def _ended_once(watched: list[Watched], bound: float = BOUND) -> None:
    """I1: each future is done within ``bound`` and its callback ran exactly once."""
    assert wait_until(lambda: all(w.future.done() for w in watched), bound), [
        w.future for w in watched if not w.future.done()
    ]
    assert wait_until(lambda: all(w.calls[0] >= 1 for w in watched), 5)
    counts = [w.calls[0] for w in watched]
    assert counts == [1] * len(watched), f"done-callbacks ran {counts} times"


# ---- the sweep -------------------------------------------------------------------------------


@pytest.mark.parametrize("row", SWEEP, ids=[r.id + "-" + r.lane for r in SWEEP])
def test_sweep_point_fault(row: Row, tmp_path: Path, fd_baseline: set[int]) -> None:
    if not _wired(row.point):
        pytest.skip(f"{row.point} is not wired into the package yet")
    shared = str(tmp_path / "fired")
    fault = row.fault(shared)
    ex = hx.Executor(max_processes=2, max_threads=4)
    lane = ex.options(kind=row.lane)
    watched: list[Watched] = []
    refused: list[BaseException] = []
    try:
        _faults.inject(row.point, fault)
        started = time.monotonic()
        for i in range(TASKS):
            try:
                fut = lane.submit(helpers.square, i) if i % 2 else lane.submit(helpers.add, i, i)
            except OSError as exc:  # the fault met the submit: that call alone fails
                refused.append(exc)
                continue
            watched.append(Watched.of(fut, i * i if i % 2 else 2 * i))
        _ended_once(watched)
        took = time.monotonic() - started
        fired = _faults.fired(shared)  # every bounded fault claims a token per firing
        if not row.persistent and row.kind != "delay" and row.point != "lane.pickle_call":
            assert fired > 0 or row.lane != "process", f"{row.id} never fired"
        _faults.clear()
        failed = [w for w in watched if w.future.exception() is not None]
        for w in watched:
            if w.future.exception() is None:
                assert w.future.result() == w.expected  # I2
        for w in failed:
            error = w.future.exception()
            assert isinstance(error, row.errors), f"{row.id}: unexpected {error!r}"
        touched = len(failed) + len(refused)
        allowed = TASKS if row.persistent else row.fails * max(fired, 0)
        assert touched <= allowed, (
            f"{row.id}: {touched} tasks failed for {fired} firings "
            f"({[w.future.exception() for w in failed]}, refused {refused})"
        )
        assert all(isinstance(e, row.errors) for e in refused), refused
        # I6: the fault is spent or cleared: the lane works again, by itself.
        assert lane.submit(helpers.square, 12).result(timeout=BOUND) == 144
        if row.persistent:
            assert took < BOUND
    finally:
        _faults.clear()
        closer = threading.Thread(target=ex.shutdown, kwargs={"wait": True}, daemon=True)
        closer.start()
        closer.join(BOUND)
        assert not closer.is_alive(), f"{row.id}: shutdown(wait=True) hung"
    _fds_back(fd_baseline)


def test_sweep_covers_every_lane_point_with_every_kind() -> None:
    """The table names each process-lane point with raise and delay, child points with all."""
    kinds: dict[str, set[str]] = {}
    for row in SWEEP:
        kinds.setdefault(row.point, set()).add(row.kind.split("-")[0])
    for point in _faults.POINTS:
        if point.startswith(("lane.", "worker.")):
            assert {"raise", "delay"} <= kinds.get(point, set()), point
        if point.startswith("worker."):
            assert {"kill", "exit"} <= kinds[point], point


# ---- seeded races ------------------------------------------------------------------------------


def _seeds() -> list[int]:
    if "HX_SWEEP_SEED" in os.environ:
        return [int(os.environ["HX_SWEEP_SEED"])]
    count = int(os.environ.get("HX_SWEEP_SEEDS", "6"))
    base = int(os.environ.get("HX_SWEEP_BASE", "1300"))
    return [base + n for n in range(count)]


@dataclass
class Op:
    """A submitted task and the outcomes it may end with."""

    watched: Watched
    errors: tuple[type[BaseException], ...]
    cancelled_by_us: bool = False


def run_races(
    seed: int, steps: int = 40, faulted: tuple[type[BaseException], ...] = ()
) -> dict[str, int]:
    """One seeded interleaving; returns counts of what happened. Raises on a broken invariant.

    ``faulted``: errors an injected fault may add to any task (or raise from a submit).
    """
    rng = random.Random(seed)
    ex = hx.Executor(max_processes=2, max_threads=4)
    lane = ex.options(kind="process")
    ops: list[Op] = []
    kills = 0
    cancel_pending_at_shutdown = rng.random() < 0.5
    counts = {"tasks": 0, "cancels": 0, "kills": 0, "timeouts": 0, "crashes": 0}
    try:
        for _ in range(steps):
            try:
                kills += _race_step(rng, ex, lane, ops, counts)
            except faulted:  # (an empty tuple catches nothing)
                counts["refused"] = counts.get("refused", 0) + 1
        how = rng.random()
        if how < 0.4:
            ex.shutdown(wait=True, cancel_futures=cancel_pending_at_shutdown)
        elif how < 0.8:
            ex.shutdown(wait=False, cancel_futures=cancel_pending_at_shutdown)
        else:
            ex.kill_workers()
            cancel_pending_at_shutdown = True
            kills += 1
        watched = [op.watched for op in ops]
        _ended_once(watched)
        for op in ops:
            fut = op.watched.future
            if fut.cancelled():
                assert op.cancelled_by_us or cancel_pending_at_shutdown, (seed, fut)
                continue
            exc = fut.exception()
            if exc is None:
                assert fut.result() == op.watched.expected, (seed, fut)  # I2
            else:
                allowed = op.errors + (CRASH if kills else ()) + faulted
                assert isinstance(exc, allowed), (seed, exc)
        counts["tasks"] = len(ops)
        counts["kills"] = kills
    finally:
        ex.kill_workers()
        ex.shutdown(wait=True, cancel_futures=True)
    return counts


def _race_step(
    rng: random.Random, ex: hx.Executor, lane: Any, ops: list[Op], counts: dict[str, int]
) -> int:
    """One random step of a race; returns 1 if it SIGKILLed a worker."""
    kills = 0
    r = rng.random()
    if r < 0.35:
        x = rng.randrange(1000)
        ops.append(Op(Watched.of(lane.submit(helpers.square, x), x * x), ()))
    elif r < 0.5:
        d = rng.choice([0.0, 0.01, 0.05, 0.1])
        fut = lane.submit(helpers.sleep_then, d, d)
        ops.append(Op(Watched.of(fut, d), ()))
    elif r < 0.58:
        fut = ex.options(kind="process", timeout=0.05).submit(helpers.sleep_then, 2, 1)
        ops.append(Op(Watched.of(fut, 1), (hx.TaskTimeoutError,)))
        counts["timeouts"] += 1
    elif r < 0.63:
        fut = lane.submit(helpers.exit_now, 3)
        ops.append(Op(Watched.of(fut, None), CRASH))
        counts["crashes"] += 1
    elif r < 0.68:
        x = rng.randrange(100)
        fut = ex.options(kind="thread").submit(helpers.add, x, 1)
        ops.append(Op(Watched.of(fut, x + 1), ()))
    elif r < 0.8 and ops:
        op = rng.choice(ops)
        op.cancelled_by_us |= op.watched.future.cancel()
        counts["cancels"] += 1
    elif r < 0.86:
        pids = ex.worker_pids
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)  # the test's own worker
                kills = 1
            except ProcessLookupError:
                pass
    elif ops:
        try:
            rng.choice(ops).watched.future.exception(timeout=rng.choice([0, 0.01, 0.05]))
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            pass
    return kills


@pytest.mark.parametrize("seed", _seeds())
def test_seeded_races(seed: int, fd_baseline: set[int]) -> None:
    print(f"\nrace seed {seed} (HX_SWEEP_SEED={seed} replays it)")
    run_races(seed)
    _fds_back(fd_baseline)


# ---- the soak (make chaos) -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif("HX_SOAK_SECONDS" not in os.environ, reason="make chaos sets HX_SOAK_SECONDS")
@pytest.mark.timeout(0)
def test_soak(tmp_path: Path, fd_baseline: set[int]) -> None:
    """Seeded races with a random transient fault at a random point, until time runs out."""
    seconds = float(os.environ["HX_SOAK_SECONDS"])
    seed = int(os.environ.get("HX_SOAK_SEED", str(random.randrange(1 << 32))))
    print(f"\nsoak seed {seed} (HX_SOAK_SEED={seed} replays it), {seconds:g} s")
    rng = random.Random(seed)
    rows = [r for r in SWEEP if r.lane == "process" and not r.persistent and _wired(r.point)]
    started = time.monotonic()
    totals = {"runs": 0, "tasks": 0, "faults": 0, "cancels": 0, "kills": 0}
    while time.monotonic() - started < seconds:
        row = rng.choice(rows)
        shared = str(tmp_path / f"fired-{totals['runs']}")
        _faults.inject(row.point, row.fault(shared))
        run_seed = rng.randrange(1 << 32)
        try:
            counts = run_races(run_seed, faulted=row.errors)
        except BaseException:
            print(f"failed: run seed {run_seed} with {row.id} (HX_SWEEP_SEED={run_seed})")
            raise
        finally:
            _faults.clear()
        totals["runs"] += 1
        totals["faults"] += _faults.fired(shared)
        for key in ("tasks", "cancels", "kills"):
            totals[key] += counts[key]
    took = time.monotonic() - started
    _fds_back(fd_baseline)
    print(f"soak: {totals} in {took:.1f} s; leaks: 0 (processes, threads, fds, segments)")
