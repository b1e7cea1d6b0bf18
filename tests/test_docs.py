"""Every Python example in README.md and docs/*.md runs as written, and every page is in the site.

Each ```python block is an example a reader may copy into a file and run: the tests save it as
a script and run it with ``python script.py`` in a fresh interpreter, in an empty directory,
with a deadline. So a block must be complete (its own imports) and must guard work that starts
processes with ``if __name__ == "__main__":`` (worker processes import the script again).
Blocks check their own results with ``assert``. Two markers, on the line before a block (blank
lines between are allowed), change that:

    <!-- continues -->

the block continues the example above it: it runs in the same script, after the blocks above
it back to the nearest block without this marker (a tutorial that builds on one cluster);

    <!-- skip-test -->

the block is not run: only for what cannot run here, such as a Ray cluster. A page of mkdocs'
own syntax outside fences is not parsed at all.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- skip-test -->"
CONTINUES_MARKER = "<!-- continues -->"
EXAMPLE_TIMEOUT = 90.0

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the first line of code
    language: str
    code: str
    skipped: bool
    continues: bool = False


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
        found.append(
            Block(
                path,
                start + 1,
                language,
                code,
                skipped=previous == SKIP_MARKER,
                continues=previous == CONTINUES_MARKER,
            )
        )
        i = end + 1
    return found


def pages() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks_of(path) if b.language in ("python", "py", "python3")]


@dataclass(frozen=True)
class Example:
    """One script: a block, and the blocks that continue it."""

    path: Path
    blocks: tuple[Block, ...]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.blocks[0].line}"

    def script(self) -> str:
        """The blocks at their page lines, so a traceback's line numbers are the page's."""
        lines: list[str] = []
        for block in self.blocks:
            lines += [""] * (block.line - 1 - len(lines))
            lines += block.code.splitlines()
        return "\n".join(lines) + "\n"


def examples_of(path: Path) -> list[Example]:
    """The runnable examples of a page: each block with the blocks that continue it."""
    found: list[list[Block]] = []
    for block in python_blocks(path):
        if block.skipped:
            continue
        if block.continues:
            assert found, f"{path.name}:{block.line} continues nothing"
            found[-1].append(block)
        else:
            found.append([block])
    return [Example(path, tuple(blocks)) for blocks in found]


def run_script(script: Path, timeout: float = EXAMPLE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python script`` in its own directory and session; on timeout kill its whole group."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.Popen(
        [sys.executable, script.name],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers too are killed on a timeout
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{script.name} still ran after {timeout} s (hangs):\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


EXAMPLES = [example for page in pages() for example in examples_of(page)]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_as_a_script(example: Example, tmp_path: Path) -> None:
    script = tmp_path / f"{example.path.stem}_{example.blocks[0].line}.py"
    script.write_text(example.script(), encoding="utf-8")
    result = run_script(script)
    assert result.returncode == 0, f"{example.name} failed:\n{result.stdout}\n{result.stderr}"
    # A clean example warns about nothing (a leaked semaphore, an unclosed executor...), and
    # prints no traceback (a worker that ran the script's top level again prints one and dies,
    # and the script may still exit 0).
    assert "Warning" not in result.stderr, result.stderr
    assert not _tracebacks(result.stderr), result.stderr


_DASK_INFO = re.compile(r"^\S+ \S+ - distributed\.\S+ - INFO - ")
"""A log record of dask's at INFO (``Batched Comm Closed``, as a cluster closes, with the
traceback of its ``CommClosedError``): dask's own, and not always printed."""


def _tracebacks(stderr: str) -> list[str]:
    """The tracebacks on ``stderr`` that are not part of a dask INFO log record."""
    lines = stderr.splitlines()
    return [
        line
        for at, line in enumerate(lines)
        if line.startswith("Traceback") and not (at and _DASK_INFO.match(lines[at - 1]))
    ]


