"""An outside tester's cases for round 16 (tester 16b): exactly once across the process
boundary, maps, batches and groups when workers die.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring and fails on
main fc6d34f (Python 3.11). Every scenario runs as a script in a fresh interpreter and counts
the runs of each item with a marker file per item (one line appended per run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


def _last_json(stdout: str, stderr: str) -> Any:
    lines = stdout.strip().splitlines()
    assert lines, f"the scenario printed nothing: {stderr[-3000:]}"
    return json.loads(lines[-1])


_COMMON = """
import json, operator, os, signal, sys, time
import hybridexec as hx

MARKS = "marks"

def runs(i):
    path = os.path.join(MARKS, str(i))
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return len(fh.read().split())

def mark(i):
    with open(os.path.join(MARKS, str(i)), "a") as fh:
        fh.write("ran\\n")
    return runs(i)

def shown(r):
    return type(r).__name__ if isinstance(r, BaseException) else r
"""


_UNREADABLE_RECORD = (
    _COMMON
    + """
class Unreadable:
    # Pickles fine in the worker; unpickling it (in the parent) raises ZeroDivisionError.
    def __reduce__(self):
        return (operator.truediv, (1, 0))

def item(i):
    n = mark(i)
    if i == 5 and n == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the culprit: kills its worker on its first run
    if i == 2:
        return Unreadable()
    return i

if __name__ == "__main__":
    os.mkdir(MARKS)
    with hx.Executor(max_processes=1, kind="process") as ex:
        res = hx.map(item, range(10), executor=ex, chunksize=10, return_exceptions=True)
    print(json.dumps({"res": [shown(r) for r in res], "runs": [runs(i) for i in range(10)]}))
