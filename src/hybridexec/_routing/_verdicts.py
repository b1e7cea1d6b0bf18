"""The verdict table: the thresholds and the rule that turns a measurement into a lane.

Read with ``_classifier.py``, which keeps the learner's state per function and calls
``verdict`` on each measurement.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._process import usable_cpus
from ._rules import ms

if TYPE_CHECKING:
    from ._measure import Measurement
    from ._stalls import Window

GIL_FRACTION_MIN = 0.3
"""Processes when a call holds the GIL at least this share of its running time..."""
GIL_SECONDS_MIN = 0.002
"""...and at least this many seconds per call (a process dispatch costs 0.1-0.5 ms)."""
DEMOTE_GIL_FRACTION = 0.2
"""A process verdict is left only below this GIL fraction (hysteresis band 0.2-0.3)."""
DEMOTE_GIL_SECONDS = 0.0015
"""...or below this many GIL (in a process: CPU) seconds per call."""
DEMOTE_CPU_RATIO = 0.2
"""In a process, a function using less CPU than this share of its wall time waits."""
WINDOW_SECONDS = 0.025
"""The first call's measurement window; a longer call is reported after this long."""
RECHECK_WINDOW_SECONDS = 0.25
"""A re-check looks longer: nobody waits for it."""
WAIT_SECONDS = 0.25
"""Longest a submitter waits for a verdict before going to threads meanwhile."""
CLAIM_SECONDS = 0.1
"""A measurement that has not started this long after it was handed out is given up."""
FEEDBACK_MIN_CALLS = 3
"""Process figures needed before feedback demotes a function."""
EWMA_ALPHA = 0.3
"""Weight of the newest task in the moving averages."""
DRIFT_FACTOR = 2.0
"""CPU/wall change on threads, either way, that makes a verdict suspect."""
RECHECK_FIRST = 64
"""Calls between two routine re-checks, at first..."""
RECHECK_MAX = 1024
"""...doubling each time a re-check confirms the verdict, up to this."""
RECHECK_MIN_SECONDS = 0.25
"""...and at most one routine re-check of a function in this long: a re-check costs ~1-2 ms
(the probe thread, the measurement window, a new verdict), and a 5 us call re-checked every
1024 calls spent a fifth of a submit storm's time on it. Drift re-checks are not limited."""
SUSPECT_GAP_FIRST = 4
"""Calls between two re-checks triggered by drift, doubling when they confirm the verdict."""
FLIP_AFTER = 2
"""Contrary re-checks in a row needed to change a verdict."""
LONG_CALL_SECONDS = 0.001
"""Every call of a function whose measured calls last this long is timed for feedback (two
clock reads and the classifier's lock, a few microseconds): a change of behaviour is seen on
the first wave of calls that shows it. Shorter calls are timed one in 16."""
SETTLED_EVERY = 64
"""Shorter calls are timed one in 16 (``_decisions.SAMPLE_EVERY``), and one in this many once
a re-check confirmed their verdict: a timed call costs 2-3 us, a quarter of a tiny call's
whole submit (issue 17's storm), and the figures stand for the calls not timed."""
HEAVY_CPU_RATIO = 0.5
"""A thread verdict whose measured call kept its thread on a CPU at least this share of the
time it could run is CPU-heavy: it takes a CPU slot (the governor) on the capped lane."""
SIZE_BUCKET_BITS = 6
"""Arguments whose total size differs by less than 2**6 = 64x share a verdict."""

VARIANTS_MAX = 8
"""Argument shapes (see ``shape``) learned apart per function and size bucket; the rest share
one overflow key, so a function called with ever new flag values cannot grow the table."""
ENTRIES_MAX = 1024
"""Verdicts kept per executor; past it the half least called go (a program making functions
on the fly, by name, must not grow the table for ever: 15b's B3)."""
FLAG_CHARS = 16
"""A ``str`` argument this short or shorter counts by its value (a mode, a file suffix)."""
SHAPE_ARGS = 4
"""Positional (and, separately, keyword) arguments looked at for the shape."""
OVERFLOW = -1
"""The shape of calls past ``VARIANTS_MAX`` distinct shapes."""

_SIZED = (str, bytes, bytearray, list, tuple, dict, set, frozenset, memoryview)
Key = tuple[str, str, int, int, int, int]
"""module, qualname, first line, size bucket, positional shape, keyword shape."""


