"""Explanation: where calls of a function go now and why (``Executor.explain``).

Apart from the rules: a frozen dataclass costs ~1 ms to make, and nothing on the way to a
task's result needs this one (the classifier and ``explain`` import it when they answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._rules import ms


@dataclass(frozen=True)
class Explanation:
    """Where calls of a function go now and why, with the figures behind the verdict.

    Returned by ``Executor.explain``; ``str()`` gives one readable paragraph.

    Attributes:
        function: ``module.qualname`` of the function.
        kind: The lane a call goes to now: ``"thread"`` or ``"process"``; ``"async"`` for an
            ``async def`` function run on the executor's event loop.
        reason: Why, in words.
        learned: True when the verdict comes from measurements of this function.
        gil_fraction: Share of a call's running time spent holding the GIL.
        gil_share: Share of a call's CPU work that needs the GIL.
        cpu_ratio: CPU seconds per wall second of a measured call on a thread.
        gil_seconds: Seconds of GIL held per call while measured: the probe watches a call's
            first ~25 ms only, so for a longer call this is a lower bound.
        wall_seconds: Seconds per call, where it ran (moving average).
        calls: Finished calls seen by the classifier.
        per_lane: Finished calls per lane.
        changes: How many times feedback changed the verdict.
        slots: The executor's CPU slots now (``Executor.explain`` fills it in): ``total``,
            held by ``processes`` and by CPU-heavy ``threads``, ``lent`` (holders seen
            waiting, whose slots others may use) and ``waiting`` (thread tasks waiting for one).

    .. versionadded:: 0.1
    """

    function: str
    kind: str
    reason: str
    learned: bool = False
    gil_fraction: float | None = None
    gil_share: float | None = None
    cpu_ratio: float | None = None
    gil_seconds: float | None = None
    wall_seconds: float | None = None
    calls: int = 0
    per_lane: dict[str, int] = field(default_factory=dict)
    changes: int = 0
    slots: dict[str, int] | None = None

    def __str__(self) -> str:
        text = f"{self.function} -> {self.kind}: {self.reason}"
        figures = []
        if self.gil_fraction is not None:
            figures.append(f"GIL held {self.gil_fraction:.0%} of its running time")
        if self.gil_seconds is not None:
            figures.append(f"{ms(self.gil_seconds)} of GIL per call")
        if self.cpu_ratio is not None:
            figures.append(f"CPU/wall {self.cpu_ratio:.2f} on a thread")
        if self.wall_seconds is not None:
            figures.append(f"{ms(self.wall_seconds)} per call")
        lanes = ", ".join(f"{n} {k}" for k, n in sorted(self.per_lane.items()) if n)
        calls = f"{self.calls} call{'' if self.calls == 1 else 's'}"
        figures.append(calls + (f" ({lanes})" if lanes else ""))
        if self.changes:
            figures.append(f"verdict changed {self.changes} times by feedback")
        if self.slots:
            s = self.slots
            figures.append(
                f"CPU slots: {s['processes']} of {s['total']} held by processes, "
                f"{s['threads']} by threads, {s['waiting']} tasks waiting"
            )
        return f"{text} [{'; '.join(figures)}]"
