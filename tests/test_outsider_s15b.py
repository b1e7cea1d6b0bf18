"""An outside tester's cases for round 15 (tester 15b): long life and resource growth (one
executor kept for days, or many made and dropped), as docs/guarantees.md (I3) promises.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring, runs the
user's program as a script in a fresh interpreter (``tests/scenario.py``) and fails on main
3282cb1 (Python 3.11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(60)


def _figures(stdout: str) -> dict[str, int]:
    # "name value" lines printed by a script.
    out: dict[str, int] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


_DEADLINE_THREADS = """
import gc, threading, time
import hybridexec as hx

def square(x):
    return x * x

def timer_threads():
    return sum(1 for t in threading.enumerate() if t.name.endswith("-deadlines"))

if __name__ == "__main__":
    for _ in range(3):
        ex = hx.Executor()
        assert ex.options(kind="thread", timeout=5).submit(square, 3).result() == 9
        ex.shutdown(wait=False)
    for _ in range(3):
        ex = hx.Executor()
        assert ex.options(kind="thread", timeout=5).submit(square, 3).result() == 9
        del ex  # dropped without shutdown()
    gc.collect()
    end = time.monotonic() + 3.0
    while timer_threads() and time.monotonic() < end:
        time.sleep(0.05)
    print("left", timer_threads(), flush=True)
"""


def test_thread_deadline_timer_outlives_an_executor_shut_down_without_wait(
    tmp_path: Path,
) -> None:
    """B1: an executor whose thread lane ran a task with a timeout (which starts the lane's
    ``<name>-thread-deadlines`` timer thread), then shut down with ``shutdown(wait=False)``
    or dropped without ``shutdown()``, leaves that timer thread alive for good: 3 + 3 such
    executors leave 6 threads 3 s later (300 dropped executors used for a map each left 21;
    each also keeps its lane's timer heap). ``shutdown(wait=True)`` leaves none. Expected:
    none left once the lane's threads have gone. Breaks I3 ("Nothing of ours outlives the
    executor (processes, threads, ...)") and the finalizer's promise in ``_executor.py``
    ("Dropped without shutdown(), it still lets its workers go"). Cause: ``_threads.py``
    ``ThreadLane.shutdown`` closes the timers only when no lane thread is alive at that moment
    (line 200-201) or when ``wait`` is true (line 206); with threads still alive and
    ``wait=False`` (``Router.release`` and ``_stop_lanes`` always pass it) nobody closes them
    later, and ``Timers._run`` waits on its condition for ever.
    """
    result = run_script(tmp_path, _DEADLINE_THREADS, timeout=30)
    figures = _figures(result.stdout)
    assert "left" in figures, result.stdout + result.stderr[-2000:]
    assert figures["left"] == 0, f"{figures['left']} deadline timer threads outlived 6 executors"


_DEAD_CLOSURES = """
import gc
import hybridexec as hx

MB = 2**20

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024

def make(i):
    blob = bytes([i % 256]) * (8 * MB)  # what the closure captures (a model, a table)
    def handler(x):
        return len(blob) + x
    return handler

if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        proc = ex.options(kind="process")
        assert proc.submit(abs, -1).result() == 1
        gc.collect()
        before = rss_mb()
        handlers = [make(i) for i in range(20)]
        for handler in handlers:
            assert proc.submit(handler, 1).result() == 8 * MB + 1
            assert proc.submit(handler, 2).result() == 8 * MB + 2
        del handlers, handler
        gc.collect()
        print("kept_mb", rss_mb() - before, flush=True)
"""


def test_dropped_closures_sent_to_processes_do_not_keep_their_captured_data(
    tmp_path: Path,
) -> None:
    """B2: 20 closures each capturing 8 MB of ``bytes``, each submitted twice with
    ``kind="process"``, then all dropped (no reference left anywhere in the program): about
    320 MB stay resident (the captured data and the pickles made of it), until 256 more
    callables have been pickled. With 256 closures the bound is in callables, not bytes: 20
    MB each keeps 5 GB. Expected: once the user drops a callable, what it captured is freed.
    Breaks I3 ("a finished task's callable, arguments and result are released as soon as its
    future is done"): the callable is released but the library keeps its whole contents.
    Cause: ``_fncache.py`` keeps, per ``id(fn)``, a weak reference to the callable but strong
    references to the pickle bytes and to every object the pickle was made of (``_store``,
    line 171-176); an entry whose callable died is never dropped (no weakref callback), only
    when the table reaches ``MAX_ENTRIES`` and is cleared.
    """
    result = run_script(tmp_path, _DEAD_CLOSURES, timeout=40)
    figures = _figures(result.stdout)
    assert "kept_mb" in figures, result.stdout + result.stderr[-2000:]
    assert figures["kept_mb"] < 80, f"{figures['kept_mb']} MB kept after the closures died"


_DISTINCT_FUNCTIONS = """
import gc
import hybridexec as hx

def make(i):
    # A plug-in's handler: one module per tenant, loaded on demand and dropped again.
    namespace = {"__name__": "plugins.tenant%d" % i}
    exec("def handler(x):\\n    return x + %d\\n" % i, namespace)
    return namespace["handler"]

if __name__ == "__main__":
    n = 4000
    with hx.Executor(max_processes=2) as ex:
        for i in range(n):
            handler = make(i)
            assert ex.submit(handler, 1).result() == i + 1
        del handler
        gc.collect()
        print("functions", n, flush=True)
        print("rows", len(ex.stats()["decisions"]), flush=True)
"""


def test_verdict_table_of_functions_made_on_the_fly_is_bounded(tmp_path: Path) -> None:
    """B3: a long-lived executor that runs functions of many distinct names (plug-in
    modules loaded per tenant, code generated with ``exec``), each used once and dropped,
    keeps one classifier entry per function for ever: 4000 functions give 4000 rows in
    ``ex.stats()["decisions"]``; 10,000 keep 17.8 MB (tracemalloc) and make one ``stats()``
    call take 0.8 s. Every other table of the router is bounded and starts over when full
    (``_profiles.PROFILES_MAX``, ``_decisions.REMEMBERED``, ``_fncache.MAX_ENTRIES``, the
    per-function ``VARIANTS_MAX``); the verdict table alone grows without end. Expected: a
    bound (forget functions not seen for long, or start over as the others do). Cause:
    ``_routing/_classifier.py`` ``_classify_slow`` adds ``Entry(key)`` for every new key
    (line 247) and nothing ever removes one.
    """
    result = run_script(tmp_path, _DISTINCT_FUNCTIONS, timeout=45)
    figures = _figures(result.stdout)
    assert "rows" in figures, result.stdout + result.stderr[-2000:]
    assert figures["rows"] <= 2048, f"{figures['rows']} verdict rows kept for dropped functions"


_FINISHED_TIMED_THREAD_TASKS = """
import gc
import hybridexec as hx

def square(x):
    return x * x

if __name__ == "__main__":
    with hx.Executor(max_processes=2) as ex:
        timed = ex.options(kind="thread", timeout=3600)  # a safety net, never reached
        assert timed.submit(square, 1).result() == 1
        gc.collect()
        before = len(gc.get_objects())
        for i in range(20000):
            assert timed.submit(square, i).result() == i * i
        gc.collect()
        print("objects", len(gc.get_objects()) - before, flush=True)
"""


def test_finished_thread_tasks_with_a_timeout_are_not_kept_until_their_deadline(
    tmp_path: Path,
) -> None:
    """B4: every thread task given a timeout leaves a record in the lane's deadline heap
    until its deadline passes, though the task finished long before: 20,000 quick calls with
    ``timeout=3600`` (a safety net a service sets once) keep 100,000 more objects (a heap
    entry, a ``Running`` record with its ``threading.Lock``, a ``functools.partial``: about
    600 bytes a call, 12 MB here). At the rate the lane runs them (15,000 calls/s on 2
    cores) an hour's deadline keeps tens of GB. The process lane keeps nothing (the same loop
    with ``kind="process"``: +6 objects). Expected: a finished task's deadline record goes
    with it. Breaks I3's "released as soon as its future is done" in spirit (the record, not
    the result) and the long-life promise of a bounded executor. Cause: ``_threads.py``
    ``_call`` arms ``self._timers.call_at(task.deadline, partial(on_deadline, running, ...))``
    (line 363) and ``_deadlines.Timers`` has no way to withdraw it when the call ends
    (``Running.finish`` only marks it done).
    """
    result = run_script(tmp_path, _FINISHED_TIMED_THREAD_TASKS, timeout=45)
    figures = _figures(result.stdout)
    assert "objects" in figures, result.stdout + result.stderr[-2000:]
    assert figures["objects"] < 5000, f"{figures['objects']} objects kept by 20,000 finished tasks"


_ACTORS_OF_DROPPED_EXECUTORS = """
import gc, threading, time
import hybridexec as hx

