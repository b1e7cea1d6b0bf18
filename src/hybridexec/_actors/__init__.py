"""The actor room: the message pump, with actors in a thread or in a process of their own.

What the rest of the package may use is named here; everything else in the room is private.

Layers inside the room (each imports only those above it)::

    _base       states, the bounded mailbox, errors, the on_error hook
    _thread     thread actors
    _child      the child loop of a process actor
    _process    process actors, parent side: senders and one supervisor thread per actor
    _ref        ActorRef, spawn, and the registries that stop actors at shutdown and exit
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports, loaded

if TYPE_CHECKING:
    from ._base import OnError as OnError
    from ._ref import ActorKind as ActorKind
    from ._ref import ActorRef as ActorRef
    from ._ref import spawn as spawn
    from ._ref import spawn_actor as spawn_actor

__all__ = ["ActorKind", "ActorRef", "OnError", "spawn", "spawn_actor", "stop_actors"]

__getattr__, __dir__ = exports(
    __name__,
    {
        "ActorKind": "._ref",
        "ActorRef": "._ref",
        "OnError": "._base",
        "spawn": "._ref",
        "spawn_actor": "._ref",
    },
)


def stop_actors(owner: object, *, drain: bool = True, wait: bool = True) -> None:
    """Stop every actor ``owner`` (an Executor's router) spawned: its shutdown, its drop.

    Imports nothing: while no actor was ever made, the actor modules are not loaded.
    """
    ref = loaded(f"{__name__}._ref", wait=True)  # an import under way: its actor is stopped
    if ref is not None:
        ref.stop_actors(owner, drain=drain, wait=wait)