def verdict(m: Measurement) -> tuple[str, str]:
    """Return ``(kind, reason)`` for a measured call: the decision table.

    ============================================  =========  =================================
    figures                                        lane       why
    ============================================  =========  =================================
    complete call shorter than GIL_SECONDS_MIN     thread     cheaper than a process dispatch
    CPU/wall below 0.05 (IDLE_CPU_RATIO)           thread     it waits (I/O, sleep, locks)
    GIL share of its CPU below GIL_FRACTION_MIN    thread     C code running without the GIL
    GIL seconds below GIL_SECONDS_MIN              thread     too little GIL time to pay IPC
    GIL fraction below GIL_FRACTION_MIN            thread     mostly waits, some Python
    otherwise                                      process    threads would serialise on GIL
    ============================================  =========  =================================
    """
    if m.complete and m.call_wall < GIL_SECONDS_MIN:
        return "thread", f"a call takes {ms(m.call_wall)}: cheaper than a process dispatch"
    if m.gil_share == 0.0 and m.cpu_ratio < 0.5:
        return "thread", f"it mostly waits (CPU {m.cpu_ratio:.0%} of wall time)"
    if m.gil_share < GIL_FRACTION_MIN:
        return "thread", (
            f"its CPU work runs without the GIL ({1 - m.gil_share:.0%} of it GIL-free C code), "
            "so threads run it in parallel"
        )
    if m.gil_seconds < GIL_SECONDS_MIN:
        return "thread", (
            f"it holds the GIL {ms(m.gil_seconds)} per call: less than a process dispatch "
            f"costs (threshold {ms(GIL_SECONDS_MIN)})"
        )
    if m.gil_fraction < GIL_FRACTION_MIN:
        return "thread", f"it holds the GIL only {m.gil_fraction:.0%} of its running time"
    return "process", (
        f"it holds the GIL {m.gil_fraction:.0%} of its running time, "
        f"{ms(m.gil_seconds)} or more per call: threads would serialise on the GIL"
    )


EARLY_IDLE_SECONDS = 0.004
"""A first-call window whose thread used almost no CPU this long reports early: it waits."""
EARLY_IDLE_CPU_RATIO = 0.05
"""'Almost no CPU': below this share of the window's wall time."""
EARLY_FREE_STALLS = 2
"""A first call found running on its own in this many stalls (``Measurement.stalls_own``),
never blocked in one, reports early: GIL-free C code..."""
EARLY_FREE_CPU_RATIO = 0.5
"""...when it also kept a CPU busy this share of the time it could run."""


def early(w: Window, cpu: float, runnable: float) -> bool:
    """Whether a short window (``_measure.EARLY_WINDOW_MAX``) reports before its time.

    The submitters waiting for the verdict go on then. Two cases are clear soon: a thread that
    has hardly run though it could have (``cpu`` seconds in ``runnable`` seconds off a run
    queue) waits (I/O, sleep, a lock); and, on a first call (``w.early``), one that kept a
    CPU busy and ran in ``EARLY_FREE_STALLS`` stalls while the probe held the GIL, never
    found blocked on it, runs GIL-free C code (GIL-bound code cannot run in a stall, whatever
    else runs: a CPU hog only makes such stalls rarer, and the window then runs its course).
    """
    if runnable < EARLY_IDLE_SECONDS:
        return False
    if cpu <= EARLY_IDLE_CPU_RATIO * runnable:
        # Only once a stall found it asleep on something else than the GIL (I/O, a lock, a
        # sleep) more often than on the GIL: without that it may be waiting for a CPU (the
        # kernel books a run-queue wait only when it ends) or for the GIL, and the window runs
        # on (a Python loop re-checked on a loaded machine read "mostly waits" and stayed on
        # threads: issue 15's drift row, 1 run in 12). Where the GIL's futex is not known
        # (``_sched.gil_known``) no stall can tell, and it reports as before.
        from ._sched import gil_known  # loaded with the probe already

        return w.stalls_io > w.stalls_gil or not gil_known()
    return (
        w.early
        and w.stalls_own >= EARLY_FREE_STALLS
        and w.stalls_blocked == 0
        and cpu >= EARLY_FREE_CPU_RATIO * runnable
    )


