"""The ticket of one measured call: its probe window, and a shorter GIL switch interval after.

``Ticket`` is the ``Probe`` a decision carries (see ``routing.Probe``): the lane that runs the
call runs it inside a probe window, and the classifier concludes from what the window saw.

The first call of a new function is measured on a thread (``_probe.py``); its verdict comes
``WINDOW_SECONDS`` into the call, but a Python loop sent to processes goes on holding the GIL on
its thread until it returns. Meanwhile every other thread of the process gets the GIL only
when the loop is made to drop it, once per switch interval (5 ms by default): the submitters
waiting for the verdict, then the process lane's manager starting workers and dispatching,
pay that wait at each step, and the calls the verdict sent to processes started 70-150 ms
late on 2 cores (eight 150 ms loops on a fresh executor: 0.70 s without the boost, 0.63 s
with it, medians of 5 interleaved pairs; figures in docs/routing.md).

So while such a call runs after its verdict, the interval is ``SHORT``; it goes back when the
call returns. Meanwhile the probe does not read GIL contention from how late it wakes (that
depends on the interval: ``_probe.LATE_INTERVAL_MIN``); its stalls still measure other windows.
A value the application set meanwhile is left alone. Several boosts nest: the first saves the
interval, the last puts it back. A child forked meanwhile gets the saved interval back.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _lifecycle
from ._measure import Measurement
from ._probe import PROBE
from ._verdicts import RECHECK_WINDOW_SECONDS, WINDOW_SECONDS, verdict

if TYPE_CHECKING:
    from ._classifier import LearningClassifier
    from ._entry import Entry

SHORT = 0.000499
"""The switch interval while a GIL-bound measured call runs after its verdict (seconds): an
odd value, so that one the application sets meanwhile (0.0005, say) is told apart and kept."""

_lock = threading.Lock()
_active: set[Boost] = set()  # boosts in force (under _lock)
_saved: float | None = None  # the interval before the first boost (under _lock)


class Ticket:
    """The ``Probe`` of one measured call (see ``routing.Probe``)."""

    __slots__ = ("_claims", "entry", "owner", "recheck")

    def __init__(self, owner: LearningClassifier, entry: Entry, recheck: bool) -> None:
        self.owner: LearningClassifier = owner
        self.entry: Entry = entry
        self.recheck: bool = recheck
        self._claims = itertools.count()

    def claim(self) -> bool:
        return next(self._claims) == 0  # atomic: itertools.count holds the GIL throughout

    def abandon(self) -> None:
        """The measured call was never run (its lane refused it): another call may be."""
        owner, entry = self.owner, self.entry
        with owner._cond:
            if not entry.window_open:
                entry.claimed_at = None
                if self.recheck:  # still due: the next call that starts makes it
                    entry.rechecking, entry.recheck = False, True
                owner._cond.notify_all()

    def run(self, call: Callable[[], None]) -> None:
        owner, entry, recheck = self.owner, self.entry, self.recheck
        entry.window_open = True
        boost = Boost()

        def report(m: Measurement) -> None:  # on the probe thread, while the call goes on
            if verdict(m)[0] == "process":
                # It goes on holding the GIL: let the other threads in sooner, starting with
                # this one (concluding takes the GIL several times: 5 ms each without).
                boost.start()
            owner._conclude(entry, m, recheck)

        # A re-check looks longer (nobody waits for it), unless submitters wait (``hold``).
        long = recheck and not entry.hold
        window = PROBE.open(RECHECK_WINDOW_SECONDS if long else WINDOW_SECONDS, report, not recheck)
        try:
            call()
        finally:
            boost.end()
            m = PROBE.close(window)
            if m is not None:
                owner._conclude(entry, m, recheck)


class Boost:
    """One measured call's claim on the short interval: ``start`` once, ``end`` when it returns."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False

    def start(self) -> None:
        """Shorten the interval until ``end`` (nothing if the call ended already)."""
        global _saved
        with _lock:
            if self.ended or self in _active:
                return
            if not _active:
                current = sys.getswitchinterval()
                if current <= SHORT:  # the application runs a short interval: leave it
                    return
                _saved = current
                sys.setswitchinterval(SHORT)
            _active.add(self)

    def end(self) -> None:
        """The call returned: the interval goes back once no other boost is in force."""
        with _lock:
            self.ended = True
            if self in _active:
                _active.discard(self)
                if not _active:
                    _restore()


def _after_fork_in_child() -> None:
    # The calls that held boosts do not run in the child: its interval comes back.
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _active:
        _active.clear()
        _restore()


def _restore() -> None:
    global _saved
    if _saved is not None and abs(sys.getswitchinterval() - SHORT) < 1e-9:
        sys.setswitchinterval(_saved)  # unless the application changed it meanwhile
    _saved = None


_lifecycle.on_fork(_after_fork_in_child)
