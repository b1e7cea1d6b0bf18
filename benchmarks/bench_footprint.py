"""Footprint (house issue): import cost and idle memory, hybridexec beside the standard library.

- ``import hybridexec``: modules of the package loaded, and the cumulative import time that
  ``python -X importtime`` reports for it (best of 5 fresh interpreters), beside
  ``concurrent.futures.process``.
- Idle memory: a fresh interpreter starts an executor with one process worker, runs one task
  in it, and sits idle; then the proportional set size (PSS, from ``/proc/<pid>/smaps_rollup``)
  of the parent and all its descendants (workers, fork server, resource tracker) is summed:
  what the program costs the machine. ``ProcessPoolExecutor`` is measured with its default
  start method (``fork`` on Linux before 3.14: no fork server, no tracker) and with
  ``forkserver``, hybridexec's default.

Targets: at most 8 of the package's modules and <= 30 ms for ``import hybridexec``; idle PSS
<= 1.5x ``ProcessPoolExecutor``'s.

Run alone: ``.venv/bin/python -m benchmarks --only footprint``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from ._common import median, section, target_line

IMPORT_RUNS = 5
PSS_RUNS = 3


def _import_time(module: str) -> float:
    """Best-of-N cumulative ``-X importtime`` microseconds for ``module``, in seconds."""
    best = float("inf")
    for _ in range(IMPORT_RUNS):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stderr
        for line in out.splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) == 3 and fields[2] == module:
                best = min(best, int(fields[1]) / 1e6)
    return best


def _modules_loaded() -> list[str]:
    code = (
        "import sys, hybridexec; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hybridexec'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return re.findall(r"'([^']+)'", out)


_PSS_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    def pss(pid):
        try:
            with open(f"/proc/{{pid}}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0
    def tree(pid):
        out = []
        for task in os.listdir(f"/proc/{{pid}}/task"):
            try:
                with open(f"/proc/{{pid}}/task/{{task}}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                kids = []
            for kid in kids:
                try:
                    with open(f"/proc/{{kid}}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                out.append(kid)
                out.extend(tree(kid))
        return out
    def one(x):
        return x + 1
    if __name__ == "__main__":
        kind = sys.argv[1]
        if kind == "hybridexec":
            import hybridexec as hx
            ex = hx.Executor(max_processes=1)
            assert ex.options(kind="process").submit(one, 1).result() == 2
        else:
            import concurrent.futures as cf
            import multiprocessing as mp
            context = None if kind == "default" else mp.get_context(kind)
            ex = cf.ProcessPoolExecutor(max_workers=1, mp_context=context)
            assert ex.submit(one, 1).result() == 2
        time.sleep(0.5)
        me = os.getpid()
        print(sum(pss(p) for p in [me, *tree(me)]))
        ex.shutdown()
    """
)


def _idle_pss(kind: str) -> float:
    values = []
    # A file, not -c: forkserver and spawn workers import the main module by its path.
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "footprint_idle.py"
        script.write_text(_PSS_SCRIPT.format())
        for _ in range(PSS_RUNS):
            values.append(_one_pss(script, kind))
    return median(values)


def _one_pss(script: Path, kind: str) -> float:
    out = subprocess.run(
        [sys.executable, str(script), kind],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return int(out.split()[-1]) / 2**20


def run(quick: bool) -> None:
    section("Footprint: import cost and idle memory")
    started = time.perf_counter()
    modules = _modules_loaded()
    ours = _import_time("hybridexec")
    stdlib = _import_time("concurrent.futures.process")
    print(f"  import hybridexec: {len(modules)} of the package's modules: {', '.join(modules)}")
    print(f"  import hybridexec: {ours * 1e3:.1f} ms cumulative (best of {IMPORT_RUNS})")
    print(f"  import concurrent.futures.process: {stdlib * 1e3:.1f} ms")
    print(target_line("modules loaded", len(modules) <= 8, f"{len(modules)} (target <= 8)"))
    print(target_line("import time", ours <= 0.030, f"{ours * 1e3:.1f} ms (target <= 30 ms)"))
    hx_pss = _idle_pss("hybridexec")
    print(f"  idle PSS, one process worker used: hybridexec (forkserver) {hx_pss:.1f} MB")
    for context in ("default", "forkserver"):
        std_pss = _idle_pss(context)
        ratio = hx_pss / std_pss
        print(
            f"  idle PSS, one process worker used: ProcessPoolExecutor ({context}) "
            f"{std_pss:.1f} MB: hybridexec {ratio:.2f}x (median of {PSS_RUNS})"
        )
        print(target_line(f"idle PSS vs {context}", ratio <= 1.5, f"{ratio:.2f}x (<= 1.5x)"))
    print(f"  ({time.perf_counter() - started:.1f} s)")
