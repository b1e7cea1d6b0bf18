"""An outside tester's cases for round 15 (tester 15f): this round's fixes to long life,
callbacks, shutdown and maps, seen from a user's side (second wave).

Each test names the defect of the tester's report (F1, F2, ...) in its docstring and fails on
main 3cc9dac (Python 3.11). Every scenario runs as a script in a fresh interpreter of its own
session, killed at the end (``tests/scenario.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


_CANCEL_TWICE = """
import sys, threading, time
import hybridexec as hx

def slow(x):
    time.sleep(0.2)
    return x

if __name__ == "__main__":
    with hx.Executor() as ex:
        it = hx.imap(slow, range(6), executor=ex, kind="thread")
        print(next(it), flush=True)
        it.cancel()
        it.cancel()  # a second cancel(), from a cleanup path, say
        try:
            list(it)
        except Exception as exc:
            print("ended with", type(exc).__name__, flush=True)
        done = hx.imap(slow, range(2), executor=ex, kind="thread")
        print(list(done), flush=True)
        done.cancel()  # after the end, twice
        done.cancel()
    print("exit", flush=True)
"""


def test_map_iterator_cancel_twice_logs_a_critical_error(tmp_path: Path) -> None:
    """F1: ``MapIterator.cancel()`` called twice (or after the map ended, twice) is expected
    to be a no-op the second time, as ``Future.cancel()`` is. It writes ``Future 1401...
    in unexpected state: CANCELLED_AND_NOTIFIED`` to stderr, a CRITICAL record of the
    ``concurrent.futures`` logger, once per extra call. Breaks ``cancel()``'s docstring
    ("Cancel the work in flight from any thread") and 15c's own comment ("notified once (a
    second cancel())"). Cause: ``MapState.cancel`` (``_mapitems.py``) calls
    ``self.bell.cancel()``, which returns True for a stdlib future already cancelled, then
    ``set_running_or_notify_cancel()``, which logs the CRITICAL record before raising the
    RuntimeError that ``contextlib.suppress`` swallows.
    """
    proc = run_script(tmp_path, _CANCEL_TWICE, timeout=40)
    assert "exit" in proc.stdout, proc.stdout + proc.stderr
    assert "unexpected state" not in proc.stderr, proc.stderr


_INLINE_MAP_UNDER_SHUTDOWN = """
import threading, time
import hybridexec as hx

def cheap(x):
    return x + 1

if __name__ == "__main__":
    ex = hx.Executor()
    out = {"n": 0, "err": None}
    first = threading.Event()

    def consume():
        try:
            for _ in hx.imap(cheap, range(5_000_000), executor=ex, return_exceptions=True):
                out["n"] += 1
                first.set()
        except BaseException as exc:
            out["err"] = repr(exc)
        first.set()

    t = threading.Thread(target=consume)
    t.start()
    first.wait(30)
    ex.shutdown(wait=False)  # no cancel_futures
    t.join(30)
    print("items", out["n"] > 0, flush=True)
    print("error", out["err"], flush=True)
    ex.shutdown()
"""


def test_map_of_cheap_calls_under_shutdown_raises_cancelled_not_runtime_error(
    tmp_path: Path,
) -> None:
    """F2: an ``imap`` (default ``kind="auto"``) of cheap calls, running in one thread while
    another shuts its executor down *without* ``cancel_futures``, is expected to end with
    ``RuntimeError("cannot schedule new futures after shutdown")`` (docs/guarantees.md, "A
    map under a shutdown": "... the map then raises RuntimeError ... With cancel_futures=True
    the map ends with CancelledError"). It ends with ``CancelledError`` (``hx.map`` and
    ``hx.amap`` too): a caller cannot tell the two shutdowns apart. Cause: the calls run
    inline in the consumer (``run_inline``), which still checks ``router.closed`` and raises
    ``CancelledError`` (``_mapitems.py`` ``run_inline``: ``if state.cancelled or
    router.closed``); 15c's C5 changed only ``submit``/``resubmit`` in ``_mapping.py``.
    """
    proc = run_script(tmp_path, _INLINE_MAP_UNDER_SHUTDOWN, timeout=50)
    assert "items True" in proc.stdout, proc.stdout + proc.stderr
    assert "error RuntimeError('cannot schedule new futures after shutdown')" in proc.stdout, (
        proc.stdout + proc.stderr
    )


_LIMITED_MAP_UNDER_CANCEL_SHUTDOWN = """
import threading, time
import hybridexec as hx

