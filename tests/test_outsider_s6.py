"""An outside tester's cases for round 6: exit, joblib timeouts, callbacks, map retries.

Each test names the defect number of the tester's report in a comment; each failed on a642516.
They use the public API only and run user code as a user would (scripts in a fresh interpreter
where the behaviour is about interpreter exit or what reaches stderr).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def run_script(path: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``python path args`` in its directory with this checkout's sources first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, path.name, *args],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---- defect 1: the default executor runs calls waiting for a verdict at exit -----------------

DEFAULT_EXIT = """
import os, sys, time
import hybridexec as hx

D = os.path.dirname(os.path.abspath(__file__))


def crunch(i):
    x = 0
    for k in range(3_000_000):
        x += k
    with open(os.path.join(D, f"done{i}"), "w") as fh:
        fh.write(f"{os.getpid()}\\n")
    return x


if __name__ == "__main__":
    futures = [hx.submit(crunch, i) for i in range(20)]
    print(os.getpid(), time.monotonic(), flush=True)
"""


def test_default_executor_exit_cancels_calls_waiting_for_a_verdict(tmp_path: Path) -> None:
    # Defect 1. docs/getting-started.md: "The default executor behind hx.map and hx.submit is
    # shut down at exit with cancel_futures=True: pending work is cancelled, running work is
    # waited for." Only the first call runs (measured on a thread); the 19 calls waiting for its
    # verdict are pending. Seen: 2 to 20 of them started on threads of the exiting program
    # (GIL-bound, one after another), and exit took up to 6.9 s after main ended (I5: the
    # running work plus 1 s).
    script = tmp_path / "default_exit.py"
    script.write_text(textwrap.dedent(DEFAULT_EXIT), encoding="utf-8")
    result = run_script(script)
    assert result.returncode == 0, result.stderr
    main_pid = int(result.stdout.split()[0])
    pids = [int((tmp_path / name).read_text()) for name in os.listdir(tmp_path) if "done" in name]
    in_main = sum(pid == main_pid for pid in pids)
    # Allowed: the measured call, and on a loaded machine a second one (the first's claim went
    # stale before its thread started, _classifier._stale): both were handed to the thread
    # lane before main ended, so they are running work. Fixed: every queued call ran too (the
    # executor's finalizer and the exit-time flush placed them on threads before the cancel).
    assert in_main <= 2, f"{in_main} of 20 calls ran on threads of the exiting program ({pids})"


# ---- defect 2: joblib's Parallel(timeout=) raises multiprocessing's TimeoutError -------------


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_joblib_timeout_of_a_queued_call_raises_a_timeout_error() -> None:
    # Defect 2. docs/integrations.md: "timeout=: each call runs in a process and is killed at
    # its deadline; joblib raises TaskTimeoutError (a TimeoutError)". joblib times a call from
    # its dispatch, hybridexec from its start in a worker: a call that waited (behind another,
    # or for a worker to start on a loaded machine) meets joblib's own deadline first, and
    # Parallel raises multiprocessing.TimeoutError, which `except TimeoutError` (the docs'
    # example) does not catch. The docs' example failed 7 of 8 runs at load average 10-12.
    # Decided: joblib's own clock and its exception type are joblib's (every joblib backend
    # raises multiprocessing.TimeoutError when it runs out); the docs now say so and catch
    # both. What hybridexec owes: a timeout exception either way, and the 60 s call killed,
    # not left running after Parallel returned.
    joblib = pytest.importorskip("joblib")
    import multiprocessing

    import hybridexec.joblib as hx_joblib

    hx_joblib.register()
    raised: BaseException | None = None
    started = time.monotonic()
    with (
        hx.Executor(max_processes=1) as ex,
        joblib.parallel_config(backend="hybridexec", executor=ex),
    ):
        try:
            joblib.Parallel(timeout=2.0)(joblib.delayed(slow)(s) for s in [1.5, 60.0])
        except BaseException as exc:  # what Parallel raises is the point of the test
            raised = exc
    assert isinstance(raised, (TimeoutError, multiprocessing.TimeoutError)), repr(raised)
    assert time.monotonic() - started < 30, "the 60 s call was left running"


# ---- defect 3: an exception raised by a done-callback is silently dropped --------------------

CALLBACK_RAISES = """
import sys
import hybridexec as hx


def f(x):
    return x


def bad(fut):
    raise RuntimeError("callback boom")


