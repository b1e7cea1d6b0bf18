"""Task functions of the benchmarks, in a module every worker can import by name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

from hybridexec._demo import calibrate, cpu_work, io_work


def tiny(x: int) -> int:
    """A trivial call: the cost is all in the dispatch."""
    return x + 1


# The demo's workload functions: pure-Python work holding the GIL for ``n`` iterations (fixed
# work, not fixed time), and a blocking wait standing for I/O.
cpu_loop = cpu_work
io_sleep = io_work


def warm(seconds: float) -> int:
    """Used to start every worker of a pool before timing: each call blocks a worker a while."""
    time.sleep(seconds)
    return os.getpid()


def calibrate_cpu_loop(seconds: float) -> int:
    """Return the ``cpu_loop`` size that takes about ``seconds`` on this machine, now."""
    return calibrate(seconds, trials=7, n=100_000)


# ---- faults ---------------------------------------------------------------------------------
def crash_task(i: int, crash_index: int, stamp_path: str, seconds: float) -> tuple[int, int, float]:
    """Return ``(i, pid, start)``; task ``crash_index`` writes its time of death and exits.

    ``start`` is ``time.monotonic()``, a system-wide clock on Linux, so the parent compares
    times taken in different workers.
    """
    start = time.monotonic()
    if i == crash_index:
        with open(stamp_path, "w") as f:
            f.write(repr(time.monotonic()))
        os._exit(1)
    time.sleep(seconds)
    return (i, os.getpid(), start)


def sleep_long(seconds: float = 60.0) -> float:
    """A task that blocks far longer than its timeout."""
    time.sleep(seconds)
    return seconds


def gil_c_loop() -> int:
    """Hold the GIL inside one C call that never returns to the eval loop for hours.

    ``sum`` over a ``range`` runs entirely in C: no bytecode boundary, so no Python signal
    handler, thread switch or asynchronous exception can run until it ends.
    """
    return sum(range(10**15))


# ---- routing and oracle ---------------------------------------------------------------------
def mode_task(mode: str, n: int) -> int:
    """An argument-dependent function: ``"io"`` sleeps ``n`` us, ``"cpu"`` loops ``n`` times."""
    if mode == "io":
        time.sleep(n / 1e6)
        return 0
    total = 0
    for i in range(n):
        total += i
    return total


def drift_task(state_path: str, n: int, io_seconds: float) -> int:
    """A function whose behaviour changes over time, not with its arguments.

    It reads the file ``state_path`` at each call (state outside the program, as a cache that
    goes cold or a remote service that slows down): ``"cpu"`` loops ``n`` times in Python,
    anything else sleeps ``io_seconds``. Its arguments never change, so the classifier sees
    one function and one key throughout.
    """
    with open(state_path) as f:
        state = f.read()
    if state == "cpu":
        return cpu_work(n)
    time.sleep(io_seconds)
    return 0


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256`` (GIL-free C) with a picklable result."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def zlib_size(data: bytes) -> int:
    """``zlib.compress`` (GIL-free C) returning the compressed size only."""
    import zlib

    return len(zlib.compress(data))


def matmul_trace(a: Any) -> float:
    """A BLAS matrix product (GIL-free, maybe multithreaded) and its trace."""
    import numpy as np

    return float(np.trace(a @ a))


def sorted_median(chunk: Any) -> float:
    """Sort a numpy chunk (GIL-free C, a temporary copy) and return its median."""
    import numpy as np

    ordered = np.sort(chunk)
    return float(ordered[len(ordered) // 2])


def socket_call(port: int, delay_ms: int, size: int) -> int:
    """One request to ``serve()`` on 127.0.0.1: it answers ``size`` bytes after ``delay_ms``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{delay_ms} {size}\n".encode())
        received = 0
        while chunk := sock.recv(65536):
            received += len(chunk)
    return received


def serve() -> None:
    """A server standing for a remote service, run in its own process (``start_server``).

    Prints its port, then answers each connection's ``"<delay_ms> <size>\\n"`` request with
    ``size`` bytes after ``delay_ms`` ms, any number of connections at once.
    """
    import asyncio

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        delay_ms, size = (int(x) for x in (await reader.readline()).split())
        await asyncio.sleep(delay_ms / 1e3)
        writer.write(b"x" * size)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_server() -> tuple[subprocess.Popen[str], int]:
    """Start ``serve()`` in a new interpreter; return the process and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from benchmarks._workloads import serve; serve()"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def stop_server(proc: subprocess.Popen[str]) -> None:
    """End a server started by ``start_server``."""
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
