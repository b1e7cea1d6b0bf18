"""An outside tester's cases for round 17 (tester 17b): maps and iterators interrupted or
abandoned part-way (Ctrl-C, ``break``, a failing input or item, a timed-out caller), on every
lane, as docs/guarantees.md, docs/timeouts-and-killing.md, docs/getting-started.md and the
docstrings of ``hx.map``/``hx.imap``/``Executor.map`` promise.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring and fails on
main 85f80ae (Python 3.11). Every scenario runs as a script in a session of its own, killed at
the end (``tests/scenario.py``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .scenario import kill_session, run_script, start_script

pytestmark = pytest.mark.timeout(60)


def _lines(out: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


_CTRL_C_WHILE_THE_FIRST_ITEMS_ARE_READ = """
import os, signal, sys, time
import hybridexec as hx

def nap(i):
    open(f"started-{i}", "w").close()
    time.sleep(3.0)
    open(f"ended-{i}", "w").close()
    return i

def items():  # an input read slowly (a file, a socket): Ctrl-C lands while it is read
    yield 0
    yield 1
    time.sleep(0.5)  # items 0 and 1 are running in their workers by now
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    yield 2

if __name__ == "__main__":
    ex = hx.Executor(max_processes=4)
    try:
        hx.map(nap, items(), kind="process", executor=ex)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    time.sleep(3.5)  # the items would have ended by now, had they not been stopped
    started = sorted(f for f in os.listdir(".") if f.startswith("started-"))
    ended = sorted(f for f in os.listdir(".") if f.startswith("ended-"))
    print("started", started, flush=True)
    print("ended", ended, flush=True)
    ex.shutdown()
"""


def test_ctrl_c_while_a_map_reads_its_first_items_does_not_stop_them(tmp_path: Path) -> None:
    """B1: Ctrl-C (a ``KeyboardInterrupt``) that lands while ``hx.map``/``hx.imap`` reads its
    first items (the probes, sent one by one before batching starts: as many as the lane
    has workers) leaves the items already sent running in their processes: here items 0 and
    1 (3 s each) run to their end although the map was interrupted and the program goes on.
    The same interrupt a few items later kills the running ones, as documented.
    docs/timeouts-and-killing.md: "When hx.map or hx.imap stops early (... or you pressed
    Ctrl-C), the batches still in flight are cancelled: queued ones never start and running
    ones are killed." Cause (as read): ``_mapping.py`` ``_run`` reads and submits the first
    item and the probes (``submit(first)``, ``for item in itertools.islice(it, probes - 1)``,
    lines 254-257) before its ``try:``/``finally:`` (line 260) that cancels ``in_flight``; a
    ``BaseException`` of the input (``_read`` keeps only ``Exception``) skips that cleanup.
    Expected: no item ends after the interrupt (both killed).
    """
    result = run_script(tmp_path, _CTRL_C_WHILE_THE_FIRST_ITEMS_ARE_READ, timeout=40)
    out = result.stdout
    assert "interrupted" in out.splitlines(), out + result.stderr[-3000:]
    assert _lines(out, "started ") == ["['started-0', 'started-1']"], out
    assert _lines(out, "ended ") == ["[]"], out


_MAP_IN_A_THREAD_TASK_THAT_TIMES_OUT = """
import os, sys, threading, time
import hybridexec as hx

EX = None
raised = threading.Event()
START = time.monotonic()

def nap(i):
    time.sleep(12.0)
    return i

def outer():
    try:
        return hx.map(nap, range(4), kind="process", executor=EX)
    except BaseException as exc:
        print("map raised %s after %.1f s" % (type(exc).__name__, time.monotonic() - START),
              flush=True)
        raised.set()
        raise

if __name__ == "__main__":
    EX = hx.Executor(max_processes=2, max_threads=4)
    START = time.monotonic()
    fut = EX.options(kind="thread", timeout=1.0).submit(outer)
    try:
        fut.result()
    except hx.TaskTimeoutError:
        print("task timed out after %.1f s" % (time.monotonic() - START), flush=True)
    if not raised.wait(4.0):
        print("map still running 4 s after the deadline", flush=True)
    EX.kill_workers()
    os._exit(0)
