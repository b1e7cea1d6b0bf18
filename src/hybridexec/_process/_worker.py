"""The child side of the process lane: a plain loop over the worker's private pipes.

The worker reads calls from one pipe and writes one reply per call to the other, in the order
the calls came, and writes each reply before it starts the next call. The manager relies on
that order: it may send a few calls ahead (pipelining), and when a worker dies, the oldest call
without a reply is the one that was running; the ones behind it never started.

The messages are defined here, with the child, so that a worker loads only what it needs::

    parent -> worker   a call: ``(fn_bytes, items, batch)`` pickled, one frame per call
                       (``batch``: a bool or a batch's number, negated: it stops at its
                       first failed item); ``STOP`` (empty): exit
    worker -> parent   a reply: ``(outcomes, elapsed, cpu, rss)`` pickled, one frame per call
    parent -> worker   a group: ``[fn_bytes per call, args per call]`` pickled, in one frame
    worker -> parent   its replies: flagged frames, each a 4-byte count of the calls it answers
                       then ``(values, failures, seconds per call, cpu, rss)`` pickled
                       (``failures``: None, or ``{index: packed exception}``; ``_group.py``)
    worker -> parent   a batch's first outcomes, ahead: a flagged frame, count ``n | AHEAD``,
                       then a reply's pickle; the batch's reply has the rest
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from .. import _faults, _lifecycle, _serialize
from .._exceptions import BrokenExecutorError, SerializationError
from .._serialize import adopt, dumps_callable, loads, pack_exception
from .._shm import note_lent, sweep_while_idle
from ._child import enter_child, flush_log_queues, resident_memory, unpickle
from ._frames import FrameReader, write_frame
from ._outcomes import PLAIN, alone, encode_group_reply, encode_reply, ends_map, not_run, set_apart
from ._ring import Ring
from ._threadlimits import apply_thread_limits

_FN_CACHE_SIZE = 16

CPU_CLOCK_MIN = 0.0001  # seconds per call under which calls are not timed on the CPU clock

STOP = b""

INIT_FAILED = -1
"""The ``rss`` of a reply from a worker whose initializer failed: retire it."""

SPIN_SECONDS = 0.0001
"""After a tiny call its caller waits for, seconds a worker watches its pipe before sleeping."""

SPIN_CALL_MAX = 0.0002
"""Calls shorter than this (seconds) are tiny."""

AHEAD = 1 << 31
"""The top bit of a group reply's count: the frame has the first outcomes of a running batch."""

FLUSH_SECONDS = 0.0005
"""While running a group of calls (or a batch), the worker answers those done this often."""


class Reply(NamedTuple):
    """How a call or batch ended: ``(ok, value or packed exception)`` per item, seconds, RSS."""

    outcomes: list[tuple[bool, Any]]
    elapsed: float
    cpu: float
    rss: int | None


class Initializer:
    """A worker initializer and its arguments, pickled only as a worker process starts.

    Only then do objects that may only be inherited (a ``multiprocessing.Lock`` or ``Queue``,
    as tqdm passes) agree to pickle. Callables go as tasks do; the ``__main__`` globals an
    initializer sent by value set are laid over the tasks' (``_serialize.run_initializer``).
    """

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_initializer, (dumps_callable(self.fn), self.args))


def _load_initializer(fn_bytes: bytes, args: tuple[Any, ...]) -> Initializer:
    return Initializer(loads(fn_bytes), args)


