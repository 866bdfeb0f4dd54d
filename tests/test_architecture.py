"""The layer table, checked against the package's import graph read from the source (nothing is imported).

Every `import` counts: at module level, inside functions and under `if TYPE_CHECKING:` (a lazy import is still
a dependency). A package of `byzer_like/` is its first-level folder or module (`byzer_like/serving/replica.py`
is `serving`; the root `__init__.py` is `byzer_like`). Each package has exactly one row of LAYERS, top to
bottom; a package may import only packages of rows below its own (docs/ARCHITECTURE.md says what each holds).
Two rules narrow that: REACH (above the runtime, the verbs come from the runtime only: the SQL session and the
faces reach neither the serving, training, back-end nor plugin layers) and NO_RAY_OR_TORCH (the layers every face
and the parser import stay light). Modules must not import each other in a circle either.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "byzer_like"

# top to bottom; a row's packages are peers and do not import each other
LAYERS: tuple[tuple[str, ...], ...] = (
    ("byzer_like",),                     # the root: the public names (`from byzer_like import ByzerLLM`)
    ("cli", "notebook"),                 # faces: the command line, the `%%byzer` magic
    ("client",),                         # face: ByzerLLM, Byzer-LLM's names over the runtime (it starts the HTTP API)
    ("api",),                            # face: the OpenAI-compatible HTTP API and chat page
    ("flows",),                          # flows and pipeline files, compiled to statements (to come)
    ("session",),                        # the SQL session: statements -> the runtime's verbs
    ("runtime",),                        # the verbs: deploy, call, batch, embed, score, train, evaluate, convert
    ("serving", "convert"),              # Serve deployments holding one chat engine; model conversions
    ("backends",),                       # the chat engines' back ends: transformers, vllm, encoder, remote
    ("train",),                          # jobs (submit, watch, stop, resume, the runner) and the tasks' training code
    ("plugins", "eval"),                 # the plugin contract, registry and model-type table; evaluation's library
    ("sql", "prompt_functions", "config", "catalog", "cluster", "tiny", "result_cache"),  # ground
    ("structured", "tasks", "workspace"),
    ("display", "logs", "errors", "version"),
)
# what a package above the runtime may import besides the runtime, the ground and the faces below it
RUNTIME_ROW = next(i for i, row in enumerate(LAYERS) if "runtime" in row)
REACH_EXCEPTIONS = {("api", "serving")}  # the HTTP API is a Serve application of its own
# packages that must not import the heavy libraries (every face and the parser's tests import them)
NO_RAY_OR_TORCH = ("byzer_like.sql", "byzer_like.config", "byzer_like.tasks", "byzer_like.errors",
                   "byzer_like.session.protocol", "byzer_like.plugins.model_types", "byzer_like.catalog")

pytestmark = pytest.mark.timeout(60)


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _targets(mod: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = mod.split(".")
    if node.level:
        keep = len(base) - node.level + (1 if path.name == "__init__.py" else 0)
        prefix = ".".join(base[:keep] + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def parse_imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Every import of every module: module -> [(imported name, line)]."""
    out: dict[str, list[tuple[str, int]]] = {}
    for m, p in mods.items():
        out[m] = [(t, node.lineno) for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                  if isinstance(node, (ast.Import, ast.ImportFrom)) for t in _targets(m, p, node)]
    return out


def module_edges(mods: dict[str, Path], imports: dict[str, list[tuple[str, int]]]) -> dict[str, dict[str, int]]:
    """module -> {imported byzer_like module: first line}; `from pkg import name` counts as the module `pkg.name`
    when there is one, else as `pkg`."""
    edges: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m, found in imports.items():
        for t, line in found:
            while t and t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != m:
                edges[m].setdefault(t, line)
    return edges


