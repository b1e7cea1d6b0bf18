"""A database connection owned by one thread actor, behind an asyncio loop that stays responsive.

SQLite objects belong to the thread that created them. The actor builds its connection in its
own thread, every query runs there, one at a time, and the event loop only awaits futures.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import hybridexec as hx


class Database:
    """Owns one SQLite connection: made, used and closed in the actor's thread."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT)")

    def insert(self, name: str) -> int:
        cursor = self.conn.execute("INSERT INTO events (name) VALUES (?)", (name,))
        self.conn.commit()
        return cursor.lastrowid or 0

    def count(self) -> int:
        (n,) = self.conn.execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def slow_report(self) -> int:
        """A heavy query (about 0.3 s); SQLite releases the GIL while it runs."""
        sql = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)"
            " SELECT count(*) FROM c"
        )
        (n,) = self.conn.execute(sql).fetchone()
        return int(n)

    def on_stop(self) -> None:
        self.conn.close()  # runs in the actor's thread, after the last message


async def heartbeat(ticks: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        ticks.append(time.perf_counter())
        await asyncio.sleep(0.01)


async def serve(db: hx.ActorRef[Database]) -> None:
    ticks: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(ticks, stop))

    # Many coroutines write at once; the actor runs the inserts one at a time, in order.
    ids = await asyncio.gather(
        *(asyncio.wrap_future(db.ask(Database.insert, f"event {i}")) for i in range(100))
    )
    assert ids == list(range(1, 101))

    started = time.perf_counter()
    report = await asyncio.wrap_future(db.ask(Database.slow_report))
    finished = time.perf_counter()
    stop.set()
    await beat

    during = [t for t in ticks if started <= t <= finished]
    print(f"slow query: {finished - started:.2f} s; the loop ticked {len(during)} times meanwhile")
    assert report == 1_000_000
    assert len(during) >= 2, "the event loop was blocked by the query"
    assert await asyncio.wrap_future(db.ask(Database.count)) == 100


if __name__ == "__main__":
    db = hx.spawn(Database, ":memory:")
    asyncio.run(serve(db))
    db.stop()  # handles what is queued, then on_stop() closes the connection
    print("database actor:", db.state)