def worker_main(
    requests: Any,
    replies: Any,
    lifeline: Any,
    initializer: Initializer | None,
    report_memory: bool,
    death_signal: bool,
    faults: dict[str, _faults.Fault] | None = None,
    thread_limits: dict[str, str] | None = None,
    ring: Any = None,
) -> None:
    """Run calls read from ``requests`` until told to stop or the parent goes away.

    ``requests``/``replies``: the child's pipe ends (``Connection``s, which every start method
    carries); ``faults``: the tests' injected faults, or None; ``ring``: see ``_ring.py``.
    """
    global _ring
    _ring = ring
    _faults.install(faults)  # first: enter_child has a point of its own
    enter_child(lifeline, death_signal)
    apply_thread_limits(thread_limits or {})  # before the initializer: it may load BLAS

    init_error: bytes | None = None
    if initializer is not None:
        try:
            _serialize.run_initializer(initializer.fn, initializer.args)
        except BaseException as exc:
            # Logged where ProcessPoolExecutor's workers log it, for code that listens there.
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=True
            )
            err = BrokenExecutorError(f"the worker initializer raised {exc!r}")
            err.__cause__ = exc
            init_error = pack_exception(err)
            flush_log_queues()

    _lifecycle.on_fork(_forked)
    try:
        _serve(FrameReader(requests.fileno()), replies.fileno(), init_error, report_memory)
    finally:
        # A task may have started executors of its own: their workers are our non-daemon
        # children, which multiprocessing joins as this worker exits; exit hooks stop them.
        _lifecycle.run_exit_hooks()


def _serve(reader: FrameReader, out: int, init_error: bytes | None, report_memory: bool) -> None:
    functions: dict[bytes, Any] = {}
    # Waking a sleeping process costs tens of microseconds on a small VM, as much as a tiny
    # call's whole round trip. A call whose frame is flagged has a caller waiting for it alone
    # (the lane's direct path): after a tiny one, that caller's next call often follows at
    # once, so the pipe is watched a moment before sleeping in read(), while the last such gap
    # was that short (the CPU spent is bounded). Calls of a stream never make it watch.
    probe = select.poll()
    probe.register(reader.fd, select.POLLIN)
    sent = 0.0  # when the reply to the last call went, if that call was flagged and tiny
    short = True  # the last gap between such a reply and the next call was short
    while True:
        if not reader.has_frame():
            if sent and short:
                _watch(probe, sent + SPIN_SECONDS)
            sweep_while_idle(probe.poll)  # kept mappings of segments unlinked since: gone
        try:
            data = reader.read()
        except (EOFError, OSError):
            return
        if sent:
            short = time.perf_counter() - sent <= 2 * SPIN_SECONDS
        flagged = reader.flagged
        if data == STOP:
            return
        if init_error is not None:
            # Every call sent here fails with the initializer's error. The reply says so
            # (INIT_FAILED), and the manager retires this worker once the calls it already
            # sent are answered: exiting here could strand calls still in the pipe.
            count, group = _fail_all(data)
            try:
                if group:
                    failures = dict.fromkeys(range(count), init_error)
                    seconds = [0.0] * count
                    reply = encode_group_reply([None] * count, failures, seconds, 0.0, INIT_FAILED)
                    _write(out, reply, True)
                else:
                    failed = [(False, init_error)] * count
                    _write(out, encode_reply(failed, 0.0, 0.0, INIT_FAILED))
            except OSError:
                return
            continue
        try:
            ran = _run(data, functions, out, report_memory)
        except EOFError:  # a group's reply found the parent gone
            return
        if ran is None:  # a group: its replies are written
            if _in_forked_child:
                os._exit(0)
            sent = 0.0
            continue
        outcomes, elapsed, cpu = ran
        if _faults.ACTIVE:
            _faults.hit("worker.after_call")  # raising here ends the worker: a crash
        if _in_forked_child:
            # The task forked and its child returned into this loop: only the worker itself
            # may answer on the pipe.
            os._exit(0)
        rss = resident_memory() if report_memory else None
        reply = encode_reply(set_apart(outcomes), elapsed, cpu, rss)
        del outcomes  # then what is still alive of the call was kept by the task (note_lent)
        try:
            _write(out, note_lent(reply))
        except OSError:  # the parent is gone (EPIPE): nobody to answer
            return
        sent = time.perf_counter() if flagged and elapsed < SPIN_CALL_MAX else 0.0