"""
)


def test_a_recorded_result_that_will_not_unpickle_reruns_finished_items(tmp_path: Path) -> None:
    """B1: in a batch of ``hx.map(..., chunksize=10)`` whose worker dies at item 5, item 2
    (whose result pickles in the worker but raises when unpickled in the parent) and items 3
    and 4 after it, which had all finished, run a second time. Expected (docs/guarantees.md,
    "A worker dies": "A batch of a map whose worker died keeps the outcomes of its items that
    had finished ... so only the culprit fails and no finished item runs again"; and
    docs/hostile-input.md: a result that fails to unpickle in the parent fails that item with
    ``SerializationError``): item 2 fails with ``SerializationError`` after one run, items 3
    and 4 keep their values, only item 5 runs twice. Actual: runs ``[1, 1, 2, 2, 2, 2, 1, ...]``.
    Cause: ``_process/_crashes.py`` ``_take_records`` unpickles each ring record in the parent
    and, on the first that raises, ``break``s ("never: the worker checked it pickles
    plainly"), dropping that record and every later one: those items are sent again.
    Pickling in the worker (``_ring.py`` ``record_outcome``) says nothing about unpickling.
    """
    result = run_script(tmp_path, _UNREADABLE_RECORD, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert got["res"][:5] == [0, 1, "SerializationError", 3, 4], got
    twice = [i for i, n in enumerate(got["runs"]) if n != 1 and i != 5]
    assert not twice, f"finished items run again after their worker died: {twice} ({got})"


_CHUNKED_TIMEOUT = (
    _COMMON
    + """
@hx.task(timeout=1.0)  # "a default for every call of this function"
def item(i):
    mark(i)
    time.sleep(0.15)  # each call takes well under its 1 s timeout
    return i

if __name__ == "__main__":
    os.mkdir(MARKS)
    with hx.Executor(max_processes=2, kind="process") as ex:
        res = []
        it = ex.map(item, range(20), chunksize=10)
        try:
            for r in it:
                res.append(r)
        except Exception as exc:
            res.append(exc)
    print(json.dumps({"res": [shown(r) for r in res], "runs": [runs(i) for i in range(20)]}))
"""
)


def test_executor_map_chunks_turn_a_per_call_timeout_into_a_per_chunk_one(tmp_path: Path) -> None:
    """B2: ``Executor.map(fn, range(20), chunksize=10)`` of a ``@hx.task(timeout=1.0)``
    function whose every call takes 0.15 s raises ``TaskTimeoutError("task exceeded its 1 s
    timeout")`` for item 0, which ended in 0.15 s; the chunk's items that had finished (0..6)
    lose their results and the rest of the chunk never runs. Expected
    (docs/timeouts-and-killing.md "Per-task timeouts": ``@hx.task(timeout=5.0)  # a default for
    every call of this function``; ``ex.options(timeout=...)`` the same): no call here exceeds
    its timeout, so ``[0, 1, ..., 19]``, as ``hx.map`` gives (its per-item timeout sends one
    item per task: "chunksize is not used"). Same with ``ex.options(timeout=1.0).map(...)``.
    Cause: ``_groups.py`` ``submitter``/``submit_chunk`` sends chunks of ``chunksize`` calls
    whatever the calls' timeout, so the lane puts one deadline on the whole chunk
    (``_mapping.py`` line 234 makes the chunks one item long for a timeout; Executor.map does
    not), and ``_supervision.py`` ``_reap`` settles the whole batch with the expiry, ignoring
    the items its ring recorded.
    """
    result = run_script(tmp_path, _CHUNKED_TIMEOUT, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert got["res"] == list(range(20)), got


_SECOND_SIGKILL_IN_A_BATCH = (
    _COMMON
    + """
def item(i):
    n = mark(i)
    if i in (13, 16) and n == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, once
    return i

if __name__ == "__main__":
    os.mkdir(MARKS)
    with hx.Executor(max_processes=2, kind="process") as ex:
        res = hx.map(item, range(40), executor=ex, chunksize=10, return_exceptions=True)
    print(json.dumps({"res": [shown(r) for r in res], "runs": [runs(i) for i in range(40)]}))
"""
)


def test_an_item_behind_the_culprit_sigkilled_on_its_only_run_is_not_retried(
    tmp_path: Path,
) -> None:
    """B3: in ``hx.map(..., chunksize=10)``, items 13 and 16 of one batch are each SIGKILLed on
    their first run (as by the OOM killer). Item 13 (the batch's culprit) runs twice and gives
    13; item 16, which never started in the batch (its worker died at 13 first), is SIGKILLed
    on its first and only run, in the split, and ends with ``WorkerCrashedError``: 1 run.
    Expected (docs/guarantees.md: "In hx.map/imap/amap, an item whose worker was killed by
    SIGKILL ... runs once more, alone ...; a second SIGKILL fails that item: it runs at most
    twice, in a batch of several too"): item 16 runs once more alone and gives 16 (2 runs), as
    item 13 does. Cause: ``_mapping.py`` lines 327-331 skip ``retry_killed`` for every item of
    a batch that the lane split ("each of its items ran once more in a task of its own
    already"), which is false for the items behind the culprit: the split run was their first.
    """
    result = run_script(tmp_path, _SECOND_SIGKILL_IN_A_BATCH, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert got["res"][13] == 13, got
    assert got["res"][16] == 16, f"item 16 was not run again after its SIGKILL: {got}"
    assert got["runs"][16] == 2, got


_CANCEL_DURING_THE_SIGKILL_RETRY = (
    _COMMON
    + """
import threading

def item(i):
    n = mark(i)
    if i == 3:
        if n == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        time.sleep(30)  # its retry, alone, takes long
    time.sleep(0.3)
    return i

if __name__ == "__main__":
    os.mkdir(MARKS)
    ex = hx.Executor(max_processes=2, kind="process")
    it = hx.imap(item, range(8), executor=ex, return_exceptions=True)
    got = []
    def consume():
        try:
            for r in it:
                got.append(r)
        except BaseException as exc:
            got.append(type(exc).__name__)
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    while runs(3) < 2:  # the retry of item 3 has started
        time.sleep(0.005)
    time.sleep(0.2)
    it.cancel()
    cancelled = time.monotonic()
    consumer.join(5.0)
    out = {"ended": not consumer.is_alive(), "after": time.monotonic() - cancelled, "got": got}
    print(json.dumps(out), flush=True)
    ex.shutdown(wait=False, cancel_futures=True)
    ex.kill_workers()
    os._exit(0)
"""
)


def test_cancelling_an_imap_during_a_sigkill_retry_waits_for_the_retry(tmp_path: Path) -> None:
    """B4: an ``hx.imap`` whose item 3 was SIGKILLed is cancelled (``it.cancel()`` from
    another thread) while item 3 runs again alone (the SIGKILL retry); that retry takes 30 s.
    The consumer does not end: it goes on waiting for the retry to run to its end (seen: the
    map ended 15 s after ``cancel()`` with a 15 s retry, having yielded 3, 4, 5, 6 after the
    cancel), and the retry is neither cancelled nor killed. Expected (``MapIterator.cancel``:
    "Cancel the work in flight from any thread; the consumer sees ``CancelledError``"; docs/
    getting-started.md: "Cancelling the map ... still end[s] it"): ``CancelledError`` at once and
    the retry's worker killed, as for every other call of the map. Cause: ``_mapping.py``
    ``resubmit`` (line 189) does not put the retry's future in ``state.waiting``, so
    ``MapState.cancel`` never cancels it, and ``_process/_oom.py`` ``retry_killed`` waits with
    a bare ``future.result()`` (not on ``state.bell``); an item whose retry never returns
    makes ``cancel()`` useless (the consumer hangs for good).
    """
    result = run_script(tmp_path, _CANCEL_DURING_THE_SIGKILL_RETRY, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert got["ended"], f"the map did not end within 5 s of cancel(): {got}"
    assert got["got"][-1] == "CancelledError", got


_SHUTDOWN_BEFORE_THE_SIGKILL_RETRY = (
    _COMMON
    + """
import threading

def item(i):
    n = mark(i)
    if i == 3 and n == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, once
    time.sleep(2.0 if i == 4 else 0.05)  # item 4 holds the retry back (it runs alone)
    return i

if __name__ == "__main__":
    os.mkdir(MARKS)
    ex = hx.Executor(max_processes=2, kind="process")
    def shut():
        while runs(3) < 1:
            time.sleep(0.002)
        time.sleep(0.3)  # item 3's worker is dead; its retry waits for item 4
        ex.shutdown(wait=False)
    threading.Thread(target=shut, daemon=True).start()
    got = []
    try:
        for r in hx.imap(item, range(8), executor=ex, return_exceptions=True):
            got.append(repr(r) if isinstance(r, BaseException) else r)
    except BaseException as exc:
        got.append("raised " + type(exc).__name__)
    ex.shutdown()
    print(json.dumps({"got": got, "runs": [runs(i) for i in range(8)]}))
"""
)


def test_an_item_killed_before_a_shutdown_reads_cannot_schedule_new_futures(
    tmp_path: Path,
) -> None:
    """B5: ``hx.imap(..., return_exceptions=True)``; item 3 is SIGKILLed once; while its retry
    waits for the other calls in flight (item 4, 2 s), another thread calls
    ``ex.shutdown(wait=False)``. Item 3, which ran (once) and whose worker was killed, gets
    ``RuntimeError('cannot schedule new futures after shutdown')`` in its place. Expected
    (docs/guarantees.md "A map under a shutdown": the calls already submitted run to the end
    and their results go to the consumer; the ``RuntimeError`` is "for the rest, never
    submitted"; I1: every task ends in "a precise exception"): item 3's own outcome, the
    ``WorkerCrashedError`` (SIGKILL) of its run (or its retry's result). Actual: an error
    that says it was never scheduled, for an item that ran. Cause: ``_mapping.py``
    ``resubmit`` (line 189) turns the refused retry into ``failed(...)`` with the shutdown's
    ``RuntimeError``, and ``_process/_oom.py`` ``retry_killed`` puts it in the item's place
    over the ``WorkerCrashedError`` it had.
    """
    result = run_script(tmp_path, _SHUTDOWN_BEFORE_THE_SIGKILL_RETRY, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert got["runs"][3] == 1, got
    assert "cannot schedule new futures" not in str(got["got"][3]), got
    assert "WorkerCrashedError" in str(got["got"][3]) or got["got"][3] == 3, got


_NO_DESCRIPTOR_TO_SPARE_IN_THE_WORKER = """
import json, os, resource
import hybridexec as hx

held = []

def hold_every_descriptor():
    # The worker's own code keeps what it opened (a cache of files, leaked sockets...):
    # here, every descriptor it may have. Its calls need none.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 8, hard))
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass

def pid_of(x):
    return os.getpid()

if __name__ == "__main__":
    with hx.Executor(max_processes=1, kind="process", initializer=hold_every_descriptor) as ex:
        first = ex.submit(pid_of, 0).result(timeout=20)
        got = hx.map(pid_of, range(40), executor=ex, chunksize=10, return_exceptions=True)
        crashes = ex.stats()["process_lane"].get("crashes")
    print(json.dumps({"first": first, "pids": sorted({repr(r) for r in got}), "crashes": crashes}))
"""


def test_a_worker_with_no_descriptor_to_spare_dies_in_the_library_at_its_first_batch(
    tmp_path: Path,
) -> None:
    """B6: a worker whose own code holds every file descriptor it may open (here its
    initializer; in real programs, files or sockets its tasks leaked) dies as soon as it is
    sent an ``hx.map`` batch: ``Process hybridexec-worker: ... OSError: [Errno 24] Too many
    open files: '.../_process/_ring.py'`` on stderr, raised by the library's own code
    (``_process/_worker.py`` ``_attached_ring``, which imports ``_ring`` and maps the ring,
    ``mmap`` duplicating its descriptor, outside any ``try``, the first time a worker runs a
    numbered batch or a group). The lane then splits the batch and runs the items one by
    one, on new workers (each dies the same way at its own first batch). Expected
    (docs/guarantees.md I6: a transient ``EMFILE`` "fails only the tasks it touched"; the
    ring is a record kept for the case the worker dies, ``_ring.py``): the calls, which need
    no descriptor, run in the worker that was sent them (one pid), with no worker crash; a
    worker that cannot map its ring runs without one. Actual: a crash per batch, and the
    calls run on other workers.
    """
    result = run_script(tmp_path, _NO_DESCRIPTOR_TO_SPARE_IN_THE_WORKER, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert "Too many open files" not in result.stderr, result.stderr[-2000:]
    assert got["pids"] == [repr(got["first"])], got


_CANCEL_WHILE_THE_CONSUMER_WAITS = (
    _COMMON
    + """
import threading

def item(i):
    with open(os.path.join(MARKS, str(i)), "a") as fh:
        fh.write("%f\\n" % time.time())
    time.sleep(0.1)
    return i

if __name__ == "__main__":
    os.mkdir(MARKS)
    ex = hx.Executor(max_processes=1, kind="process")
    ex.submit(item, 999).result(timeout=20)
    it = hx.imap(item, range(40), executor=ex, chunksize=40, return_exceptions=True)
    out = []
    def consume():
        try:
            for r in it:
                out.append(r)
        except BaseException as exc:
            out.append(type(exc).__name__)
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    while runs(5) < 1:  # the batch of 40 runs; the consumer waits for it
        time.sleep(0.005)
    it.cancel()
    cancelled = time.time()
    consumer.join(5.0)
    time.sleep(1.5)
    late = []
    for i in range(40):
        path = os.path.join(MARKS, str(i))
        if os.path.exists(path):
            with open(path) as fh:
                if float(fh.read().split()[0]) > cancelled + 0.5:
                    late.append(i)
    print(json.dumps({"ended": out[-1:], "started_after_cancel": late}), flush=True)
    ex.shutdown(wait=False, cancel_futures=True)
    ex.kill_workers()
"""
)


def test_cancelling_an_imap_leaves_the_batch_its_consumer_waits_for_running(
    tmp_path: Path,
) -> None:
    """B7: ``hx.imap(item, range(40), chunksize=40)`` (items of 0.1 s, one worker); while its
    consumer thread waits for that batch, another thread calls ``it.cancel()``. The consumer
    gets ``CancelledError`` at once, but the batch is neither cancelled nor killed: its worker
    goes on starting item after item (seen: items 13 to 34 started 0.3 to 2.5 s after the
    cancel, until the script looked). ``it.close()`` kills it. Expected
    (``MapIterator.cancel``: "Cancel the work in flight from any thread"; docs/
    timeouts-and-killing.md: cancelling a task running in a process kills its worker; a
    cancelled map runs no more of its calls): no item starts after the cancel. Cause:
    ``_mapping.py`` takes the batch out of ``in_flight`` (``popleft``) and out of
    ``state.waiting`` (``waiting.discard``, about line 321) before ``batch_outcomes`` waits for
    it; ``MapState.cancel`` cancels only the futures in ``waiting``, and the generator's
    ``finally`` only those in ``in_flight``: the batch being waited for is in neither.
    The same holds for a batch the lane is retrying item by item after a worker died.
    """
    result = run_script(tmp_path, _CANCEL_WHILE_THE_CONSUMER_WAITS, timeout=45)
    got = _last_json(result.stdout, result.stderr)
    assert got["ended"] == ["CancelledError"], got
    assert not got["started_after_cancel"], f"items started after cancel(): {got}"
