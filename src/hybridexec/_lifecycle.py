"""The one place that knows about interpreter exit and ``os.fork``.

Rooms register hooks here; nothing imports upward to reach another room at exit or fork.

Exit: one ``atexit`` callback runs the hooks phase by phase, in this order::

    EXECUTORS  the default executor finishes its running work (pending work is cancelled)
    QUEUED     other executors' calls still waiting for a verdict are placed on their lanes
    LANES      process lanes still open lose their workers, at once
    ACTORS     actors still alive are stopped, then killed after a short grace
    SEGMENTS   shared-memory segments this process owns are removed

After Ctrl-C (the main script ended with an uncaught ``KeyboardInterrupt``, or one stopped an
exit hook's wait) nothing waits for running work: the hooks stop what runs and the interpreter
exits with status 130. CPython exits with 130 only if a flag set when the script ended is still
set at the very end, and any ``exec()`` of a string during exit clears it (``namedtuple``,
``dataclass`` and the import of many modules do that): the hooks re-arm it once they ran
(``_rearm_keyboard_interrupt``), which also sets it after a Ctrl-C during the hooks.

It is registered after ``multiprocessing.util`` is imported, so it runs before
multiprocessing's own exit hook (``atexit`` is last in, first out), which joins child processes
and would wait forever for a live worker.

Fork: in the child of an ``os.fork()`` (the user's, or the ``fork`` start method's), every
fork hook runs before any other code. Each room marks what it inherited as *foreign* and closes
the parent's ends of pipes (above all the lifeline's write end, or the parent's workers would
outlive a SIGKILLed parent while the child lives); nothing inherited is ever used, stopped or
killed on the parent's behalf. Hooks run with only the forking thread alive: they must not
take locks another thread may have held at the fork; they replace them.

``generation()`` counts forks since this interpreter started: an object that records it at
creation knows it was inherited when the number differs.

Threads: what may be done only while this process has a single thread (``os.fork`` of a helper
process: a lock held by another thread would stay held in the copy) waits for ``starting_thread``,
which the package calls just before it starts a thread of its own: the hooks registered with
``before_first_thread`` run then, once, while it is still safe, and only if they are ever needed.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable

EXECUTORS = 0
QUEUED = 1
LANES = 2
ACTORS = 3
SEGMENTS = 4

logger = logging.getLogger("hybridexec")

_lock = threading.Lock()
_exit_hooks: list[tuple[int, int, Callable[[], None]]] = []
_fork_hooks: list[Callable[[], None]] = []
_thread_hooks: list[Callable[[], object]] = []
_atexit_registered = False
_finalized_in = 0  # the process that looked for a multiprocessing exit finalizer (0: none)
_exiting = False
exited = False
"""True once the exit hooks ran: every lane refuses new work from then on, as the standard
library's pools do after interpreter shutdown. What runs later (an ``atexit`` handler
registered before the package's first use) would see its work accepted and then abandoned."""
_stopped_at_exit = False  # Ctrl-C stopped an exit hook: the rest wait for nothing; status 130
_generation = 0


def generation() -> int:
    """How many times this process's ancestry forked since the package was imported."""
    return _generation


def exit_if_forked(born: int) -> None:
    """End this process if user code forked it since ``born`` (a ``generation()``).

    A library thread's loop calls it as user code returns into it: in a child that code
    forked, the loop must not go on (take the parent's next task or message, wait for ever).
    """
    if _generation != born:
        os._exit(0)


def exiting() -> bool:
    """True once interpreter exit started running the hooks."""
    return _exiting


def closed_error() -> RuntimeError:
    """The error of a submit to a lane shut down, or to any after the exit hooks ran."""
    if exited:
        return RuntimeError("cannot schedule new futures after interpreter shutdown")
    return RuntimeError("cannot schedule new futures after shutdown")


def interrupted() -> bool:
    """True when the interpreter is exiting because of Ctrl-C.

    It ended the main script, or it stopped an exit hook's wait for running work.
    """
    # last_value: set by PyErr_Print, which reports the exception that ended the main script.
    return _exiting and (
        _stopped_at_exit or isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    )


