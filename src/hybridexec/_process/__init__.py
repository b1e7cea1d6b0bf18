"""The process room: worker processes for the process lane and for process actors.

What the rest of the package may use is named here; everything else in the room is private.

Layers inside the room (each imports only those above it)::

    _frames     the one framing of every pipe (length-prefixed frames)
    _child      the child side shared by workers and actors: process group, death signal,
                lifeline watcher (``enter_child``)
    _zygote     the fork server and the guardian forked from this process where that is
                safe (a cold start without new interpreters)
    _guardian   the guardian process that kills children when the parent dies, and then
                unlinks its segments and temporary directory
    _supervise  the parent side shared by lanes and actors: start methods, the lifeline pipe
    _handle     ``Child``: hold, signal (the whole tree) and reap a child, never a recycled
                pid; the lane's workers and process actors alike
    _worker     the lane's child entry: a plain loop over the worker's private pipes, and
                the lane's messages (a worker loads only what it needs)
    _outcomes   how a worker's replies are pickled (a result that will not pickle fails alone)
    _ring       a worker's shared-memory record of the group calls it finished and has not
                answered: read by the lane when the worker dies (no call runs twice)
    _flush      a group's replies, and the worker's helper thread that sends them while a
                call runs long (a long call's cancel finds it running)
    _memory     per-task memory limits in the worker (``MemoryLimited``), and their errors
    _oom        map items killed by SIGKILL (the OOM killer): found, and run again alone
    _wire       encoding a call in the submitting thread (plain data: the C pickler alone)
    _supervision  the manager's workers: start, retire, reap, replace, kill
    _crashes    how the call a dead worker was running ends (a batch: item by item)
    _schedule   which worker gets each task; a few short calls sent ahead (pipelining)
    _manager    the lane's manager thread: reads every worker pipe, owns the bookkeeping
    _lane       ProcessLane, the front: records work, wakes the manager (once per batch),
                or writes a call to an idle worker the sleeping manager offered (direct path)

Data flow of the lane::

    caller threads                manager thread                     worker processes
    --------------                --------------                     ----------------
    ProcessLane.submit()  ->  pending deque + wake-up pipe  ->  frames on the worker's call pipe
      (nothing in flight: the call frame straight to an offered idle worker)
                              wait(reply pipes, sentinels,          run the calls in order,
                                   wake-up, next deadline)    <-   one reply frame each
    futures resolved  <-      results, crashes, deadlines
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ._child import enter_child as enter_child
    from ._child import resident_memory as resident_memory
    from ._frames import FrameReader as FrameReader
    from ._frames import pipe_budget as pipe_budget
    from ._frames import write_frame as write_frame
    from ._guardian import guard as guard
    from ._handle import Child as Child
    from ._lane import ProcessLane as ProcessLane
    from ._memory import MemoryLimited as MemoryLimited
    from ._oom import oom_killed as oom_killed
    from ._oom import retry_killed as retry_killed
    from ._rebuild import exception_of as exception_of
    from ._rebuild import failed as failed
    from ._rebuild import failure as failure
    from ._rebuild import runs_no_code as runs_no_code
    from ._supervise import DEFAULT_GRACE as DEFAULT_GRACE
    from ._supervise import START_BACKOFF as START_BACKOFF
    from ._supervise import START_GIVE_UP as START_GIVE_UP
    from ._supervise import default_start_method as default_start_method
    from ._supervise import get_context as get_context
    from ._supervise import lifeline as lifeline
    from ._threadlimits import LocalPools as LocalPools
    from ._threadlimits import local_pools as local_pools
    from ._threadlimits import usable_cpus as usable_cpus

__all__ = [
    "Child",
    "DEFAULT_GRACE",
    "FrameReader",
    "LocalPools",
    "MemoryLimited",
    "ProcessLane",
    "START_BACKOFF",
    "START_GIVE_UP",
    "default_start_method",
    "enter_child",
    "exception_of",
    "failed",
    "failure",
    "get_context",
    "guard",
    "lifeline",
    "local_pools",
    "oom_killed",
    "pipe_budget",
    "resident_memory",
    "retry_killed",
    "runs_no_code",
    "usable_cpus",
    "write_frame",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "DEFAULT_GRACE": "._supervise",
        "pipe_budget": "._frames",
        "Child": "._handle",
        "FrameReader": "._frames",
        "LocalPools": "._threadlimits",
        "MemoryLimited": "._memory",
        "ProcessLane": "._lane",
        "START_BACKOFF": "._supervise",
        "START_GIVE_UP": "._supervise",
        "default_start_method": "._supervise",
        "enter_child": "._child",
        "exception_of": "._rebuild",
        "failed": "._rebuild",
        "failure": "._rebuild",
        "get_context": "._supervise",
        "guard": "._guardian",
        "lifeline": "._supervise",
        "local_pools": "._threadlimits",
        "oom_killed": "._oom",
        "resident_memory": "._child",
        "retry_killed": "._oom",
        "runs_no_code": "._rebuild",
        "usable_cpus": "._threadlimits",
        "write_frame": "._frames",
    },
)