UNGUARDED = {
    "docs/distributed.md:16": "its Dask workers are threads of this process (processes=False), "
    "and the page says when to guard",
}
"""Examples whose top level may do work unguarded, each with its reason."""
DEFINITIONS = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_guards_its_work(example: Example) -> None:
    """A reader copies an example into a script: its work sits under the ``__main__`` guard.

    Whether an example's calls start processes depends on routing (a busy machine, a bigger
    input), and a worker re-imports the script (docs/getting-started.md, "Guard your
    script"): so every top-level statement that calls something, other than imports and
    definitions, is under ``if __name__ == "__main__":``.
    """
    if example.name in UNGUARDED:
        return
    tree = ast.parse(example.script())
    for statement in tree.body:
        if isinstance(statement, DEFINITIONS) or _is_main_guard(statement):
            continue
        calls = [n for n in ast.walk(statement) if isinstance(n, (ast.Call, ast.Await))]
        assert not calls, f"{example.name}: line {statement.lineno} runs unguarded"


def _is_main_guard(statement: ast.stmt) -> bool:
    test = statement.test if isinstance(statement, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def test_readme_and_docs_have_examples() -> None:
    assert examples_of(ROOT / "README.md")
    assert len({e.path for e in EXAMPLES}) >= 4


def test_readme_says_how_to_install() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    console = [b.code for b in blocks_of(ROOT / "README.md") if b.language == "console"]
    assert any(line.strip() == "pip install hybridexec" for b in console for line in b.split("\n"))
    assert readme.index("pip install hybridexec") < readme.index("## Quick start")


def test_readme_quick_start_is_make_demo_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    console = [
        b.code for b in blocks_of(ROOT / "README.md") if b.language == "console" and b.code in quick
    ]
    assert len(console) == 1
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


def test_api_index_names_every_public_name_once() -> None:
    # docs/api.md must read on GitHub too, where the mkdocstrings directives render as nothing.
    import hybridexec

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    indexed = re.findall(r"^\| \[`hx\.(\w+)`\]\(#hybridexec\.(\w+)\) \| \S", api, flags=re.M)
    assert all(name == anchor for name, anchor in indexed), indexed
    names = [name for name, _ in indexed]
    assert len(names) == len(set(names)), names
    assert set(names) == set(hybridexec.__all__) - {"__version__"}


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


def test_blocks_of_finds_continuations(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n<!-- continues -->\n\n```python\nassert x == 1\n```\n"
        "\n```python\ny = 2\n```\n",
        encoding="utf-8",
    )
    examples = examples_of(page)
    assert [[b.line for b in e.blocks] for e in examples] == [[2, 8], [12]]
    assert examples[0].script() == "\nx = 1\n\n\n\n\n\nassert x == 1\n"


def test_failing_example_reports_the_page_line(tmp_path: Path) -> None:
    page = tmp_path / "bad.md"
    page.write_text("Text\n\n```python\nx = 1\nassert x == 2\n```\n", encoding="utf-8")
    (example,) = examples_of(page)
    script = tmp_path / "bad_3.py"
    script.write_text(example.script(), encoding="utf-8")
    result = run_script(script, timeout=60)
    assert result.returncode != 0
    assert f'{script.name}", line 5' in result.stderr


def test_unguarded_process_example_fails(tmp_path: Path) -> None:
    # Why examples run as scripts: without the __main__ guard, a worker process imports the
    # script again and starts work of its own; typed into `python -c`, the same code passes.
    page = tmp_path / "unguarded.md"
    page.write_text(
        "```python\nimport hybridexec as hx\n\n\ndef work(x: int) -> int:\n    return x + 1\n"
        "\n\nassert hx.map(work, range(3), kind='process') == [1, 2, 3]\n```\n",
        encoding="utf-8",
    )
    (example,) = examples_of(page)
    script = tmp_path / "unguarded_1.py"
    script.write_text(example.script(), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    typed = subprocess.run(
        [sys.executable, "-c", example.script()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert typed.returncode == 0, typed.stderr
    result = run_script(script, timeout=60)  # it hung once (issue 14): no longer
    assert result.returncode != 0, result.stdout
    # The worker's re-run stops at its first process call, with multiprocessing's advice;
    # the script's own map then fails (docs/getting-started.md).
    assert "bootstrapping phase" in result.stderr, result.stderr[-3000:]
    assert "WorkerCrashedError" in result.stderr, result.stderr[-3000:]
