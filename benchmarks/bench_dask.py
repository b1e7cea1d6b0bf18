"""Issue 7: the same Executor on a Dask cluster, against plain ``distributed`` in the same run.

One local cluster (2 worker processes, 1 thread each, 127.0.0.1) serves every contender, warm.
Rows:

- 1,000 trivial calls, one Dask task per call: ``ex.submit`` in a loop vs ``client.submit`` in
  a loop + ``client.gather``; ``ex.map`` (chunksize 1) vs ``client.map`` + ``client.gather``.
  These are the overhead figures (target: at most 1.2x plain Dask).
- the same 1,000 calls through ``hybridexec.map(..., executor=ex)``, which batches them.
- the mixed workload (CPU loops interleaved with sleeps): hybridexec routes the sleeps to local
  threads and the loops to the cluster; plain Dask sends everything to the cluster;
  ``remote="all"`` sends everything too, which isolates the overhead.

Run: ``python -m benchmarks --only dask`` or ``python -m benchmarks.bench_dask [--quick]``.
Skipped when the ``dask`` extra is not installed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ._common import CPUS, Table, measure, peer_available, section, target_line
from ._workloads import calibrate_cpu_loop, cpu_loop, io_sleep, tiny

TASKS = 1000
CPU_TASKS = 8
IO_SECONDS = 0.02
OVERHEAD_TARGET = 1.2

CLUSTER_OPTIONS: dict[str, Any] = {
    "n_workers": 2,
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": "127.0.0.1:0",
    "worker_dashboard_address": "127.0.0.1:0",
    "silence_logs": logging.ERROR,
}


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"cpu_seconds": 0.05, "io_tasks": 48, "repeats": 3}
    return {"cpu_seconds": 0.25, "io_tasks": 200, "repeats": 7}


def _mixed(cpu_n: int, io_tasks: int) -> list[tuple[Callable[..., Any], Any, str]]:
    per_cpu = io_tasks // CPU_TASKS
    calls: list[tuple[Callable[..., Any], Any, str]] = []
    for _ in range(CPU_TASKS):
        calls.append((cpu_loop, cpu_n, "process"))
        calls.extend((io_sleep, IO_SECONDS, "thread") for _ in range(per_cpu))
    return calls


def run(quick: bool) -> None:
    section("dask: Executor(backend=client) vs plain distributed on one local cluster (issue 7)")
    if not peer_available("distributed"):
        print("[skipped] the dask extra is not installed: pip install 'hybridexec[dask]'")
        return
    import distributed

    import hybridexec as hx

    sizes = _sizes(quick)
    items = list(range(TASKS))
    expected = [x + 1 for x in items]
    cpu_n = calibrate_cpu_loop(sizes["cpu_seconds"])
    calls = _mixed(cpu_n, sizes["io_tasks"])
    print(f"cluster: {CLUSTER_OPTIONS['n_workers']} workers x 1 thread; {CPUS} CPUs here")

    with (
        distributed.LocalCluster(**CLUSTER_OPTIONS) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        hx.Executor(backend=client) as ex,
        hx.Executor(backend=client, remote="all") as ex_all,
    ):
        process = ex.options(kind="process")

        def plain_submit() -> None:
            assert client.gather([client.submit(tiny, x, pure=False) for x in items]) == expected

        def hx_submit() -> None:
            futures = [process.submit(tiny, x) for x in items]
            assert [f.result() for f in futures] == expected

        def plain_map() -> None:
            assert client.gather(client.map(tiny, items, pure=False)) == expected

        def hx_executor_map() -> None:
            assert list(process.map(tiny, items)) == expected

        def hx_map() -> None:
            assert hx.map(tiny, items, kind="process", executor=ex) == expected

        # Alternate the contenders' runs so that a noisy moment hits them alike.
        tiny_table = Table(
            f"{TASKS:,} trivial calls (x + 1)",
            reference=["client.submit loop", "client.map"],
            items=TASKS,
        )
        rows: dict[str, list[float]] = {
            "client.submit loop": [],
            "ex.submit loop": [],
            "client.map": [],
            "ex.map (chunksize=1)": [],
            "hybridexec.map (batched)": [],
        }
        fns = [plain_submit, hx_submit, plain_map, hx_executor_map, hx_map]
        for fn in fns:  # warm-up
            fn()
        for _ in range(sizes["repeats"]):
            for name, fn in zip(rows, fns, strict=True):
                rows[name].extend(measure(fn, repeats=1, warmup=0))
        for name, times in rows.items():
            tiny_table.add(name, times)
        tiny_table.notes.append("one Dask task per call in every row but hybridexec.map")
        tiny_table.print()
        for mine, plain in (
            ("ex.submit loop", "client.submit loop"),
            ("ex.map (chunksize=1)", "client.map"),
        ):
            ratio = tiny_table.ratio(mine, plain)
            if ratio is not None:
                print(
                    target_line(
                        f"{mine} overhead vs {plain} <= {OVERHEAD_TARGET}x",
                        ratio <= OVERHEAD_TARGET,
                        f"{ratio:.2f}x",
                    )
                )
        batched = tiny_table.ratio("client.map", "hybridexec.map (batched)")
        if batched is not None:
            print(f"  info: hybridexec.map is {batched:.1f}x faster than client.map here")

        def plain_mixed() -> None:
            futures = [client.submit(fn, arg, pure=False) for fn, arg, _ in calls]
            client.gather(futures)

        def hx_mixed() -> None:
            futures = [ex.options(kind=kind).submit(fn, arg) for fn, arg, kind in calls]
            for f in futures:
                f.result()

        def hx_all_mixed() -> None:
            futures = [ex_all.options(kind=kind).submit(fn, arg) for fn, arg, kind in calls]
            for f in futures:
                f.result()

        mixed_table = Table(
            f"mixed: {CPU_TASKS} CPU loops of ~{sizes['cpu_seconds']:g} s interleaved with "
            f"{sizes['io_tasks']} sleeps of {IO_SECONDS * 1e3:g} ms",
            reference="client.submit (all on the cluster)",
        )
        mixed_rows: dict[str, list[float]] = {
            "client.submit (all on the cluster)": [],
            "hybridexec (sleeps local)": [],
            "hybridexec remote='all'": [],
        }
        mixed_fns = [plain_mixed, hx_mixed, hx_all_mixed]
        for fn in mixed_fns:  # warm-up
            fn()
        for _ in range(sizes["repeats"]):
            for name, fn in zip(mixed_rows, mixed_fns, strict=True):
                mixed_rows[name].extend(measure(fn, repeats=1, warmup=0))
        for name, times in mixed_rows.items():
            mixed_table.add(name, times)
        mixed_table.print()
        ratio = mixed_table.ratio("hybridexec remote='all'", "client.submit (all on the cluster)")
        if ratio is not None:
            print(
                target_line(
                    f"remote='all' overhead vs plain Dask <= {OVERHEAD_TARGET}x",
                    ratio <= OVERHEAD_TARGET,
                    f"{ratio:.2f}x",
                )
            )
        gain = mixed_table.ratio("client.submit (all on the cluster)", "hybridexec (sleeps local)")
        if gain is not None:
            print(f"  info: routing I/O to local threads is {gain:.1f}x faster than plain Dask")


if __name__ == "__main__":
    run("--quick" in sys.argv[1:])
