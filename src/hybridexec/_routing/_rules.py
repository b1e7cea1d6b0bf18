"""Where a task goes: explicit options, hints on the function, then rules.

Precedence, first match wins:

1. ``kind=`` given to ``submit``/``map``/``options()``;
2. free-threaded CPython with the GIL off (``sys._is_gil_enabled()`` False, checked at each
   decision since importing an extension can turn the GIL back on): threads, which then run
   Python in parallel, unless a timeout asks for a killable worker;
3. a hint on the function: ``@io_bound`` (threads), ``@cpu_bound`` (processes),
   ``@task(kind=...)``;
4. rules: a task with a timeout or a ``max_memory`` goes to a process (only a process can be
   stopped or limited) when it can be pickled; what cannot be pickled stays on threads;
5. the executor's default kind when it is not ``"auto"`` (``Executor(kind="thread")`` switches
   the classifier off);
6. the classifier (see ``Classifier``; by default ``LearningClassifier`` measures each
   function); without one, threads.

A routed task that cannot be pickled for the process it was sent to falls back to threads
unless the user asked for a process explicitly (then its future fails with
``SerializationError``).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, overload

from ._options import NOT_GIVEN, Kind, Options, checked_options

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("hybridexec")

_HINT_ATTR = "__hybridexec_options__"


def hints_of(fn: Callable[..., Any]) -> Options | None:
    """Return the options attached to ``fn`` by a decorator, looking through wrappers."""
    seen = 0
    target: Any = fn
    while target is not None and seen < 8:
        found = getattr(target, _HINT_ATTR, None)
        if isinstance(found, Options):
            return found
        if isinstance(target, functools.partial):
            target = target.func
        else:
            target = getattr(target, "__func__", None) or getattr(target, "__wrapped__", None)
        seen += 1
    return None


def _attach(fn: F, options: Options) -> F:
    if not callable(fn):
        raise TypeError(f"expected a callable, not {type(fn).__qualname__}")
    target = getattr(fn, "__func__", fn)
    try:
        setattr(target, _HINT_ATTR, options)
    except (AttributeError, TypeError) as exc:
        raise TypeError(f"cannot attach hybridexec options to {fn!r}: {exc}") from exc
    return fn


def io_bound(fn: F) -> F:
    """Mark ``fn`` as I/O-bound (or GIL-releasing): it runs on threads.

    Args:
        fn: The function to mark; it is returned unchanged apart from the mark.

    Returns:
        ``fn`` itself.

    .. versionadded:: 0.1
    """
    return _attach(fn, Options(kind="thread"))


def cpu_bound(fn: F) -> F:
    """Mark ``fn`` as CPU-bound Python code that holds the GIL: it runs in processes.

    Args:
        fn: The function to mark; it is returned unchanged apart from the mark.

    Returns:
        ``fn`` itself.

    .. versionadded:: 0.1
    """
    return _attach(fn, Options(kind="process"))


@overload
def task(fn: F, /) -> F: ...
@overload
def task(
    *, kind: Kind = "auto", timeout: float | None = None, max_memory: int | None = None
) -> Callable[[F], F]: ...
def task(
    fn: F | None = None,
    /,
    *,
    kind: Kind = "auto",
    timeout: float | None = None,
    max_memory: int | None = None,
) -> F | Callable[[F], F]:
    """Attach default options to a function: ``@task(kind="process", timeout=5.0)``.

    Options given at the call (``submit``, ``map``, ``options()``) take precedence.

    Args:
        fn: The function, when used bare as ``@task``.
        kind: ``"auto"``, ``"thread"`` or ``"process"``.
        timeout: Seconds each call may run before it fails with ``TaskTimeoutError``.
        max_memory: Bytes each call may add to its worker process's memory before it fails
            with ``MemoryLimitError`` (see ``Executor.options``); the calls run in processes.

    Returns:
        The function itself, or a decorator.

    Raises:
        TypeError: ``max_memory`` is not an int.
        ValueError: unknown ``kind``, a timeout or ``max_memory`` that is not positive, or
            ``kind="thread"`` with ``max_memory``.

    .. versionadded:: 0.1
    """
    options = checked_options(kind, NOT_GIVEN if timeout is None else timeout, max_memory)
    if fn is not None:
        return _attach(fn, options)
    return lambda f: _attach(f, options)


class Probe(Protocol):
    """A measurement a classifier attaches to a decision: run one call inside it.

    The executor calls ``claim`` when it submits a task with this decision: only the first
    caller gets True and its task runs (on a thread) through ``run``; a task that finds the
    probe claimed already asks the classifier again. This keeps a decision that ``map``
    reuses for many tasks from measuring them all.
    """

    def claim(self) -> bool:
        """Return True once, for the task that will be measured."""
        ...

    def run(self, call: Callable[[], None]) -> None:
        """Run ``call()`` (the whole task) inside the measurement, on the current thread."""
        ...


_KINDS = frozenset(("thread", "process"))


class Decision:
    """Where one task goes and why.

    Attributes:
        kind: ``"thread"`` or ``"process"``.
        reason: Why, in words.
        explicit: The user asked for this lane: no silent fallback.
        probe: Set by a classifier that wants this call measured on a thread.
        max_memory: The call's memory limit in bytes (set only with kind ``"process"``).
        cpu_heavy: A thread verdict for work that keeps a CPU busy without the GIL (C code
            that releases it): it runs on the capped CPU thread lane and holds one of the
            executor's CPU slots while it runs (see ``docs/routing.md``, the governor).
        source: Set by a classifier whose verdicts change: an object whose ``decision``
            attribute is the newest verdict for this call's key. A task that has not started
            follows it (late binding); None: the task stays where it was sent.

    Raises:
        ValueError: ``kind`` is neither ``"thread"`` nor ``"process"``.
    """

    # Written out rather than a frozen dataclass (~0.8 ms to make, on every executor's import
    # path), with the same behaviour: immutable; compared, hashed and shown without ``probe``
    # and ``source``.

    __match_args__ = ("kind", "reason", "explicit", "probe", "max_memory", "cpu_heavy", "source")

    kind: str
    reason: str
    explicit: bool
    probe: Probe | None
    max_memory: int | None
    cpu_heavy: bool
    source: Any

    def __init__(
        self,
        kind: str,
        reason: str,
        explicit: bool = False,
        probe: Probe | None = None,
        max_memory: int | None = None,
        cpu_heavy: bool = False,
        source: Any = None,
    ) -> None:
        if kind not in _KINDS:  # a custom classifier's typo fails here, not as a KeyError later
            raise ValueError(f"a Decision's kind must be 'thread' or 'process', not {kind!r}")
        put = object.__setattr__
        put(self, "kind", kind)
        put(self, "reason", reason)
        put(self, "explicit", explicit)
        put(self, "probe", probe)
        put(self, "max_memory", max_memory)
        put(self, "cpu_heavy", cpu_heavy)
        put(self, "source", source)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a Decision is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a Decision is immutable")

    def _key(self) -> tuple[str, str, bool, int | None, bool]:
        return (self.kind, self.reason, self.explicit, self.max_memory, self.cpu_heavy)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        kind, reason, explicit, max_memory, cpu_heavy = self._key()
        return (
            f"Decision(kind={kind!r}, reason={reason!r}, explicit={explicit!r}, "
            f"max_memory={max_memory!r}, cpu_heavy={cpu_heavy!r})"
        )


class WouldWait(Exception):
    """Raised by ``classify`` inside ``no_waiting()`` instead of waiting for a verdict."""


_local = threading.local()


class no_waiting:
    """Within it, a classifier that would wait for a verdict raises ``WouldWait`` instead.

    The router asks so on a ``submit``: the call is then placed off the caller's thread once
    the verdict is in (``_deferred.py``), and ``submit`` returns at once.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        _local.nowait = True

    def __exit__(self, *exc: object) -> None:
        _local.nowait = False


