"""Six fetches in thread actors feed matrix work to process actors.

Fetching is I/O: six thread actors wait for their six sources at the same time. Multiplying
matrices in pure Python holds the GIL: two process actors do it in parallel, each keeping its
own running state.
"""

from __future__ import annotations

import concurrent.futures
import random
import time

import hybridexec as hx

Matrix = list[list[float]]


class Fetcher:
    """One data source; a thread actor, since fetching is waiting."""

    def __init__(self, source: int) -> None:
        self.source = source

    def fetch(self, n: int) -> Matrix:
        time.sleep(0.2)  # stands in for a network round trip
        rng = random.Random(self.source)
        return [[rng.random() for _ in range(n)] for _ in range(n)]


class MatrixWorker:
    """A process actor: pure-Python number crunching, plus state kept between messages."""

    def __init__(self) -> None:
        self.multiplied = 0

    def gram_trace(self, a: Matrix) -> float:
        """The trace of A times its transpose, computed the long way (n**3 products)."""
        n = len(a)
        product = [
            [sum(x * y for x, y in zip(a[i], a[j], strict=True)) for j in range(n)]
            for i in range(n)
        ]
        self.multiplied += 1
        return sum(product[i][i] for i in range(n))

    def count(self) -> int:
        return self.multiplied


if __name__ == "__main__":
    started = time.perf_counter()
    with hx.Executor() as ex:  # its shutdown stops the actors it spawned
        fetchers = [ex.spawn(Fetcher, source) for source in range(6)]
        workers = [ex.spawn(MatrixWorker, kind="process") for _ in range(2)]

        fetches = [fetcher.ask(Fetcher.fetch, 150) for fetcher in fetchers]
        traces = []
        for i, fetched in enumerate(concurrent.futures.as_completed(fetches)):
            traces.append(workers[i % 2].ask(MatrixWorker.gram_trace, fetched.result()))
        results = [t.result() for t in traces]
        counts = [w.ask(MatrixWorker.count).result() for w in workers]

    elapsed = time.perf_counter() - started
    print(f"{len(results)} matrices in {elapsed:.2f} s; per worker: {counts}")
    assert len(results) == 6
    assert all(r > 0 for r in results)
    assert counts == [3, 3]