def package_of(module: str) -> str:
    """`byzer_like.serving.replica` -> `serving`; the root `byzer_like` -> `byzer_like`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_edges(edges: dict[str, dict[str, int]], files: dict[str, Path]) -> list[tuple[str, str, str]]:
    """Every import between two packages: (from package, to package, `file:line`)."""
    out = []
    for m, targets in edges.items():
        for t, line in targets.items():
            a, b = package_of(m), package_of(t)
            if a != b and b != "byzer_like":  # importing the root's own names (`from .. import x` of a module)
                out.append((a, b, f"{files[m].relative_to(ROOT.parent)}:{line}"))
    return out


def violations(edges: list[tuple[str, str, str]], layers: tuple[tuple[str, ...], ...],
               packages: set[str]) -> list[str]:
    """What breaks the table: a package with no row (or two), an import of a package in the same row or a row
    above, an import above the runtime that skips it (REACH). Each names `file:line`, both packages, both rows
    and how to mend it."""
    row = {}
    problems = []
    for i, names in enumerate(layers):
        for n in names:
            if n in row:
                problems.append(f"{n} has two rows of the table ({row[n]} and {i})")
            row[n] = i
    problems += [f"{p} has no row in the layer table: add it to LAYERS (and to docs/ARCHITECTURE.md)"
                 for p in sorted(packages - set(row))]
    runtime_row = next(i for i, names in enumerate(layers) if "runtime" in names)
    ground_row = runtime_row + next(i for i, names in enumerate(layers[runtime_row:]) if "sql" in names)
    for a, b, where in edges:
        if a not in row or b not in row:
            continue
        if row[b] <= row[a]:
            side = "the same row as" if row[b] == row[a] else "a row above"
            problems.append(f"{where} {a} -> {b}: layer {row[a]} imports layer {row[b]} ({side} it); move the code "
                            f"it needs down, or hand it in from above")
        elif row[a] < runtime_row and runtime_row < row[b] < ground_row and (a, b) not in REACH_EXCEPTIONS:
            problems.append(f"{where} {a} -> {b}: layer {row[a]} reaches past the runtime into layer {row[b]}; "
                            "call a runtime verb instead")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _graph():
    mods = _modules()
    edges = module_edges(mods, parse_imports(mods))
    return mods, edges


def test_every_import_follows_the_layer_table():
    mods, edges = _graph()
    packages = {package_of(m) for m in mods}
    assert violations(package_edges(edges, mods), LAYERS, packages) == []


def test_no_package_cycle_and_no_module_cycle():
    mods, edges = _graph()
    packages: dict[str, set[str]] = {}
    for a, b, _ in package_edges(edges, mods):
        packages.setdefault(a, set()).add(b)
        packages.setdefault(b, set())
    assert cycles(packages) == []
    modules = {m: {t for t in ts if mods[t].name != "__init__.py"} for m, ts in edges.items()
               if mods[m].name != "__init__.py"}  # a package's __init__ only gathers names
    assert cycles(modules) == []


def test_ground_layers_import_neither_ray_nor_torch():
    mods = _modules()
    heavy = sorted(f"{m}:{line} imports {n}" for m, found in parse_imports(mods).items() for n, line in found
                   if m.startswith(NO_RAY_OR_TORCH) and n.split(".")[0] in ("ray", "torch", "transformers"))
    assert heavy == []


def test_the_checker_fails_on_a_made_up_graph():
    """The checks above can fail: an upward import inside a function, a same-row import, a skip past the
    runtime, a package without a row and a cycle are each caught, with the file and line."""
    source = "def f():\n    from ..session import Session\n"  # an upward import, inside a function
    mod, path = "byzer_like.runtime.spec", ROOT / "runtime" / "spec.py"
    found = [t for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
             for t in _targets(mod, path, node)]
    assert "byzer_like.session.Session" in found
    mods = {"byzer_like.runtime.spec": path, "byzer_like.session": ROOT / "session" / "__init__.py",
            "byzer_like.session.commands": ROOT / "session" / "commands.py", "byzer_like.serving": ROOT / "serving",
            "byzer_like.errors": ROOT / "errors.py", "byzer_like.gadgets": ROOT / "gadgets.py",
            "byzer_like.client": ROOT / "client.py", "byzer_like.cli": ROOT / "cli.py"}
    imports = {"byzer_like.runtime.spec": [("byzer_like.session.Session", 2), ("byzer_like.errors", 1)],
               "byzer_like.session.commands": [("byzer_like.serving", 5)],
               "byzer_like.gadgets": [("byzer_like.errors", 1)],
               "byzer_like.client": [("byzer_like.cli", 3)]}
    edges = package_edges(module_edges(mods, {m: imports.get(m, []) for m in mods}), mods)
    got = violations(edges, LAYERS, {package_of(m) for m in mods})
    assert any(p.startswith("byzer_like/runtime/spec.py:2 runtime -> session: layer 6 imports layer 5") for p in got), got
    assert any("session/commands.py:5 session -> serving" in p and "reaches past the runtime" in p for p in got), got
    assert any("client.py:3 client -> cli" in p and "a row above" in p for p in got), got
    assert any(p.startswith("gadgets has no row") for p in got), got
    assert not any("-> errors" in p for p in got), got  # a downward import is fine
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_architecture_page_shows_the_same_table():
    """docs/ARCHITECTURE.md's layer table lists the rows of LAYERS, in order, package for package."""
    import re

    page = (ROOT.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows = [tuple(re.findall(r"`([\w.]+)`", m.group(2))) for m in re.finditer(r"^\| (\d+) \| ([^|]+) \|", page, re.M)]
    assert rows == list(LAYERS)
