"""An outside tester's cases for round 15 (tester 15c): many callers at once, and re-entrancy
(one executor used from many threads, from its own tasks and from its futures' callbacks).

Each test names the defect of the tester's report (C1, C2, ...) in its docstring and fails on
main 3282cb1 (Python 3.11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


_SLOW_CALLBACKS_OF_CANCELLED_WORK = """
import sys, threading, time
import hybridexec as hx

def nap(x):
    time.sleep(1.5)
    return x

def slow_callback(fut):
    time.sleep(0.5)  # a callback that logs to a slow sink, say

if __name__ == "__main__":
    kind = sys.argv[1]
    ex = hx.Executor(max_processes=1, max_threads=1)
    futures = [ex.options(kind=kind).submit(nap, i) for i in range(9)]
    for fut in futures:
        fut.add_done_callback(slow_callback)
    time.sleep(0.5)  # the first runs, eight wait in the queue
    start = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    print("took %.2f" % (time.monotonic() - start), flush=True)
    print("cancelled", sum(f.cancelled() for f in futures), flush=True)
    ex.shutdown(wait=True)
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_shutdown_without_wait_does_not_run_the_cancelled_futures_callbacks(
    tmp_path: Path, kind: str
) -> None:
    """C1: ``ex.shutdown(wait=False, cancel_futures=True)`` runs the done-callbacks of every
    future it cancels in the calling thread, one after another, before it returns: eight
    queued futures with a 0.5 s callback each make it take 4 s (50 such callbacks of 1 s:
    50 s; 20 of 1 s measured 19 s), on both lanes. ``kill_workers()`` and
    ``terminate_workers()`` go the same way. Breaks I5 of docs/guarantees.md
    ("``shutdown(wait=False)`` returns in under 50 ms") and the callback paragraph there
    ("a slow or blocked callback never delays a result, a timeout or crash handling").
    Expected: it returns at once; the callbacks run on the callback threads. Cause (as read):
    the cancel loops call ``Future.cancel()`` in the caller, which runs the callbacks inline:
    ``_threads.py`` ``shutdown`` (lines 195-198, under the lane's lock, see C2) and
    ``_process/_lane.py`` ``shutdown`` (line 315); ``_router.py`` ``shutdown`` puts
    ``_stop_lanes`` in the background only when the router has deferrals (line 193).
    """
    result = run_script(tmp_path, _SLOW_CALLBACKS_OF_CANCELLED_WORK, kind, timeout=40)
    lines = result.stdout.splitlines()
    took = [float(line.split()[1]) for line in lines if line.startswith("took ")]
    assert took, result.stdout + result.stderr[-3000:]
    assert "cancelled 8" in lines, result.stdout + result.stderr[-3000:]
    assert took[0] < 1.0, f"shutdown(wait=False, cancel_futures=True) took {took[0]:.2f} s"


_CALLBACK_THAT_SHUTS_DOWN = """
import faulthandler, os, threading, time
import hybridexec as hx

def nap(x):
    time.sleep(1)
    return x

if __name__ == "__main__":
    ex = hx.Executor(max_threads=1)

    def stop_all(fut):  # "on the first failure or cancel, stop the executor"
        if fut.cancelled() or fut.exception() is not None:
            ex.shutdown(wait=False)

    futures = [ex.options(kind="thread").submit(nap, i) for i in range(4)]
    for fut in futures:
        fut.add_done_callback(stop_all)
    time.sleep(0.3)
    returned = threading.Event()

    def stop():
        ex.shutdown(wait=False, cancel_futures=True)
        returned.set()

    threading.Thread(target=stop, daemon=True).start()
    print("shutdown returned", returned.wait(3), flush=True)
    print("first", futures[0].result(timeout=5), flush=True)
    if not returned.is_set():
        faulthandler.dump_traceback()
        os._exit(3)
    ex.shutdown()
"""


