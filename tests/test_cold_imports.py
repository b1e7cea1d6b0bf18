"""The path to a first process result imports only what it needs (issue 17, cold start).

Each module below was loaded by every executor once, and costs a cold start ~1 ms or more:
cloudpickle (with uuid and platform) until a callable or call needs it, ctypes until a
measurement or a thread deadline, the classifier's measuring machinery until a call is
classified, ``Explanation`` until something is explained, inspect and dataclasses (no
dataclass is made on the way), ``concurrent.futures.process`` until a worker crashes, the
shared-memory segments until an array or a handle needs them. A fresh interpreter runs one
process task and reports what it and its worker loaded, so the gain cannot slip away.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

ON_FIRST_USE = [
    "cloudpickle",
    "uuid",
    "platform",
    "hybridexec._routing._measure",
    "hybridexec._routing._probe",
    "hybridexec._routing._ticket",
    "hybridexec._routing._entry",
    "hybridexec._routing._explain",
    "inspect",  # and dataclasses, which imports it: ~5 ms between them in a fresh interpreter
    "dataclasses",
    # WorkerCrashedError's base, with queue and multiprocessing.queues: ~1.3 ms until a crash
    "concurrent.futures.process",
    "queue",
    # shared-memory segments (with mmap) and handles, until an array or a handle needs them
    "hybridexec._shm._segment",
    "hybridexec._shm._objects",
    "mmap",
    "resource",  # memory limits, until a call has a max_memory
    "dis",  # until a callable pickled by value is kept (_fncache), ~3 ms
    "hybridexec._actors",  # until an actor is made
    "hybridexec._backends",  # until a distributed backend is asked for
]
PARENT_ONLY = ["ctypes"]  # the fork server loads it for its workers' death signal

SCRIPT = """
import json, posixpath, sys
import hybridexec
from hybridexec._serialize import dumps_callable

LAZY = {lazy!r}
probe = "sorted(m for m in __import__('sys').modules if m in %r)" % (LAZY,)
with hybridexec.Executor(max_processes=1) as ex:
    lane = ex.options(kind="process")
    assert lane.submit(divmod, 7, 2).result(timeout=60) == (3, 1)
    assert lane.submit(posixpath.join, "a", "b").result(timeout=60) == "a/b"
    worker = lane.submit(eval, probe).result(timeout=60)
    parent = sorted(m for m in sys.modules if m in LAZY)
    plain = [dumps_callable(f) for f in (posixpath.join, divmod)]
    import cloudpickle  # what the C pickler wrote is what cloudpickle writes

    same = plain == [cloudpickle.dumps(f, 5) for f in (posixpath.join, divmod)]
    # A callable only cloudpickle can pickle still goes, cloudpickle loaded for it.
    by_value = lane.submit(lambda x: x * 2, 21).result(timeout=60)
print(json.dumps({{"parent": parent, "worker": worker, "same": same, "by_value": by_value}}))
"""


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="the process lane's fork server: POSIX")
def test_first_process_result_loads_nothing_it_does_not_need() -> None:
    code = textwrap.dedent(SCRIPT.format(lazy=ON_FIRST_USE + PARENT_ONLY))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=80, check=True
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["parent"] == [], got
    assert [m for m in got["worker"] if m in ON_FIRST_USE] == [], got
    assert got["same"] is True
    assert got["by_value"] == 42