def on_exit(phase: int, hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit, in ``phase`` order (then in registration order)."""
    global _atexit_registered, _finalized_in
    with _lock:
        if all(h is not hook for _, _, h in _exit_hooks):
            _exit_hooks.append((phase, len(_exit_hooks), hook))
        if _atexit_registered and _finalized_in == os.getpid():
            return
        # Imported first so that its exit hook is registered before ours and runs after.
        import multiprocessing.util

        if not _atexit_registered:  # a forked child inherits it: atexit's list is copied
            atexit.register(run_exit_hooks)
            _atexit_registered = True
        _finalized_in = os.getpid()
        if multiprocessing.parent_process() is not None:
            # A multiprocessing child (a process actor, the user's Process) joins its own
            # children as it ends, before atexit (which a forked one never runs): the hooks
            # must stop our workers first, or it waits for them for ever. Registered in each
            # such process: a child forked from a parent that registered (or from a fork
            # server) does not inherit the parent's finalizers.
            multiprocessing.util.Finalize(None, run_exit_hooks, exitpriority=100)


def run_first_at_exit() -> None:
    """Run the exit hooks before every ``atexit`` callback registered so far.

    For a library imported after the package's first use whose own exit callback closes what
    the hooks must stop first (``distributed`` closes its clusters, waiting for running work).
    """
    with _lock:
        if _atexit_registered and _finalized_in == os.getpid():
            atexit.unregister(run_exit_hooks)
            atexit.register(run_exit_hooks)  # last in, first out


def on_fork(hook: Callable[[], None]) -> None:
    """Run ``hook`` in the child of every later ``os.fork()``."""
    with _lock:
        if all(h is not hook for h in _fork_hooks):
            _fork_hooks.append(hook)


def before_first_thread(hook: Callable[[], object]) -> None:
    """Run ``hook`` once, at the next ``starting_thread()`` (see the module docstring)."""
    with _lock:
        if all(h is not hook for h in _thread_hooks):
            _thread_hooks.append(hook)


def starting_thread() -> None:
    """Called just before the package starts a thread: runs the ``before_first_thread`` hooks."""
    if not _thread_hooks:  # the common case: nothing waits (a read, no lock)
        return
    with _lock:
        hooks = list(_thread_hooks)
        _thread_hooks.clear()
    for hook in hooks:
        try:
            hook()
        except Exception:  # a helper not made now is made later, the slow way
            logger.exception("hybridexec thread hook %r failed", hook)


_hooks_run: set[int] = set()


def run_exit_hooks() -> None:
    """Run the exit hooks now (at interpreter exit, and as a worker process ends)."""
    global _exiting, _stopped_at_exit, exited
    _exiting = True
    done = _hooks_run  # a second call (atexit after multiprocessing's) runs only new ones
    while True:
        with _lock:
            todo = sorted(e for e in _exit_hooks if e[1] not in done)
        if not todo:
            exited = True
            if interrupted():
                _rearm_keyboard_interrupt()
            return
        _, seq, hook = todo[0]
        done.add(seq)
        try:
            hook()
        except KeyboardInterrupt:  # Ctrl-C while exit waited for running work: as if it had
            _stopped_at_exit = True  # ended the script (the next hooks wait for nothing)
        except BaseException:  # one failing hook must not keep the others from running
            logger.exception("hybridexec exit hook %r failed", hook)


def _rearm_keyboard_interrupt() -> None:
    # CPython sets its "unhandled KeyboardInterrupt" flag (exit status 130, by re-raising
    # SIGINT) when code run from a *string* ends with KeyboardInterrupt, and clears it each
    # time such code starts; running this restores it (3.10 to 3.14).
    try:
        exec("raise KeyboardInterrupt", {})
    except KeyboardInterrupt:
        pass


def _after_fork_in_child() -> None:
    global _generation, _lock
    _generation += 1
    _lock = threading.Lock()
    _thread_hooks.clear()  # the parent's: its lanes are foreign here
    for hook in list(_fork_hooks):
        try:
            hook()
        except BaseException:
            logger.exception("hybridexec fork hook %r failed", hook)


os.register_at_fork(after_in_child=_after_fork_in_child)
