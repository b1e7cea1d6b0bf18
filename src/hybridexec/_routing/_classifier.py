"""The learning classifier: measure each function once, route it, and keep checking.

Per function and argument *shape* (key: module + qualname; a bucket of the arguments' size, so
``sorted`` of ten items and of a million are learned apart; and small hashes of the argument
types and of flag-like values, so ``convert(path, mode="io")`` and ``mode="cpu"`` are learned
apart; see ``shape``). At most ``VARIANTS_MAX`` shapes per function and size bucket are
learned apart (further ones share one overflow key), ``ENTRIES_MAX`` verdicts in all:

1. **Learning.** The first call runs on a thread inside a GIL-probe window (``_probe.py``) of
   at most ``WINDOW_SECONDS``. Calls of the same function that arrive meanwhile wait for the
   verdict (at most ``WAIT_SECONDS``, in practice the length of the window) instead of piling
   into threads: a CPU-bound function submitted eight times at once gets one measured call on
   a thread and seven calls in processes.
2. **Verdict** (``verdict``): processes when the call holds the GIL for at least
   ``GIL_FRACTION_MIN`` of its running time and for at least ``GIL_SECONDS_MIN`` per call (below
   that a process dispatch costs more than the GIL serialisation it avoids), else threads.
3. **Feedback** (``record``): live figures of every finished task, with hysteresis:

   - in a process, a function using less than ``DEMOTE_CPU_RATIO`` of a CPU (it waits) or less
     than ``DEMOTE_GIL_SECONDS`` of CPU per call goes back to threads after
     ``FEEDBACK_MIN_CALLS`` calls (moving averages);
   - on threads, a call that now uses ``GIL_SECONDS_MIN`` of CPU or more while its CPU/wall
     differs from the measured profile by ``DRIFT_FACTOR`` (it got heavier, or several calls
     now serialise on the GIL), or while its CPU per call grew by ``DRIFT_FACTOR`` over a
     measured whole call, triggers a re-check: its next call (or the next queued call to
     start) is measured again;
   - every ``RECHECK_FIRST`` calls (doubling up to ``RECHECK_MAX`` each time a re-check
     confirms the verdict) one call is re-measured on a thread, which catches GIL-free C code
     sent to processes by mistake;
   - a re-check changes the verdict only after ``FLIP_AFTER`` contrary measurements in a row,
     and a process verdict is left only below the lower ``DEMOTE_*`` thresholds.

Tiny calls are never sent to processes (the ``GIL_SECONDS_MIN`` floor); ``map``/``imap`` batch
them from measured times. Functions defined with ``async def`` are not measured: calling one
only creates a coroutine.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _lifecycle
from ._calls import Lazy, bound_call, function_name, is_coroutine_function
from ._rules import Decision, WouldWait, waiting_refused
from ._verdicts import (
    CLAIM_SECONDS,
    ENTRIES_MAX,
    FLIP_AFTER,
    OVERFLOW,
    RECHECK_FIRST,
    RECHECK_MAX,
    SUSPECT_GAP_FIRST,
    VARIANTS_MAX,
    WAIT_SECONDS,
    Key,
    contrary,
    evict,
    ewma,
    shape,
    size_bucket,
    verdict,
)

if TYPE_CHECKING:
    from ._entry import Entry
    from ._explain import Explanation
    from ._measure import Measurement
    from ._ticket import Ticket

logger = logging.getLogger("hybridexec")


class LearningClassifier:
    """The default classifier: measures each function on a thread, then routes it.

    See the module documentation for the rules and thresholds. Thread-safe; one per executor.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        _live.add(self)
        self._cond = threading.Condition(threading.Lock())
        self._entries: dict[Key, Entry] = {}
        # function + size bucket -> positional shape -> keyword shapes learned apart
        self._shapes: dict[tuple[str, str, int, int], dict[int, list[int]]] = {}
        # Moves (under the lock) when an answer of classify() may change (a verdict, a re-check
        # due): a caller may reuse an answer while it stays the same.
        self.generation: int = 0

    # ---- the Classifier protocol ----------------------------------------------------------
    def classify(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Decision:
        """Return the lane for this call: the verdict, or a measurement while learning."""
        if isinstance(fn, functools.partial):
            args, bound = bound_call(fn, args, kwargs)
            kwargs = bound or {}
        key = (*function_name(fn), size_bucket(args), *shape(args, kwargs))
        entry = self._entries.get(key)
        if entry is not None:
            decision = entry.decision
            if decision is not None and not entry.recheck and not entry.hold:
                return decision
        return self._classify_slow(fn, key)

    def record(
        self,
        fn: Callable[..., Any],
        kind: str,
        elapsed: float,
        cpu: float,
        *,
        calls: int = 1,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Update the live figures of ``fn`` and re-check or demote it when they disagree.

        ``kwargs`` (not in the ``Classifier`` protocol) picks the entry of a function learned
        apart by its keyword arguments; without it, the one entry with these positional
        arguments is used, if there is just one.
        """
        entry = self._find(fn, args, kwargs)
        if entry is not None:
            self._update(entry, kind, elapsed, cpu, calls)

    def record_entry(
        self, entry: object, kind: str, elapsed: float, cpu: float, calls: int
    ) -> None:
        """``record`` for the calls of a verdict's ``source`` (an entry of this classifier).

        A timed thread call knows its entry already (``Decision.source``): no key to compute
        (about 4 us of the ~6 us a record costs, paid by a storm of tiny calls, issue 17).
        """
        key = getattr(entry, "key", None)
        if key is not None and self._entries.get(key) is entry:
            self._update(entry, kind, elapsed, cpu, calls)  # type: ignore[arg-type]

    def _update(self, entry: Entry, kind: str, elapsed: float, cpu: float, calls: int) -> None:
        # record(), its entry found: live figures, re-checks due, feedback.
        if calls < 1:
            return
        wall, cpu = elapsed / calls, cpu / calls
        with self._cond:
            entry.calls += calls
            entry.per_lane[kind] = entry.per_lane.get(kind, 0) + calls
            entry.wall = wall if entry.wall is None else ewma(entry.wall, wall)
            decision, m = entry.decision, entry.measurement
            if decision is None or m is None:
                return
            entry.since_check += calls
            entry.since_recheck += calls
            if entry.since_check >= entry.recheck_every and entry.routine_due():
                entry.since_check, entry.recheck = 0, True
                self.generation += 1
            if kind == "process" and decision.kind == "process":
                demoted = entry.process_feedback(wall, cpu, calls)
                if demoted is not None:
                    self._change(entry, demoted, entry.measurement)
            elif kind == "thread" and decision.kind == "thread":
                drift = entry.drifted(wall, cpu)
                if drift is not None:
                    # The finished call disagreed already: it counts as the first of the
                    # FLIP_AFTER contrary checks (a drift is then followed within one wave).
                    # One that computes more than measured also holds the calls submitted
                    # while the next call is measured: they wait for its verdict.
                    entry.contrary = max(entry.contrary, FLIP_AFTER - 1)
                    entry.recheck = True
                    entry.hold = entry.hold or drift == "heavier"
                    self.generation += 1

    # ---- visibility -----------------------------------------------------------------------
    def explain(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Explanation:
        """What the classifier knows of ``fn``; without ``args``, its most used key."""
        from ._explain import Explanation  # on use: a dataclass costs ~1 ms to make

        name = function_name(fn)
        with self._cond:
            if args is not None:
                entry = self._find(fn, args, kwargs)
                candidates = [entry] if entry is not None else []
            else:
                candidates = [e for k, e in self._entries.items() if k[:3] == name]
            if candidates:
                return max(candidates, key=lambda e: e.calls).explanation()
        return Explanation(
            function=f"{name[0]}.{name[1]}",
            kind="thread",
            reason="not seen yet: its first call will be measured on a thread",
        )

    def table(self) -> list[dict[str, Any]]:
        """The decision table: one row per function and size bucket."""
        with self._cond:
            entries = list(self._entries.values())
        return [entry.row() for entry in entries]

    # ---- internals ------------------------------------------------------------------------
    def _find(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None
    ) -> Entry | None:
        if isinstance(fn, functools.partial):
            args, kwargs = bound_call(fn, args, kwargs)
        base = (*function_name(fn), size_bucket(args))
        positional, keyword = shape(args, kwargs)
        entry = self._entries.get((*base, positional, keyword))
        if entry is None and kwargs is None:
            # Keyword arguments unknown: the one entry with these positional arguments.
            keys = self._shapes.get(base, {}).get(positional, ())
            if len(keys) == 1:
                entry = self._entries.get((*base, positional, keys[0]))
        if entry is None:
            entry = self._entries.get((*base, OVERFLOW, OVERFLOW))
        return entry

    def _new_key(self, key: Key) -> Key:
        # With the lock held: the key of a shape seen for the first time, within the bounds.
        if len(self._entries) >= ENTRIES_MAX:
            evict(self._entries, self._shapes)
        base = key[:4]
        shapes = self._shapes.setdefault(base, {})
        if sum(len(k) for k in shapes.values()) >= VARIANTS_MAX:
            return (*base, OVERFLOW, OVERFLOW)
        shapes.setdefault(key[4], []).append(key[5])
        return key

    def _classify_slow(self, fn: Callable[..., Any], key: Key) -> Decision:
        # Entries, tickets, the probe load with the first call classified, not the executor.
        from ._entry import Entry
        from ._ticket import Ticket

        deadline: float | None = None
        with self._cond:
            if key not in self._entries:
                key = self._new_key(key)
            while True:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = Entry(key)
                    if is_coroutine_function(fn):
                        entry.decision = Decision(
                            "thread", "async def: a call only creates a coroutine; not measured"
                        )
                now = time.monotonic()
                decision = entry.decision
                if decision is not None:
                    ticket = self._recheck_locked(entry, now)
                    if ticket is not None:
                        reason = f"{decision.reason} (re-checking: this call is measured)"
                        # CPU work measured again: it waits for a CPU slot (the governor).
                        heavy = decision.cpu_heavy or decision.kind == "process"
                        return Decision(decision.kind, reason, probe=ticket, cpu_heavy=heavy)
                    entry.recheck = False
                    if not entry.hold or not entry.rechecking or self._stale(entry, now):
                        entry.hold = False
                        return decision
                    # Its calls disagreed with the verdict and the next one is measured: wait
                    # for that (a window of WINDOW_SECONDS) rather than follow a stale verdict.
                    if waiting_refused():
                        raise WouldWait  # the router places this call once the verdict is in
                    deadline = now + WAIT_SECONDS if deadline is None else deadline
                    if now >= deadline:
                        return decision  # late binding moves it if it has not started then
                    self._cond.wait(min(deadline - now, CLAIM_SECONDS))
                    continue
                if entry.claimed_at is None or self._stale(entry, now):
                    entry.claimed_at = now
                    ticket = Ticket(self, entry, recheck=False)
                    return Decision("thread", "learning: this call is measured", probe=ticket)
                if waiting_refused():
                    raise WouldWait  # the router places this call once the verdict is in
                deadline = now + WAIT_SECONDS if deadline is None else deadline
                if now >= deadline:  # late binding moves it if it has not started then
                    why = "learning: no verdict yet, on a thread meanwhile"
                    return Decision("thread", why, source=entry)
                self._cond.wait(min(deadline - now, CLAIM_SECONDS))

    def recheck_now(self, entry: Entry) -> Ticket | None:
        """A measurement for a call of ``entry`` about to start on a thread, if one is due.

        Late binding (``_binding.py``) asks this as a thread lane starts a task: a re-check
        that feedback asked for while every call was queued already is made on one of them.
        """
        if not entry.recheck:  # read without the lock: the common case costs nothing
            return None
        with self._cond:
            return self._recheck_locked(entry, time.monotonic())

    def _recheck_locked(self, entry: Entry, now: float) -> Ticket | None:
        due = entry.recheck and entry.decision is not None
        if not due or (entry.rechecking and not self._stale(entry, now)):
            return None
        entry.recheck = False
        entry.rechecking = True
        entry.claimed_at = now
        entry.since_recheck = 0
        from ._ticket import Ticket

        return Ticket(self, entry, recheck=True)

    @staticmethod
    def _stale(entry: Entry, now: float) -> bool:
        # A measurement handed out but never started (its task was cancelled, say).
        claimed = entry.claimed_at
        return not entry.window_open and claimed is not None and now - claimed > CLAIM_SECONDS

    def _conclude(self, entry: Entry, m: Measurement, recheck: bool) -> None:
        with self._cond:
            self.generation += 1
            entry.window_open = False
            entry.claimed_at = None
            current = entry.decision
            if recheck != (current is not None):
                return  # a first measurement after a verdict: a late duplicate
            m, doubt, again = entry.settle(m)
            if again:
                # The next call is measured too (a waiting submitter claims it).
                entry.rechecking, entry.recheck = False, recheck
                entry.hold = entry.hold and recheck
                self._cond.notify_all()
                logger.debug("routing: %s not settled (%s): measuring again", entry.name, doubt)
                return
            kind, reason = verdict(m)
            if doubt is not None and current is None:
                # Still not settled: a lane meanwhile, and a look again soon. (A re-check is
                # judged on its figures: feedback asked for it, the calls disagree already.)
                kind, reason = entry.unsettled(m, doubt)
            if current is None:
                entry.decision = entry.verdict(kind, reason, m)
                entry.measurement = m
                self._cond.notify_all()
                logger.debug("routing: %s", Lazy(entry.explanation))
                return
            entry.rechecking = False
            if entry.hold:
                entry.hold = False
                self._cond.notify_all()  # the submitters waiting for this re-check
            if not contrary(current.kind, m):
                entry.contrary = 0
                entry.measurement = m
                entry.decision = entry.verdict(
                    current.kind, reason if kind == current.kind else current.reason, m
                )
                entry.recheck_every = min(RECHECK_MAX, entry.recheck_every * 2)
                entry.suspect_gap = min(RECHECK_MAX, entry.suspect_gap * 2)
                logger.debug("routing: re-check confirms %s", Lazy(entry.explanation))
                return
            entry.contrary += 1
            if entry.contrary < FLIP_AFTER:
                entry.recheck = True  # look again at once before changing anything
                logger.debug(
                    "routing: re-check of %s disagrees (%s); checking again", entry.name, reason
                )
                return
            self._change(entry, entry.verdict(kind, f"{reason} (re-checked)", m), m)

    def _change(self, entry: Entry, decision: Decision, m: Measurement | None) -> None:
        self.generation += 1  # called with the lock held
        old = entry.decision
        entry.decision = decision
        entry.measurement = m
        entry.contrary = 0
        entry.proc_samples = 0
        entry.changes += 1
        entry.recheck_every = RECHECK_FIRST
        entry.suspect_gap = SUSPECT_GAP_FIRST
        logger.debug(
            "routing: %s changed from %s: %s",
            entry.name,
            old.kind if old is not None else "-",
            Lazy(entry.explanation),
        )


_live: weakref.WeakSet[LearningClassifier] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held a lock; its measurements in progress do not run here.
    for classifier in list(_live):
        classifier._cond = threading.Condition(threading.Lock())
        for entry in classifier._entries.values():
            entry.window_open = entry.rechecking = False
            entry.claimed_at = None


_lifecycle.on_fork(_after_fork_in_child)