"""


def test_map_in_a_thread_task_that_times_out_goes_on_until_its_items_end(
    tmp_path: Path,
) -> None:
    """B2: a thread task with a timeout (``ex.options(kind="thread", timeout=1.0)``) that runs
    ``hx.map(..., kind="process")`` fails at its deadline, but the map inside it is not
    interrupted: it waits for its running process items (12 s here) and only then sees the
    interruption; until then the items are not killed and the thread is held. The same holds
    for a plain ``fut.result()`` of a process task in the thread task (interrupted when the
    result comes, not at the deadline). docs/timeouts-and-killing.md ("Timeouts on threads"):
    "a thread blocked in a wait (a ``result()``, a ``join()``) is interrupted there", and
    "When hx.map ... stops early ..., running ones are killed". Cause (as read):
    ``_deadlines.py`` ``on_deadline`` calls ``interrupt_thread`` (``PyThreadState_SetAsyncExc``)
    for a thread in a wait, but an asynchronous exception is only raised when the thread runs
    bytecode again: a lock ``acquire`` inside ``concurrent.futures.wait``/``Condition.wait``
    does not return for it, so the wait goes on until what it waits for ends. Expected: the
    map raises within a few seconds of the deadline and kills its items.
    """
    result = run_script(tmp_path, _MAP_IN_A_THREAD_TASK_THAT_TIMES_OUT, timeout=40)
    out = result.stdout
    assert any(line.startswith("task timed out") for line in out.splitlines()), (
        out + result.stderr[-3000:]
    )
    assert "map still running 4 s after the deadline" not in out.splitlines(), out


_A_FAILED_ITEM_OF_A_CHUNK = """
import concurrent.futures, os, sys, time
import hybridexec as hx

def item(i):
    open(f"ran-{i}", "w").close()
    if i == 2:
        raise ValueError(i)
    time.sleep(0.05)
    return i

def run(label, executor):
    for name in os.listdir("."):
        if name.startswith("ran-"):
            os.unlink(name)
    with executor as ex:
        try:
            list(ex.map(item, range(10), chunksize=10))
        except ValueError:
            pass
    ran = sorted(int(name[4:]) for name in os.listdir(".") if name.startswith("ran-"))
    print(label, ran, flush=True)

if __name__ == "__main__":
    run("stdlib", concurrent.futures.ProcessPoolExecutor(2))
    run("hybridexec", hx.Executor(max_processes=2, kind="process"))
"""


def test_items_after_a_failed_item_of_a_chunk_still_run(tmp_path: Path) -> None:
    """B3: in ``Executor.map(fn, items, chunksize=10)`` (and ``hx.map``/``imap`` batches, on
    threads and in processes, ``return_exceptions`` or not) an item that raises does not stop
    its chunk: the items after it in the chunk all run (side effects included), and the
    failure is raised only once the whole chunk has run. The standard library's
    ``ProcessPoolExecutor.map`` stops the chunk at the failure (items 0-2 ran against 0-9
    here); with ``chunksize=20`` and an item raising ``KeyboardInterrupt`` the map ends 0.75 s
    later than the item, after 14 more items ran. ``hx.map``'s docstring: "Raises: the first
    failed call's exception (unless ``return_exceptions``); the rest of the work is
    cancelled"; docs/getting-started.md ("``Executor.map`` keeps the standard library's
    signature"). Cause (as read): ``_task.py`` ``run_items`` captures every item's exception
    and goes on whatever the map's ``return_exceptions``; the batch knows nothing of it.
    Expected: without ``return_exceptions`` a chunk stops at its first failed item, as the
    standard library's does.
    """
    result = run_script(tmp_path, _A_FAILED_ITEM_OF_A_CHUNK, timeout=40)
    out = result.stdout
    assert _lines(out, "stdlib ") == ["[0, 1, 2]"], out + result.stderr[-3000:]
    assert _lines(out, "hybridexec ") == ["[0, 1, 2]"], out + result.stderr[-3000:]


_EXECUTOR_MAP_UNDER_A_SHUTDOWN = """
import os, sys, threading, time
import hybridexec as hx

def nap(i):
    open(f"ran-{i}", "w").close()
    time.sleep(0.2)
    return i

if __name__ == "__main__":
    ex = hx.Executor(max_processes=2)
    delivered, end = [], []
    def consume():
        try:
            for value in ex.options(kind="process").map(nap, range(40), limit=4):
                delivered.append(value)
            end.append("end")
        except BaseException as exc:
            end.append(repr(exc))
    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(1.0)
    ex.shutdown()  # wait=True, no cancel_futures: what was submitted runs to its end
    thread.join(20)
    ran = sorted(int(name[4:]) for name in os.listdir(".") if name.startswith("ran-"))
    print("ended", end, flush=True)
    print("ran but not delivered", sorted(set(ran) - set(delivered)), flush=True)
