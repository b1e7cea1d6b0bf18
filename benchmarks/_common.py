"""Helpers shared by every benchmark module: timing, isolation, peers and tables.

- ``measure``: warm-up runs, then timed repeats (a time budget may cut repeats short, never
  below ``min_repeats``); report medians, not means, since the machine is shared and noisy.
- ``isolated``: run one measurement in a fresh interpreter with its own time limit, so a peer
  that hangs or breaks its pool never hangs the run or leaks into the next measurement.
- ``peer_available`` / ``peer_versions``: optional peers (loky, pebble, mpire, joblib) are used
  only when installed; a missing one is skipped with a note.
- ``Table``: prints medians, a derived column (throughput) and the ratio of each row against a
  reference row (hybridexec).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS = ("loky", "pebble", "mpire", "joblib")
RESULT_MARKER = "@@hybridexec-bench-result@@ "
CPUS = os.cpu_count() or 1


# ---- timing ---------------------------------------------------------------------------------
def measure(
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_repeats: int = 2,
    budget: float | None = None,
) -> list[float]:
    """Time ``fn()``: ``warmup`` untimed runs, then up to ``repeats`` timed ones.

    Once ``min_repeats`` runs are done, stop early when the timed runs so far took more than
    ``budget`` seconds in total (slow contenders do not get to dominate the run time).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if budget is not None and len(times) >= min_repeats and sum(times) > budget:
            break
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(per_second: float | None) -> str:
    if per_second is None:
        return "-"
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f}M/s"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f}k/s"
    return f"{per_second:.0f}/s"


# ---- peers ----------------------------------------------------------------------------------
def peer_available(name: str) -> bool:
    """Return whether the optional peer ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def peer_versions() -> dict[str, str | None]:
    """Installed version of each optional peer, None when it is missing."""
    versions: dict[str, str | None] = {}
    for name in PEERS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def missing_peers_note() -> str | None:
    missing = [name for name, version in peer_versions().items() if version is None]
    if not missing:
        return None
    return (
        f"not installed, skipped: {', '.join(missing)} "
        "(pip install 'hybridexec[bench]' to compare with them)"
    )


# ---- isolation ------------------------------------------------------------------------------
@dataclass
class Isolated:
    """What one isolated measurement returned, or why it returned nothing."""

    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    values: list[Any] = field(default_factory=list)  # everything the child reported, in order

    @property
    def ok(self) -> bool:
        return self.error is None


def isolated(target: str, timeout: float, **kwargs: Any) -> Isolated:
    """Run ``target(**kwargs)`` in a fresh interpreter and return its JSON-able result.

    ``target`` is ``"package.module:function"``. The child runs in its own session (its pools,
    forkserver and workers with it) and the whole session is SIGKILLed after ``timeout``
    seconds. A child may ``report`` several values as it goes; ``values`` holds all of them,
    ``value`` the last one, and ``error`` says why the child did not end cleanly (it may have
    reported everything and then hung tearing a broken pool down).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONWARNINGS", "ignore")
    # The child ends with os._exit and its session is SIGKILLed: multiprocessing's exit never
    # removes its pymp-* directories (a peer's fork server socket). Its own TMPDIR goes after.
    env["TMPDIR"] = tmpdir = tempfile.mkdtemp(prefix="hxb-")
    code = "from benchmarks._common import child_main; child_main()"
    started = time.perf_counter()
    # Files, not pipes: workers a peer leaves behind would hold pipes open after the child
    # exits, and reading to EOF would wait for them.
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, target, json.dumps(kwargs)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            text=True,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_session(proc.pid)  # the child, and workers a peer left behind in its session
        proc.wait()
        _sweep_peer_leftovers()
        shutil.rmtree(tmpdir, ignore_errors=True)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    seconds = time.perf_counter() - started
    values = [
        json.loads(line[len(RESULT_MARKER) :])
        for line in out.splitlines()
        if line.startswith(RESULT_MARKER)
    ]
    if timed_out:
        error: str | None = f"hung: killed after {timeout:g} s"
    elif proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-2:]) or f"exit code {proc.returncode}"
        error = f"failed: {tail}"
    else:
        error = None
    if not values and error is None:
        error = "reported nothing"
    return Isolated(
        value=values[-1] if values else None, values=values, seconds=seconds, error=error
    )