def test_a_callback_of_a_cancelled_thread_task_may_shut_the_executor_down(
    tmp_path: Path,
) -> None:
    """C2: a done-callback that calls ``ex.shutdown(wait=False)`` deadlocks when the future
    is one that ``ex.shutdown(wait=False, cancel_futures=True)`` cancels on the thread lane:
    the thread lane cancels its queued tasks (running their callbacks) while it holds its
    own non-reentrant ``self._lock`` (``_threads.py`` lines 193-198), and the callback's
    ``shutdown`` takes that lock again (``_threads.py`` line 193). The caller of the first
    ``shutdown(wait=False)`` never returns, and the lane's worker thread, whose running
    task's callback also calls ``shutdown``, blocks on the same lock for good, so the
    running task's future is done but the lane is wedged. The same callback on the process
    lane works. Breaks I5 ("``shutdown(wait=False)`` returns in under 50 ms"), I1 (no hang),
    and docs/guarantees.md's promise that callbacks may shut an executor down
    (``_callbacks.drain``: "a callback that shuts an executor down"). Expected: both
    ``shutdown`` calls return; the callbacks run outside the lane's lock.
    """
    result = run_script(tmp_path, _CALLBACK_THAT_SHUTS_DOWN, timeout=30)
    lines = result.stdout.splitlines()
    assert "first 0" in lines, result.stdout + result.stderr[-3000:]
    assert "shutdown returned True" in lines, result.stdout + result.stderr[-3000:]


_MAP_CALL_WAITS_FOR_THE_NEXT = """
import concurrent.futures, threading, time
import hybridexec as hx

N = 64
PARTNERS = [threading.Event() for _ in range(N // 2)]
PAIRED = [False]

def work(i):
    s = 0
    for k in range(3000):  # a little Python work: a tiny call, kept on threads
        s += k
    if PAIRED[0]:
        if i % 2 == 0:
            return PARTNERS[i // 2].wait(timeout=1.0)  # waits for the next call of the map
        PARTNERS[i // 2].set()
    return True

if __name__ == "__main__":
    with hx.Executor() as ex:
        for _ in range(5):  # the executor learns the function (a tiny computing call)
            list(ex.map(work, range(N)))
        PAIRED[0] = True
        print("hybridexec", sum(ex.map(work, range(N))), flush=True)
    for event in PARTNERS:
        event.clear()
    with concurrent.futures.ThreadPoolExecutor() as std:
        print("stdlib", sum(std.map(work, range(N))), flush=True)
"""


def test_executor_map_call_may_wait_for_a_later_call(tmp_path: Path) -> None:
    """C3: ``Executor.map`` runs consecutive calls of a function it learned as a tiny
    computing call in one lane task (a ``Group``, ``_groups.py``, up to 32 calls run one after
    another on one thread). A call that waits for a later call of the same map (call 2k waits
    for an event that call 2k+1 sets) then waits for a call queued behind it in its own group:
    with a 1 s wait, 32 of the 64 calls see their partner (every pair inside a group misses);
    with no timeout the map hangs for ever. ``ThreadPoolExecutor.map`` gives 64 of 64 (each
    call is a task of its own, so the partner runs on another thread). Breaks the Executor
    docstring ("``submit``, ``map``, ``shutdown`` ... behave as in the standard library"), I1
    (no hang), and docs/routing.md's own reason not to batch ``submit`` ("batching ... would
    also let one call that waits on a later one deadlock its batch"); ``_groups.py`` groups
    only "where nothing observable changes". Expected: as the standard library, every call
    meets its partner (or grouping only where no call can block on another).
    """
    result = run_script(tmp_path, _MAP_CALL_WAITS_FOR_THE_NEXT, timeout=50)
    lines = result.stdout.splitlines()
    assert "stdlib 64" in lines, result.stdout + result.stderr[-3000:]
    assert "hybridexec 64" in lines, result.stdout + result.stderr[-3000:]


_IMAP_CANCEL_FROM_ANOTHER_THREAD = """
import threading, time
import hybridexec as hx

RELEASE = threading.Event()

def blocked(x):
    RELEASE.wait(20)  # a call stuck in I/O (a server that does not answer)
    return x

if __name__ == "__main__":
    ex = hx.Executor()
    results = hx.imap(blocked, range(10), executor=ex, kind="thread")
    seen = []

    def consume():
        try:
            for value in results:
                seen.append(value)
            seen.append("end")
        except BaseException as exc:
            seen.append(type(exc).__name__)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(1.0)  # the calls run, the consumer waits for the first
    results.cancel()  # "from any thread; the consumer sees CancelledError"
    consumer.join(3)
    print("consumer ended", not consumer.is_alive(), seen, flush=True)
    RELEASE.set()
    consumer.join(10)
    ex.shutdown(wait=False, cancel_futures=True)
"""


