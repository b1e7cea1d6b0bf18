"""``_lazy.loaded``: a module this very thread is importing is not handed out half made.

Round 16: with some test orders, an executor's router was collected while ``hybridexec._actors``
was being imported in the same thread; its finalizer asked for the module with ``wait=True``
and got it half made (``AttributeError: partially initialized module 'hybridexec._actors' has
no attribute 'stop_actors'``), reported as an unraisable exception.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from hybridexec._lazy import loaded

pytestmark = pytest.mark.timeout(30)


def test_a_module_half_imported_by_this_thread_counts_as_not_loaded(tmp_path: Path) -> None:
    name = "hx_lazy_probe_module"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            from hybridexec._lazy import loaded

            SEEN = []
            SEEN.append(loaded({name!r}, wait=True))  # what a finalizer would see, mid-import
            SEEN.append(loaded({name!r}))
            DEFINED_LATER = True
            """
        ),
        encoding="utf-8",
    )
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        assert module.SEEN == [None, None]
        assert loaded(name) is module
        assert loaded(name, wait=True) is module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
