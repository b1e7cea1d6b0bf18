"""A thread task runs in a copy of its submitter's context, empty or not (issue 17's storm path).

A submitter whose context is empty hands no copy to the task: the thread lane gives it a new
empty context as it starts (``_futures.FRESH_CONTEXT``). Either way what a task sets is its own.
"""

from __future__ import annotations

import contextvars

import hybridexec

VAR: contextvars.ContextVar[int] = contextvars.ContextVar("VAR")


def _read_then_set(x: int) -> int:
    before = VAR.get(-1)
    VAR.set(x)
    return before


def test_tasks_from_an_empty_context_never_see_each_others_values() -> None:
    def submit_all() -> list[int]:
        with hybridexec.Executor(max_threads=1) as ex:  # one thread runs every task
            return _waves(ex)

    assert contextvars.Context().run(submit_all) == [-1] * 1000


def test_tasks_see_the_submitters_values_and_keep_their_own() -> None:
    def submit_all() -> tuple[list[int], int]:
        VAR.set(7)
        with hybridexec.Executor(max_threads=1) as ex:
            return _waves(ex), VAR.get()

    assert contextvars.Context().run(submit_all) == ([7] * 1000, 7)


def _waves(ex: hybridexec.Executor) -> list[int]:
    # Waves, each waited for: once its first calls are learned the function goes by the
    # express path (``_decisions.py``), the storm's, where an empty context is not copied.
    out: list[int] = []
    for _ in range(5):
        futures = [ex.submit(_read_then_set, x) for x in range(200)]
        out += [f.result(timeout=30) for f in futures]
    return out
