"""The Dask lane when a call kills its Dask worker (``os._exit`` in the task).

Each scenario runs in its own interpreter with its own two-worker LocalCluster on 127.0.0.1:
worker deaths would otherwise disturb the shared cluster of ``test_dask.py`` (LocalCluster
closes a nanny whose worker stays away too long). The child runs in its own session, so that
on a hang the test kills it and its cluster together; the last line it prints is checked.

A culprit kills up to 8 workers here (Dask's 4 per key, and its second run). A LocalCluster
closes for good a nanny whose worker is away (restarting) when ``lost-worker-timeout`` (15 s)
after one of its deaths runs out; with 2 CPUs under load a restart takes 3-5 s, so the cluster
lost both nannies in some runs and the calls left waited for ever. The scenarios raise it: what
they test is the lane, not that LocalCluster policy.
"""

from __future__ import annotations

import ast
import subprocess
import textwrap
from pathlib import Path

import pytest

from .scenario import kill_session, start_script

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import logging, os, sys
import dask
import distributed
import hybridexec as hx

RUNS = os.path.abspath("culprit-runs")  # one byte per run of item 5


@hx.cpu_bound
def item(i):
    if i == 5:
        with open(RUNS, "ab") as runs:
            runs.write(b"x")
        os._exit(1)
    return i * 2


def main(ex, client):
    ...  # replaced by each scenario


if __name__ == "__main__":
    dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"})
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None,
                                       silence_logs=logging.CRITICAL)
    client = distributed.Client(cluster, set_as_default=False)
    with hx.Executor(backend=client) as ex:
        print(main(ex, client), flush=True)
    client.close()
    cluster.close()
    print("closed", flush=True)
"""


def run_scenario(tmp_path: Path, main: str, timeout: float = 150) -> list[str]:
    """Run PRELUDE with ``main`` in a child; return its output lines (fail on a hang)."""
    body = textwrap.dedent(PRELUDE).replace(
        "def main(ex, client):\n    ...  # replaced by each scenario\n", textwrap.dedent(main)
    )
    proc = start_script(tmp_path, body)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        stdout, stderr = proc.communicate()
        pytest.fail(f"still running after {timeout:g} s; output so far: {stdout!r}")
    assert proc.returncode == 0, stderr
    return stdout.strip().splitlines()


@pytest.mark.timeout(200)
def test_a_batch_whose_worker_dies_is_retried_item_by_item(tmp_path: Path) -> None:
    # Two batches of 4; item 5 kills every worker that runs it. Dask gives up on its batch
    # with KilledWorker; the batch is run again one item per call, and only item 5 fails.
    lines = run_scenario(
        tmp_path,
        """
        def main(ex, client):
            got = hx.map(item, range(8), executor=ex, chunksize=4, return_exceptions=True)
            return [r if isinstance(r, int) else type(r).__name__ for r in got]
        """,
    )
    assert lines[-1] == "closed", lines
    got = ast.literal_eval(lines[-2])
    expected = [i * 2 for i in range(8)]
    expected[5] = "KilledWorker"  # type: ignore[call-overload]
    assert got == expected, got


@pytest.mark.timeout(200)
def test_submit_after_a_killed_worker_runs_and_shutdown_ends(tmp_path: Path) -> None:
    lines = run_scenario(
        tmp_path,
        """
        def main(ex, client):
            try:
                ex.options(kind="process").submit(item, 5).result(timeout=100)
            except Exception as exc:
                first = f"{type(exc).__name__} names it: {'KilledWorker' in repr(exc)}"
            after = ex.options(kind="process").submit(item, 3).result(timeout=100)
            with open(RUNS, "rb") as runs:
                return f"{first}; then {after}; runs: {len(runs.read())}"
        """,
    )
    assert lines[-1] == "closed", lines
    head, runs = lines[-2].split("; runs: ")
    assert head == "KilledWorker names it: True; then 6", lines
    # Dask runs a key until allowed-failures + 1 = 4 workers died in it; the lane runs a single
    # call blamed so once more under a new key (an innocent travelled beside a culprit, maybe),
    # and never a third time.
    assert 5 <= int(runs) <= 8, lines


@pytest.mark.timeout(200)
def test_other_calls_are_delivered_while_a_call_kills_workers(tmp_path: Path) -> None:
    # One call per item (chunksize 1): results of calls that finished on a worker that died
    # later are computed again by Dask; none of them waits on another.
    lines = run_scenario(
        tmp_path,
        """
        def main(ex, client):
            futures = [ex.options(kind="process").submit(item, i) for i in range(12)]
            got = []
            for f in futures:
                try:
                    got.append(f.result(timeout=100))
                except Exception as exc:
                    got.append(type(exc).__name__)
            return got
        """,
    )
    expected = [i * 2 for i in range(12)]
    expected[5] = "KilledWorker"  # type: ignore[call-overload]
    assert lines[-2:] == [str(expected), "closed"], lines