class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n

def actor_threads():
    return sum(1 for t in threading.enumerate() if t.name.startswith("hybridexec-actor-"))

if __name__ == "__main__":
    for _ in range(3):
        ex = hx.Executor(kind="thread")
        ref = ex.spawn(Counter)
        assert ref.ask(Counter.add, 1).result() == 1
        del ref, ex  # the executor and the only handle dropped: nothing can reach the actor
    gc.collect()
    end = time.monotonic() + 3.0
    while actor_threads() and time.monotonic() < end:
        time.sleep(0.05)
    print("left", actor_threads(), flush=True)
"""


def test_actors_of_a_dropped_executor_do_not_outlive_it(tmp_path: Path) -> None:
    """B5: an executor dropped without ``shutdown()`` (its workers go, ``Router.release``)
    leaves the actors it spawned running for good even when their handles are dropped too:
    3 such executors leave 3 actor threads (process actors: their processes, still alive 2 s
    later, and supervisor threads; 5 executors left 5 threads and 30 descriptors). Nothing can reach
    those actors any more; they go only at interpreter exit. Expected: an actor whose
    executor and handle are both gone stops, as ``shutdown()`` would stop it. Breaks I3
    ("Nothing of ours outlives the executor (processes, threads, ...)") and docs/actors.md
    ("Actors spawned by an executor are stopped ... by its ``shutdown()``"; a dropped executor
    stands for one shut down without wait everywhere else). Cause: the executor's finalizer
    (``_executor.py`` line 175, ``Router.release``) stops only the lanes; the actors are kept
    in ``_actors/_ref.py``'s ``_live`` set, so their cores never die with their handles.
    """
    result = run_script(tmp_path, _ACTORS_OF_DROPPED_EXECUTORS, timeout=30)
    figures = _figures(result.stdout)
    assert "left" in figures, result.stdout + result.stderr[-2000:]
    assert figures["left"] == 0, f"{figures['left']} actors outlived their dropped executors"