SURE_BLOCKED = 2
"""A process verdict resting on stalls that found the thread blocked, when others found it
running GIL-free, needs this many blocked ones (else the next call is measured too)."""
UNSURE_TRIES = 2
"""Measurements that cannot settle a verdict (``Measurement.doubt``) taken again, their
figures summed, before the verdict is given on what they saw."""


def unsure(m: Measurement, first: bool = False) -> str | None:
    """Why ``m`` cannot settle a verdict yet, or None.

    A call cheaper than a process dispatch is judged on its clock alone; one that waits
    (CPU below ``IDLE_CPU_RATIO`` of its wall time) is never in doubt either. A ``first``
    verdict (no verdict yet: not a re-check that feedback asked for) for processes needs
    more: its calls would pay for their arguments, and nothing moves GIL-free C code back
    from processes before the next routine re-check.
    """
    if m.complete and m.call_wall < GIL_SECONDS_MIN:
        return None
    doubt = m.doubt
    if doubt is not None or not first or verdict(m)[0] != "process":
        return doubt
    # GIL-free C code takes the GIL back now and then (to return, to grow an output buffer)
    # and a stall may find it asleep on the GIL: one such sample among free ones is not
    # enough. Nor are summed clocks that include stalls the thread spent without a CPU.
    if m.stalls_free > 0 and m.stalls_blocked < SURE_BLOCKED:
        return f"{m.stalls_blocked} blocked stall beside {m.stalls_free} free"
    if m.stalls_blocked + m.stalls_free == 0 and m.stalls_queued > 0:
        return f"{m.stalls_queued} stall(s) without a CPU"
    return None


def lean_told(m: Measurement, first: bool = False) -> bool:
    """Whether figures still in doubt tell which lane they lean to.

    A lean to processes needs a stall that found the thread asleep on the GIL (blocked; on a
    re-check, also as it returned) and none that found it running while the probe held the
    GIL (GIL-free C code does). A ``first`` measurement's stall as it returned is no sign:
    GIL-free C code takes the GIL back to return too (zlib beside a CPU hog once went to
    processes on it). The probe's lateness alone is not enough: beside other Python threads (a
    burst's Python loops) sha256 and zlib calls too short to sample leaned to processes in
    2 of 4 runs; and when every stall found the thread without a CPU (a busy machine), GIL-free
    C code (a numpy sort beside a CPU hog) leaned there as often as a Python loop. A lean to
    threads tells unless every stall found the thread without a CPU.
    """
    if verdict(m)[0] == "process":
        returned = m.stalls_end > 0 and not first
        return m.stalls_free == 0 and (m.stalls_blocked > 0 or returned)
    return m.stalls_blocked + m.stalls_free > 0 or m.stalls_queued == 0


def processes_meanwhile(m: Measurement) -> bool:
    """Whether a first measurement in doubt sends the calls waiting for it to processes.

    When its figures lean there and tell it (``lean_told``). A second measured call would run
    on a thread too: of a burst of two Python loops, both (issue 15's ``mode_task("cpu")``
    in the grouped workload). The verdict is marked unsettled: the next re-check decides it
    alone, and calls still queued in processes follow a verdict for threads (late binding,
    ``_binding.py``).
    """
    return verdict(m)[0] == "process" and lean_told(m, first=True)


def threads_meanwhile(m: Measurement) -> bool:
    """Whether a first measurement in doubt goes to threads at once, without a second look.

    A whole call too short for the probe to sample (under ``_measure.SURE_SPAN``), never
    found blocked on the GIL, whose figures lean to threads: a second measured call would
    hold every call submitted with it for one more call's length, only to confirm threads
    (sha256 of 8 MB, 5 ms: issue 15's GIL-free row); GIL-bound code leans to processes
    (the probe wakes late), and keeps its second look. The verdict is marked unsettled
    and re-checked within ``SUSPECT_GAP_FIRST`` calls (``LearningClassifier._conclude``).
    """
    from ._measure import SURE_SPAN  # loaded with the first measured call

    return (
        m.complete
        and m.stalls_blocked == 0
        and m.run_wall < SURE_SPAN
        and verdict(m)[0] == "thread"
    )


def cpu_heavy(m: Measurement) -> bool:
    """Whether a call judged for threads keeps a CPU busy (GIL-free C code, not a wait).

    Calls under ``GIL_SECONDS_MIN`` are not: a slot costs more than they do.
    """
    if m.complete and m.call_wall < GIL_SECONDS_MIN:
        return False
    return m.cpu_ratio >= HEAVY_CPU_RATIO and m.gil_share < GIL_FRACTION_MIN


