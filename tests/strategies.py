"""Hypothesis strategies for the property tests, in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from . import chaos_helpers as ch
from . import helpers

FUNCTIONS: list[Callable[[int], Any]] = [
    helpers.square,
    ch.negate,
    ch.double,
    ch.to_text,
    ch.pair,
    ch.bits,
    ch.safe_mod,
    ch.fail_on_seven,
]
"""Picklable by reference under every start method; ``fail_on_seven`` raises for some items."""

functions = st.sampled_from(FUNCTIONS)
kinds = st.sampled_from(["thread", "process", "auto"])
chunksizes = st.none() | st.integers(min_value=1, max_value=40)
integers = st.integers(min_value=-(10**6), max_value=10**6)


def _span(length: int, start: int) -> list[int]:
    return list(range(start, start + length))


# Short random lists find edge cases; long runs (up to 3,000 items) make map batch its calls.
inputs = st.lists(integers, max_size=40) | st.builds(
    _span, st.integers(min_value=0, max_value=3000), integers
)


@dataclass(frozen=True)
class MapCase:
    """One call of ``hybridexec.map``."""

    fn: Callable[[int], Any]
    items: list[int]
    kind: str
    ordered: bool
    chunksize: int | None


map_cases = st.builds(
    MapCase,
    fn=functions,
    items=inputs,
    kind=kinds,
    ordered=st.booleans(),
    chunksize=chunksizes,
)


@dataclass(frozen=True)
class Submission:
    """One task of a cancel plan: where it runs, how long it takes, when it is cancelled.

    ``cancel_after`` is None (never cancelled) or how many other submissions come first.
    """

    kind: str
    seconds: float
    cancel_after: int | None


submissions = st.builds(
    Submission,
    kind=kinds,
    seconds=st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05]),
    cancel_after=st.none() | st.integers(min_value=0, max_value=10),
)
cancel_plans = st.lists(submissions, min_size=1, max_size=40)


@dataclass(frozen=True)
class ImapCancel:
    """An ``imap`` whose iterator is cancelled after ``take`` results."""

    items: int
    take: int
    kind: str
    ordered: bool
    chunksize: int | None


imap_cancels = st.builds(
    ImapCancel,
    items=st.integers(min_value=1, max_value=1000),
    take=st.integers(min_value=0, max_value=300),
    kind=kinds,
    ordered=st.booleans(),
    chunksize=chunksizes,
)