"""


def test_executor_map_under_a_shutdown_drops_the_results_of_calls_that_ran(
    tmp_path: Path,
) -> None:
    """B4: ``ex.shutdown()`` (no ``cancel_futures``) while another thread iterates
    ``ex.map(fn, items, limit=4)`` (or ``buffersize=4``): the calls already submitted run to
    their end (the shutdown waits for them), but the map raises ``RuntimeError: cannot
    schedule new futures after shutdown`` at its next turn and their results are never
    handed out: two or three items ran and are lost (threads: four); the map's own cleanup
    also cancels the submitted calls still queued, which a plain shutdown would have run.
    ``hx.imap`` in the same place hands every result out. docs/guarantees.md ("A map under
    a shutdown"): "lets the map's calls already submitted run to the end and hands their
    results to the map's consumer; the map then raises RuntimeError ... for the rest, never
    submitted". (The standard library's 3.14 ``Executor.map(buffersize=)`` drops them too,
    which the page's "as ``Executor.map(buffersize=...)`` does" may mean; ``limit`` is
    hybridexec's own.) Cause (as read): ``_views.py`` ``_iterate`` calls ``fill()`` (a submit
    that raises after the shutdown) between taking the head's result (``_take``) and
    yielding it, and its ``finally`` cancels the rest of ``pending``. Expected: every call
    that ran is delivered before the ``RuntimeError``.
    """
    result = run_script(tmp_path, _EXECUTOR_MAP_UNDER_A_SHUTDOWN, timeout=40)
    out = result.stdout
    assert _lines(out, "ended ") != [], out + result.stderr[-3000:]
    assert _lines(out, "ran but not delivered ") == ["[]"], out + result.stderr[-3000:]


_THE_DOCS_PER_ITEM_TIMEOUT_EXAMPLE = """
import os, time
import hybridexec as hx

def nap(seconds):
    time.sleep(seconds)
    open(f"ran-{seconds}", "w").close()

if __name__ == "__main__":
    results = hx.imap(nap, [0.01, 60, 0.02], kind="process", timeout=3.0)
    assert next(results) is None
    try:
        next(results)
    except hx.TaskTimeoutError:
        results.close()  # the docs said: "the third item is cancelled"
    print("ran", sorted(name for name in os.listdir(".") if name.startswith("ran-")), flush=True)
    print("workers", hx.default_executor()._router.processes.max_processes, flush=True)