# Named after the pid of the process that made them; a killed session cannot remove them.
_PEER_LEFTOVERS = re.compile(r"(?:sem\.loky-|joblib_memmapping_folder_)(\d+)[-_]")


def _sweep_peer_leftovers() -> None:
    """Remove loky semaphores and joblib memmap folders of dead processes from /dev/shm."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        match = _PEER_LEFTOVERS.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path = os.path.join("/dev/shm", name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def report(value: Any) -> None:
    """In a child started by ``isolated``: hand ``value`` (JSON-able) back to the parent now."""
    print(RESULT_MARKER + json.dumps(value), flush=True)


def child_main() -> None:
    """Entry point of the child interpreter started by ``isolated``."""
    target, raw = sys.argv[1], sys.argv[2]
    module_name, _, func_name = target.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(**json.loads(raw))
    if result is not None:
        report(result)
    sys.stdout.flush()
    # A peer may leave non-daemon threads or workers behind; the parent kills the session.
    os._exit(0)


# ---- tables ---------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    times: list[float] | None = None
    note: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return median(self.times) if self.times else None


class Table:
    """A table of contenders for one workload, with ratios against a reference row.

    Each ratio column reads "how many times faster the reference (a hybridexec row) is than
    this row": above 1.00 hybridexec wins, below 1.00 the row wins.
    """

    def __init__(
        self,
        title: str,
        *,
        reference: str | Sequence[str] = (),
        items: int | None = None,
        extra_columns: Sequence[str] = (),
        timed: bool = True,
    ) -> None:
        self.title = title
        self.timed = timed
        self.references = [reference] if isinstance(reference, str) else list(reference)
        self.items = items
        self.extra_columns = list(extra_columns)
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(
        self,
        name: str,
        times: list[float] | None = None,
        *,
        note: str = "",
        **extra: str,
    ) -> Row:
        row = Row(name, times, note, dict(extra))
        self.rows.append(row)
        return row

    def row(self, name: str) -> Row | None:
        for row in self.rows:
            if row.name == name:
                return row
        return None

    def ratio(self, name: str, reference: str) -> float | None:
        """Return this row's median over the reference's median (reference speed-up)."""
        row, ref = self.row(name), self.row(reference)
        if row is None or ref is None or row.median is None or ref.median is None:
            return None
        return row.median / ref.median

    def print(self) -> None:
        headers = ["contender", "median", "min", "runs"] if self.timed else ["contender"]
        if self.items:
            headers.append("tasks/s")
        headers.extend(self.extra_columns)
        headers.extend(f"{ref} faster by" for ref in self.references)
        headers.append("note")
        lines: list[list[str]] = []
        for row in self.rows:
            med = row.median
            cells = [row.name]
            if self.timed:
                cells += [
                    fmt_seconds(med),
                    fmt_seconds(min(row.times)) if row.times else "-",
                    str(len(row.times)) if row.times else "0",
                ]
            if self.items:
                cells.append(fmt_rate(self.items / med) if med else "-")
            cells.extend(row.extra.get(col, "") for col in self.extra_columns)
            for ref in self.references:
                ratio = self.ratio(row.name, ref)
                if row.name == ref:
                    cells.append("(reference)")
                else:
                    cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
            cells.append(row.note)
            lines.append(cells)
        widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
        print(f"\n### {self.title}")

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        print(fmt(headers))
        print(fmt(["-" * w for w in widths]))
        for cells in lines:
            print(fmt(cells))
        for note in self.notes:
            print(f"  note: {note}")


def target_line(label: str, ok: bool | None, detail: str) -> str:
    mark = "n/a " if ok is None else ("MET " if ok else "MISS")
    return f"  [{mark}] {label}: {detail}"


def section(title: str) -> None:
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}", flush=True)
