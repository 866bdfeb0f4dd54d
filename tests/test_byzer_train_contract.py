"""Byzer's plugin contract for training: a plugin's own `sft_train(data_refs, train_params, conf)`, written as
Byzer-LLM's guide writes it (`from pyjava.api.mlsql import RayContext`, `RayContext.collect_from(data_refs)`, a
generator of rows returned), runs unchanged in a job's runner. The runner runs in this process on a job recorded
as `Jobs.submit` records it (no Ray); the plugin is tests/fixtures/plugins/byzer_train_plugin.py."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like.catalog import Catalog
from byzer_like.errors import PluginError
from byzer_like.plugins import pyjava, registry
from byzer_like.train.runner import OUTPUT_FILE, run_job
from byzer_like.workspace import Workspace

pytestmark = pytest.mark.timeout(60)
ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(7)]


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("BYZER_LIKE_HOME", str(tmp_path))
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    registry.register("byzer_trained", "byzer_train_plugin", replace=True)
    return Workspace(tmp_path)


def _job(ws: Workspace, kind: str, table: pa.Table, output_table: str | None, params: dict) -> str:
    """A job recorded as Jobs.submit records one: its folder, input.parquet, the catalog's row."""
    cat = Catalog(ws)
    job_id = f"{kind}-test-{len(list(ws.path('jobs').iterdir())) if ws.path('jobs').exists() else 0}"
    run_dir = ws.path("jobs", job_id)
    run_dir.mkdir(parents=True)
    pq.write_table(table, run_dir / "input.parquet")
    base = str(ws.root / "models" / "base")
    cat.create_job(job_id, kind, model_type="byzer_trained", base_model=base, output_table=output_table,
                   params={"pretrainedModelType": f"{kind}/byzer_trained", "localModelDir": base, **params},
                   sys_conf={"num_workers": "1", "OWNER": "william"}, detached=False, run_dir=str(run_dir))
    return job_id


def test_a_byzer_sft_train_reads_collect_from_and_its_rows_become_the_registered_model(ws):
    job_id = _job(ws, "sft", pa.Table.from_pylist(ROWS), "byzer_model", {"sft.int.max_seq_length": "512"})
    job = run_job(str(ws.root), job_id)
    assert job["state"] == "SUCCEEDED", job["error"]
    model = Catalog(ws).model("byzer_model")
    seen = json.loads((Path(model.path) / "meta" / "seen.json").read_text())
    assert seen == {"rows": ROWS, "max_seq_length": "512", "OWNER": "william"}
    assert json.loads((Path(model.path) / "config.json").read_text()) == {"model_type": "llama"}


def test_plain_rows_are_the_jobs_output_table_and_no_model_is_registered_from_them(ws):
    table = pa.table({"text": ["ab", "abcd", "abc"]})
    job = run_job(str(ws.root), _job(ws, "sfft", table, None, {}))
    assert job["state"] == "SUCCEEDED", job["error"]
    out = pq.read_table(Path(job["run_dir"]) / OUTPUT_FILE).to_pylist()
    assert out == [{"row": 0, "chars": 2}, {"row": 1, "chars": 4}, {"row": 2, "chars": 3}]
    assert job["metrics"]["output_rows"] == 3
    with pytest.raises(PluginError, match="left no model"):
        run_job(str(ws.root), _job(ws, "sfft", table, "nothing_to_register", {}))


def test_streaming_tar_round_trip_and_collect_from_inputs(tmp_path):
    src = tmp_path / "m"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(bytes(range(256)) * 40)
    (src / "sub" / "b.txt").write_text("hello")
    rows = list(pyjava.build_rows_from_file(src, chunk_bytes=1000))
    assert len(rows) > 10 and all(pyjava.is_tar_row(r) for r in rows)
    files = pyjava.save_rows_to_file(list(reversed(rows)), tmp_path / "back")  # joined in start order
    assert files == ["a.bin", "sub/b.txt"] and (tmp_path / "back" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    with pytest.raises(PluginError, match="gap"):
        pyjava.save_rows_to_file(rows[:2] + rows[3:], tmp_path / "gap")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    refs = [str(tmp_path / "t.parquet"), pyjava.DataServer(path=str(tmp_path / "t.parquet"))]
    assert list(pyjava.RayContext.collect_from(refs)) == [{"x": 1}, {"x": 2}] * 2
    with pytest.raises(PluginError, match="no table reference"):
        list(pyjava.RayContext.collect_from([42]))


def test_the_stand_in_never_shadows_an_installed_pyjava(tmp_path, monkeypatch):
    real = tmp_path / "site" / "pyjava" / "api"
    real.mkdir(parents=True)
    (real.parent / "__init__.py").write_text("")
    (real / "__init__.py").write_text("")
    (real / "mlsql.py").write_text("RayContext = 'the real one'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "pyjava" or m.startswith("pyjava.")]:
        monkeypatch.delitem(sys.modules, name)
    pyjava.install_fallback()
    assert importlib.import_module("pyjava.api.mlsql").RayContext == "the real one"
    for name in [m for m in sys.modules if m == "pyjava" or m.startswith("pyjava.")]:
        monkeypatch.delitem(sys.modules, name)