def cpu_share() -> float:
    """The share of a CPU a busy process can expect now (1.0 unless the machine is loaded).

    A worker that waits for a CPU (a load of 8 on 2 cores gives each runnable process a
    quarter of one) must not read as one that waits for I/O: in-process feedback judges its
    CPU/wall against this share. Read only when feedback is about to demote a function.
    """
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return 1.0
    # The 1-minute average lags a load that just began (a CPU hog, a test run's workers): the
    # tasks runnable now count too (a busy test run moved a Python loop's queued calls back
    # from processes to threads: test_governor's io->cpu test, 'process->thread' 163 times).
    load = max(load, runnable_now())
    cores = usable_cpus()
    return 1.0 if load <= cores else cores / load


def runnable_now() -> int:
    """Tasks of the machine runnable now, the caller left out (0 where it cannot be read)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0]) - 1
    except (OSError, IndexError, ValueError):
        return 0


def contrary(current: str, m: Measurement) -> bool:
    """Whether a re-check contradicts the current verdict, with hysteresis."""
    if current == "thread":
        return verdict(m)[0] == "process"
    return m.gil_fraction < DEMOTE_GIL_FRACTION or m.gil_seconds < DEMOTE_GIL_SECONDS


def size_bucket(args: tuple[Any, ...]) -> int:
    """A coarse bucket of the size of the first two positional arguments."""
    size = 0
    for arg in args[:2]:
        if isinstance(arg, _SIZED):
            size += len(arg)
        else:
            nbytes = getattr(arg, "nbytes", None)  # numpy arrays, buffers
            if isinstance(nbytes, int):
                size += nbytes
    return size.bit_length() // SIZE_BUCKET_BITS


def _token(arg: Any) -> object:
    # What of one argument may change the cost: a flag's value, else only its type. Numbers
    # count by type alone (a count or a size changes the cost by degree, which the size
    # bucket and feedback follow, not by kind); hashing every int would key each call apart.
    if arg is None or isinstance(arg, bool):
        return arg
    if isinstance(arg, enum.Enum):
        return (type(arg).__qualname__, arg.name)
    if isinstance(arg, str) and len(arg) <= FLAG_CHARS:
        return ("str", arg)
    cls = type(arg)
    return (cls.__module__, cls.__qualname__)


def shape(args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """Small hashes of what usually changes a call's cost beyond its size.

    Argument types (a path or an open file, a list or an array) and the values of flag-like
    arguments: ``None``, booleans, enum members, short strings (``mode="io"``). Numbers and
    long strings count by type only.

    Args:
        args: The positional arguments (the first ``SHAPE_ARGS``).
        kwargs: The keyword arguments; None when unknown.

    Returns:
        ``(positional, keyword)``; ``keyword`` is 0 without keyword arguments.
    """
    positional = hash(tuple(_token(a) for a in args[:SHAPE_ARGS])) & 0xFFFFFF
    if not kwargs:
        return positional, 0
    names = sorted(kwargs)[:SHAPE_ARGS]
    return positional, (hash(tuple((n, _token(kwargs[n])) for n in names)) & 0xFFFFFF) or 1


def ewma(old: float, new: float) -> float:
    """A moving average's next value (``EWMA_ALPHA`` the newest figure's weight)."""
    return old + EWMA_ALPHA * (new - old)


def jumped(average: float, new: float) -> bool:
    """A CPU/wall ratio ``DRIFT_FACTOR`` squared away from its average, either way."""
    factor = DRIFT_FACTOR * DRIFT_FACTOR
    return new * factor < average or new > factor * max(average, 0.05)


def evict(entries: dict[Key, Any], shapes: dict[Any, dict[int, list[int]]]) -> None:
    """The half of ``entries`` least called go (not those being measured), the older first.

    ``shapes`` is made again for the rest. With the classifier's lock held, once it holds
    ``ENTRIES_MAX`` verdicts: a function called all along keeps its verdict (15f's F7).
    """
    order = sorted(entries.items(), key=lambda item: item[1].calls)  # stable: older first
    for key, entry in order[: ENTRIES_MAX // 2]:
        if entry.claimed_at is None:
            del entries[key]
    shapes.clear()
    for key in entries:
        shapes.setdefault(key[:4], {}).setdefault(key[4], []).append(key[5])
