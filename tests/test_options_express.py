"""``ex.options(...).submit`` takes the express path as ``ex.submit`` does (issue 17).

Once a plain call of a function was routed, later calls with the same options skip the router
(``_decisions.Plans.submit_express``). These check that nothing observable changes on that path:
results, a shutdown's refusal, options that keep a call off it (a timeout), and a future's
per-task semantics (cancel of a queued call, callbacks, exactly one end).
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import pytest

import hybridexec

from . import helpers
from .conftest import wait_until


def test_options_process_storm_gives_every_result(ex: hybridexec.Executor) -> None:
    opts = ex.options(kind="process")
    for _ in range(3):  # learned, then by the express path
        futures = [opts.submit(helpers.add, x, 1) for x in range(300)]
        assert [f.result(timeout=60) for f in futures] == [x + 1 for x in range(300)]
        assert all(f.kind == "process" for f in futures)


def test_options_submit_after_shutdown_raises(ex: hybridexec.Executor) -> None:
    opts = ex.options(kind="process")
    for _ in range(3):
        assert opts.submit(helpers.add, 2, 3).result(timeout=60) == 5
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        opts.submit(helpers.add, 2, 3)


def test_options_with_timeout_still_times_out_each_call(ex: hybridexec.Executor) -> None:
    opts = ex.options(kind="process", timeout=0.5)
    for _ in range(3):
        assert opts.submit(helpers.add, 1, 1).result(timeout=60) == 2
    slow = opts.submit(helpers.sleep_then, 30.0, 1)
    with pytest.raises(TimeoutError):
        slow.result(timeout=60)


def test_options_express_futures_keep_stdlib_semantics(ex: hybridexec.Executor) -> None:
    opts = ex.options(kind="process")
    for _ in range(3):
        assert opts.submit(helpers.add, 1, 1).result(timeout=60) == 2
    ended: list[Any] = []
    lock = threading.Lock()

    def note(f: concurrent.futures.Future[Any]) -> None:
        with lock:
            ended.append(f)

    futures = [opts.submit(helpers.add, x, 0) for x in range(2000)]
    for f in futures:
        f.add_done_callback(note)
    cancelled = [f for f in futures[1000:] if f.cancel()]
    _done, pending = concurrent.futures.wait(futures, timeout=60)
    assert not pending
    for x, f in enumerate(futures):
        if f in cancelled:
            assert f.cancelled()
        else:
            assert f.result() == x
    # Callbacks may run on the callback threads: each future ends once, none is lost.
    assert wait_until(lambda: len(ended) >= len(futures), 30)
    with lock:
        assert len(ended) == len(futures)
        assert len({id(f) for f in ended}) == len(futures)
