"""Runner: discover ``benchmarks/bench_*.py`` modules and run each one's ``run(quick)``.

Usage: ``python -m benchmarks [--quick] [--only NAME ...] [--list]``, where NAME is a module
name without its ``bench_`` prefix (``core``, ``faults``, ...). A module that fails is reported
and the others still run; the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ._common import CPUS, peer_versions

PACKAGE_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names (without ``bench_``) of the benchmark modules, in alphabetical order."""
    names = [
        info.name[len("bench_") :]
        for info in pkgutil.iter_modules([str(PACKAGE_DIR)])
        if info.name.startswith("bench_")
    ]
    # core first: the others read better after the basic figures.
    return sorted(names, key=lambda n: (n != "core", n))


def entry_point(name: str) -> Callable[[bool], None] | str:
    """Import ``bench_<name>`` and return its ``run``, or why it cannot be run."""
    module = importlib.import_module(f"benchmarks.bench_{name}")
    run = getattr(module, "run", None)
    if not callable(run):
        return "defines no run(quick: bool) -> None"
    try:
        inspect.signature(run).bind(False)
    except TypeError:
        return "run() does not take one argument (quick: bool)"
    return run  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these modules")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    args = parser.parse_args(argv)
    names = discover()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {names}")
        names = [n for n in names if n in args.only]

    import hybridexec

    peers = ", ".join(f"{k} {v or '(not installed)'}" for k, v in peer_versions().items())
    print(f"hybridexec {hybridexec.__version__} benchmarks{' (--quick)' if args.quick else ''}")
    print(f"{platform.platform()}; {CPUS} CPUs; Python {platform.python_version()}")
    print(f"peers: {peers}")
    print("ratios: 'X faster by N' = median of this row / median of row X (above 1: X wins)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} (figures are noisy when other work shares the CPUs)")
    started = time.perf_counter()
    failed: list[str] = []
    for name in names:
        try:
            run = entry_point(name)
            if isinstance(run, str):
                print(f"\n[skipped] bench_{name}: {run}")
                continue
            module_started = time.perf_counter()
            run(args.quick)
            print(f"\n[bench_{name}: {time.perf_counter() - module_started:.0f} s]", flush=True)
        except KeyboardInterrupt:
            raise
        except BaseException:
            failed.append(name)
            print(f"\n[FAILED] bench_{name}:", flush=True)
            traceback.print_exc(file=sys.stdout)
    print(
        f"\ntotal: {time.perf_counter() - started:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