if __name__ == "__main__":
    with hx.Executor(max_processes=1) as ex:
        fut = ex.options(kind=sys.argv[1]).submit(f, 1)
        fut.add_done_callback(bad)
        fut.result()
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_callback_exception_reaches_stderr_as_with_the_stdlib(tmp_path: Path, kind: str) -> None:
    # Defect 3. docs/guarantees.md: "one that raises is logged". The stdlib logs it on the
    # "concurrent.futures" logger, which reaches stderr through logging's last resort when the
    # program configured no logging ("exception calling callback for <Future ...>" and the
    # traceback). hybridexec logs it on "hybridexec", which has a NullHandler: the error
    # vanishes. (A callback added to a finished future goes through the stdlib and is shown.)
    script = tmp_path / "callback_raises.py"
    script.write_text(textwrap.dedent(CALLBACK_RAISES), encoding="utf-8")
    result = run_script(script, kind)
    assert result.returncode == 0, result.stderr
    assert "callback boom" in result.stderr, result.stderr


# ---- defect 4: a SIGKILLed map item's retry runs finished items of its batch again -----------


def killed_once(directory: str, i: int) -> int:
    marker = os.path.join(directory, str(i))
    first = not os.path.exists(marker)
    with open(marker, "a") as fh:
        fh.write("ran\n")
    total = 0
    for k in range(20_000):
        total += k
    if i == 50 and first:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def test_sigkilled_map_item_retry_runs_no_other_item_twice(tmp_path: Path) -> None:
    # Defect 4. docs/guarantees.md: "an item whose worker was killed by SIGKILL (the OOM
    # killer's signal) runs once more, alone". Its batch is retried item by item, and the
    # items of the batch that had already run before the kill run again: 23 of them (items
    # 27-49) ran twice here, every run. Side effects of finished calls are repeated.
    with hx.Executor(max_processes=2) as ex:
        results = hx.map(
            killed_once,
            [str(tmp_path)] * 200,
            range(200),
            executor=ex,
            kind="process",
            return_exceptions=True,
        )
    assert results == list(range(200))
    runs = {i: len((tmp_path / str(i)).read_text().split()) for i in range(200)}
    twice = sorted(i for i, n in runs.items() if n > 1 and i != 50)
    assert runs[50] == 2
    assert not twice, f"items run twice besides the killed one: {twice}"


# ---- defect 5: hx.map on a Dask cluster, an item kills its Dask worker: hang or lost items ------

DASK_WORKER_DIES = """
import logging, os
import dask
import distributed
import hybridexec as hx


@hx.cpu_bound
def item(i):
    if i == 9:
        os._exit(1)
    return i * 2


if __name__ == "__main__":
    # The culprit kills up to 8 workers: keep LocalCluster from closing a restarting nanny.
    dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"})
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None,
                                       silence_logs=logging.CRITICAL)
    client = distributed.Client(cluster)
    with hx.Executor(backend=client) as ex:
        got = hx.map(item, range(20), executor=ex, return_exceptions=True)
    # An innocent that Dask blamed (KilledWorker) runs again: none ends so (docs/distributed.md).
    others = all(r == i * 2 for i, r in enumerate(got) if i != 9)
    print(len(got), others, isinstance(got[9], Exception), flush=True)
    client.close()
    cluster.close()
"""


@pytest.mark.timeout(240)  # the culprit kills up to 8 workers, 3-5 s per restart under load
def test_dask_map_with_an_item_that_kills_its_worker_ends_and_loses_no_other(
    tmp_path: Path,
) -> None:
    # Defect 5. The same items through client.map on the same cluster end in 9 s (item 9 with
    # KilledWorker, the 19 others with their results). Through hx.map(return_exceptions=True)
    # on hx.Executor(backend=client): 2 of 4 runs had not ended after 100-400 s (the main
    # thread waits in _mapping._outcomes, the collector thread in _dask._deliver's
    # client.gather(finished)); the 2 others ended with item 8 failed too (KilledWorker: the
    # batch-mate of the culprit; the local process lane retries a crashed batch item by item).
    pytest.importorskip("distributed")
    script = tmp_path / "dask_worker_dies.py"
    script.write_text(textwrap.dedent(DASK_WORKER_DIES), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a hang, its cluster is killed with it
    )
    try:
        stdout, stderr = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("hx.map on the Dask cluster still ran after 200 s")
    assert proc.returncode == 0, stderr
    # 20 results; the 19 others right; item 9 an exception (the docs do not say which).
    assert stdout.strip().splitlines()[-1] == "20 True True", stdout
