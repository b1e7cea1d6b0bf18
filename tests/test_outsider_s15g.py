"""An outside tester's cases for round 15 (tester 15g): this round's scheduling changes seen
from a user's side (third wave): callback order and shutdown from callbacks with
``cancel_futures=True``.

Each test names the defect of the tester's report (G1, G2, ...) in its docstring and fails on
main 02125d9 (Python 3.11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


_CALLBACK_ORDER = """
import threading, time
import hybridexec as hx

def main():
    order = []
    gate = threading.Event()
    with hx.Executor(max_processes=1) as ex:
        v = ex.options(kind="process")
        f1 = v.submit(abs, -1)
        f1.add_done_callback(lambda f: gate.wait(1.0))  # the callback thread is busy a while
        f2 = v.submit(abs, -2)
        f2.add_done_callback(lambda f: order.append("first"))
        while not f2.done():
            time.sleep(0.001)
        f2.add_done_callback(lambda f: order.append("second"))
        gate.set()
        deadline = time.monotonic() + 5
        while len(order) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    print("order", order, flush=True)

if __name__ == "__main__":
    main()
"""


def test_a_futures_callbacks_run_in_the_order_added(tmp_path: Path) -> None:
    """G1: a process future's done-callbacks are expected to run in the order they were added
    (the standard library's rule; docs/guarantees.md: "Callbacks run in the order their
    futures ended, one at a time"). Actual: a callback added once the future is ``done()``
    but while its earlier callbacks still wait in the callback queue (the callback thread is
    busy with another future's callback) runs at once, in the adding thread, *before* the
    callbacks added earlier: the order is ``['second', 'first']``. Cause (as read):
    ``_futures.py:300-315`` (``add_done_callback``) runs ``fn`` at once when the state is done,
    without looking whether ``_hx_callbacks`` were handed over (``_invoke_callbacks``,
    ``_hand_over``) and have not run yet; it should append to that list while they are
    pending.
    """
    proc = run_script(tmp_path, _CALLBACK_ORDER, timeout=40)
    assert "order ['first', 'second']" in proc.stdout, (proc.stdout, proc.stderr[-3000:])


_SHUTDOWN_FROM_CALLBACKS = """
import os, sys, threading, time
import hybridexec as hx

def main():
    ex = hx.Executor(max_threads=1)
    v = ex.options(kind="thread")
    log = []

    def cb(f):
        log.append("cancelled" if f.cancelled() else "ran")
        ex.shutdown(wait=True, cancel_futures=True)
        log.append("returned")

    f0 = v.submit(time.sleep, 0.2)
    f1 = v.submit(abs, -1)  # queued behind f0: cancelled by f0's callback
    f0.add_done_callback(cb)
    f1.add_done_callback(cb)
    done = threading.Event()
    threading.Thread(target=lambda: (ex.shutdown(wait=True), done.set()), daemon=True).start()
    print("main shutdown returned", done.wait(8), flush=True)
    print("log", sorted(log), flush=True)
    os._exit(0)  # do not wait for the stuck threads at exit

if __name__ == "__main__":
    main()
"""


def test_callbacks_that_shut_down_with_cancel_futures_do_not_deadlock(tmp_path: Path) -> None:
    """G2: a thread task's done-callback (run on its worker thread) calls
    ``ex.shutdown(wait=True, cancel_futures=True)``; the queued future it cancels has the same
    callback. Expected: both callbacks return and so does the main thread's ``shutdown()``
    (docs/guarantees.md: "a callback may submit work and wait for it", two callbacks that shut
    down "no longer wait for each other"; with ``ThreadPoolExecutor`` nothing hangs). Actual:
    all three wait for good (8 s here): the worker thread's callback waits in
    ``_callbacks.drain`` (``_executor.py:265``) for the cancelled future's callback, which
    now runs on a callback thread (``_threads.py:200``, ``serving``) and, in its own
    ``shutdown(wait=True)``, joins the lane's thread (``_threads.py:203``): the worker thread
    that waits for it. Cause: moving the cancelled futures' callbacks off the caller (15c's C1)
    made a lane thread's drain wait for a callback thread that joins that lane thread;
    ``drain`` skips only runners that are themselves draining, not ones joining the drainer.
    """
    proc = run_script(tmp_path, _SHUTDOWN_FROM_CALLBACKS, timeout=40)
    assert "main shutdown returned True" in proc.stdout, (proc.stdout, proc.stderr[-3000:])
    assert "log ['cancelled', 'ran', 'returned', 'returned']" in proc.stdout, proc.stdout
