"""Where a task goes: explicit options, hints on the function, then rules.

Precedence, first match wins:

1. ``kind=`` given to ``submit``/``map``/``options()`` (or the executor's default kind);
2. a hint on the function: ``@io_bound`` (threads), ``@cpu_bound`` (processes),
   ``@task(kind=...)``;
3. rules: a task with a timeout goes to a process (only a process can be stopped) when it can
   be pickled; a callable or arguments that cannot be pickled stay on threads;
4. the executor's default kind when it is not ``"auto"``;
5. the classifier, when the executor has one (see ``Classifier``); without one, threads.

A routed task that cannot be pickled for the process it was sent to falls back to threads
unless the user asked for a process explicitly (then its future fails with
``SerializationError``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar, overload

KINDS = ("auto", "thread", "process")
Kind = Literal["auto", "thread", "process"]

F = TypeVar("F", bound=Callable[..., Any])

_HINT_ATTR = "__hybridexec_options__"


@dataclass(frozen=True)
class Options:
    """Per-call options: where to run and how long a call may take."""

    kind: str = "auto"
    timeout: float | None = None

    def merged(self, other: Options | None) -> Options:
        """Return these options with the fields ``other`` sets explicitly filled in."""
        if other is None:
            return self
        return replace(
            self,
            kind=self.kind if self.kind != "auto" else other.kind,
            timeout=self.timeout if self.timeout is not None else other.timeout,
        )


def check_kind(kind: object) -> str:
    """Validate ``kind``.

    Raises:
        ValueError: not one of ``"auto"``, ``"thread"``, ``"process"``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return str(kind)


def check_timeout(timeout: object) -> float | None:
    """Validate a per-task timeout.

    Raises:
        TypeError: not a number.
        ValueError: not positive.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    return float(timeout)


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
def task(*, kind: Kind = "auto", timeout: float | None = None) -> Callable[[F], F]: ...
def task(
    fn: F | None = None, /, *, kind: Kind = "auto", timeout: float | None = None
) -> F | Callable[[F], F]:
    """Attach default options to a function: ``@task(kind="process", timeout=5.0)``.

    Options given at the call (``submit``, ``map``, ``options()``) take precedence.

    Args:
        fn: The function, when used bare as ``@task``.
        kind: ``"auto"``, ``"thread"`` or ``"process"``.
        timeout: Seconds each call may run before it fails with ``TaskTimeoutError``.

    Returns:
        The function itself, or a decorator.

    Raises:
        ValueError: unknown ``kind`` or a timeout that is not positive.

    .. versionadded:: 0.1
    """
    options = Options(kind=check_kind(kind), timeout=check_timeout(timeout))
    if fn is not None:
        return _attach(fn, options)
    return lambda f: _attach(f, options)


@dataclass(frozen=True)
class Decision:
    """Where one task goes and why."""

    kind: str
    reason: str
    explicit: bool = False  # the user asked for this lane: no silent fallback


class Classifier(Protocol):
    """Decides the lane for calls that no option, hint or rule settles.

    An executor calls ``classify`` for each such call and ``record`` after each call ran.
    """

    def classify(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Decision:
        """Return the decision for this call."""
        ...

    def record(self, fn: Callable[..., Any], kind: str, elapsed: float, cpu: float) -> None:
        """Learn from a finished call: where it ran, its wall and CPU seconds."""
        ...


def route(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
    classifier: Classifier | None,
    default_kind: str = "auto",
) -> Decision:
    """Apply options, hints and rules; ask the classifier when none of them decides."""
    if options.kind != "auto":
        return Decision(options.kind, f"kind={options.kind!r} was requested", explicit=True)
    hinted = hints_of(fn)
    if hinted is not None and hinted.kind != "auto":
        return Decision(hinted.kind, f"the function is marked kind={hinted.kind!r}")
    if options.timeout is not None or (hinted is not None and hinted.timeout is not None):
        return Decision("process", "a task with a timeout runs where it can be killed")
    if default_kind != "auto":
        return Decision(default_kind, f"the executor's default kind is {default_kind!r}")
    if classifier is not None:
        return classifier.classify(fn, args, kwargs)
    return Decision("thread", "no hint and no classifier: threads by default")
