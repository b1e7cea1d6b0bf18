"""``python -m hybridexec info | demo [--quick]``: the machine as hybridexec sees it, and a demo.

``info`` prints CPUs, the Python version, whether the GIL is enabled, the default start method,
free space in ``/dev/shm`` and which optional extras are installed. ``demo`` runs a mixed
workload (blocking sleeps interleaved with pure-Python CPU loops) on the standard library's
thread and process pools and on ``hybridexec.Executor``, and prints times and where tasks ran.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import shutil
import sys
from collections.abc import Sequence

_EXTRA_RE = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_ORDER = ("numpy", "progress", "dask", "ray", "joblib", "bench", "dev", "docs")


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def extras() -> dict[str, list[tuple[str, str | None]]] | None:
    """Each extra of the installed distribution: its requirements and their installed versions.

    Returns None when hybridexec runs from a source tree without being installed.
    """
    try:
        requires = importlib.metadata.requires("hybridexec") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found: dict[str, list[tuple[str, str | None]]] = {}
    for line in requires:
        requirement, _, marker = line.partition(";")
        extra = _EXTRA_RE.search(marker)
        name = _NAME_RE.match(requirement)
        if extra is None or name is None:
            continue
        dist = name.group(1)
        found.setdefault(extra.group(1), []).append((dist, _installed(dist)))
    order = {name: i for i, name in enumerate(_EXTRA_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _shm_free() -> str:
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError:
        return "not available"
    return f"{usage.free / 2**20:,.0f} MiB free of {usage.total / 2**20:,.0f} MiB"


def info() -> str:
    """Return the ``info`` report."""
    from ._process import default_start_method
    from ._routing import gil_enabled
    from ._version import __version__

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    lines = [
        f"hybridexec      {__version__}",
        f"CPUs            {os.cpu_count()} ({usable} usable by this process)",
        f"Python          {platform.python_implementation()} {platform.python_version()} "
        f"on {platform.system()} {platform.machine()}",
        f"GIL enabled     {'yes' if gil_enabled() else 'no (free-threaded)'}",
        f"start method    {default_start_method()} (default for worker processes)",
        f"/dev/shm        {_shm_free()}",
    ]
    found = extras()
    if found is None:
        lines.append("extras          unknown (hybridexec is not installed, only importable)")
    else:
        lines.append("extras")
        for extra, deps in found.items():
            missing = [d for d, v in deps if v is None]
            state = "installed" if not missing else f"missing {', '.join(missing)}"
            have = ", ".join(f"{d} {v}" for d, v in deps if v is not None)
            lines.append(f"  {extra:<13} {state}" + (f" ({have})" if have and missing else ""))
    return "\n".join(lines)


def demo(quick: bool) -> str:
    """Run the demo and return its report."""
    from . import _demo

    calls, described = _demo.workload(quick)
    print(f"workload: {described}", flush=True)
    print(f"pools are warmed up before timing; {os.cpu_count()} CPUs", flush=True)
    outcomes = _demo.run(calls)
    return _demo.table(outcomes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m hybridexec``; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m hybridexec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,demo}")
    commands.add_parser("info", help="CPUs, Python, GIL, start method, /dev/shm, extras")
    demo_parser = commands.add_parser("demo", help="stdlib pools vs hybridexec, side by side")
    demo_parser.add_argument("--quick", action="store_true", help="a smaller workload (~1 s)")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    else:
        print(demo(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
