"""The router's per-call costs for functions it has routed before (issue 17).

A storm of tiny calls pays the router on every call; two helpers keep that small:

- ``Plans`` remembers what ``decide`` answered per function, options and argument types, and
  gives it back while nothing it depends on has moved: the function's hints (looked up on each
  call), the classifier's ``generation`` (it moves whenever an answer may change: a verdict, a
  re-check coming due) and whether the GIL is on. A call then costs a look-up instead of the
  rules and the classifier's key (name, size bucket, argument shape). Only calls whose first
  arguments are numbers or None, without keyword arguments, are remembered: their key depends
  on the argument types alone. A classifier's answer is reused only once given twice in a row
  (one made up while a function is being learned is a new object each time), never one that
  measures the call; the function is held weakly (what ran must not outlive its future).
- ``Sampler`` times one call in ``SAMPLE_EVERY`` of a decision (the first one, then every
  ``SAMPLE_EVERY``-th; or the period the classifier asks for: every call of a long function,
  one in 64 once re-checks confirmed a verdict) and records it as standing for the calls since
  the last one timed: the classifier's counts, re-checks and averages stay as if each call
  were timed, at a fraction of the cost (a timed call reads two clocks and takes the
  classifier's lock; it goes straight to the entry of its verdict, ``Weighted``).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import sys
import weakref
from collections.abc import Callable
from types import FunctionType
from typing import TYPE_CHECKING, Any

from . import _lifecycle
from ._asyncio import is_async_callable
from ._futures import FRESH_CONTEXT, Future, Items, Task
from ._routing import Classifier, Decision, Options, TimedTask, gil_enabled, hints_of, route_rules

if TYPE_CHECKING:
    from ._profiles import Profile
    from ._router import Router
    from ._routing._rules import Probe

logger = logging.getLogger("hybridexec")

Call = tuple[tuple[Any, ...], dict[str, Any]]
_Seen = tuple["Decision", "itertools.count[int]", int, "Weighted | None", "Weighted | None"]
"""A decision's sampler entry (``Sampler.counter``)."""

SAMPLE_EVERY = 16
"""One thread call in this many of a decision is timed for the classifier."""
REMEMBERED = 1024
"""Entries kept by ``Plans`` and by ``Sampler`` before they start over."""

_PLAIN = frozenset((int, float, complex, type(None)))
"""Argument types whose classifier key is the type alone (no size, no flag value)."""

_SYS = sys.__dict__  # gil_enabled(), inline: sys._is_gil_enabled exists on 3.13+ only

_NO_CLASSIFIER = Decision("thread", "no hint and no classifier: threads by default")

# weakref to fn, options, hints, (classifier generation, GIL on), decision, merged options,
# reusable (a rule's answer, or the classifier's given twice in a row), express (see there)
_Plan = tuple[
    Callable[[], object], Options, Options | None, tuple[int, bool], Decision, Options, bool, bool
]


