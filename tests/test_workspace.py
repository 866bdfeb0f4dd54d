"""Paths a user gives resolve inside the workspace's allowed roots, or are refused."""
import os
import re

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


def test_sql_paths_start_at_the_workspace_and_argument_paths_at_the_current_directory(tmp_path, monkeypatch):
    """The newcomer's case: in /tmp with the workspace /tmp/newcomer_ws, `newcomer_ws/models/m` on the command
    line (or in Python) is the workspace's models/m; in SQL, `models/m` is, wherever the process runs."""
    monkeypatch.delenv("BYZER_LIKE_ALLOWED_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BYZER_LIKE_HOME", "newcomer_ws")  # relative: from the current directory
    ws = Workspace.from_env()
    assert ws.root == tmp_path / "newcomer_ws"
    assert ws.resolve("newcomer_ws/models/m", relative_to="cwd") == ws.root / "models" / "m"
    assert ws.resolve("models/m") == ws.root / "models" / "m"  # SQL: Byzer's rule
    assert ws.resolve("newcomer_ws/models/m") == ws.root / "newcomer_ws" / "models" / "m"
    assert ws.resolve(ws.root / "models" / "m", relative_to="cwd") == ws.root / "models" / "m"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert ws.resolve("models/m") == ws.root / "models" / "m"
    assert ws.resolve("../newcomer_ws/models/m", relative_to="cwd") == ws.root / "models" / "m"
    with pytest.raises(ValueError, match="relative_to"):
        ws.resolve("models/m", relative_to="home")


def test_a_refused_path_shows_what_it_resolved_to_and_the_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("BYZER_LIKE_ALLOWED_ROOTS", raising=False)
    ws = Workspace.from_env(tmp_path / "newcomer_ws")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkspacePathError) as e:
        ws.resolve("models/m", what="model_dir", relative_to="cwd")
    message = str(e.value)
    assert f"model_dir 'models/m' resolves to {tmp_path / 'models' / 'm'}" in message
    assert f"a relative path starts at the current directory, {tmp_path}" in message
    assert f"outside the allowed roots ({ws.root})" in message and "BYZER_LIKE_ALLOWED_ROOTS" in message
    assert "it would be" not in message  # the workspace has no models/m either: no hint
    (ws.root / "models" / "m").mkdir(parents=True)
    with pytest.raises(WorkspacePathError, match=re.escape(f"from the workspace it would be {ws.root / 'models' / 'm'}")):
        ws.resolve("models/m", what="model_dir", relative_to="cwd")
    with pytest.raises(WorkspacePathError, match=re.escape(f"a relative path starts at the workspace, {ws.root}")):
        ws.resolve("../m", what="load path")
    with pytest.raises(WorkspacePathError) as e:
        ws.resolve("/etc/passwd", what="load path")
    assert "relative path starts" not in str(e.value)  # an absolute path is taken as it is


