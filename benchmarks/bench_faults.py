"""Issue 3 workloads: a worker that crashes, and tasks that must be stopped at a timeout.

- crash: 50 tasks of 20 ms on a warm pool, task #10 calls ``os._exit``. How many of the 49
  others return, whether the pool still runs a new task, and the time from the worker's death
  to the first task starting on a replacement worker (tasks record ``time.monotonic()``, a
  system-wide clock, so times from different processes compare).
- timeout: a task sleeping 60 s, and a GIL-holding C loop (``sum(range(10**15))``: never back
  in the eval loop), each with a 0.5 s timeout: time from submit to the caller seeing the
  failure, and whether the pool then runs the next task.

Each (workload, contender) runs in a fresh interpreter with its own time limit, so a peer that
hangs or breaks for good never hangs the run; its figure then reads "hung".
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
import tempfile
import time
from typing import Any

from ._common import (
    CPUS,
    Table,
    fmt_seconds,
    isolated,
    median,
    report,
    section,
    target_line,
)
from ._peers import available, make
from ._workloads import crash_task, gil_c_loop, sleep_long, tiny

CRASH_TASKS = 50
CRASH_INDEX = 10
CRASH_TASK_SECONDS = 0.02
TIMEOUT = 0.5
CRASH_PEERS = ["hybridexec", "stdlib-processes", "loky", "joblib", "mpire", "pebble"]
TIMEOUT_PEERS = ["hybridexec", "pebble", "mpire", "joblib"]
QUICK = {"hybridexec", "stdlib-processes", "pebble"}  # --quick: the anchors only
NO_TIMEOUT_API = "stdlib ProcessPoolExecutor, loky"


# ---- child side: crash ------------------------------------------------------------------------
def _submit_all(c: Any, name: str, calls: list[tuple[Any, tuple[Any, ...]]]) -> list[Any]:
    """Submit every call at once; return handles for ``_outcome``."""
    if name == "hybridexec":
        target = c.ex.options(kind="process")
        return [target.submit(fn, *args) for fn, args in calls]
    if name in ("stdlib-processes", "loky"):
        return [c.ex.submit(fn, *args) for fn, args in calls]
    if name == "pebble":
        return [c.pool.schedule(fn, args=args) for fn, args in calls]
    if name == "mpire":
        return [c.pool.apply_async(fn, args=args) for fn, args in calls]
    raise ValueError(name)


def _outcome(handle: Any, deadline: float) -> tuple[str, Any]:
    """``("ok", value)``, ``("error", type name)`` or ``("no answer", None)``."""
    remaining = max(0.01, deadline - time.monotonic())
    try:
        if isinstance(handle, concurrent.futures.Future):
            return "ok", handle.result(timeout=remaining)
        return "ok", handle.get(timeout=remaining)  # mpire AsyncResult
    except (concurrent.futures.TimeoutError, TimeoutError) as exc:
        if time.monotonic() >= deadline:
            return "no answer", None
        return "error", type(exc).__name__
    except Exception as exc:
        return "error", type(exc).__name__


def crash_one(contender: str, wait_seconds: float) -> dict[str, Any]:
    """Run the crash workload on one contender; runs in a fresh interpreter."""
    c = make(contender)
    c.start()
    fd, stamp = tempfile.mkstemp(prefix="hx-bench-crash-")
    os.close(fd)
    calls = [(crash_task, (i, CRASH_INDEX, stamp, CRASH_TASK_SECONDS)) for i in range(CRASH_TASKS)]
    deadline = time.monotonic() + wait_seconds
    outcomes: list[tuple[str, Any]] = []
    if contender == "joblib":
        import joblib

        got: list[Any] = []
        try:
            gen = joblib.Parallel(n_jobs=CPUS, return_as="generator_unordered")(
                joblib.delayed(fn)(*args) for fn, args in calls
            )
            for value in gen:
                got.append(value)
        except Exception as exc:
            outcomes.append(("error", type(exc).__name__))
        outcomes.extend(("ok", v) for v in got)
        outcomes.extend(("not returned", None) for _ in range(CRASH_TASKS - 1 - len(got)))
    else:
        handles = _submit_all(c, contender, calls)
        outcomes = [_outcome(h, deadline) for h in handles]
        del outcomes[CRASH_INDEX]
    with open(stamp) as f:
        text = f.read()
    os.unlink(stamp)
    death = float(text) if text else None
    ok = [v for kind, v in outcomes if kind == "ok"]
    others = collections.Counter(
        ("no answer" if kind == "no answer" else v or kind) for kind, v in outcomes if kind != "ok"
    )
    replacement = None
    if death is not None:
        before = {pid for _, pid, start in ok if start < death}
        after = [start for _, pid, start in ok if start >= death and pid not in before]
        if after:
            replacement = min(after) - death
    result: dict[str, Any] = {
        "name": c.name,
        "returned": len(ok),
        "failures": dict(others),
        "replacement": replacement,
    }
    report(result)  # before the usability probe, which may hang
    start = time.monotonic()
    usable = "no"
    try:
        if contender == "joblib":
            import joblib

            value = joblib.Parallel(n_jobs=CPUS)(joblib.delayed(tiny)(i) for i in range(4))
            usable = "yes" if value == [1, 2, 3, 4] else "wrong result"
        else:
            (handle,) = _submit_all(c, contender, [(tiny, (1,))])
            kind, value = _outcome(handle, time.monotonic() + 10.0)
            usable = "yes" if kind == "ok" and value == 2 else f"no ({value or kind})"
    except Exception as exc:
        usable = f"no ({type(exc).__name__})"
    result["usable"] = usable
    result["usable_after"] = time.monotonic() - start
    report(result)
    return result


# ---- child side: timeout ----------------------------------------------------------------------
def _timed_failure(c: Any, contender: str, task: str) -> tuple[float, str]:
    fn, args = (sleep_long, (60.0,)) if task == "sleep" else (gil_c_loop, ())
    start = time.monotonic()
    try:
        if contender == "hybridexec":
            c.ex.options(timeout=TIMEOUT).submit(fn, *args).result(timeout=15)
        elif contender == "pebble":
            c.pool.schedule(fn, args=args, timeout=TIMEOUT).result(timeout=15)
        elif contender == "mpire":
            c.pool.apply_async(fn, args=args, task_timeout=TIMEOUT).get(timeout=15)
        elif contender == "joblib":
            import joblib

            joblib.Parallel(n_jobs=CPUS, timeout=TIMEOUT)(joblib.delayed(fn)(*args) for _ in [0])
        else:
            raise ValueError(contender)
    except Exception as exc:
        return time.monotonic() - start, type(exc).__name__
    return time.monotonic() - start, "returned?"


def timeout_one(contender: str, task: str, repeats: int) -> dict[str, Any]:
    """Time a 0.5 s timeout on one contender, ``repeats`` times; runs in a fresh interpreter."""
    c = make(contender)
    c.start()
    times: list[float] = []
    nexts: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    result: dict[str, Any] = {"name": c.name}
    for _ in range(repeats):
        elapsed, error = _timed_failure(c, contender, task)
        times.append(elapsed)
        errors[error] += 1
        # The pool must run the next task, on a replacement worker.
        start = time.monotonic()
        if contender == "joblib":
            import joblib

            joblib.Parallel(n_jobs=CPUS)(joblib.delayed(tiny)(1) for _ in [0])
        elif contender == "hybridexec":
            c.ex.options(kind="process").submit(tiny, 1).result(timeout=15)
        else:
            c.map(tiny, [1])
        nexts.append(time.monotonic() - start)
        result.update(times=times, errors=dict(errors), next_task=nexts)
        report(result)
    return result


# ---- parent side ------------------------------------------------------------------------------
def _crash_table(quick: bool) -> Table:
    table = Table(
        f"crash: {CRASH_TASKS} tasks of {CRASH_TASK_SECONDS * 1e3:g} ms on a warm pool, task "
        f"#{CRASH_INDEX} calls os._exit(1)",
        extra_columns=[
            "others returned",
            "how the others failed",
            "death -> replacement",
            "usable after",
        ],
        timed=False,
    )
    present, missing = available(c for c in CRASH_PEERS if not quick or c in QUICK)
    for name in present:
        got = isolated(
            "benchmarks.bench_faults:crash_one",
            20.0 if quick else 40.0,
            contender=name,
            wait_seconds=5.0 if quick else 10.0,
        )
        value = got.value or {}
        usable = value.get("usable")
        if usable is None:
            usable = "hung (probe never returned)" if value else ""
        elif usable == "yes":
            usable = f"yes ({fmt_seconds(value['usable_after'])})"
        failures = ", ".join(f"{k} x{v}" for k, v in value.get("failures", {}).items())
        returned = value.get("returned")
        table.add(
            value.get("name", name),
            None,
            note="" if value else got.error or "",
            **{
                "others returned": "" if returned is None else f"{returned}/{CRASH_TASKS - 1}",
                "how the others failed": failures or ("-" if value else ""),
                "death -> replacement": fmt_seconds(value.get("replacement")),
                "usable after": usable,
            },
        )
        print(
            f"  [faults/crash] {value.get('name', name)}: returned {returned}, {usable}",
            file=sys.stderr,
            flush=True,
        )
    if missing:
        table.notes.append(f"not installed, skipped: {', '.join(missing)}")
    table.notes.append(
        "death -> replacement: from the dying task's last timestamp to the first "
        "task starting on a worker pid not seen before the crash ('-': none did)"
    )
    table.notes.append(
        "joblib: Parallel(return_as='generator_unordered'), counted until it "
        "raised; the others: submit all 50, then wait for each future"
    )
    return table


def run(quick: bool) -> None:
    """Entry point used by ``python -m benchmarks``."""
    section("faults: crash isolation and per-task timeouts vs peers (issue 3)")
    if quick:
        print("--quick: peers limited to stdlib and pebble, one repeat")
    crash = _crash_table(quick)
    crash.print()
    hx = crash.row("hybridexec")
    if hx is not None:
        returned = hx.extra.get("others returned", "")
        usable = hx.extra.get("usable after", "")
        print(
            target_line(
                "all 49 others return and the executor is usable",
                returned == f"{CRASH_TASKS - 1}/{CRASH_TASKS - 1}" and usable.startswith("yes"),
                f"{returned}, usable: {usable}",
            )
        )
        repl = hx.extra.get("death -> replacement", "-")
        seconds = _parse_seconds(repl)
        print(
            target_line(
                "worker death -> next task on its replacement < 50 ms",
                None if seconds is None else seconds < 0.05,
                repl,
            )
        )

    repeats = 1 if quick else 3
    for task, label, limit in (
        ("sleep", "time.sleep(60)", 0.7),
        ("c-loop", "GIL-holding C loop sum(range(10**15))", 1.0),
    ):
        table = Table(
            f"timeout: {label} with a {TIMEOUT:g} s timeout -> time until the caller "
            "sees the failure",
            reference="hybridexec",
            extra_columns=["error", "next task after"],
        )
        present, missing = available(c for c in TIMEOUT_PEERS if not quick or c in QUICK)
        for name in present:
            got = isolated(
                "benchmarks.bench_faults:timeout_one",
                8.0 + 6.0 * repeats,  # start-up, then ~6 s a repeat (pebble: 3.6 s)
                contender=name,
                task=task,
                repeats=repeats,
            )
            value = got.value or {}
            times = value.get("times")
            errors = ", ".join(f"{k} x{v}" for k, v in value.get("errors", {}).items())
            nexts = value.get("next_task")
            table.add(
                value.get("name", name),
                times,
                note=""
                if value and not (got.error and len(times or []) < repeats)
                else got.error or "",
                **{"error": errors, "next task after": fmt_seconds(median(nexts)) if nexts else ""},
            )
            print(
                f"  [faults/timeout-{task}] {value.get('name', name)}: "
                f"{fmt_seconds(median(times)) if times else got.error}",
                file=sys.stderr,
                flush=True,
            )
        if missing:
            table.notes.append(f"not installed, skipped: {', '.join(missing)}")
        table.notes.append(
            f"no per-task timeout that stops the work: {NO_TIMEOUT_API} "
            "(future.result(timeout) leaves the task running)"
        )
        table.print()
        hx = table.row("hybridexec")
        if hx is not None and hx.median is not None:
            print(
                target_line(f"fails within {limit:g} s", hx.median <= limit, fmt_seconds(hx.median))
            )


def _parse_seconds(text: str) -> float | None:
    number, _, unit = text.partition(" ")
    try:
        value = float(number)
    except ValueError:
        return None
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}.get(unit, 1.0)