"""


def test_the_third_item_of_the_per_item_timeout_example_is_not_cancelled(tmp_path: Path) -> None:
    """B5: docs/timeouts-and-killing.md's per-item timeout example
    (``hx.imap(time.sleep, [0.01, 60, 0.01], kind="process", timeout=3.0)``, then
    ``results.close()  # the third item is cancelled`` after the second raised
    ``TaskTimeoutError``) says the third item is cancelled; it ran long before: it was sent
    with the first two (the map keeps twice the workers' number of tasks in flight) and ended
    while the second slept. ``close()`` has nothing left to cancel: the ``TaskTimeoutError``
    had already ended the map (its ``finally`` cancels what is in flight). Misleading about
    what a per-item timeout and ``close()`` stop. Expected: the example's comment matches
    what happens (the third item ran), or the third item does not run.

    Fixer 17x changed the comment, not the map (sending items ahead of the one that blocks is
    what a map is for): the page now says the third item ran beside the second with two
    workers or more, and waited in the queue and was cancelled with one; this test asserts
    that instead of the old comment's "cancelled".
    """
    result = run_script(tmp_path, _THE_DOCS_PER_ITEM_TIMEOUT_EXAMPLE, timeout=40)
    out = result.stdout
    assert _lines(out, "ran ") != [], out + result.stderr[-3000:]
    workers = int(_lines(out, "workers ")[0])
    third = ["'ran-0.02'"] if workers >= 2 else []
    assert _lines(out, "ran ") == ["[" + ", ".join(["'ran-0.01'", *third]) + "]"], out
    page = (Path(__file__).resolve().parent.parent / "docs" / "timeouts-and-killing.md").read_text()
    assert "the third item is cancelled" not in page
    assert "the third item had run already, beside the second" in page


_UNORDERED_MAP_WITH_AN_OOM_KILLED_ITEM = """
import os, signal, sys, time
import hybridexec as hx

def item(i):
    if i == 0 and not os.path.exists("killed-once"):
        open("killed-once", "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does: the map runs it again
    time.sleep(0.3)
    return i

if __name__ == "__main__":
    with hx.Executor(max_processes=2) as ex:
        try:
            got = hx.map(item, range(12), kind="process", executor=ex, ordered=False,
                         chunksize=1, return_exceptions=True)
            print("got", sorted(got), flush=True)
        except BaseException as exc:
            print("raised", repr(exc), flush=True)
"""


def test_unordered_map_with_an_item_killed_by_sigkill_ends_with_stop_iteration(
    tmp_path: Path,
) -> None:
    """B6: ``hx.map(..., ordered=False, return_exceptions=True)`` (and ``hx.imap``/``amap``
    with ``ordered=False``, automatic batches too) in which one item's worker is killed by
    ``SIGKILL`` (the OOM killer's signal; the item runs again, as documented, and succeeds)
    does not end with the 12 results: ``hx.map`` raises a bare ``StopIteration()``, ``imap``
    ``RuntimeError('generator raised StopIteration')``; the results not yet handed out are
    lost and the work in flight is cancelled. The same map with ``ordered=True`` returns all
    12. docs/guarantees.md: "In hx.map/imap/amap, an item whose worker was killed by SIGKILL
    ... runs once more, alone" (the map goes on), and ``return_exceptions`` keeps every
    other result. Cause (as read): ``_mapping.py`` ``resubmit`` adds the retry's future to
    ``state.waiting`` and nothing ever discards it (``_process/_oom.py`` ``retry_killed``
    does not); the unordered loop then waits on ``{*waiting, state.bell}`` with
    ``FIRST_COMPLETED`` (line 320), returns at once with that finished retry future, and
    ``next(b for b in in_flight if b.future in done)`` (line 324) finds no batch of it:
    ``StopIteration`` inside the generator (PEP 479), which ``MapIterator.collect`` turns back
    into a bare ``StopIteration``. Expected: ``got [0, 1, ..., 11]``.
    """
    result = run_script(tmp_path, _UNORDERED_MAP_WITH_AN_OOM_KILLED_ITEM, timeout=40)
    out = result.stdout
    assert _lines(out, "got ") == [str(list(range(12)))], out + result.stderr[-3000:]


_CTRL_C_IN_THE_LOOP_OF_A_DEFAULT_EXECUTOR_IMAP = """
import os, signal, threading, time
import hybridexec as hx

def nap(i):
    time.sleep(0.1 if i == 0 else 30.0)
    return i

def main():
    results = hx.imap(nap, range(20), kind="process")  # the default executor
    for value in results:
        print("first result", value, flush=True)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        time.sleep(30)  # the loop's own work: Ctrl-C lands here, the map has calls running

if __name__ == "__main__":
    main()
"""


def test_ctrl_c_in_the_loop_of_an_imap_on_the_default_executor_waits_for_its_calls(
    tmp_path: Path,
) -> None:
    """B7: a script whose ``for value in hx.imap(fn, items, kind="process")`` loop (the
    default executor, in a function) is stopped by Ctrl-C in the loop's body, with calls of
    the map still running (30 s each here), does not exit: the interpreter's exit waits for
    those calls to end (10 s for 10 s calls, for ever for a call that never ends), then exits
    130. The same with ``hx.submit``/``default_executor().submit`` of process work and
    Ctrl-C. With an executor of the user's own the same script exits at once (1.7 s in all).
    docs/timeouts-and-killing.md: "If it ends the program, nothing is waited for at exit: the
    workers still running a call are killed, and the exit status is 130"; docs/guarantees.md
    I5 ("interpreter exit takes at most the running work plus 1 s; ... Ctrl-C exits with
    status 130", ``test_ctrl_c_does_not_wait_for_running_process_work`` covers only an own
    executor). Cause (as read): the iterator stays alive in the traceback's frame, so the map
    does not cancel its work; ``_default.py`` (the default executor's exit hook, line 71)
    calls ``join_at_exit(EXIT_BOUND, threads=not interrupted())``, and ``_router.py``
    ``join_at_exit`` (line 214) runs ``self.processes.shutdown(wait=True)`` whatever the
    interruption: its comment assumes the workers got the SIGINT "as the terminal's group",
    but they live in process groups of their own and ignore SIGINT. Expected: exit within a
    few seconds of the Ctrl-C, status 130.
    """
    proc = start_script(tmp_path, _CTRL_C_IN_THE_LOOP_OF_A_DEFAULT_EXECUTOR_IMAP)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("first result"), first
        try:
            status: int | None = proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            status = None
        assert status is not None, "still exiting 7.5 s after Ctrl-C: it waits for the calls"
        assert status in (130, -2), status
    finally:
        kill_session(proc)
        proc.communicate()
