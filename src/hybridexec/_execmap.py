"""``Executor.map`` (and a view's ``map``): the checks, then the calls submitted as read.

Every call goes through ``submit`` when a subclass overrides it (the standard library
documents that); otherwise calls go in groups where nothing observable changes (``_groups``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._groups import submitter
from ._views import Submitted, check_map_args, results

if TYPE_CHECKING:
    from ._executor import Executor
    from ._routing import Options


def executor_map(
    ex: Executor,
    plain: bool,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    opts: Options,
    limit: int | None,
) -> Iterator[Any]:
    """``Executor.map`` (and a view's): checks, then the calls submitted as results are read.

    ``plain``: ``ex``'s class does not override ``submit``.

    Raises:
        TypeError: ``fn`` is not callable (or a bad ``buffersize``/``limit``).
        ValueError: a bad ``chunksize``/``buffersize``/``limit``.
        RuntimeError: the executor was shut down.
    """
    check_map_args(chunksize, buffersize, limit)
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__qualname__}")
    if ex._router.closed:
        raise RuntimeError("cannot schedule new futures after shutdown")
    end_time = None if timeout is None else time.monotonic() + timeout
    calls = zip(*iterables)  # noqa: B905 - stops at the shortest, as map does
    if not plain and opts is ex._options:
        # A subclass counts, traces or wraps submit: every call goes through it.
        def submit_one() -> Submitted | None:
            args = next(calls, None)
            return None if args is None else (ex.submit(fn, *args), False, 1)

        return results(submit_one, buffersize, end_time, limit)
    if chunksize > 1 and _per_call_timeout(fn, opts):
        chunksize = 1  # a chunk is one task with one deadline: each call needs its own
    submit_next = submitter(ex._router, fn, calls, opts, chunksize, buffersize, limit)
    return results(submit_next, buffersize, end_time, limit, chunksize)


def _per_call_timeout(fn: Callable[..., Any], opts: Options) -> bool:
    """Whether calls of ``fn`` have a timeout: of the options, else of its ``@hx.task``."""
    from ._routing import Options, hints_of

    hinted = hints_of(fn)
    if hinted is not None:
        opts = opts.merged(Options("auto", hinted.timeout, hinted.max_memory))
    return opts.timeout is not None
