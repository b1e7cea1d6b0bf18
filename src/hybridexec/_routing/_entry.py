"""What the learning classifier keeps per key (function, size bucket, argument shape)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._rules import Decision
from ._verdicts import RECHECK_FIRST, SUSPECT_GAP_FIRST, Key, cpu_heavy

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
        "key",
        "measurement",
        "name",
        "per_lane",
        "proc_cpu",
        "proc_ratio",
        "proc_samples",
        "recheck",
        "recheck_every",
        "rechecking",
        "since_check",
        "since_recheck",
        "suspect_gap",
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
        self.suspect_gap: int = SUSPECT_GAP_FIRST

    def verdict(self, kind: str, reason: str, m: Measurement) -> Decision:
        """A verdict for this key: tasks routed by it follow its successors (late binding)."""
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
