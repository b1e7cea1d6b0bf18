"""Map items whose worker process was killed by SIGKILL: found, then run again one at a time.

SIGKILL is what the kernel's OOM killer sends: the item may have run out of memory only
because others of its map ran beside it. ``_mapping`` runs such an item once more when nothing
else of its map is in flight, and halves the map's work in flight from then on.
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Callable
from typing import Any

from .. import _exceptions
from .._futures import Future, Items, Outcome


def oom_killed(outcome: Outcome) -> bool:
    """True for the outcome of an item whose worker process was killed by SIGKILL."""
    ok, value = outcome
    if ok:  # WorkerCrashedError is made when first used: not for each outcome of a map
        return False
    return type(value) is _exceptions.WorkerCrashedError and value.signal == signal.SIGKILL


def retry_killed(
    outcomes: list[Outcome],
    items: Items,
    submit: Callable[[Any], Future[Any] | None],
    first: int = 0,
    read: Callable[[Future[Any]], object] | None = None,
) -> list[Outcome]:
    """Run each item of ``items`` from ``first`` on whose outcome is ``oom_killed`` once more.

    One at a time: ``submit(item)`` sends one item as a batch of one (None: refused, the
    executor shut down; the item keeps the outcome of the run it had). Items before ``first``
    ran twice already (a batch the lane split as its worker died: ``split_at``). Returns the
    outcomes with the retried items' new ones in their places: a value, or the failure of the
    second run. ``read(future)`` is called once a retry's outcome is in its place: the map
    lets go of it there, so no finished retry stays among the futures it waits on.

    Raises:
        concurrent.futures.CancelledError: a retry was cancelled (the map or the executor
            was): that ends the map.
    """
    outcomes = list(outcomes)
    for index, outcome in enumerate(outcomes):
        if index >= first and oom_killed(outcome):
            future = submit(items[index])
            if future is None:
                continue
            try:
                outcomes[index] = future.result()[0]
            except concurrent.futures.CancelledError:
                raise
            except Exception as exc:  # the retry failed as a whole
                outcomes[index] = (False, exc)
            # Not on a BaseException (Ctrl-C in the wait): the map's cleanup cancels it then.
            if read is not None:
                read(future)
    return outcomes
