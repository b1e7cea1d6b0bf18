"""Issue 16: the joblib backend "hybridexec" against joblib's loky and threading backends.

The same user code, three backends, in one run, alternating so a noisy moment hits them alike:

- a scikit-learn ``GridSearchCV`` (an SVC over a small grid, 5-fold: 30 fits of some ms each);
- a joblib ``Parallel`` of mixed functions: pure-Python CPU loops interleaved with sleeps
  standing for I/O. loky puts the sleeps in processes, threading serialises the loops on the
  GIL; hybridexec routes each function where it runs best.

Every backend runs with ``n_jobs`` = the number of CPUs and stays warm between runs (loky's
reusable executor, hybridexec's shared executor), as in a session making several calls; one
untimed warm-up run each, so hybridexec has learned the functions before timing. Goal: never
slower than the better of loky and threading, faster than both on the mixed workload.

Run: ``python -m benchmarks --only joblib`` or ``python -m benchmarks.bench_joblib [--quick]``.
Skipped when joblib or scikit-learn is not installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ._common import CPUS, Table, measure, peer_available, section, target_line
from ._workloads import calibrate_cpu_loop, cpu_loop, io_sleep

BACKENDS = ("hybridexec", "loky", "threading")
CPU_TASKS = 8
IO_SECONDS = 0.02


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"cpu_seconds": 0.05, "io_tasks": 48, "repeats": 3, "samples": 300}
    return {"cpu_seconds": 0.25, "io_tasks": 200, "repeats": 5, "samples": 600}


def _compare(title: str, work: Callable[[], object], repeats: int) -> Table:
    import joblib

    def under(backend: str) -> Callable[[], None]:
        def run() -> None:
            with joblib.parallel_config(backend=backend, n_jobs=CPUS):
                work()

        return run

    runs = {name: under(name) for name in BACKENDS}
    times: dict[str, list[float]] = {name: [] for name in BACKENDS}
    for run in runs.values():  # warm-up: workers started, functions learned
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].extend(measure(run, repeats=1, warmup=0))
    table = Table(title, reference="hybridexec")
    for name in BACKENDS:
        table.add(name, times[name])
    table.print()
    ratios = [table.ratio(peer, "hybridexec") for peer in ("loky", "threading")]
    if all(r is not None for r in ratios):
        best = min(r for r in ratios if r is not None)
        print(
            target_line(
                "hybridexec no slower than the better of loky and threading",
                best >= 1.0,
                f"loky/hybridexec {ratios[0]:.2f}x, threading/hybridexec {ratios[1]:.2f}x",
            )
        )
    return table


def run(quick: bool) -> None:
    section("joblib: backend 'hybridexec' vs loky and threading (issue 16)")
    missing = [name for name in ("joblib", "sklearn") if not peer_available(name)]
    if missing:
        print(f"[skipped] not installed: {', '.join(missing)} (pip install 'hybridexec[bench]')")
        return
    from joblib import Parallel, delayed
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    import hybridexec.joblib

    hybridexec.joblib.register()
    sizes = _sizes(quick)
    print(f"n_jobs={CPUS} for every backend; medians of {sizes['repeats']} warm runs")
    try:
        X, y = make_classification(n_samples=sizes["samples"], n_features=20, random_state=0)
        grid = {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1]}

        def grid_search() -> None:
            GridSearchCV(SVC(), grid, cv=5, n_jobs=CPUS).fit(X, y)

        _compare(
            f"GridSearchCV: SVC, 6 candidates x 5 folds, {sizes['samples']} samples",
            grid_search,
            sizes["repeats"],
        )

        cpu_n = calibrate_cpu_loop(sizes["cpu_seconds"])
        per_cpu = sizes["io_tasks"] // CPU_TASKS
        calls: list[Any] = []
        for _ in range(CPU_TASKS):
            calls.append(delayed(cpu_loop)(cpu_n))
            calls.extend(delayed(io_sleep)(IO_SECONDS) for _ in range(per_cpu))

        def mixed() -> None:
            Parallel()(calls)

        table = _compare(
            f"Parallel, mixed: {CPU_TASKS} CPU loops of ~{sizes['cpu_seconds']:g} s "
            f"interleaved with {sizes['io_tasks']} sleeps of {IO_SECONDS * 1e3:g} ms",
            mixed,
            sizes["repeats"],
        )
        ratios = [table.ratio(peer, "hybridexec") for peer in ("loky", "threading")]
        if all(r is not None for r in ratios):
            print(
                target_line(
                    "mixed: hybridexec faster than both",
                    all(r is not None and r > 1.0 for r in ratios),
                    ", ".join(f"{r:.2f}x" for r in ratios if r is not None),
                )
            )
    finally:
        hybridexec.joblib.shutdown()


if __name__ == "__main__":
    run("--quick" in sys.argv[1:])