def slow(x):
    time.sleep(0.2)
    return x

if __name__ == "__main__":
    ex = hx.Executor()
    out = {"n": 0, "err": None}
    first = threading.Event()

    def consume():
        try:
            for _ in hx.imap(slow, range(50), executor=ex, kind="thread", limit=1):
                out["n"] += 1
                first.set()
        except BaseException as exc:
            out["err"] = repr(exc)
        first.set()

    t = threading.Thread(target=consume)
    t.start()
    first.wait(30)
    time.sleep(0.1)  # the next call (0.2 s) has started: nothing is left queued to cancel
    ex.shutdown(wait=False, cancel_futures=True)
    t.join(30)
    print("error", out["err"], flush=True)
    ex.shutdown()
"""


def test_map_under_cancel_futures_shutdown_raises_runtime_error(tmp_path: Path) -> None:
    """F3: an ``imap(..., limit=1)`` running in one thread while another calls
    ``shutdown(wait=False, cancel_futures=True)`` is expected to end with ``CancelledError``
    (docs/guarantees.md, "A map under a shutdown": "With cancel_futures=True the map ends
    with CancelledError"). It ends with ``RuntimeError("cannot schedule new futures after
    shutdown")``, as if ``cancel_futures`` had not been given (also ``kind="process"``, and
    ``limit=2, ordered=False``): whenever no call of the map was still queued (here the one
    call in flight had started); when one was queued, it ends with ``CancelledError``: the
    error tells the timing, not the kind of shutdown. Cause: ``submit`` in ``_mapping.py``
    turns every refusal of a closed router into ``closed = True`` (then
    ``_lifecycle.closed_error()``) without asking whether the shutdown cancelled futures.
    """
    proc = run_script(tmp_path, _LIMITED_MAP_UNDER_CANCEL_SHUTDOWN, timeout=50)
    assert "error CancelledError()" in proc.stdout, proc.stdout + proc.stderr


_TWO_CALLBACKS_SHUT_DOWN = """
import os, threading, time
import hybridexec as hx

def quick(x):
    return x

if __name__ == "__main__":
    ex = hx.Executor(max_processes=1)
    view = ex.options(kind="process")
    done = []

    def stop_when_done(future):
        ex.shutdown()  # wait=True, from a done-callback
        done.append(future.result())

    gate = view.submit(time.sleep, 0.5)  # the next two end back to back
    futures = [view.submit(quick, i) for i in range(2)]
    for future in futures:
        future.add_done_callback(stop_when_done)
    start = time.monotonic()
    while len(done) < 2 and time.monotonic() - start < 8:
        time.sleep(0.05)
    print("callbacks finished", len(done), flush=True)
    os._exit(0)  # the stuck callback threads would hold up the exit