def test_imap_cancel_from_another_thread_ends_the_consumer(tmp_path: Path) -> None:
    """C4: ``MapIterator.cancel()`` called from another thread while the consumer waits for a
    call running on a thread does not end the consumer: it stays blocked until that call
    returns (for good if it never does), and then even receives the call's result before
    ``CancelledError``. ``_views.py`` ``MapIterator.cancel`` says "Cancel the work in flight
    from any thread; the consumer sees ``CancelledError``", and docs/guarantees.md (Limits)
    "calls that never return hold their slots for good; cancelling the map still ends it"
    (true with ``timeout=``/``limit=``, not here). ``hx.amap`` returns at once in the same
    situation. Cause (as read): ``cancel()`` only calls ``future.cancel()`` on the futures in
    flight, which does nothing to a running thread task, and the consumer sits in
    ``_mapping.py`` ``_outcomes`` (line 373, ``batch.future.result()``) with nothing to wake it.
    Expected: the consumer sees ``CancelledError`` at once; the thread calls end on their own.
    """
    result = run_script(tmp_path, _IMAP_CANCEL_FROM_ANOTHER_THREAD, timeout=40)
    lines = result.stdout.splitlines()
    assert lines, result.stdout + result.stderr[-3000:]
    assert lines[0] == "consumer ended True ['CancelledError']", result.stdout


_MAP_WHILE_THE_WITH_BLOCK_ENDS = """
import os, threading, time
import hybridexec as hx

def work(x):
    with open("log", "a") as fh:
        fh.write("start %d\\n" % x)
    time.sleep(0.6)
    with open("log", "a") as fh:
        fh.write("end %d\\n" % x)
    return x

if __name__ == "__main__":
    outcome = []

    def mapper(ex):
        try:
            outcome.append(len(hx.map(work, range(12), executor=ex, kind="process", chunksize=1)))
        except BaseException as exc:
            outcome.append(type(exc).__name__)

    try:
        with hx.Executor(max_processes=2) as ex:
            thread = threading.Thread(target=mapper, args=(ex,))
            thread.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # until items 2 and 3 run
                text = open("log").read() if os.path.exists("log") else ""
                if "start 2" in text and "start 3" in text:
                    break
                time.sleep(0.01)
            raise ValueError("the block is left by an exception")
    except ValueError:
        pass  # __exit__ ran shutdown(wait=True): running tasks run to the end
    thread.join(10)
    log = open("log").read().split("\\n")
    started = sorted(int(line.split()[1]) for line in log if line.startswith("start"))
    ended = sorted(int(line.split()[1]) for line in log if line.startswith("end"))
    print("map", outcome, flush=True)
    print("started but never ended", sorted(set(started) - set(ended)), flush=True)
"""


def test_graceful_shutdown_does_not_kill_the_running_work_of_a_map(tmp_path: Path) -> None:
    """C5: a ``with hx.Executor() as ex:`` block left by an exception (or any plain
    ``ex.shutdown()``, ``wait=True`` and no ``cancel_futures``) while another thread runs
    ``hx.map(..., executor=ex, kind="process")`` kills the map's calls that are running in
    processes: they started and never end (one or two items here), and the map raises
    ``CancelledError`` though nobody cancelled anything, losing the results it had. The
    thread lane's running calls do end. docs/timeouts-and-killing.md ("Stopping
    everything": ``ex.shutdown()``: pending tasks run, running tasks "run to the end") and
    the ``Executor.shutdown`` docstring ("Wait for running ... tasks to finish") break; an
    ``Executor.map`` in the same place runs every call. Cause (as read): the map's next
    ``submit`` sees ``router.closed`` and raises ``CancelledError`` (``_mapping.py`` line
    216-219, "as shutdown(cancel_futures=True) says", which was not asked), and the map's
    ``finally`` cancels its batches in flight (line 365), which kills running process work.
    Expected: the calls already running end and deliver; the map then fails with the precise
    error for the calls it could not submit (``RuntimeError: cannot schedule new futures after
    shutdown``, as ``Executor.map(buffersize=)`` raises).
    """
    result = run_script(tmp_path, _MAP_WHILE_THE_WITH_BLOCK_ENDS, timeout=40)
    lines = result.stdout.splitlines()
    assert any(line.startswith("map ") for line in lines), result.stdout + result.stderr[-3000:]
    assert "started but never ended []" in lines, result.stdout + result.stderr[-3000:]


