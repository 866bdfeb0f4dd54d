"""`load delta.`path`` and `save ... as delta.`path``: Delta Lake tables through the deltalake package, on a
SQL session over the fake runtime (no Ray, no model): the save modes, time travel with versionAsOf /
timestampAsOf, partitionByCol, mergeSchema, and the errors (a folder that is no Delta table, a path outside
the allowed roots, rows that do not fit, a version the table lacks)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from deltalake import DeltaTable

from byzer_like.errors import ConfigError, DataFileError, TableExistsError, UnknownOptionError, WorkspacePathError
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rt(tmp_path) -> FakeRuntime:
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "q.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"id": i, "q": f"question {i}", "part": "even" if i % 2 == 0 else "odd"}) + "\n")
    return FakeRuntime(str(tmp_path))


def _ids(s, name):
    return sorted(r["id"] for r in s.table(name).to_pylist())


def test_save_modes_write_delta_versions_and_load_reads_any_of_them(s, tmp_path):
    out = s.sql("load json.`data/q.jsonl` as q; save q as delta.`lake/q`;")
    assert out[-1].table.to_pylist()[0]["version"] == 0
    assert DeltaTable(str(tmp_path / "lake" / "q")).version() == 0  # a Delta table any reader opens
    with pytest.raises(TableExistsError, match="already exists"):
        s.sql("save errorIfExists q as delta.`lake/q`;")
    assert s.sql("save ignore q as delta.`lake/q`;")[-1].table.to_pylist()[0]["written"] is False
    s.sql("select id, q, part from q where id < 2 as few; save append few as delta.`lake/q`;")
    s.sql("load delta.`lake/q` as now;")
    assert _ids(s, "now") == [0, 0, 1, 1, 2, 3, 4]
    s.sql("save overwrite few as delta.`lake/q`; load delta.`lake/q` as now;")
    assert _ids(s, "now") == [0, 1]
    s.sql('load delta.`lake/q` where versionAsOf="1" as v1; load delta.`lake/q` where versionAsOf="0" as v0;')
    assert _ids(s, "v1") == [0, 0, 1, 1, 2, 3, 4] and _ids(s, "v0") == [0, 1, 2, 3, 4]
    with pytest.raises(DataFileError, match="versions 0 to 2"):
        s.sql('load delta.`lake/q` where versionAsOf="7" as nope;')


def test_timestamp_as_of_reads_the_table_as_it_was(s):
    s.sql("load json.`data/q.jsonl` as q; save q as delta.`lake/t`;")
    time.sleep(0.05)
    between = datetime.now(timezone.utc).isoformat()
    time.sleep(0.05)
    s.sql("select id, q, part from q where id = 0 as one; save overwrite one as delta.`lake/t`;")
    s.sql(f'load delta.`lake/t` where timestampAsOf="{between}" as then; load delta.`lake/t` as now;')
    assert _ids(s, "then") == [0, 1, 2, 3, 4] and _ids(s, "now") == [0]
    with pytest.raises(ConfigError, match="ISO 8601"):
        s.sql('load delta.`lake/t` where timestampAsOf="last tuesday" as x;')
    with pytest.raises(ConfigError, match="not both"):
        s.sql(f'load delta.`lake/t` where versionAsOf="0" and timestampAsOf="{between}" as x;')


def test_partition_by_col_and_merge_schema(s, tmp_path):
    s.sql('load json.`data/q.jsonl` as q; save q as delta.`lake/p` where partitionByCol="part";')
    assert DeltaTable(str(tmp_path / "lake" / "p")).metadata().partition_columns == ["part"]
    assert sorted(p.name for p in (tmp_path / "lake" / "p").iterdir() if p.name.startswith("part=")) == \
        ["part=even", "part=odd"]
    s.sql("select id, q, part, 'x' as extra from q where id = 4 as wider;")
    with pytest.raises(ConfigError, match="mergeSchema"):
        s.sql("save append wider as delta.`lake/p`;")
    s.sql('save append wider as delta.`lake/p` where mergeSchema="true"; load delta.`lake/p` as both;')
    rows = s.table("both").to_pylist()
    assert len(rows) == 6 and sorted(r["extra"] or "" for r in rows) == [""] * 5 + ["x"]
    with pytest.raises(ConfigError, match="partitionByCol names nope"):
        s.sql('save q as delta.`lake/p2` where partitionByCol="nope";')


def test_bad_paths_and_keys_fail_before_anything_is_written(s, tmp_path):
    s.sql("load json.`data/q.jsonl` as q; save q as parquet.`out/plain`;")
    with pytest.raises(DataFileError, match="is not a Delta table"):
        s.sql("load delta.`out/plain` as x;")
    with pytest.raises(DataFileError, match="does not exist"):
        s.sql("load delta.`lake/missing` as x;")
    with pytest.raises(TableExistsError, match="is not a Delta table"):
        s.sql("save overwrite q as delta.`out/plain`;")
    assert not (tmp_path / "out" / "plain" / "_delta_log").exists()
    with pytest.raises(WorkspacePathError):
        s.sql("save q as delta.`/etc/byzer_delta`;")
    with pytest.raises(WorkspacePathError):
        s.sql("load delta.`/etc` as x;")
    with pytest.raises(UnknownOptionError, match="did you mean 'versionAsOf'"):
        s.sql('load delta.`out/plain` where versionAsOff="0" as x;')
    with pytest.raises(ConfigError, match="delta table"):  # versions belong to delta, never ignored elsewhere
        s.sql('load parquet.`out/plain` where versionAsOf="0" as x;')