def _watch(probe: select.poll, until: float) -> None:
    """Return when a call is in the pipe, or at ``until`` (``time.perf_counter``)."""
    clock, yield_cpu = time.perf_counter, os.sched_yield
    while not probe.poll(0) and clock() < until:
        yield_cpu()  # whoever else waits for this CPU (the caller, on a small machine) first


_in_forked_child = False


def _forked() -> None:
    global _in_forked_child
    _in_forked_child = True


def _write(out: int, data: bytes, flagged: bool = False) -> None:
    """``write_frame``, but never from a child that user code forked in this worker.

    User code runs here while a task's arguments are unpickled, while it runs, and while its
    result or exception is pickled (a ``__reduce__`` that forks): a child that returns from
    any of these must not answer on the worker's pipe, nor read the next call from it.
    """
    _exit_if_forked()
    write_frame(out, data, flagged)


def _exit_if_forked() -> None:
    if _in_forked_child:
        os._exit(0)


def _fail_all(data: bytes) -> tuple[int, bool]:
    """How many calls a frame holds; True for a group frame."""
    try:
        message = pickle.loads(data)
        if type(message) is list:
            return len(message[1]), True
        return len(message[1]), False
    except Exception:
        return 1, False


def _load_function(fn_bytes: bytes, functions: dict[bytes, Any]) -> list[Any]:
    entry = functions.get(fn_bytes)
    if entry is None:
        entry = [adopt(unpickle(fn_bytes)), None]
        if len(functions) >= _FN_CACHE_SIZE:
            functions.clear()
        functions[fn_bytes] = entry
    return entry


def _run_group(
    calls: list[Any], functions: dict[bytes, Any], out: int, report_memory: bool
) -> None:
    """Run a group's calls in order; answer those done every ``FLUSH_SECONDS`` and at the end.

    Each call is timed alone (it sizes later groups and feeds the router); the CPU clock is
    read once per reply. A call whose function will not unpickle fails alone. The reply holds
    the values in a list and the failures apart: no pair per call to make and unpickle. While
    a call runs long, a helper thread sends the replies of the calls before it (``_flush``).
    """
    global _pending
    pending = _pending
    if pending is None:
        from ._flush import Pending  # with the first group: a worker of single calls has none

        memory, write = resident_memory if report_memory else lambda: None, partial(_write, out)
        pending = _pending = Pending(write, memory, FLUSH_SECONDS, _attached_ring())
    wires, arglists, token = calls  # token: the group's number (its ring names it)
    clock = time.perf_counter
    last = len(arglists) - 1
    wire: bytes | None = None  # the callable's bytes loaded last (a group repeats them)
    fn: Any = None
    pending.begin(token)
    try:
        for index, args in enumerate(arglists):
            if pending.skipped(index, index == last):
                continue  # cancelled by the lane while it waited here
            started = pending.since = clock()
            failure: bytes | None = None
            try:
                if wires[index] is not wire:
                    wire = None
                    fn = _load_function(wires[index], functions)[0]
                    wire = wires[index]
                if _faults.ACTIVE:
                    _faults.hit("worker.before_call")
                value = fn(*args)
                value = value if type(value) in PLAIN else alone(value)
            except BaseException as exc:  # SystemExit in a task ends the task only
                if wire is None:  # the function did not unpickle
                    err: BaseException = SerializationError(
                        f"the worker could not unpickle the task: {exc!r}"
                    )
                    err.__cause__ = exc
                    exc = err
                failure, value = pack_exception(exc), None
            ended = clock()
            if _in_forked_child:
                return  # the task forked: only the worker itself answers (see _serve)
            if _faults.ACTIVE:
                _faults.hit("worker.after_call")  # raising here ends the worker: a crash
            try:
                pending.done(value, failure, ended - started, index == last)
            except OSError:  # the parent is gone (EPIPE): nobody to answer
                raise EOFError from None
    finally:
        pending.end()


