"""Every Python example in README.md and docs/*.md runs, and every page is in the site.

The ```python blocks of one page run in order, in one fresh interpreter, sharing one namespace
(a page may build on its earlier blocks), as code typed into ``python -c`` or a notebook would.
Blocks check their own results with ``assert``. A block preceded by the line

    <!-- skip-test -->

(blank lines between are allowed) is not run: only for what cannot run here, such as a Ray
cluster. A page of mkdocs' own syntax outside fences is not parsed at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- skip-test -->"
PAGE_TIMEOUT = 120.0

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the first line of code
    language: str
    code: str
    skipped: bool


def blocks_of(path: Path) -> list[Block]:
    """Return the fenced code blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent = len(match["indent"])
        fence = match["fence"]
        language = (match["info"].split() or [""])[0].strip("{}.").lower()
        previous = next((text.strip() for text in reversed(lines[:i]) if text.strip()), "")
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        code = "\n".join(text[indent:] for text in lines[start:end])
        found.append(Block(path, start + 1, language, code, previous == SKIP_MARKER))
        i = end + 1
    return found


def pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks_of(path) if b.language in ("python", "py", "python3")]


# The page runs like code typed into `python -c`: in the real __main__ namespace, each block
# compiled with the page's file name and line numbers so a traceback points into the page.
DRIVER = """
import json, sys
namespace = sys.modules["__main__"].__dict__
for path, line, code in json.load(sys.stdin):
    exec(compile("\\n" * (line - 1) + code, path, "exec"), namespace)
"""


def run_page(path: Path) -> subprocess.CompletedProcess[str]:
    runnable = [
        (str(path.relative_to(ROOT)), b.line, b.code) for b in python_blocks(path) if not b.skipped
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=PAGE_TIMEOUT,
        check=False,
    )


PAGES_WITH_CODE = [p for p in pages() if any(not b.skipped for b in python_blocks(p))]


@pytest.mark.parametrize(
    "path", PAGES_WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in PAGES_WITH_CODE]
)
def test_page_examples_run(path: Path) -> None:
    result = run_page(path)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"
    # A clean page warns about nothing (a leaked semaphore, an unclosed executor...).
    assert "Warning" not in result.stderr, result.stderr


def test_readme_and_docs_have_examples() -> None:
    assert python_blocks(ROOT / "README.md")
    assert len(PAGES_WITH_CODE) >= 4


def test_readme_quick_start_is_make_demo_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    console = [b.code for b in blocks_of(ROOT / "README.md") if b.language == "console"]
    assert console
    assert console[0] in quick
    commands = [line.split("#")[0].strip() for line in console[0].splitlines()]
    assert commands == ["make demo", "make test"]


def test_skip_marker_is_used_sparingly() -> None:
    skipped = [b for p in pages() for b in python_blocks(p) if b.skipped]
    assert len(skipped) <= 3, [f"{b.path.name}:{b.line}" for b in skipped]


def test_every_page_is_in_the_site_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:", 1)[1]
    listed = set(re.findall(r"([\w./-]+\.md)\b", nav))
    on_disk = {p.name for p in DOCS.glob("*.md")}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert listed <= on_disk, sorted(listed - on_disk)


def test_api_reference_lists_every_public_name() -> None:
    import hybridexec

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^ +- (\w+)$", api, flags=re.MULTILINE))
    missing = sorted(set(hybridexec.__all__) - listed - {"__version__"})
    assert not missing, f"add {missing} to a `members:` list in docs/api.md"


# ---- the block parser itself ---------------------------------------------------------------


def test_blocks_of_finds_languages_lines_and_skip_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n"
        "\n"
        "```python\n"
        "x = 1\n"
        "```\n"
        "\n"
        "<!-- skip-test -->\n"
        "\n"
        "```python\n"
        "import ray\n"
        "```\n"
        "\n"
        "```console\n"
        "make test\n"
        "```\n"
        "\n"
        "````markdown\n"
        "```python\n"
        "inner = True\n"
        "```\n"
        "````\n",
        encoding="utf-8",
    )
    blocks = blocks_of(page)
    assert [(b.language, b.line, b.code, b.skipped) for b in blocks] == [
        ("python", 4, "x = 1", False),
        ("python", 10, "import ray", True),
        ("console", 14, "make test", False),
        ("markdown", 18, "```python\ninner = True\n```", False),
    ]


def test_failing_example_reports_the_page_line(tmp_path: Path) -> None:
    page = tmp_path / "bad.md"
    page.write_text("Text\n\n```python\nx = 1\nassert x == 2\n```\n", encoding="utf-8")
    runnable = [(str(page), b.line, b.code) for b in python_blocks(page)]
    result = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(runnable),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert f'File "{page}", line 5' in result.stderr
