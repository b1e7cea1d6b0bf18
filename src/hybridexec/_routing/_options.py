"""Per-call options (``kind``, ``timeout``, ``max_memory``) and their validation.

The functions here check what a user passed at the call that passed it: ``submit``, ``map``,
``options()``, ``@task``. Where the options route a call: ``_rules.py``.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

KINDS = ("auto", "thread", "process")
Kind = Literal["auto", "thread", "process"]


class NotGiven(enum.Enum):
    """The type of ``NOT_GIVEN``: the default of an option that a call may also give as None.

    ``ex.options(timeout=None)`` turns off a timeout that lies under it (a view's, or the
    function's ``@hx.task`` default); leaving ``timeout`` out (``NOT_GIVEN``) keeps that one.
    """

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN


class Options:
    """Per-call options: where to run, how long a call may take, how much memory it may add.

    Immutable, compared and hashed by value, as a frozen dataclass would be; written out by
    hand because every executor's import makes it, where the dataclass took ~0.5 ms to make.

    ``no_timeout``: the timeout was given as None, so a timeout under these options (a view's,
    the function's ``@task`` default) does not fill it in: the call has none.
    """

    kind: str
    timeout: float | None
    max_memory: int | None
    no_timeout: bool

    def __init__(
        self,
        kind: str = "auto",
        timeout: float | None = None,
        max_memory: int | None = None,
        no_timeout: bool = False,
    ) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "max_memory", max_memory)
        object.__setattr__(self, "no_timeout", no_timeout and timeout is None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: Options are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: Options are immutable")

    def _key(self) -> tuple[str, float | None, int | None, bool]:
        return (self.kind, self.timeout, self.max_memory, self.no_timeout)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        kind, timeout, max_memory, no_timeout = self._key()
        off = ", no_timeout=True" if no_timeout else ""
        return f"Options(kind={kind!r}, timeout={timeout!r}, max_memory={max_memory!r}{off})"

    def merged(self, other: Options | None) -> Options:
        """Return these options with the fields ``other`` sets explicitly filled in.

        A timeout given as None (``no_timeout``) is set: ``other``'s does not fill it in.
        """
        if other is None:
            return self
        keep = self.timeout is not None or self.no_timeout
        return Options(
            self.kind if self.kind != "auto" else other.kind,
            self.timeout if keep else other.timeout,
            self.max_memory if self.max_memory is not None else other.max_memory,
            self.no_timeout if keep else other.no_timeout,
        )


def check_classifier(classifier: object) -> None:
    """Validate ``Executor(classifier=...)``: None, or an object with a ``classify`` method.

    Raises:
        TypeError: a class (not an instance), or an object without ``classify``.
    """
    if classifier is not None and (
        isinstance(classifier, type) or not callable(getattr(classifier, "classify", None))
    ):
        raise TypeError(f"classifier must have a classify method, not {classifier!r}")


def check_kind(kind: object) -> str:
    """Validate ``kind``.

    Raises:
        ValueError: not one of ``"auto"``, ``"thread"``, ``"process"``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return str(kind)


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """Validate a per-task timeout (or another span of seconds, called ``name``).

    Raises:
        TypeError: not a number.
        ValueError: not positive, or an int too large for a float.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"{name} must be positive, not {timeout!r}")
    try:
        return float(timeout)
    except OverflowError:  # an int beyond any float: no finite span of seconds
        raise ValueError(f"{name} is too large: an int beyond any float") from None


def check_max_memory(max_memory: object) -> int | None:
    """Validate a per-task memory limit in bytes.

    Raises:
        TypeError: not an int (a bool is not one).
        ValueError: not positive.
    """
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, int):
        raise TypeError(f"max_memory must be an int (bytes) or None, not {max_memory!r}")
    if max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, not {max_memory!r}")
    return max_memory


def checked_options(
    kind: object, timeout: object, max_memory: object = None, under: Options | None = None
) -> Options:
    """``Options`` from what a caller passed, merged over ``under``; raise on bad values.

    ``timeout``: ``NOT_GIVEN`` leaves it to ``under`` and to the function's ``@task``
    default; None turns those off (the call has no timeout); else a positive number.

    Raises:
        TypeError: a timeout or ``max_memory`` of the wrong type.
        ValueError: a bad value, or ``max_memory`` on a call asked to run on a thread (only a
            process can be limited).
    """
    given = timeout is not NOT_GIVEN
    seconds = check_timeout(timeout) if given else None
    options = Options(check_kind(kind), seconds, check_max_memory(max_memory), given)
    options = options.merged(under)
    if options.kind == "thread" and options.max_memory is not None:
        raise ValueError("max_memory needs a process: it cannot apply with kind='thread'")
    return options


def check_count(name: str, value: int | None) -> int | None:
    """Return a worker count as given (None: the default), or raise as the stdlib pools do."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {value!r}")
    if value < 1:
        # The standard pools' wording, which code written for them may match.
        raise ValueError(f"{name} must be greater than 0, not {value}")
    return value


def resolve_counts(
    max_threads: int | None, max_processes: int | None, max_workers: int | None
) -> tuple[int | None, int | None]:
    """The lane caps: ``max_workers`` (the standard pools' word) caps each lane not given."""
    max_threads = check_count("max_threads", max_threads)
    max_processes = check_count("max_processes", max_processes)
    if check_count("max_workers", max_workers) is not None:
        max_threads = max_workers if max_threads is None else max_threads
        max_processes = max_workers if max_processes is None else max_processes
    return max_threads, max_processes
