"""An outside tester's cases for round 12 (tester 12e): the process lane in a hostile
environment (descriptor and process limits, kills, forks, signals).

Each test names the defect of the tester's report (E1, E2, ...) in its docstring and fails on
main cc840b1 (Python 3.11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(30)


_DESCRIPTOR_SWEEP = """
import os, resource, time
import hybridexec as hx

def fds():
    return set(os.listdir("/proc/self/fd"))

if __name__ == "__main__":
    with hx.Executor(kind="process", max_processes=1) as ex:  # fork server and guardian made
        assert ex.submit(abs, -1).result(timeout=20) == 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    leaks = {}
    for spare in range(16):
        before = fds()
        ex = hx.Executor(kind="process", max_processes=1)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + spare, hard))
        try:
            future = ex.submit(abs, -spare)
            time.sleep(0.3)  # its worker's starts fail with EMFILE meanwhile
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert future.result(timeout=20) == spare
        ex.shutdown()
        left = sorted(fds() - before)
        if left:
            leaks[spare] = [os.readlink(f"/proc/self/fd/{fd}") for fd in left]
    print("LEAKS", leaks)
"""


def test_worker_starts_failing_on_emfile_leak_no_descriptor(tmp_path: Path) -> None:
    """E1: a worker start that fails because the process is short of descriptors (a lowered
    ``RLIMIT_NOFILE``, 6 to 8 descriptors to spare) leaves both ends of a pipe open in the
    parent for good, one pipe per such failed start (seen in a storm of tiny calls whose
    workers are being killed while the limit is low: ``/proc/self/fd`` holds the pipe after
    ``shutdown()``). ``_process/_supervision.py`` ``_descriptors_to_spare``: ``first, second
    = os.pipe(), os.pipe()`` sits before its ``try``: when the second ``os.pipe()`` raises
    EMFILE, the first pipe is never closed. Guarantees I3 ("nothing of ours outlives the
    executor ... file descriptors") and I6 (a transient ``EMFILE`` "fails only the tasks it
    touched, and the lane recovers by itself").
    """
    result = run_script(tmp_path, _DESCRIPTOR_SWEEP, timeout=25)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LEAKS {}" in result.stdout, result.stdout


_FORKED_CHILD = """
import os
import hybridexec as hx

def ours():
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "hybridexec-ring" in target or "pidfd" in target:
            found.append(target)
    return sorted(found)

if __name__ == "__main__":
    ex = hx.Executor(kind="process", max_processes=2)
    futures = [ex.submit(abs, -i) for i in range(200)]
    assert [f.result(timeout=20) for f in futures] == list(range(200))
    print("PARENT", ours(), flush=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        ex.shutdown()  # the inherited executor (its lane is the parent's, foreign here)
        with hx.Executor(kind="process", max_processes=1) as own:
            assert own.submit(abs, -3).result(timeout=20) == 3
        os.write(w, repr(ours()).encode())
        os._exit(0)
    os.close(w)
    seen = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    assert ex.submit(abs, -4).result(timeout=20) == 4
    ex.shutdown()
    print("CHILD", seen)
"""


def test_forked_child_does_not_keep_the_parents_worker_descriptors(tmp_path: Path) -> None:
    """E2: a child made by ``os.fork()`` of a program whose process lane has workers keeps
    its copies of each parent worker's ring (``memfd:hybridexec-ring``, 64 KiB of memory
    each, new this round) and pidfd open for its whole life, even after it shut down the
    inherited executor and its own: its ``/proc/self/fd`` lists
    ``['/memfd:hybridexec-ring (deleted)' x2, 'anon_inode:[pidfd]' x2]`` at the end.
    ``_process/_manager.py`` ``forget_after_fork`` closes only ``w.conns`` (and the pipes of
    a start under way), not ``w.ring`` nor ``w.child``'s pidfd (the poller is closed first
    there, so closing them is safe). docs/architecture.md: in the child the parent's lanes
    are "marked foreign and the parent's pipe ends closed"; I3: nothing of ours outlives
    the executor (file descriptors).
    """
    result = run_script(tmp_path, _FORKED_CHILD, timeout=25)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PARENT ['/memfd" in result.stdout, result.stdout  # the parent had them
    assert "CHILD []" in result.stdout, result.stdout


_INTERRUPTED_STORM = """
import concurrent.futures as cf
import os, signal, threading, time
import hybridexec as hx

def double(i):
    return i * 2

if __name__ == "__main__":
    ex = hx.Executor(kind="process", max_processes=2)
    assert ex.submit(double, 1).result(timeout=20) == 2
    stop = threading.Event()
    main = threading.main_thread().ident

    def interrupt():  # Ctrl-C, every 13 ms
        while not stop.wait(0.013):
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    futures, lost, start, i = [], False, time.monotonic(), 0
    while time.monotonic() - start < 8 and not lost:
        batch = []
        try:
            for j in range(i, i + 300):
                batch.append((j, ex.submit(double, j)))
            for j, f in batch:
                give_up = time.monotonic() + 3
                while True:  # the user presses Ctrl-C, and waits again
                    try:
                        f.result(timeout=max(0.0, give_up - time.monotonic()))
                        break
                    except KeyboardInterrupt:
                        pass
                    except cf.TimeoutError:
                        lost = True
                        break
                    except Exception:
                        break
                if lost:
                    break
        except KeyboardInterrupt:
            pass
        futures.extend(batch)
        i += 300
    stop.set()
    time.sleep(0.1)
    cf.wait([f for _, f in futures], timeout=5)
    wrong = [(j, f.result()) for j, f in futures if f.done() and not f.cancelled()
             and f.exception() is None and f.result() != 2 * j]
    hung = [j for j, f in futures if not f.done()]
    print("CALLS", len(futures), "WRONG", len(wrong), wrong[:3], "HUNG", len(hung), hung[:3],
          flush=True)
    ex.kill_workers()
    os._exit(0)
"""


def test_ctrl_c_while_waiting_for_a_result_neither_mixes_up_results_nor_loses_calls(
    tmp_path: Path,
) -> None:
    """E3: Ctrl-C (SIGINT, a ``KeyboardInterrupt`` in the main thread) while ``result()``
    waits for a tiny process call, caught and followed by another wait (a REPL or notebook
    user who interrupts a cell and goes on), breaks the process lane: either about 148 later
    calls get ANOTHER call's result (``double(1201)`` returns 2704, ``double(j)`` returns
    the value of ``double(j + 151)``; silent wrong results from then on), or about 148 calls
    never end. 4 of 4 runs here, within a few seconds. The interrupt lands in the caller's own
    read of the reply (the direct path, ``_process/_direct.py`` ``_read_own``): seen at
    ``_frames.py`` ``fill``, ``chunk = os.read(...)`` (a chunk read, then dropped: a whole
    reply frame is lost and the next replies are matched to the wrong calls), and in
    ``_give_back`` at ``self.epoll.modify`` (the worker's read token never comes back).
    ``_repair`` covers only ``handle_served``. Guarantees I1 (every task ends exactly once,
    within a bound) and I2 (a result equals what the call returns), and the module's own
    claim that an interrupted caller leaves the reply to the manager.
    """
    result = run_script(tmp_path, _INTERRUPTED_STORM, timeout=28)
    assert "CALLS" in result.stdout, result.stderr[-3000:]
    assert "WRONG 0 [] HUNG 0 []" in result.stdout, result.stdout
