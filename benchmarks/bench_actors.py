"""Issue 5 workloads: actor ask round trips, thread actors vs pykka, process actors vs a raw Pipe.

- Thread actors: ``ask(...).result()`` one at a time (round-trip latency) and pipelined (all
  asks sent, then all results read), against pykka's ``ask`` (``on_receive``) and its typed
  proxy (``proxy.method().get()``), the closest to ``ask(Cls.method)``.
- Process actors: one ``ask(...).result()`` at a time against the raw floor, a
  ``multiprocessing.Pipe`` round trip to a child running the same method in a plain loop
  (``conn.send(x)``/``conn.recv()``, pickled both ways), same start method.

Each (workload, contender) runs in a fresh interpreter; the contenders alternate over several
rounds so that machine noise hits them alike. Medians are reported. Targets: thread actor
throughput at least pykka's; process actor round trip at most 2x the raw pipe's.

Usage: ``python -m benchmarks --only actors [--quick]`` or ``python -m benchmarks.bench_actors``.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from typing import Any, Literal

from ._common import (
    Table,
    fmt_seconds,
    isolated,
    measure,
    peer_available,
    section,
    target_line,
)


class Counter:
    """The actor under test: one cheap method, so the figures are the messaging cost."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> int:
        self.value += n
        return self.value


def _echo_loop(conn: Any) -> None:
    """The raw floor: the same method behind a bare Pipe loop in a child process."""
    counter = Counter()
    while True:
        n = conn.recv()
        if n is None:
            return
        conn.send(counter.add(n))


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"n": 2_000, "repeats": 3, "rounds": 2}
    return {"n": 10_000, "repeats": 5, "rounds": 3}


# ---- child side: one contender, one workload ------------------------------------------------
def measure_one(workload: str, contender: str, n: int, repeats: int) -> dict[str, Any]:
    """Run in a fresh interpreter by ``isolated``: time ``n`` round trips, ``repeats`` times."""
    if contender == "hybridexec":
        import hybridexec as hx

        kind: Literal["thread", "process"] = (
            "process" if workload.startswith("process") else "thread"
        )
        ref = hx.spawn(Counter, kind=kind)
        ref.ask(Counter.add, 0).result()  # started
        if workload.endswith("seq"):

            def run() -> None:
                ask, add = ref.ask, Counter.add
                for _ in range(n):
                    ask(add, 1).result()
        else:

            def run() -> None:
                ask, add = ref.ask, Counter.add
                futures = [ask(add, 1) for _ in range(n)]
                for future in futures:
                    future.result()

        times = measure(run, repeats=repeats, warmup=1)
        ref.stop()
    elif contender.startswith("pykka"):
        import pykka

        class PykkaCounter(pykka.ThreadingActor):
            def __init__(self) -> None:
                super().__init__()
                self.value = 0

            def on_receive(self, message: Any) -> Any:
                self.value += message
                return self.value

            def add(self, n: int) -> int:
                self.value += n
                return self.value

        actor = PykkaCounter.start()
        proxy = actor.proxy()
        if contender == "pykka-proxy":

            def run() -> None:
                add = proxy.add
                for _ in range(n):
                    add(1).get()
        elif workload.endswith("seq"):

            def run() -> None:
                ask = actor.ask
                for _ in range(n):
                    ask(1)
        else:

            def run() -> None:
                ask = actor.ask
                futures = [ask(1, block=False) for _ in range(n)]
                for future in futures:
                    future.get()

        times = measure(run, repeats=repeats, warmup=1)
        actor.stop()
    elif contender == "raw-pipe":
        import hybridexec  # noqa: F401  same imports in both, same start method below

        ctx = multiprocessing.get_context("forkserver")
        conn, child_conn = ctx.Pipe()
        child = ctx.Process(target=_echo_loop, args=(child_conn,))
        child.start()
        conn.send(0)
        conn.recv()

        def run() -> None:
            send, recv = conn.send, conn.recv
            for _ in range(n):
                send(1)
                recv()

        times = measure(run, repeats=repeats, warmup=1)
        conn.send(None)
        child.join()
    else:
        raise ValueError(f"unknown contender {contender!r}")
    return {"times": times}


