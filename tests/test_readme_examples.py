"""Every fenced block of README.md and of the docs pages runs here, so that the docs cannot drift from what
the code does.

The pages run in order: README.md, then the pages docs/README.md's index links to, in its order (but for
those with tests of their own, OWN_TESTS). The blocks run in each page's order, the way one reader runs them from the repository's folder after
the quick start: in a folder holding `byzer_workspace/` (this test session's workspace, where the quick
start's model and data are built first) and `sql/` (the repository's scripts), on the session's Ray
cluster (the workspace's persistent head). By language:

- bash: `bash -e -o pipefail` in that folder, with `byzer-like` on the PATH and no BYZER_LIKE_HOME
  (so the default `./byzer_workspace` is the workspace) and stdin empty (an interactive prompt ends);
- sql: one script, through a new `byzer_like.session.Session` of the workspace (what `byzer-like run`
  does), from that folder;
- python: `exec` in that folder, every Python block in one namespace (one reader's interpreter);
- ipython: `ipython -c` in that folder (the notebook magics), failing on a traceback or an `error:`;
- toml: parsed; the entry-point groups it names must be the ones byzer-like reads;
- text, or no language: a listing; every repository path it names must exist.

Blocks under one `## ` heading of README.md, or on one docs page, continue each other (a model deployed in
one is used by the next); when a new section starts, the deployments and the HTTP API the earlier one left are removed.
The one change the test makes to a block: port 8000 becomes a free port, since other programs on
this machine may hold 8000.

A block may carry a marker, an HTML comment on the line before its fence:

- `<!-- readme-test: skip reason="..." -->`: not run; the reason is reported (`pytest -ra`);
- `<!-- readme-test: synopsis -->`: a command synopsis (alternatives `a | b`, optional `[parts]`):
  each line's command, sub-command, choices and options are checked against the CLI's parser;
- `<!-- readme-test: sql-error -->`: the error `byzer-like run FILE` prints: the test writes a script
  whose line N is the line shown, runs it and finds the block in what it printed.

A failing block fails its own test, named `<page>:<line of its fence>-<language>` (`docs/sql.md:12-sql`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS_INDEX = ROOT / "docs" / "README.md"
# pages of the index whose blocks are checked by a test of their own, not run here
OWN_TESTS = {"docs/cluster.md": "tests/test_docker_kit.py checks its commands and files",
             "docs/ARCHITECTURE.md": "tests/test_architecture.py checks its layer table"}
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
MARKER = re.compile(r'^<!--\s*readme-test:\s*([\w-]+)(?:\s+reason="([^"]*)")?\s*-->\s*$')
MARKER_KINDS = {"skip", "synopsis", "sql-error"}
LANGUAGES = {"bash", "sql", "python", "ipython", "toml", "text", ""}
# repository paths a listing may name
REPO_PATH = re.compile(r"(?<![\w/.])((?:byzer_like|models|sql|docs|bench|docker|tests)/[\w./-]*)")
README_PORT = "8000"


@dataclass(frozen=True)
class Block:
    """One fenced block: the line of its opening fence (1-based), its language, its text, the `## `
    section it is under, and its marker (kind, reason) when the line before the fence has one."""

    line: int
    lang: str
    text: str
    section: str
    marker: str | None = None
    reason: str | None = None
    page: str = "README.md"


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Every fenced block of a Markdown text, in order. An unclosed fence is an error. `page` is the text's
    path from the repository's root; README.md's sections are its `## ` headings, any other page is one."""
    lines = text.splitlines()
    blocks: list[Block] = []
    section = "" if page == "README.md" else page
    i = 0
    while i < len(lines):
        if lines[i].startswith("## ") and page == "README.md":
            section = lines[i][3:].strip()
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.groups()
        end = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == fence), None)
        assert end is not None, f"{page} line {i + 1}: the fence is never closed"
        marker = MARKER.match(lines[i - 1]) if i else None
        blocks.append(Block(i + 1, lang.lower(), "\n".join(lines[i + 1:end]) + "\n", section,
                            marker[1] if marker else None, marker[2] if marker else None, page))
        i = end + 1
    return blocks


def doc_pages() -> list[str]:
    """README.md, then every page docs/README.md links to (once each, in its order, OWN_TESTS left out)."""
    linked = re.findall(r"\]\(([\w.-]+\.md)\)", DOCS_INDEX.read_text(encoding="utf-8"))
    pages = [f"docs/{name}" for name in dict.fromkeys(linked) if name != "README.md"]
    return ["README.md"] + [p for p in pages if p not in OWN_TESTS and (ROOT / p).is_file()]


PAGES = doc_pages()
BLOCKS = [b for page in PAGES for b in readme_blocks((ROOT / page).read_text(encoding="utf-8"), page)]