"""


def test_two_callbacks_that_shut_the_executor_down_deadlock(tmp_path: Path) -> None:
    """F4: two done-callbacks of process futures that each call ``ex.shutdown()`` (wait=True;
    "shut down once the work is done") are expected to return, as one such callback does
    (docs/guarantees.md: "a callback may submit work and wait for it"; ``shutdown(wait=True)``
    "returns once the callbacks of that executor's futures queued before it ran";
    ``_callbacks.drain``: "A runner calling this (a callback that shuts an executor down)
    does not wait for itself"). They wait for each other for good: neither returns, and the
    main thread's own ``shutdown()`` hangs behind them. The same with the callbacks of two
    futures cancelled by ``shutdown(wait=False, cancel_futures=True)``. Cause:
    ``_callbacks.drain`` skips only its own runner; the first callback's drain waits for the
    second future's callback (queued, then taken by a second runner after ``STUCK``), whose
    drain waits for the first runner (``0 < r.seq <= target and r.ident != me``).
    """
    proc = run_script(tmp_path, _TWO_CALLBACKS_SHUT_DOWN, timeout=40)
    assert "callbacks finished 2" in proc.stdout, proc.stdout + proc.stderr


_BLOCKED_CALLBACKS = """
import os, sys, threading, time
import concurrent.futures as cf
import hybridexec as hx

def gated(i):
    while not os.path.exists("gate"):
        time.sleep(0.005)
    return i

if __name__ == "__main__":
    BLOCKED = int(sys.argv[1])
    release = threading.Event()
    a = hx.Executor(max_processes=2)
    # Developers: the tasks wait for a gate, so that no future is done (and runs its
    # blocking callback in this thread, as a done future's does) before its callback is
    # added on a loaded machine; then they end together, a burst, as abs() did idle.
    fa = [a.options(kind="process").submit(gated, i) for i in range(BLOCKED)]
    for f in fa:
        f.add_done_callback(lambda f: release.wait())  # another executor's, blocked
    open("gate", "w").close()
    cf.wait(fa)
    time.sleep(1.5)  # the callback threads pick them up, 0.2 s apart
    b = hx.Executor(max_processes=1)
    ran = threading.Event()
    fb = b.options(kind="process").submit(abs, -1)
    fb.add_done_callback(lambda f: ran.set())
    fb.result()
    print("b's callback ran", ran.wait(4), flush=True)
    stopper = threading.Thread(target=b.shutdown, daemon=True)
    stopper.start()
    stopper.join(4)
    print("b.shutdown returned", not stopper.is_alive(), flush=True)
    release.set()
    stopper.join(10)
    a.shutdown()
"""


def test_callbacks_wait_behind_fewer_than_eight_blocked_callbacks(tmp_path: Path) -> None:
    """F5: with 12 done-callbacks of executor A blocked (waiting on an event), a later
    process future of executor B is expected to have its callback run: docs/guarantees.md
    ("one that runs over 0.2 s lets the next ones start on another callback thread (8 at
    most, so only 8 blocked callbacks hold up the rest)"). B's callback never runs while A's
    are blocked; only 4 or 5 callback threads exist, all held by A, and A's remaining
    callbacks queue ahead of B's. Cause: ``_callbacks.py``: a runner is started only by
    ``hand_over`` when no runner is idle; a runner that stops being idle to take a queued
    future past a stuck one starts no replacement, so a burst of hand-overs that found one
    idle runner leaves fewer than ``MAX_RUNNERS`` threads, all stuck.

    Developers (round 15): run with 6 blocked callbacks, fewer than the documented 8 callback
    threads (with 12 every one of the 8 is held, and the docs say the rest waits); before
    the fix only 4 or 5 threads existed, all held, and B's callback did not run either.
    """
    proc = run_script(tmp_path, _BLOCKED_CALLBACKS, "6", timeout=50)
    assert "b's callback ran True" in proc.stdout, proc.stdout + proc.stderr


def test_shutdown_hangs_when_every_callback_thread_is_stuck_in_another_executor(
    tmp_path: Path,
) -> None:
    """F6: the same program: ``b.shutdown()`` (wait=True) is expected to return, running
    B's own queued callback itself, since every callback thread is held by A's blocked
    callbacks (docs/guarantees.md: ``shutdown(wait=True)`` returns "never waiting on
    another executor's ... when every callback thread is held by blocked callbacks, it
    runs its own itself", 15c's C7). It hangs until A's callbacks are released. Cause:
    ``_callbacks.drain`` runs its own callbacks only when ``len(s.runners) >=
    MAX_RUNNERS`` (8); here every runner is stuck, but there are only 4 or 5 of them (F5),
    so the drain waits on the condition for ever (re-checking every ``STUCK``).
    """
    proc = run_script(tmp_path, _BLOCKED_CALLBACKS, "12", timeout=50)
    assert "b.shutdown returned True" in proc.stdout, proc.stdout + proc.stderr


_HOT_VERDICT = """
import time
import hybridexec as hx

def hot(n):
    s = 0
    for i in range(n):
        s += i
    return s

def make(i):
    ns = {}
    exec(f"def f{i}(x):\\n    return x + {i}\\n", ns)
    return ns[f"f{i}"]

if __name__ == "__main__":
    with hx.Executor(max_processes=2) as ex:
        for _ in range(4):
            ex.submit(hot, 300_000).result()
        print("learned", ex.explain(hot, 300_000).kind, flush=True)
        kinds = []
        for i in range(1100):  # fewer new functions than two verdict tables' worth
            ex.submit(make(i), 1).result()
            if i % 100 == 99:  # the hot function keeps being called meanwhile
                future = ex.submit(hot, 300_000)
                future.result()
                kinds.append(future.kind)
        print("kinds", kinds, flush=True)
        print("calls", ex.explain(hot, 300_000).calls, flush=True)
"""


def test_a_hot_functions_verdict_is_evicted_by_one_shot_functions(tmp_path: Path) -> None:
    """F7: a CPU-bound function learned as ``process`` and called every 100 new functions
    is expected to keep its verdict while a program calls 1,100 one-shot functions (the
    table keeps 1,024; docs/routing.md: "A call of a function routed before ... reuses that
    decision (until a verdict changes, a re-check is due or the function's hints change)";
    "verdicts do not flap"). Its verdict is dropped with the "older half" once the table
    fills, although it is the most used entry: its next call is measured again on a thread
    (``future.kind == "thread"``: a long GIL-holding call runs in the parent) and its call
    counts start over. Cause: ``_routing/_verdicts.py`` ``evict`` drops the first half of
    the dict in insertion order (oldest *learned*), not the least recently used.
    """
    proc = run_script(tmp_path, _HOT_VERDICT, timeout=55)
    assert "learned process" in proc.stdout, proc.stdout + proc.stderr
    assert "kinds ['process'" in proc.stdout, proc.stdout + proc.stderr
    assert "'thread'" not in proc.stdout, proc.stdout


_ASYNC_TIMERS = """
import asyncio
import concurrent.futures as cf
import hybridexec as hx

async def late(x):
    await asyncio.sleep(1)

if __name__ == "__main__":
    with hx.Executor() as ex:
        view = ex.options(timeout=0.001)
        futures = [view.submit(late, i) for i in range(100)]
        cf.wait(futures)
        print("timed out", sum(isinstance(f.exception(), hx.TaskTimeoutError) for f in futures))
        timers = ex._router.loop._deadlines  # the async lane's deadline thread (private)
        print("withdrawn", timers._withdrawn, "in heap", len(timers._heap), flush=True)
        print("len", len(timers), flush=True)
"""


def test_fired_async_deadlines_are_counted_as_withdrawn(tmp_path: Path) -> None:
    """F8: after 100 async tasks timed out, the async lane's ``Timers`` is expected to hold
    no entry (``Timers.__len__``: "Entries still to be called (withdrawn ones left out)").
    Its ``_withdrawn`` count is above 0 with an empty heap (1 after 100 timeouts: each
    fired deadline counts once more, and a compaction resets the count every 33), and
    ``len(timers)`` raises ``ValueError: __len__() should return >= 0``. Cause:
    ``_asyncio.py`` ``run``'s ``finally`` calls ``timers.cancel(timer)`` for an entry the
    timer thread already popped and called (``_expire``); ``Timers.cancel``
    (``_deadlines.py``) tells a withdrawn entry only by ``entry[2] is None``, which a
    popped entry never gets, and counts it. The thread lane has the same race
    (``Running.finish`` withdrawing an entry popped a moment before). Internal only for
    now: it makes later ``cancel`` calls compact the heap early.
    """
    proc = run_script(tmp_path, _ASYNC_TIMERS, timeout=40)
    assert "timed out 100" in proc.stdout, proc.stdout + proc.stderr
    assert "withdrawn 0 in heap 0" in proc.stdout, proc.stdout + proc.stderr
    assert "len 0" in proc.stdout, proc.stdout + proc.stderr