# ---- parent side ------------------------------------------------------------------------------
LABELS = {
    "hybridexec": "hybridexec",
    "pykka": "pykka ask",
    "pykka-proxy": "pykka proxy",
    "raw-pipe": "raw multiprocessing.Pipe",
}


def _collect(table: Table, workload: str, contenders: list[str], sizes: dict[str, int]) -> None:
    times: dict[str, list[float]] = {c: [] for c in contenders}
    errors: dict[str, str] = {}
    for _ in range(sizes["rounds"]):  # alternate, so that noise hits every contender alike
        for contender in contenders:
            if contender in errors:
                continue
            got = isolated(
                "benchmarks.bench_actors:measure_one",
                120.0,
                workload=workload,
                contender=contender,
                n=sizes["n"],
                repeats=sizes["repeats"],
            )
            if got.ok:
                times[contender].extend(got.value["times"])
            else:
                errors[contender] = got.error or "?"
    for contender in contenders:
        row_times = times[contender] or None
        per_call = fmt_seconds(min(row_times) / sizes["n"]) if row_times else "-"
        table.add(
            LABELS[contender], row_times, note=errors.get(contender, ""), **{"best/call": per_call}
        )


def run(quick: bool) -> None:
    """Entry point used by ``python -m benchmarks``."""
    sizes = _sizes(quick)
    n = sizes["n"]
    section("actors: ask round trips, thread actors vs pykka, process actors vs a raw Pipe")
    print(
        f"{n:,} asks per run; {sizes['rounds']} rounds x {sizes['repeats']} runs per "
        "contender, each round in a fresh interpreter, contenders alternating"
    )
    thread_peers = ["pykka", "pykka-proxy"] if peer_available("pykka") else []
    if not thread_peers:
        print("pykka not installed: pip install 'hybridexec[bench]' to compare with it")

    seq = Table(
        f"thread actor: {n:,} x ask().result(), one at a time",
        reference="hybridexec",
        items=n,
        extra_columns=["best/call"],
    )
    _collect(seq, "thread-seq", ["hybridexec", *thread_peers], sizes)
    seq.print()
    pipe = Table(
        f"thread actor: {n:,} asks sent, then {n:,} results read",
        reference="hybridexec",
        items=n,
        extra_columns=["best/call"],
    )
    _collect(pipe, "thread-pipe", ["hybridexec", *thread_peers[:1]], sizes)
    pipe.print()
    for table, label in ((seq, "one at a time"), (pipe, "pipelined")):
        hx, peer = table.row("hybridexec"), table.row("pykka ask")
        if hx and hx.median and peer and peer.median:
            ratio = peer.median / hx.median
            print(
                target_line(
                    f"thread actor asks/s >= pykka's ({label})",
                    ratio >= 1.0,
                    f"{ratio:.2f}x pykka ask",
                )
            )

    proc = Table(
        f"process actor: {n:,} x ask().result(), one at a time",
        reference="raw multiprocessing.Pipe",
        items=n,
        extra_columns=["best/call"],
    )
    _collect(proc, "process-seq", ["raw-pipe", "hybridexec"], sizes)
    proc.notes.append(
        "'faster by' here: the raw pipe is the floor; hybridexec adds the future, "
        "the handler lookup and a reader thread"
    )
    proc.print()
    overhead = proc.ratio("hybridexec", "raw multiprocessing.Pipe")
    if overhead is not None:
        print(
            target_line(
                "process actor round trip <= 2x a raw Pipe round trip",
                overhead <= 2.0,
                f"{overhead:.2f}x",
            )
        )
    proc_pipe = Table(
        f"process actor: {n:,} asks sent, then {n:,} results read",
        reference="hybridexec",
        items=n,
        extra_columns=["best/call"],
    )
    _collect(proc_pipe, "process-pipe", ["hybridexec"], sizes)
    proc_pipe.print()


if __name__ == "__main__":
    started = time.perf_counter()
    run("--quick" in sys.argv[1:])
    print(f"\n[bench_actors: {time.perf_counter() - started:.0f} s]")
