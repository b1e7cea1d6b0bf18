"""hybridexec's own fork server: a copy of this process that only hybridexec's children use.

``_zygote.start_fork_server`` forks multiprocessing's server loop from this process (every
module imported already, so a worker starts in milliseconds). That copy holds the modules as
they were at that moment and none of the program's files (``_zygote``: every descriptor is
pointed at ``/dev/null`` there). It is installed here, in a ``ForkServer`` object of its own,
never as multiprocessing's process-wide one: the program's own ``forkserver`` pools (an
``mp.Pool``, a ``ProcessPoolExecutor``, a PyTorch ``DataLoader``) start multiprocessing's
server the usual way, a fresh interpreter, and see their modules and files as the standard
library has them.

hybridexec's lanes and process actors start their children through ``context()``: the
``forkserver`` context with a ``Process`` whose ``Popen`` connects to this server when there
is one, and to multiprocessing's otherwise (when a copy was not safe to fork). The protocol
spoken is multiprocessing's own (``ForkServer.connect_to_new_process``), as in its Popen.
"""

from __future__ import annotations

import io
import os
from multiprocessing import context as mp_context
from multiprocessing import popen_forkserver
from typing import Any

from .. import _lifecycle

_server: Any = None
"""The ``ForkServer`` whose process is hybridexec's copy (``install``), or None."""


def install(server: Any) -> None:
    """Make ``server`` (a ``ForkServer`` set to the copy just forked) the one ours use."""
    global _server
    _server = server


def running() -> bool:
    """Whether hybridexec's own fork server was forked (it serves every later child)."""
    return _server is not None


def _forget() -> None:
    # In a forked child: the parent's server is not its own; its "alive" pipe's write end,
    # held here, would keep that server alive after the parent died.
    global _server
    server, _server = _server, None
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        try:
            os.close(alive)
        except OSError:
            pass


_lifecycle.on_fork(_forget)


class Popen(popen_forkserver.Popen):
    """multiprocessing's forkserver ``Popen``, connecting to hybridexec's server if any."""

    def _launch(self, process_obj: Any) -> None:
        server = _server
        if server is None:
            super()._launch(process_obj)  # type: ignore[misc]
        else:
            _launch(self, process_obj, server)


class Process(mp_context.ForkServerProcess):
    """A ``forkserver`` process started through ``Popen``."""

    @staticmethod
    def _Popen(process_obj: Any) -> Popen:
        return Popen(process_obj)


class Context(mp_context.ForkServerContext):
    """The ``forkserver`` context whose processes are ``Process``."""

    Process = Process


_context = Context()


def context() -> Context:
    """The ``forkserver`` context hybridexec starts its children with."""
    return _context


def _launch(popen: Any, process_obj: Any, server: Any) -> None:
    """Start ``process_obj`` through ``server``: what multiprocessing's Popen does with its own."""
    from multiprocessing import forkserver, reduction, spawn, util

    data = io.BytesIO()
    mp_context.set_spawning_popen(popen)  # (what may pickle only to start a process: a Lock)
    try:
        reduction.dump(spawn.get_preparation_data(process_obj._name), data)
        reduction.dump(process_obj, data)
    finally:
        mp_context.set_spawning_popen(None)
    popen.sentinel, write_end = server.connect_to_new_process(popen._fds)
    # The child watches a copy of the data pipe's write end to learn that its parent is gone.
    kept = os.dup(write_end)
    close_fds: Any = util.close_fds  # type: ignore[attr-defined]
    popen.finalizer = util.Finalize(popen, close_fds, (kept, popen.sentinel))
    with open(write_end, "wb", closefd=True) as pipe:
        pipe.write(data.getbuffer())
    popen.pid = forkserver.read_signed(popen.sentinel)