def api_server():
    """The HTTP API's module (imported when a reader first needs it: it imports Ray)."""
    from byzer_like.api import server

    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Reader:
    """Someone who has run the quick start and now runs the README's blocks, one after the other."""

    def __init__(self, folder: Path, workspace: Path, port: int):
        from byzer_like.runtime import Runtime

        self.folder, self.workspace, self.port = folder, workspace, port
        self.namespace: dict = {"__name__": "__readme__"}
        self.section: str | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("BYZER_LIKE_HOME", "RAY_ADDRESS", "BYZER_LIKE_API_KEY")}
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.runtime = Runtime(workspace=workspace)
        self.deployed_before = set(self.runtime.deployments())
        self.api_before = api_server().serving(self.runtime) is not None

    def run(self, block: Block) -> None:
        """Run one block (after tidying up the previous section when this one starts another)."""
        if block.section != self.section:
            self.tidy()
            self.section = block.section
        text = block.text.replace(README_PORT, str(self.port))
        if block.marker == "synopsis":
            return check_synopsis(block)
        if block.marker == "sql-error":
            return self.sql_error(block, text)
        runner = {"bash": self.bash, "sql": self.sql, "python": self.python, "ipython": self.ipython,
                  "toml": check_toml, "text": check_listing, "": check_listing}[block.lang]
        runner(block, text)

    def tidy(self) -> None:
        """Remove what the blocks of a section left running: their deployments and the HTTP API."""
        for name in set(self.runtime.deployments()) - self.deployed_before:
            self.runtime.undeploy(name)
        if not self.api_before and api_server().serving(self.runtime) is not None:
            api_server().stop_serving(self.runtime)

    @contextlib.contextmanager
    def _here(self):
        """In-process blocks run in the reader's folder, with the default workspace (./byzer_workspace)."""
        cwd, home = os.getcwd(), os.environ.pop("BYZER_LIKE_HOME", None)
        os.chdir(self.folder)
        try:
            yield
        finally:
            os.chdir(cwd)
            if home is not None:
                os.environ["BYZER_LIKE_HOME"] = home

    def _shell(self, args: list[str], block: Block, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=self.folder, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def bash(self, block: Block, text: str) -> None:
        out = self._shell(["bash", "-e", "-o", "pipefail", "-c", text], block)
        assert out.returncode == 0, _failed(block, f"exit status {out.returncode}", out.stdout + out.stderr)

    def ipython(self, block: Block, text: str) -> None:
        out = self._shell([str(BIN / "ipython"), "--no-banner", "--quick", "--HistoryManager.enabled=False",
                           "-c", text], block, timeout=120)
        shown = out.stdout + out.stderr
        bad = out.returncode != 0 or "Traceback" in shown or re.search(r"^error:", shown, re.M | re.I)
        assert not bad, _failed(block, f"exit status {out.returncode}", shown)

    def sql(self, block: Block, text: str) -> None:
        from byzer_like.session import Session
        from byzer_like.errors import ByzerError, SqlError
        from byzer_like.runtime import Runtime

        error = None
        with self._here():
            session = Session(Runtime(workspace=self.workspace), progress=False)
            try:
                session.sql(text)
            except ByzerError as e:
                error = e
            finally:
                session.close()
        if error is not None:
            line = block.line + error.line if isinstance(error, SqlError) else block.line
            pytest.fail(f"{block.page} line {line} (the sql block at line {block.line}): {type(error).__name__}: {error}",
                        pytrace=False)

    def python(self, block: Block, text: str) -> None:
        # the README's own line numbers in a traceback
        code = compile("\n" * block.line + text, str(ROOT / block.page), "exec")
        error = None
        with self._here(), contextlib.redirect_stdout(io.StringIO()) as printed:
            try:
                exec(code, self.namespace)
            except Exception as e:  # noqa: BLE001 - any failure of the block fails it, with where
                error = e
        if error is not None:
            lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == str(ROOT / block.page)]
            where = f"{block.page} line {lines[-1]}" if lines else f"the python block at {block.page} line {block.line}"
            pytest.fail(f"{where}: {type(error).__name__}: {error}\n{printed.getvalue()[-2000:]}", pytrace=False)

    def sql_error(self, block: Block, text: str) -> None:
        lines = text.splitlines()
        m = re.match(r"error: (\S+): line (\d+), column \d+: ", lines[0])
        assert m and len(lines) == 3, _failed(block, "not an `error: FILE: line N, column M: ...` block", text)
        script = self.folder / m[1]
        script.write_text("\n" * (int(m[2]) - 1) + lines[1][2:] + "\n")
        out = self._shell([str(BIN / "byzer-like"), "run", m[1]], block, timeout=120)
        assert out.returncode == 1 and text.rstrip("\n") in out.stderr, _failed(
            block, f"`byzer-like run {m[1]}` (exit status {out.returncode}) printed something else", out.stderr)


def _failed(block: Block, what: str, output: str) -> str:
    return f"the {block.lang or 'text'} block at {block.page} line {block.line}: {what}\n{output[-3000:]}"


