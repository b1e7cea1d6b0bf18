"""An outside tester's cases for round 13 (tester 13e): ``hybridexec.Executor`` judged as a
drop-in ``concurrent.futures.Executor`` with code written for the standard library.

Each test names the defect of the tester's report (E1, E2, ...) in its docstring and fails on
main be365b7 (Python 3.11). Differences the documentation owns (``wait(FIRST_EXCEPTION)`` and a
result that fails to rebuild, docs/timeouts-and-killing.md; callbacks dropped after 1 s at
interpreter exit, docs/guarantees.md) are in the report, not here.
"""

from __future__ import annotations

import threading

import pytest

import hybridexec as hx

pytestmark = pytest.mark.timeout(30)


def test_thread_name_prefix_none_means_the_default_name() -> None:
    """E1: ``hx.Executor(thread_name_prefix=None)`` names its threads ``None_0``, ``None_1``...
    ``ThreadPoolExecutor(thread_name_prefix=None)`` (and ``""``) falls back to its default
    name (``thread_name_prefix or "ThreadPoolExecutor-%d"``), and hybridexec does so for ``""``
    (``hybridexec-thread-<n>``) but not for None: ``_executor.py:164`` stores
    ``str(thread_name_prefix)``, turning None into the text ``"None"``. The docstring says
    ``thread_name_prefix`` is "As in ``ThreadPoolExecutor``" with the default
    ``hybridexec-thread-<n>``; code that forwards an optional prefix (None when unset) gets
    threads named "None_<n>".
    """
    with hx.Executor(kind="thread", thread_name_prefix=None) as ex:  # (typed str | None now)
        name = ex.submit(lambda: threading.current_thread().name).result(timeout=10)
    assert not name.startswith("None"), name
    assert name.startswith("hybridexec-thread-"), name