def waiting_refused() -> bool:
    """True inside ``no_waiting()`` on this thread."""
    return getattr(_local, "nowait", False)


def ms(seconds: float) -> str:
    """``1.5 ms``, ``120 us``: a duration as explanations print it."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.1f} ms"


class Classifier(Protocol):
    """Decides the lane for calls that no option, hint or rule settles.

    An executor calls ``classify`` for each such call (for ``map``, once per map and again
    while the decision carries a claimed ``probe``) and ``record`` after each task ran on a
    thread or in a process, with its measured figures. ``classify`` runs on the submitting
    thread and must be fast once a function is known (a dictionary look-up); ``record`` runs on
    worker threads and on the process lane's manager thread and must not block or raise.
    ``LearningClassifier`` is the default; ``Executor(kind="thread")`` switches classifying
    off, ``Executor(classifier=...)`` plugs another one in.
    """

    def classify(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Decision:
        """Return the decision for this call."""
        ...

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
        """Learn from a finished task of ``calls`` calls of ``fn``.

        Args:
            fn: The function.
            kind: Where it ran: ``"thread"`` or ``"process"``.
            elapsed: Wall seconds of the whole task where it ran.
            cpu: CPU seconds of the whole task (the thread's clock, or the worker process's).
            calls: Calls in the task (more than one for a batch).
            args: Positional arguments of the task's first call.
        """
        ...


def gil_enabled() -> bool:
    """Return whether the GIL is on now (False only on a free-threaded build with it off)."""
    check = sys.__dict__.get("_is_gil_enabled")  # getattr() raises inside when absent: 1 us
    return True if check is None else bool(check())


def route_rules(fn: Callable[..., Any], options: Options, default_kind: str) -> Decision | None:
    """Apply options, the free-threading rule, hints and rules; None if the classifier decides.

    Raises:
        ValueError: ``max_memory`` (given or from a hint) on a call that must run on a thread.
    """
    hinted = hints_of(fn)
    memory = options.max_memory
    if memory is None and hinted is not None:
        memory = hinted.max_memory
    if memory is not None:  # only a process can be limited: never a silent thread
        kind = options.kind if options.kind != "auto" or hinted is None else hinted.kind
        if kind == "thread":
            hint = hinted is not None and hinted.kind == "thread"  # merged into options too
            how = " (the function is hinted to threads, as @io_bound does)" if hint else ""
            raise ValueError(f"max_memory needs a process: it cannot apply with kind='thread'{how}")
        why = "kind='process' was requested" if kind == "process" else "a task with max_memory"
        return Decision("process", f"{why} (runs limited)", explicit=True, max_memory=memory)
    if options.kind != "auto":
        return Decision(options.kind, f"kind={options.kind!r} was requested", explicit=True)
    if getattr(multiprocessing.current_process(), "daemon", False) and default_kind != "process":
        # A multiprocessing worker (a Pool's, Dask's, Celery's) may not start processes.
        return Decision("thread", "this process is daemonic: it may not start processes")
    timeout = options.merged(hinted).timeout is not None  # (None given: not the hint's)
    if not timeout and not gil_enabled():
        return Decision(
            "thread", "the GIL is disabled (free-threaded build): threads run in parallel"
        )
    # A process the executor was made for is asked for: what will not pickle fails there.
    asked = default_kind == "process"
    if hinted is not None and hinted.kind != "auto":
        return Decision(
            hinted.kind,
            f"the function is marked kind={hinted.kind!r}",
            explicit=asked and hinted.kind == "process",
        )
    if timeout:
        return Decision(
            "process", "a task with a timeout runs where it can be killed", explicit=asked
        )
    if default_kind != "auto":
        # Asked for, as ProcessPoolExecutor is: what will not pickle fails, not a thread.
        return Decision(
            default_kind, f"the executor's default kind is {default_kind!r}", explicit=True
        )
    return None


def route(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
    classifier: Classifier | None,
    default_kind: str = "auto",
) -> Decision:
    """Apply options, hints and rules; ask the classifier when none of them decides."""
    decision = route_rules(fn, options, default_kind)
    if decision is not None:
        return decision
    if classifier is not None:
        return classifier.classify(fn, args, kwargs)
    return Decision("thread", "no hint and no classifier: threads by default")