def check_synopsis(block: Block) -> None:
    """Each line `byzer-like COMMAND [SUB] ...`: the command and sub-command exist, every `--option`
    is one of theirs, and every alternative of a positional with choices (`start | status`) is a choice."""
    from byzer_like.cli import build_parser

    def subcommands(p: argparse.ArgumentParser) -> dict:
        return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})

    for n, raw in enumerate(block.text.splitlines(), block.line + 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{block.page} line {n}"
        assert words[0] == "byzer-like", f"{where}: a synopsis line starts with byzer-like: {raw}"
        parser, rest = build_parser(), words[1:]
        while subcommands(parser):
            assert rest and rest[0] in subcommands(parser), \
                f"{where}: {rest[:1]} is not a command; known: {sorted(subcommands(parser))}"
            parser, rest = subcommands(parser)[rest[0]], rest[1:]
        options = {o for a in parser._actions for o in a.option_strings}
        choices = next((a.choices for a in parser._actions if not a.option_strings and a.choices), None)
        after_bar = True
        for word in rest:
            if word == "|":
                after_bar = True
                continue
            for part in word.strip("[]").split("|"):
                name = part.strip("[]").split("=", 1)[0]
                if name.startswith("-"):
                    assert name in options, f"{where}: {name} is not an option of this command: {raw}"
                elif after_bar and choices is not None and name:
                    assert name in choices, f"{where}: {name!r} is not one of {sorted(choices)}: {raw}"
            after_bar = False


def check_toml(block: Block, text: str) -> None:
    """A pyproject fragment: valid TOML, naming only the entry-point groups byzer-like reads."""
    from byzer_like.plugins.registry import ENTRY_POINT_GROUP

    data = tomllib.loads(text)
    for group in data.get("project", {}).get("entry-points", {}):
        assert group == ENTRY_POINT_GROUP, f"{block.page} line {block.line}: byzer-like reads {ENTRY_POINT_GROUP!r}, not {group!r}"


def check_listing(block: Block, text: str) -> None:
    """A listing of the repository: every path it names exists."""
    missing = [p for p in REPO_PATH.findall(text) if not (ROOT / p.rstrip(".")).exists()]
    assert not missing, f"the listing at {block.page} line {block.line} names paths that do not exist: {missing}"


@pytest.fixture(scope="module")
def reader(ray_cluster, workspace, smollm2_dir, tmp_path_factory):
    """The reader's folder after the quick start: `byzer_workspace/` (the session's workspace, holding the
    quick start's model, SmolLM2 in models/smollm2, and data) and `sql/`; removes what the README's blocks
    left running at the end."""
    shutil.copytree(ROOT / "sql" / "data", workspace / "quickstart" / "data", dirs_exist_ok=True)
    folder = tmp_path_factory.mktemp("reader")
    (folder / "byzer_workspace").symlink_to(workspace, target_is_directory=True)
    (folder / "sql").symlink_to(ROOT / "sql", target_is_directory=True)
    r = Reader(folder, workspace, _free_port())
    yield r
    r.tidy()


def _param(block: Block):
    marks = [pytest.mark.skip(reason=f"{block.page} line {block.line}: {block.reason}")] if block.marker == "skip" else []
    return pytest.param(block, id=f"{block.page}:{block.line}-{block.lang or 'text'}", marks=marks)


def test_every_block_is_understood():
    """Fences have a language this test runs, and markers are known and sit right before a fence."""
    assert BLOCKS, "no fenced blocks found in README.md"
    for b in BLOCKS:
        assert b.lang in LANGUAGES, f"{b.page} line {b.line}: no runner for a {b.lang!r} block; known: {sorted(LANGUAGES)}"
        assert b.marker in MARKER_KINDS | {None}, f"{b.page} line {b.line - 1}: unknown marker {b.marker!r}"
        assert b.marker != "skip" or b.reason, f"{b.page} line {b.line - 1}: a skip needs reason=\"...\""
    for page in PAGES:
        lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if "readme-test:" in line:
                assert MARKER.match(line) and n + 1 < len(lines) and FENCE.match(lines[n + 1]), \
                    f"{page} line {n + 1}: a marker must be `<!-- readme-test: KIND [reason=\"...\"] -->` right before a fence"


def test_every_relative_link_resolves():
    """A link from README.md or a docs page to a file of the repository (`docs/sql.md`, `../bench/RESULTS.md`)
    names a file that exists; a link to a heading (`#training`, `cli.md#jobs`) names a heading of that page.
    Pages the index names that are not written yet are allowed only from the index and the front page."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    problems = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                if file.parent == ROOT / "docs" and page in (README, DOCS_INDEX) and file.name in PLANNED:
                    continue
                problems.append(f"{page.relative_to(ROOT)}: {target} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                problems.append(f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} there")
    assert not problems, "\n".join(problems)


# pages other work is writing (linked from the index before they land)
PLANNED: set[str] = set()


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_test_finds_every_fence():
    """The extraction sees what a Markdown reader sees: nested code spans and odd fences included."""
    sample = "## A\n<!-- readme-test: skip reason=\"why\" -->\n```bash\necho 1\n```\ntext\n## B\n````\n```x\n````\n"
    blocks = readme_blocks(sample)
    assert [(b.line, b.lang, b.section, b.marker, b.reason) for b in blocks] == [
        (3, "bash", "A", "skip", "why"), (8, "", "B", None, None)]
    assert blocks[1].text == "```x\n"
    with pytest.raises(AssertionError, match="never closed"):
        readme_blocks("```sql\nselect 1;\n")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block(block: Block, reader: Reader):
    reader.run(block)