def test_the_client_reads_model_paths_from_the_current_directory(tmp_path, monkeypatch):
    """`ByzerLLM.deploy(model_path=...)` and `sft(model_path=...)` from a folder outside the workspace: refused
    before any cluster is involved, with the path read from the current directory."""
    from byzer_like import ByzerLLM

    monkeypatch.delenv("BYZER_LIKE_ALLOWED_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    llm = ByzerLLM(workspace=tmp_path / "ws")
    with pytest.raises(WorkspacePathError, match="starts at the current directory") as e:
        llm.deploy(model_path="models/m", pretrained_model_type="llama", udf_name="m")
    assert str(tmp_path / "models" / "m") in str(e.value)
    with pytest.raises(WorkspacePathError, match="starts at the current directory"):
        llm.sft([{"instruction": "q", "output": "a"}], model_path="models/m", pretrained_model_type="sft/llama")


# -- which workspace: the CLI names a new or empty one; a workspace joins only its own head ----------
def _cli(argv, capsys):
    from byzer_like.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_command_names_a_new_or_empty_workspace_after_its_output(tmp_path, monkeypatch, capsys):
    """Run from another folder, `models list` makes ./byzer_workspace there: the last stderr line says so
    (which folder, that it is the default, how to pick another); an existing workspace without models says
    it is empty; one with models says nothing."""
    from byzer_like.catalog import Catalog

    monkeypatch.delenv("BYZER_LIKE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["models", "list"], capsys)
    new = tmp_path / "byzer_workspace"
    assert code == 0 and out.startswith("model\t") and new.is_dir()
    assert err.strip().splitlines()[-1] == (
        f"workspace {new} (new: this command created it; the default, ./byzer_workspace of the current "
        "directory; set BYZER_LIKE_HOME or pass --workspace to use another)")
    code, _, err = _cli(["models", "list"], capsys)
    assert code == 0 and f"workspace {new} (empty: no models registered; the default" in err
    code, _, err = _cli(["jobs", "logs", "--workspace", str(new)], capsys)
    assert code == 1 and err.splitlines()[0] == f"error: no training job in workspace {new} yet"  # the error first
    assert f"workspace {new} (empty: no training jobs; given by --workspace;" in err.splitlines()[1]
    Catalog(Workspace.from_env(new)).register_model("m", kind="model", path=str(tmp_path / "m"), base_model=None,
                                                    model_type="llama", method="import", params={}, metrics={},
                                                    job_id=None)
    code, out, err = _cli(["models", "list"], capsys)
    assert code == 0 and "m@v1" in out and "workspace" not in err


def _record_head(ws: Workspace, pid: int, port: int) -> None:
    """A head.json as `cluster.start_head` writes it (no Ray here): `pid` and a GCS port that answers."""
    import json

    from byzer_like import cluster

    info = cluster.HeadInfo(pid=pid, address=f"127.0.0.1:{port}", dashboard_url="http://127.0.0.1:9",
                            client_address="ray://127.0.0.1:9", temp_dir=str(ws.dir("cluster", "ray")), num_cpus=4,
                            started_at=0.0, workspace=str(ws.root))
    ws.path(*cluster.HEAD_FILE).write_text(json.dumps(cluster.asdict(info)))


def test_a_copied_workspace_neither_joins_nor_stops_the_original_head(tmp_path):
    """`cp -r ws copy` carries ws's head.json along: the copy finds no head of its own (it would start one),
    and `cluster stop` in the copy leaves the original's process alone."""
    import shutil
    import socket
    import subprocess

    from byzer_like import cluster

    a = Workspace.from_env(tmp_path / "a")
    head = subprocess.Popen(["sleep", "60"], start_new_session=True)  # stands in for the head's process group
    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    try:
        _record_head(a, head.pid, gcs.getsockname()[1])
        shutil.copytree(a.root, tmp_path / "b", symlinks=True)
        b = Workspace.from_env(tmp_path / "b")
        assert cluster.head_info(a).alive() and cluster.head_info(b) is None
        assert not cluster.reachable(None, b) and cluster.status(b) == {"running": False, "workspace": str(b.root)}
        assert cluster.stop_head(b) is False and head.poll() is None  # the original's head still runs
    finally:
        gcs.close()
        head.kill()
        head.wait()


def test_a_process_joined_to_one_workspaces_head_keeps_the_others_apart(tmp_path, monkeypatch, capsys):
    """A notebook joined to workspace a's head, then asked for workspace b: b's own running head is a
    ClusterError (one process joins one cluster); b without a head is told, once, where its work runs."""
    import socket

    from byzer_like import cluster
    from byzer_like.errors import ClusterError

    a, b = Workspace.from_env(tmp_path / "a"), Workspace.from_env(tmp_path / "b")
    monkeypatch.setattr(cluster, "_joined", {"mode": "persistent", "address": "127.0.0.1:1",
                                             "workspace": str(a.root), "told": set()})
    cluster._check_joined(a)  # its own workspace: nothing to say
    cluster._check_joined(b)
    cluster._check_joined(b)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"workspace {b.root} has no Ray cluster of its own" in err
    assert f"joined to workspace {a.root}'s Ray cluster at 127.0.0.1:1" in err
    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    try:
        _record_head(b, os.getpid(), gcs.getsockname()[1])
        with pytest.raises(ClusterError, match=f"workspace {b.root} has its own, at 127.0.0.1:{gcs.getsockname()[1]}"):
            cluster._check_joined(b)
    finally:
        gcs.close()


def test_cluster_status_says_the_cpus_ray_schedules_and_the_machines_cores(tmp_path, monkeypatch):
    from byzer_like import cluster

    ws = Workspace.from_env(tmp_path / "ws")
    _record_head(ws, os.getpid(), 9)  # recorded, not running (nothing listens on port 9)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    st = cluster.status(ws)
    assert st["running"] is False and st["num_cpus"] == 4 and st["machine_cores"] == 2
    assert st["cpus_note"].startswith("Ray schedules 4 CPUs on this machine's 2 cores: at least 4 unless")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert "cpus_note" not in cluster.status(ws)