_THREAD_TASK_FANS_OUT_A_NEW_FUNCTION = """
import time
import hybridexec as hx

EX = None

def heavy(n):  # Python that holds the GIL: routed to processes once measured
    s = 0
    for i in range(n):
        s += i * i
    return s

def parent(n):
    try:
        return EX.submit(heavy, n).result(timeout=3)
    except TimeoutError:
        return "waited 3 s"

if __name__ == "__main__":
    EX = hx.Executor(max_threads=1, max_processes=2)
    print("new function", EX.options(kind="thread").submit(parent, 300000).result(timeout=20),
          flush=True)
    print("known function", EX.options(kind="thread").submit(parent, 300000).result(timeout=20),
          flush=True)
    EX.shutdown(wait=False, cancel_futures=True)
"""


def test_thread_task_may_wait_for_a_new_function_it_submits(tmp_path: Path) -> None:
    """C6: with ``max_threads=1``, a thread task that submits a new CPU-bound Python function
    (``kind="auto"``: nothing asks for a thread) and waits for it deadlocks: the function's
    first call is measured on the thread lane (docs/routing.md: "The first call of a new
    function runs on a thread while it is measured"), whose only thread is the waiting
    parent. The same submit of a function already learned goes to a process and returns at
    once, so whether the program hangs depends on what the executor saw before; ``hx.map`` in
    the same place does not hang. Breaks I1 ("Every submitted task ends exactly once ...
    within a bound") and docs/routing.md's "Two ways out of a deadlock" (a task a slot
    holder submits runs at once): the measured call waits for a thread that the lane's cap
    never gives it. Expected: the measured first call does not wait behind its own submitter
    (measured on a spare thread, inline, or in a process), as ``hx.map`` manages.
    """
    result = run_script(tmp_path, _THREAD_TASK_FANS_OUT_A_NEW_FUNCTION, timeout=40)
    lines = result.stdout.splitlines()
    assert any(line.startswith("known function ") for line in lines), (
        result.stdout + result.stderr[-3000:]
    )
    assert "new function waited 3 s" not in lines, result.stdout


_SHUTDOWN_BEHIND_ANOTHER_EXECUTORS_CALLBACKS = """
import concurrent.futures, threading, time
import hybridexec as hx

def nap(x):
    time.sleep(x)
    return x

if __name__ == "__main__":
    other = hx.Executor(max_processes=2)
    mine = hx.Executor(max_processes=1)
    gate = threading.Event()
    theirs = [other.options(kind="process").submit(nap, 0.3) for _ in range(10)]
    for fut in theirs:
        fut.add_done_callback(lambda fut: gate.wait(10))  # another library's stuck callback
    concurrent.futures.wait(theirs)
    time.sleep(3.0)  # every callback thread now runs one of them
    fut = mine.options(kind="process").submit(nap, 0.2)
    fut.add_done_callback(lambda fut: None)
    print("result", fut.result(timeout=10), flush=True)
    start = time.monotonic()
    mine.shutdown(wait=True)
    print("shutdown took %.1f" % (time.monotonic() - start), flush=True)
    gate.set()
    other.shutdown()
"""


def test_shutdown_does_not_wait_behind_another_executors_callbacks(tmp_path: Path) -> None:
    """C7: ``shutdown(wait=True)`` of one executor waits for another executor's blocked
    done-callbacks: with eight callbacks of executor A blocked (the callback threads' cap,
    ``_callbacks.py`` ``MAX_RUNNERS``), executor B's ``shutdown(wait=True)`` waits for B's own
    queued callback, which no callback thread is free to run, so it returns only when A's
    callbacks do (6-16 s here; never, if they never return). docs/guarantees.md: "shutdown
    (wait=True) returns once the callbacks of that executor's futures queued before it ran,
    never waiting on another executor's", and ``_callbacks.drain``: "a callback of another
    executor that never returns must not hold up this one's shutdown". Cause (as read):
    ``drain(owners=...)`` filters which callbacks it waits for, but the runners are shared by
    every executor and capped at 8 (``_callbacks.hand_over`` starts no runner past
    ``MAX_RUNNERS``), so B's callback waits in the queue behind A's. Expected: B's shutdown
    returns within about a second (a runner for B's callbacks, or the drain running them).
    """
    result = run_script(tmp_path, _SHUTDOWN_BEHIND_ANOTHER_EXECUTORS_CALLBACKS, timeout=50)
    lines = result.stdout.splitlines()
    took = [float(line.split()[2]) for line in lines if line.startswith("shutdown took ")]
    assert "result 0.2" in lines, result.stdout + result.stderr[-3000:]
    assert took, result.stdout + result.stderr[-3000:]
    assert took[0] < 3.0, f"shutdown(wait=True) waited {took[0]:.1f} s for another's callbacks"