_pending: Any = None  # the worker's ``_flush.Pending``, made with its first group
_ring: Any = None  # what carries the descriptor of the worker's ring (``_ring.py``), if any
_mapped: Any = None  # the worker's ring, mapped by its first group or batch


def _attached_ring() -> Any:
    """The worker's ``_ring.Ring``, mapped once; None without one (or no descriptor for it)."""
    global _mapped, _ring
    if _mapped is None and _ring is not None:
        try:
            _mapped = Ring.attach(_ring.fileno())
        except (OSError, ImportError, ValueError):  # EMFILE (mmap's import too), ENOMEM
            _ring = None
    return _mapped


def _run(
    data: bytes, functions: dict[bytes, Any], out: int, report_memory: bool
) -> tuple[list[tuple[bool, Any]], float, float] | None:
    """Run a call or batch; return its outcomes (those not sent ahead), wall and CPU seconds.

    The times leave out unpickling (a first call imports the function's module): they size
    later batches and feed the router. The CPU clock (a system call) is not read for a
    function whose last call took under ``CPU_CLOCK_MIN``: CPU time is then the wall time.
    """
    try:
        message = unpickle(data)
        if type(message) is list:  # a group (see _group.py): it answers for itself
            _run_group(message, functions, out, report_memory)
            return None
        fn_bytes, items, batch = message
        entry = _load_function(fn_bytes, functions)
    except EOFError:
        raise
    except BaseException as exc:
        err = SerializationError(f"the worker could not unpickle the task: {exc!r}")
        err.__cause__ = exc
        return [(False, pack_exception(err))], 0.0, 0.0
    finally:
        _exit_if_forked()  # an argument's unpickling forked: the call is not run twice
    fn, last = entry[0], entry[1]
    clock = last is None or last >= CPU_CLOCK_MIN
    started = mark = time.perf_counter()
    cpu_started = time.process_time() if clock else 0.0
    outcomes: list[tuple[bool, Any]] = []
    append = outcomes.append
    sent = 0  # outcomes of this batch sent ahead of its reply
    last_index = len(items) - 1
    # Should the worker die, only items with no outcome in the parent run again: each goes in
    # the ring, or ahead on the pipe if not (every FLUSH_SECONDS with no ring; count | AHEAD).
    ring = _attached_ring() if type(batch) is int and last_index > 0 else None
    if ring is not None:
        ring.begin(abs(batch))  # negative: the batch stops at its first failure (_group.py)
    for index, (args, kwargs) in enumerate(items):
        try:
            if _faults.ACTIVE:
                _faults.hit("worker.before_call")
            append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # SystemExit and KeyboardInterrupt in a task end the task only
            append((False, pack_exception(exc)))
            if type(batch) is int and (batch < 0 or ends_map(exc)):  # the rest: for nothing
                outcomes += not_run(last_index - index)  # (and end the loop, just below)
        if _in_forked_child or len(outcomes) > last_index:
            break
        if ring is not None:
            if ring.record_outcome(outcomes[-1]):
                continue
        elif time.perf_counter() - mark < FLUSH_SECONDS:
            continue
        try:
            ahead = (len(outcomes) - sent) | AHEAD
            reply = encode_reply(outcomes[sent:], 0.0, 0.0, None)
            _write(out, ahead.to_bytes(4, "big") + reply, True)  # (kept arrays: at the end)
        except OSError:
            pass  # the parent is gone: the reply's write finds it too
        if ring is not None:
            ring.answered(len(outcomes) - sent)
        sent, mark = len(outcomes), time.perf_counter()
    elapsed = time.perf_counter() - started
    entry[1] = elapsed / len(items) if items else 0.0
    outcomes = outcomes[sent:] if sent else outcomes
    return outcomes, elapsed, (time.process_time() - cpu_started) if clock else elapsed
