"""The thread lane's and futures' fault cases, as a table the sweep can reuse (issue 13, I1).

Each case names an injection point of ``hybridexec._faults``, the fault, and what the task's
future must end with: ``"ok"`` (its result) or the name of the exception it fails with. Every
case must end each future exactly once, run every done-callback, and leave the lane working.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridexec._faults import Fault


class InjectedError(Exception):
    """Raised by an injected ``raise`` fault."""


@dataclass(frozen=True)
class Case:
    point: str
    kind: str  # the Fault's kind: "raise" or "delay"
    arg: object
    expect: str  # "ok" or the exception's class name

    @property
    def id(self) -> str:
        return f"{self.point}-{self.kind}"

    def fault(self) -> Fault:
        """A fresh fault that fires once (a Fault counts its hits: never share one)."""
        return Fault(self.kind, self.arg, times=1)


CASES = [
    Case("thread.before_call", "raise", InjectedError("before call"), "InjectedError"),
    Case("thread.before_call", "delay", 0.05, "ok"),
    Case("future.callback", "raise", InjectedError("in callback"), "ok"),
    Case("future.callback", "delay", 0.05, "ok"),
]
