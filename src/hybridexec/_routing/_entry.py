"""What the learning classifier keeps per key (function, size bucket, argument shape)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._rules import Decision, ms
from ._verdicts import (
    DEMOTE_CPU_RATIO,
    DEMOTE_GIL_SECONDS,
    DRIFT_FACTOR,
    FEEDBACK_MIN_CALLS,
    FLIP_AFTER,
    GIL_SECONDS_MIN,
    LONG_CALL_SECONDS,
    RECHECK_FIRST,
    RECHECK_MIN_SECONDS,
    SETTLED_EVERY,
    SUSPECT_GAP_FIRST,
    UNSURE_TRIES,
    Key,
    cpu_heavy,
    cpu_share,
    ewma,
    jumped,
    lean_told,
    processes_meanwhile,
    threads_meanwhile,
    unsure,
)

if TYPE_CHECKING:
    from ._explain import Explanation
    from ._measure import Measurement

_HEAVY = "; it keeps a CPU busy: it holds a CPU slot while it runs"


class Entry:
    """What the classifier knows about one function (and argument-size bucket)."""

    __slots__ = (
        "calls",
        "changes",
        "claimed_at",
        "contrary",
        "decision",
        "hold",
        "key",
        "measurement",
        "name",
        "pending",
        "per_lane",
        "proc_cpu",
        "proc_ratio",
        "proc_samples",
        "recheck",
        "recheck_every",
        "rechecked_at",
        "rechecking",
        "since_check",
        "since_recheck",
        "suspect_gap",
        "timing_every",
        "tries",
        "wall",
        "window_open",
    )

    def __init__(self, key: Key) -> None:
        self.key: Key = key
        self.name: str = f"{key[0]}.{key[1]}"
        self.decision: Decision | None = None
        self.measurement: Measurement | None = None
        self.claimed_at: float | None = None
        self.window_open: bool = False
        self.recheck: bool = False
        self.rechecking: bool = False
        self.contrary: int = 0
        self.changes: int = 0
        self.calls: int = 0
        self.per_lane: dict[str, int] = {"thread": 0, "process": 0}
        self.wall: float | None = None
        self.proc_cpu: float = 0.0
        self.proc_ratio: float = 0.0
        self.proc_samples: int = 0
        self.since_check: int = 0
        self.since_recheck: int = 0
        self.recheck_every: int = RECHECK_FIRST
        self.rechecked_at: float = 0.0  # when the last routine re-check was asked for
        self.suspect_gap: int = SUSPECT_GAP_FIRST
        self.pending: Measurement | None = None  # figures of calls measured without a verdict
        self.tries: int = 0  # measurements taken again since the last verdict
        self.hold: bool = False  # submitters wait for the re-check asked by a drift
        # Read by the router's sampler (``_decisions.Sampler``) once per verdict: time every
        # call of a function whose calls are long (a drift is seen at once, for under 0.5%
        # of a call); None: the sampler's default (one call in 16); SETTLED_EVERY for short
        # calls of a verdict that re-checks confirmed.
        self.timing_every: int | None = None

    def settle(self, m: Measurement) -> tuple[Measurement, str | None, bool]:
        """Add ``m`` to the figures of the calls measured before it without a verdict.

        Returns:
            The summed figures; why they are in doubt (None: they are not); and whether the
            next call is to be measured too (in doubt, at most ``UNSURE_TRIES`` times): a
            wrong verdict costs more than one more measured call.
        """
        if self.pending is not None:
            m = self.pending.merged(m)
        first = self.decision is None
        doubt = unsure(m, first=first)
        again = doubt is not None and self.tries < UNSURE_TRIES
        if first:
            again = again and not (threads_meanwhile(m) or processes_meanwhile(m))
        elif self.hold:
            # Submitters wait for this re-check: finished calls computed more than the
            # verdict's profile (a busy machine cannot fake that). Judged on what it saw
            # when that tells a lane: another measured call would run on the old lane too.
            again = again and not lean_told(m)
        self.pending, self.tries = (m, self.tries + 1) if again else (None, 0)
        return m, doubt, again

    def unsettled(self, m: Measurement, doubt: str) -> tuple[str, str]:
        """The lane meanwhile of a first verdict whose figures stay in doubt.

        Threads, or processes when the figures clearly lean there (``processes_meanwhile``);
        either way the verdict is re-checked within ``SUSPECT_GAP_FIRST`` calls, and a
        verdict for processes given in doubt changes on one contrary re-check.
        """
        self.recheck_every = min(self.recheck_every, SUSPECT_GAP_FIRST)
        if processes_meanwhile(m):
            self.contrary = FLIP_AFTER - 1
            return "process", f"not settled ({doubt}): in processes meanwhile"
        return "thread", f"not settled ({doubt}): on threads meanwhile"

    def routine_due(self) -> bool:
        """Whether a routine re-check may be asked for now; if so, its time is noted.

        At most one per ``RECHECK_MIN_SECONDS`` (called with the classifier's lock held).
        """
        now = time.monotonic()
        if now - self.rechecked_at < RECHECK_MIN_SECONDS:
            return False
        self.rechecked_at = now
        return True

    def drifted(self, wall: float, cpu: float) -> str | None:
        """Whether a thread call's figures disagree with the measured profile of a thread verdict.

        ``wall`` and ``cpu`` are the finished call's seconds; a re-check must be allowed again
        (``suspect_gap`` calls since the last one).

        Returns:
            None, ``"heavier"`` (it computes more than measured: a busy machine cannot fake
            that) or ``"lighter"`` (its CPU/wall fell: several calls serialise on the GIL,
            or the machine is busy).
        """
        m = self.measurement
        if m is None or cpu < GIL_SECONDS_MIN or self.since_recheck < self.suspect_gap:
            return None
        ratio = cpu / wall if wall > 0 else 0.0
        profile = m.cpu_ratio
        if (
            (m.complete and m.call_wall < GIL_SECONDS_MIN)
            or ratio > profile * DRIFT_FACTOR
            # a call that waited now computes (its CPU/wall may still look low: the calls of
            # a GIL-bound function on several threads wait for each other)
            or (m.complete and cpu > DRIFT_FACTOR * max(m.call_cpu, GIL_SECONDS_MIN))
        ):
            return "heavier"
        return "lighter" if ratio * DRIFT_FACTOR < profile else None

    def process_feedback(self, wall: float, cpu: float, calls: int) -> Decision | None:
        """Add the figures of calls run in a process; a thread verdict if they say it waits.

        With the classifier's lock held. ``wall`` and ``cpu`` are seconds per call.
        """
        ratio = cpu / wall if wall > 0 else 0.0
        if self.proc_samples == 0 or jumped(self.proc_ratio, ratio):
            # A call unlike the average (a function that changed behaviour): the averages
            # start over from it, so FEEDBACK_MIN_CALLS calls of the new kind are enough.
            self.proc_cpu, self.proc_ratio, self.proc_samples = cpu, ratio, 0
        else:
            self.proc_cpu = ewma(self.proc_cpu, cpu)
            self.proc_ratio = ewma(self.proc_ratio, ratio)
        self.proc_samples += calls  # a record may sum several calls (the manager's turn)
        if self.proc_samples < FEEDBACK_MIN_CALLS:
            return None
        # cpu_share() (two reads of /proc) only when the ratio would demote on an idle machine.
        if self.proc_ratio < DEMOTE_CPU_RATIO and self.proc_ratio < DEMOTE_CPU_RATIO * cpu_share():
            why = f"in a process it used {self.proc_ratio:.0%} of a CPU: it mostly waits"
        elif self.proc_cpu < DEMOTE_GIL_SECONDS:
            why = f"in a process a call used {ms(self.proc_cpu)} of CPU: cheaper on a thread"
        else:
            return None
        return Decision("thread", f"{why} (feedback)", source=self)

    def verdict(self, kind: str, reason: str, m: Measurement) -> Decision:
        """A verdict for this key: tasks routed by it follow its successors (late binding)."""
        # Long by its own time: not the time it waited while other Python threads held the
        # GIL (the probe late, their CPU) or for a CPU (a tiny call of a submit storm can
        # wait 50 ms: timing all its calls then costs more than they do).
        own = max(m.cpu, m.wall - m.runq - max(m.late, min(m.others_cpu, m.wall)))
        if own >= LONG_CALL_SECONDS * m.calls:
            self.timing_every = 1
        else:  # short calls: the sampler's default, fewer once re-checks confirmed the verdict
            self.timing_every = SETTLED_EVERY if self.recheck_every > RECHECK_FIRST else None
        heavy = kind == "thread" and cpu_heavy(m)
        if heavy and not reason.endswith(_HEAVY):
            reason += _HEAVY
        return Decision(kind, reason, cpu_heavy=heavy, source=self)

    def explanation(self) -> Explanation:
        from ._explain import Explanation  # on use: a dataclass costs ~1 ms to make

        m = self.measurement
        d = self.decision
        return Explanation(
            function=self.name,
            kind=d.kind if d is not None else "thread",
            reason=d.reason if d is not None else "learning: the first call is being measured",
            learned=m is not None,
            gil_fraction=m.gil_fraction if m is not None else None,
            gil_share=m.gil_share if m is not None else None,
            cpu_ratio=m.cpu_ratio if m is not None else None,
            gil_seconds=m.gil_seconds if m is not None else None,
            wall_seconds=self.wall,
            calls=self.calls,
            per_lane=dict(self.per_lane),
            changes=self.changes,
        )

    def row(self) -> dict[str, Any]:
        """This key's row of the decision table (``LearningClassifier.table``)."""
        e = self.explanation()
        return {
            "function": e.function,
            "size_bucket": self.key[3],
            "shape": self.key[4:],
            "kind": e.kind,
            "learned": e.learned,
            "gil_fraction": e.gil_fraction,
            "gil_share": e.gil_share,
            "cpu_ratio": e.cpu_ratio,
            "gil_seconds": e.gil_seconds,
            "wall_seconds": e.wall_seconds,
            "calls": e.calls,
            "per_lane": e.per_lane,
            "changes": e.changes,
            "reason": e.reason,
        }
