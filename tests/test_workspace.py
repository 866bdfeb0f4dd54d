"""Paths a user gives resolve inside the workspace's allowed roots, or are refused."""
import os

import pytest

from byzer_like.errors import WorkspacePathError
from byzer_like.workspace import Workspace


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.delenv("BYZER_LIKE_ALLOWED_ROOTS", raising=False)
    return Workspace.from_env(tmp_path / "ws")


def test_relative_paths_resolve_in_the_workspace(ws):
    assert ws.resolve("models/a") == ws.root / "models" / "a"
    assert ws.resolve(str(ws.root / "x")) == ws.root / "x"


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "models/../../x", "~/secret", "/", ""])
def test_escapes_are_refused(ws, path):
    with pytest.raises(WorkspacePathError):
        ws.resolve(path)


def test_symlink_out_of_the_workspace_is_refused(ws, tmp_path):
    ws.root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", ws.root / "link")
    with pytest.raises(WorkspacePathError, match="outside the allowed roots"):
        ws.resolve("link/file")


def test_extra_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tmp_path / "models"))
    ws = Workspace.from_env(tmp_path / "ws")
    assert ws.resolve(tmp_path / "models" / "m") == tmp_path / "models" / "m"
    with pytest.raises(WorkspacePathError, match="BYZER_LIKE_ALLOWED_ROOTS"):
        ws.resolve(tmp_path / "other")


def test_nul_byte_refused(ws):
    with pytest.raises(WorkspacePathError):
        ws.resolve("a\x00b")


def test_every_package_is_installed():
    """A package missing from pyproject's list would be absent from a wheel (`pip install .`)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "byzer_like").rglob("__init__.py")}
    found |= {".".join(("byzer_like_models", *p.parent.relative_to(root / "models").parts)).rstrip(".")
              for p in (root / "models").rglob("__init__.py")}
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_copy_own_never_replaces_a_file_of_the_users(tmp_path):
    """The project's own files (sample data) are copied in; a file the user changed is kept, ours beside it."""
    from byzer_like.workspace import Workspace

    ws = Workspace.from_env(tmp_path / "ws")
    src = tmp_path / "sample"
    (src / "sub").mkdir(parents=True)
    (src / "a.jsonl").write_text('{"id": 0}\n')
    (src / "sub" / "b.txt").write_text("b\n")
    assert ws.copy_own(src, "quickstart/data") == []
    assert (ws.root / "quickstart" / "data" / "sub" / "b.txt").read_text() == "b\n"
    assert ws.copy_own(src, "quickstart/data") == []  # identical: nothing to say
    mine = ws.root / "quickstart" / "data" / "a.jsonl"
    mine.write_text('{"id": "mine"}\n')
    notes = ws.copy_own(src, "quickstart/data")
    assert mine.read_text() == '{"id": "mine"}\n'
    assert (mine.parent / "a.jsonl.byzer-like-sample").read_text() == '{"id": 0}\n'
    assert len(notes) == 1 and str(mine) in notes[0] and "a.jsonl.byzer-like-sample" in notes[0]
    with pytest.raises(WorkspacePathError):
        ws.copy_own(src, tmp_path / "outside")
