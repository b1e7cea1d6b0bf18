"""A group's replies, sent by a worker's helper thread while a long call runs.

A worker answers a group's calls (``_group.py``) every ``FLUSH_SECONDS``, after a call ends.
A call that then runs long would keep the replies of the calls before it in the worker until
it ends: the parent, which knows which call runs only as the first one it has no reply for,
would take one of those finished calls for the running one. ``cancel()`` of the long call
could not stop it (its worker is killed once its own call is the first without a reply), nor
could shutdown tell it apart. A helper thread, started with the worker's first group, sends
the replies waiting once the running call has run ``FLUSH_SECONDS``; it checks every
``FLUSH_SECONDS * 2`` while a group runs, and ends after ``LINGER_SECONDS`` without one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from .._serialize import PROTOCOL, pack_exception
from ._outcomes import encode_group_reply
from ._ring import Ring

LINGER_SECONDS = 0.1
"""The helper thread ends after this long without a group (the next group starts another)."""


class Pending:
    """A group's replies not sent yet, shared by the worker's main thread and its helper.

    The main thread appends each call's outcome and, every ``FLUSH_SECONDS``, sends them
    (``send``, under ``lock``); ``since`` is when the running call started (None
    between calls), which the helper reads to send them while a long call runs.
    """

    __slots__ = (
        "active",
        "cpu_started",
        "every",
        "failures",
        "flushed",
        "helper",
        "lock",
        "ring",
        "rss",
        "seconds",
        "since",
        "token",
        "values",
        "write",
    )

    def __init__(
        self,
        write: Callable[[bytes, bool], None],
        rss: Callable[[], int | None],
        every: float,
        ring: Ring | None,
    ) -> None:
        self.lock = threading.Lock()
        self.active = threading.Event()  # set while a group runs
        self.helper: threading.Thread | None = None  # alive while groups come (LINGER_SECONDS)
        self.write = write  # writes a frame on the worker's reply pipe
        self.rss = rss  # the worker's resident memory, when the lane asks for it
        self.every = every  # FLUSH_SECONDS
        self.ring = ring  # the calls finished and not answered, for the lane should we die
        self.values: list[Any] = []
        self.failures: dict[int, bytes] | None = None
        self.seconds: list[float] = []
        self.cpu_started = 0.0
        self.flushed = 0.0
        self.since: float | None = None
        self.token = 0  # the group running

    def begin(self, token: int) -> None:
        """Group ``token`` starts: nothing pending, the clocks set, the helper awake."""
        self.token = token
        with self.lock:
            self.values, self.failures, self.seconds = [], None, []
            self.cpu_started, self.flushed = time.process_time(), time.perf_counter()
            if self.ring is not None:
                self.ring.begin(token)
            self.active.set()
            if self.helper is None:
                self.helper = threading.Thread(
                    target=self._help, name="hybridexec-group-replies", daemon=True
                )
                self.helper.start()

    def end(self) -> None:
        """The group ended (answered in full): the helper sleeps."""
        self.since = None
        self.active.clear()

    def skipped(self, index: int, last: bool) -> bool:
        """Whether the lane cancelled call ``index`` while it waited: then it is not started.

        Its outcome, a ``CancelledError`` nobody reads, takes its place in the reply.
        """
        ring = self.ring
        if ring is None or not ring.cancelled(self.token, index):
            return False
        err = concurrent.futures.CancelledError("cancelled while it waited in its worker")
        self.done(None, pack_exception(err), 0.0, last)
        return True

    def done(self, value: Any, failure: bytes | None, seconds: float, last: bool) -> None:
        """A call ended (``value``, or ``failure`` packed): pending, recorded, sent when due.

        Raises:
            OSError: a reply's write failed (the parent is gone).
        """
        with self.lock:
            self.since = None
            if failure is not None:
                if self.failures is None:
                    self.failures = {}
                self.failures[len(self.values)] = failure
            self.values.append(value)
            self.seconds.append(seconds)
            if self.ring is not None and not self._record(self.ring, value, failure, seconds):
                self.send()  # not recorded (no room, no pickle): answered now, with the rest
            elif last or time.perf_counter() - self.flushed >= self.every:
                self.send()

    def _record(self, ring: Ring, value: Any, failure: bytes | None, seconds: float) -> bool:
        # A value is plain, or pickled alone already (_outcomes.alone): unless it would not
        # pickle there either, which the reply's encoding reports (it is answered now).
        try:
            record = pickle.dumps((value, failure, seconds), PROTOCOL)
        except BaseException:  # a __reduce__ may raise SystemExit too
            return False
        return ring.add(record)

    def send(self) -> None:
        """Write the reply of the calls pending (under the lock); then none are.

        Raises:
            OSError: the write failed (the parent is gone).
        """
        cpu, rss = time.process_time(), self.rss()
        values, failures, seconds = self.values, self.failures, self.seconds
        self.write(encode_group_reply(values, failures, seconds, cpu - self.cpu_started, rss), True)
        if self.ring is not None:
            self.ring.answered(len(values))
        self.values, self.failures, self.seconds = [], None, []
        self.cpu_started, self.flushed = cpu, time.perf_counter()

    def _help(self) -> None:
        clock, every = time.perf_counter, self.every
        while True:
            if not self.active.wait(LINGER_SECONDS):
                with self.lock:
                    if not self.active.is_set():  # (begin() starts another from now on)
                        self.helper = None
                        return
                continue
            time.sleep(every * 2)
            with self.lock:
                since = self.since
                if since is not None and self.values and clock() - since >= every:
                    with contextlib.suppress(Exception):  # the parent is gone: the main
                        self.send()  # thread finds out as it writes
