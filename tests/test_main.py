"""``python -m hybridexec info | demo``: run as users run them, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from hybridexec import __main__ as cli
from hybridexec import _demo

ROW = re.compile(
    r"^(?P<name>\S.*?)\s{2,}(?P<time>[\d.]+ s)\s+(?P<ratio>[\d.]+x)\s+"
    r"(?P<threads>\d+) / (?P<processes>\d+)$"
)


def _run(*args: str, timeout: float = 50.0) -> str:
    env = dict(os.environ, PYTHONWARNINGS="error")
    proc = subprocess.run(
        [sys.executable, "-m", "hybridexec", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def test_info_reports_machine_python_gil_start_method_shm_and_extras() -> None:
    out = _run("info")
    assert re.search(r"^CPUs\s+\d+ \(\d+ usable", out, re.M)
    assert re.search(r"^Python\s+\S+ \d+\.\d+\.\d+", out, re.M)
    assert re.search(r"^GIL enabled\s+(yes|no)", out, re.M)
    assert re.search(r"^start method\s+(forkserver|spawn|fork) ", out, re.M)
    assert re.search(r"^/dev/shm\s+", out, re.M)
    # The dev extra runs these tests, so it is installed.
    assert re.search(r"^  dev\s+installed$", out, re.M)


def test_quick_demo_compares_three_executors_and_says_where_tasks_ran() -> None:
    out = _run("demo", "--quick")
    rows = {m["name"]: m for m in map(ROW.match, out.splitlines()) if m is not None}
    assert set(rows) == {
        "stdlib ThreadPoolExecutor",
        "stdlib ProcessPoolExecutor",
        "hybridexec.Executor (1st run)",
        "hybridexec.Executor (2nd run)",
    }
    calls = len(_demo.workload(quick=True)[0])
    threads = rows["stdlib ThreadPoolExecutor"]
    processes = rows["stdlib ProcessPoolExecutor"]
    assert (int(threads["threads"]), int(threads["processes"])) == (calls, 0)
    assert (int(processes["threads"]), int(processes["processes"])) == (0, calls)
    for name in ("hybridexec.Executor (1st run)", "hybridexec.Executor (2nd run)"):
        assert int(rows[name]["threads"]) + int(rows[name]["processes"]) == calls


def test_extras_lists_each_requirement_with_its_installed_version() -> None:
    found = cli.extras()
    assert found is not None
    assert "pytest" in dict(found["dev"])
    assert all(version is not None for _, version in found["dev"])


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "info" in capsys.readouterr().err


def test_info_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info"]) == 0
    assert "GIL enabled" in capsys.readouterr().out
