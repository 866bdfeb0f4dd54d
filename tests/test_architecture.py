"""The package's import graph, read from the source (nothing is imported): no cycle between modules,
and nothing below the faces imports a face (the client, the CLI, the notebook).

Every `import` counts, also those inside functions and under `if TYPE_CHECKING:`: a lazy import is
still a dependency. Package `__init__` files only gather names, so cycles through them are not counted.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "byzer_like"
FACES = {"byzer_like.client", "byzer_like.cli", "byzer_like.notebook"}
# layers that must not import the heavy libraries (they are imported by every face and by tests without Ray)
NO_RAY_OR_TORCH = ("byzer_like.sql", "byzer_like.config", "byzer_like.tasks", "byzer_like.errors",
                   "byzer_like.session.protocol")

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


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, Path]]:
    """(edges between byzer_like modules, every imported name per module, module -> file)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    names: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(m, p, node):
                    names[m].add(t)
                    while t and t not in mods and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t in mods and t != m:
                        edges[m].add(t)
    return edges, names, mods


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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


def test_no_import_cycle():
    edges, _, mods = import_graph()
    modules = {m: {t for t in ts if mods[t].name != "__init__.py"} for m, ts in edges.items()
               if mods[m].name != "__init__.py"}
    assert cycles(modules) == []


def test_nothing_below_the_faces_imports_a_face():
    edges, _, _ = import_graph()
    upward = sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts
                    if t in FACES and m not in FACES and m != "byzer_like")
    assert upward == []


def test_ground_layers_import_neither_ray_nor_torch():
    _, names, _ = import_graph()
    heavy = sorted(f"{m} imports {n}" for m, ns in names.items() for n in ns
                   if m.startswith(NO_RAY_OR_TORCH) and n.split(".")[0] in ("ray", "torch", "transformers"))
    assert heavy == []


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The checks above can fail: a made-up graph with a cycle and a face import is caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from ..client import ByzerLLM\nimport byzer_like.cli\n")
    got = [t for node in tree.body for t in _targets("byzer_like.engine.session", ROOT / "engine" / "session.py", node)]
    assert "byzer_like.client" in got and "byzer_like.cli" in got
