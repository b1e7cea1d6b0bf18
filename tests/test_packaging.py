"""The release artefacts: sdist and wheel build, pass ``twine check``, install and work.

Slow (a build in an isolated environment, then a fresh virtual environment): ``make test`` and
CI run it; ``-m "not slow"`` leaves it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import hybridexec

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT, cwd=ROOT)
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_build_makes_an_sdist_and_a_wheel_named_after_the_version(dist: Path) -> None:
    version = hybridexec.__version__
    assert _one(dist, "*.whl").name == f"hybridexec-{version}-py3-none-any.whl"
    assert _one(dist, "*.tar.gz").name == f"hybridexec-{version}.tar.gz"


def test_twine_check_passes(dist: Path) -> None:
    out = _run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    assert "PASSED" in out
    assert "FAILED" not in out


def test_wheel_holds_the_package_and_py_typed_only(dist: Path) -> None:
    with zipfile.ZipFile(_one(dist, "*.whl")) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "hybridexec/py.typed" in names
    assert "hybridexec/__init__.py" in names
    assert "hybridexec/_process/_worker.py" in names
    top = {n.split("/")[0] for n in names}
    assert top == {"hybridexec", f"hybridexec-{hybridexec.__version__}.dist-info"}, top
    assert f"Version: {hybridexec.__version__}" in metadata
    assert "Requires-Python: >=3.10" in metadata
    assert "Provides-Extra: progress" in metadata
    assert "Provides-Extra: docs" in metadata
    assert "Description-Content-Type: text/markdown" in metadata


def test_sdist_holds_sources_tests_and_docs(dist: Path) -> None:
    with tarfile.open(_one(dist, "*.tar.gz")) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "src/hybridexec/py.typed",
        "src/hybridexec/_version.py",
        "tests/conftest.py",
        "docs/index.md",
    ):
        assert needed in names, needed


SMOKE = textwrap.dedent(
    """
    import os, sys, time
    import hybridexec as hx

    here = os.path.dirname(hx.__file__)
    assert "site-packages" in here, here
    assert os.path.exists(os.path.join(here, "py.typed"))
    print("version", hx.__version__)

    def square(x):
        return x * x

    if __name__ == "__main__":
        assert hx.map(square, range(50), kind="process") == [x * x for x in range(50)]
        assert hx.map(square, range(50), kind="thread") == [x * x for x in range(50)]
        with hx.Executor(max_processes=1) as ex:
            fut = ex.options(timeout=0.5).submit(time.sleep, 60)
            try:
                fut.result()
            except hx.TaskTimeoutError:
                pass
            else:
                sys.exit("no timeout")
        print("smoke ok")
    """
)


def test_wheel_installs_into_a_fresh_venv_and_works(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", _one(dist, "*.whl"), cwd=tmp_path)
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE, encoding="utf-8")
    out = _run(python, script, cwd=tmp_path)
    assert f"version {hybridexec.__version__}" in out
    assert "smoke ok" in out