class Plans:
    """The router's decisions, reused while what they depend on stays the same."""

    __slots__ = ("_express", "_learns", "_plans", "classifier", "default_kind", "express_ok")

    def __init__(self, classifier: Classifier | None, default_kind: str, express: bool) -> None:
        self.classifier = classifier
        self.default_kind = default_kind
        self.express_ok = express  # no distributed backend: thread calls stay here
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._express: dict[tuple[Any, ...], _Express] = {}  # same keys: see submit_express
        # Its answers are reused only if it says when they may change.
        self._learns = isinstance(getattr(classifier, "generation", None), int)

    def decide(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: Options
    ) -> tuple[Decision, Options]:
        """Where this call goes, and its options merged with the function's hints.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        types = tuple(map(type, args[:4]))
        if kwargs or not _PLAIN.issuperset(types):
            return self._decide(fn, args, kwargs, opts)[:2]
        key = (id(fn), id(opts), *types)
        plan = self._plans.get(key)
        hinted = hints_of(fn)
        learned = self.classifier.generation if self._learns else 0  # type: ignore[union-attr]
        generation = (learned, gil_enabled())
        if (
            plan is not None
            and plan[6]
            and plan[3] == generation
            and plan[2] is hinted
            and plan[1] is opts
            and plan[0]() is fn
        ):
            return plan[4], plan[5]
        decision, merged, fixed = self._decide(fn, args, kwargs, opts, hinted)
        if decision.probe is None:
            try:
                ref = weakref.ref(fn)
            except TypeError:  # a builtin: nothing to hold it weakly by
                return decision, merged
            if len(self._plans) >= REMEMBERED:
                self._plans.clear()
            self._express.pop(key, None)  # made again from this plan at its next express call
            same = self._learns and plan is not None and plan[4] is decision and plan[0]() is fn
            # The express path (``express``): a plain call on the process lane or the growing
            # thread lane (not a CPU-heavy one: it waits for a CPU slot, see submit_task).
            express = (
                self.express_ok
                and (
                    (decision.kind == "thread" and not decision.cpu_heavy and generation[1])
                    or decision.kind == "process"  # (generation[1] False: threads by rule)
                )
                and decision.max_memory is None
                and merged.timeout is None
                and not is_async_callable(fn)
            )
            self._plans[key] = (
                ref,
                opts,
                hinted,
                generation,
                decision,
                merged,
                fixed or same,
                express,
            )
        return decision, merged

    def submit_express(
        self,
        router: Router,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
    ) -> Future[Any] | None:
        """Submit a plain call remembered as bound to the growing thread lane; else None.

        The router's ``submit_task`` for such a call, in two functions: a storm of tiny calls
        pays this per call (issue 17), so ``entry`` does the checks of ``decide`` without a
        key tuple of types, and finds the lane's profile and the sampler's count in its entry.

        Raises:
            RuntimeError: the executor was shut down.
        """
        entry = self.entry(router, fn, args, kwargs, opts)
        if entry is None:
            return None
        if entry.process:  # submit_task's work for a plain process call (counted there)
            process = router.processes.submit_call(fn, args, kwargs, entry.route)
            if process is not None and logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s -> process: %s", getattr(fn, "__qualname__", fn), entry.reason)
            return process  # None: it will not pickle
        future: Future[Any] = Future("thread")
        n = next(entry.seen)  # the sampler's count for this decision (Sampler.timed, inline)
        clf = None if n and n % entry.every else entry.rest if n else entry.first
        if clf is None:  # not timed (or no classifier)
            task = Task(fn, (args, kwargs), future)
        else:
            task = TimedTask(fn, (args, kwargs), future, clf, None)
        task.context = contextvars.copy_context() or FRESH_CONTEXT  # as submit_task: a copy, O(1)
        task.route = entry.route  # late binding: it follows newer verdicts
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> thread: %s", getattr(fn, "__qualname__", fn), entry.reason)
        router.threads.submit(task, entry.profile, counted=1)
        return future

    def entry(
        self,
        router: Router,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
    ) -> _Express | None:
        """The express entry for this call if it is still valid, else None.

        Raises:
            RuntimeError: the executor was shut down.
        """
        if kwargs:
            return None
        if len(args) == 1:  # the common shape, without a tuple of types
            kind = type(args[0])
            if kind not in _PLAIN:
                return None
            key: tuple[Any, ...] = (id(fn), id(opts), kind)
        else:
            types = tuple(map(type, args[:4]))
            if not _PLAIN.issuperset(types):
                return None
            key = (id(fn), id(opts), *types)
        entry = self._express.get(key)
        if entry is None:
            entry = self._first_express(router, key, fn, opts)
            if entry is None:
                return None
        learned = self.classifier.generation if self._learns else 0  # type: ignore[union-attr]
        check = _SYS.get("_is_gil_enabled")  # read at each call (a test may switch it)
        if (
            entry.learned != learned
            or (check is not None and not check())
            or entry.ref() is not fn  # the entry holds opts: an id match is opts itself
            or (
                # hints_of(fn), inline: a plain function with nothing set on it has none
                None if type(fn) is FunctionType and not fn.__dict__ else hints_of(fn)
            )
            is not entry.hinted
        ):
            return None
        if router.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if router.generation != _lifecycle.generation():
            router.check_fork()
        return entry

    def _first_express(
        self, router: Router, key: tuple[Any, ...], fn: Callable[..., Any], opts: Options
    ) -> _Express | None:
        # The express entry of a remembered plan, made at its first express call.
        plan = self._plans.get(key)
        if plan is None or not plan[7] or not plan[6] or plan[1] is not opts:
            return None
        learned = self.classifier.generation if self._learns else 0  # type: ignore[union-attr]
        if plan[3] != (learned, gil_enabled()) or plan[2] is not hints_of(fn):
            return None
        if plan[0]() is not fn:
            return None
        if len(self._express) >= REMEMBERED:
            self._express.clear()
        profile = router.threads.profiles.of(fn) if plan[4].kind == "thread" else None
        seen = router.sampler.counter(plan[4], self.classifier)
        entry = _Express(plan, learned, seen, profile)
        self._express[key] = entry
        return entry

    def submit_chunk(
        self,
        router: Router,
        fn: Callable[..., Any],
        chunk: list[tuple[Any, ...]],
        opts: Options,
        batch: bool,
    ) -> Future[Any]:
        """Submit a chunk of ``Executor.map``: one task, by the express path if it can."""
        future = None if batch else self.submit_express(router, fn, chunk[0], {}, opts)
        if future is not None:
            return future
        decision, call_opts = router.decide(fn, chunk[0], {}, opts)
        items: Items = [(args, {}) for args in chunk]
        return router.submit_task(fn, items, decision, call_opts.timeout, batch=batch)[0]

    def _decide(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: Options,
        hinted: Options | None = None,
    ) -> tuple[Decision, Options, bool]:
        # Options, hints and rules (fixed by those), else the classifier (True: fixed).
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
        hinted = hints_of(fn) if hinted is None else hinted
        if hinted is not None:  # its kind is a hint, read by route_rules: not an explicit ask
            opts = opts.merged(Options("auto", hinted.timeout, hinted.max_memory))
        decision = route_rules(fn, opts, self.default_kind)
        if decision is not None:
            return decision, opts, True
        if self.classifier is None:
            return _NO_CLASSIFIER, opts, True
        return self.classifier.classify(fn, args, kwargs), opts, False


class _Express:
    """A remembered plan bound to the growing thread lane (or processes), and what it needs."""

    __slots__ = (
        "every",
        "first",
        "hinted",
        "learned",
        "process",
        "profile",
        "reason",
        "ref",
        "rest",
        "route",
        "seen",
    )

    def __init__(self, plan: _Plan, learned: int, seen: _Seen, profile: Profile | None) -> None:
        self.ref, self.hinted, self.learned = plan[0], plan[2], learned
        decision = plan[4]
        self.reason = decision.reason
        self.process = decision.kind == "process"
        self.route = decision if decision.source is not None else None
        (_, self.seen, self.every, self.first, self.rest), self.profile = seen, profile


class Sampler:
    """Which thread calls of a decision are timed, and how many calls each one stands for."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        # id(decision) -> (the decision, kept so that its id is not reused; its call count;
        # one call timed in this many; who records the first call; who records the others)
        self._counts: dict[int, _Seen] = {}

    def counter(self, decision: Decision, classifier: Classifier | None) -> _Seen:
        """This decision's entry: its call count, period, and who records its timed calls.

        The recorders are made once per decision (None without a classifier): a timed call
        then costs the classifier's update alone (``Weighted``).
        """
        seen = self._counts.get(id(decision))
        if seen is None:
            if len(self._counts) >= REMEMBERED:  # decisions made for one call each
                self._counts.clear()
            # The classifier may ask for every call of a long function (its ``timing_every``):
            # the figures then follow a change of behaviour on its first wave of calls.
            source = decision.source
            every = getattr(source, "timing_every", None)
            every = every if isinstance(every, int) and every >= 1 else SAMPLE_EVERY
            first = rest = None
            if classifier is not None:
                first = Weighted(classifier, 1, source)
                rest = first if every == 1 else Weighted(classifier, every, source)
            made = (decision, itertools.count(), every, first, rest)
            seen = self._counts.setdefault(id(decision), made)
        return seen

    def timed(
        self, task: Task, classifier: Classifier, decision: Decision, probe: Probe | None
    ) -> Task:
        """The thread task, as a ``TimedTask`` if it is to be timed (always with a probe)."""
        clf: Classifier | None = classifier
        if not task.batch and probe is None:  # else: several calls, or a measured one
            seen = self._counts.get(id(decision))
            if seen is None:
                seen = self.counter(decision, classifier)
            n = next(seen[1])
            if n % seen[2]:
                return task
            clf = seen[4] if n else seen[3]
        if clf is None:
            return task
        return TimedTask.like(task, clf, probe)


class Weighted:
    """The classifier, told that one timed call stands for ``weight`` calls of ``source``.

    ``source`` is the decision's (``Decision.source``): for the learning classifier, the entry
    of the calls' key, whose figures it updates without computing the key again
    (``record_entry``); other classifiers are given ``record`` as usual.
    """

    __slots__ = ("classifier", "fast", "source", "weight")

    def __init__(self, classifier: Classifier, weight: int, source: object = None) -> None:
        self.classifier = classifier
        self.weight = weight
        self.source = source
        fast = getattr(classifier, "record_entry", None) if source is not None else None
        self.fast: Callable[..., None] | None = fast if callable(fast) else None

    def classify(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Decision:
        return self.classifier.classify(fn, args, kwargs)

    def record(
        self,
        fn: Callable[..., Any],
        kind: str,
        elapsed: float,
        cpu: float,
        *,
        calls: int = 1,
        args: tuple[Any, ...] = (),
    ) -> None:
        w = self.weight
        if self.fast is not None:
            self.fast(self.source, kind, elapsed * w, cpu * w, calls * w)
        else:
            self.classifier.record(fn, kind, elapsed * w, cpu * w, calls=calls * w, args=args)
