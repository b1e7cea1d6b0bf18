"""Functions of a ``__main__`` script in worker processes: as ``concurrent.futures`` has them.

A process lane's worker imports the script as ``__main__`` (its guarded part excepted), so a
function defined at the script's top level goes by reference and runs in the worker's copy of
the script: the initializer and the tasks share its globals (by value, each call carried its
own copy of them, and a global the initializer set was never seen by a task). Functions the
worker cannot find under their name (defined in the ``if __name__ == "__main__":`` block,
redefined there, lambdas) still go by value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = textwrap.dedent(
    """
    import concurrent.futures as cf
    import json, multiprocessing, sys
    import hybridexec as hx

    LIMIT = None
    SCALE = 1

    def init(limit):
        global LIMIT
        LIMIT = limit

    def capped(x):
        return min(x, LIMIT)

    def scaled(x):
        return x * SCALE

    def shadowed(x):
        return "top level"

    if __name__ == "__main__":
        SCALE = 10  # the guard runs in the parent only

        def shadowed(x):
            return "guard"

        def local(x):
            return x + 1

        got = {}
        ctx = multiprocessing.get_context("forkserver")
        with cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=init, initargs=(3,)) as ex:
            got["stdlib"] = [list(ex.map(capped, range(6))), list(ex.map(scaled, range(3)))]
        with hx.Executor(kind="process", max_processes=2, initializer=init, initargs=(3,)) as ex:
            got["hx"] = [list(ex.map(capped, range(6))), list(ex.map(scaled, range(3)))]
            got["by_value"] = [ex.submit(shadowed, 0).result(), ex.submit(local, 1).result(),
                               ex.submit(lambda: 7).result()]
            got["hx.map"] = hx.map(capped, range(6), kind="process", executor=ex)
        print(json.dumps(got))
    """
)


def test_script_functions_share_the_globals_their_initializer_set(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # As concurrent.futures: the initializer's global is seen, the guard's assignment is not.
    assert got["stdlib"] == [[0, 1, 2, 3, 3, 3], [0, 1, 2]]
    assert got["hx"] == got["stdlib"]
    assert got["hx.map"] == [0, 1, 2, 3, 3, 3]
    # What the worker cannot find under its name still runs, by value.
    assert got["by_value"] == ["guard", 2, 7]
