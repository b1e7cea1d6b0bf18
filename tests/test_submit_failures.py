"""A submit that cannot be carried out fails at the call, with nothing left queued (I1).

When the system refuses what a lane needs to start (a descriptor, a thread), the ``submit``
that needed it raises, and its call must never run later behind the caller's back: the caller
was told it failed, and may well submit it again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    import hybridexec as hx

    def mark(path, tag):
        with open(path, "a") as f:
            f.write(tag + "\\n")
        return tag

    if __name__ == "__main__":
        path = sys.argv[1]
        ex = hx.Executor()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        hog = []
        try:
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            ex.options(kind="process").submit(mark, path, "first")
        except OSError as exc:
            print("refused", exc.errno, flush=True)
        else:
            print("accepted", flush=True)
        for fd in hog:
            os.close(fd)
        print(ex.options(kind="process").submit(mark, path, "second").result(timeout=30))
        ex.shutdown(wait=True)
        print(open(path).read().split())
    """
)


def test_a_process_lane_that_cannot_start_refuses_the_call_and_never_runs_it(
    tmp_path: Path,
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    marks = tmp_path / "marks.txt"
    out = subprocess.run(
        [sys.executable, str(script), str(marks)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith("refused 24"), out.stdout  # EMFILE, at the call
    assert lines[1] == "second"
    assert lines[2] == "['second']"  # the refused call never ran
