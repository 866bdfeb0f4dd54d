"""The result cache that makes batch inference resumable (opt-in).

With it on (SQL `set llm_cache="true";`, or `cache=True` in the client's `batch_chat` / `generate`),
every answered row is written to `<workspace>/cache/results.sqlite` as soon as its chunk comes back.
Run an interrupted `select` again and only the rows that have no answer yet go to the model.

A row's key is the model's identity (name, plugin, model type, model directory, infer params), the
row's position in the call and its whole request (instruction, history, every option): change any of
them and the row is computed again. Failed rows are never kept. The cache does not notice weights
rewritten in place under the same directory: `!byzerllm cache clear <model>` forgets a model's rows.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

IDENTITY_KEYS = ("udf_name", "plugin", "pretrained_model_type", "model_dir", "infer_params")
SCHEMA = """
create table if not exists results (
    key text primary key,
    model text not null,
    result text not null,
    created_at real not null
);
create index if not exists results_model on results (model);
"""


def model_identity(meta: Mapping[str, Any]) -> str:
    """What makes two deployments answer alike: their metadata's identity keys, as canonical JSON."""
    return json.dumps({k: meta.get(k) for k in IDENTITY_KEYS}, sort_keys=True, default=str)


class ResultCache:
    """Answers by (model identity, row, request), in SQLite (WAL: one writer, many readers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._con.execute("pragma journal_mode=wal")
            self._con.executescript(SCHEMA)

    @staticmethod
    def key(identity: str, row: int, request: Mapping[str, Any]) -> str:
        payload = json.dumps([identity, int(row), request], sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = list(keys[i:i + 500])
                marks = ",".join("?" * len(part))
                for key, result in self._con.execute(f"select key, result from results where key in ({marks})", part):
                    found[key] = json.loads(result)
        return found

    def put_many(self, model: str, items: Iterable[tuple[str, dict]]) -> int:
        """Keep answered rows (rows with an "error" are skipped); returns how many were written."""
        now = time.time()
        rows = [(key, model, json.dumps(result, ensure_ascii=False, default=str), now)
                for key, result in items if "error" not in result]
        if rows:
            with self._lock:
                self._con.executemany("insert or replace into results values (?, ?, ?, ?)", rows)
        return len(rows)

    def count(self, model: str | None = None) -> dict[str, int]:
        """Rows kept per model (one model, or all)."""
        sql, args = "select model, count(*) from results", ()
        if model is not None:
            sql, args = sql + " where model = ?", (model,)
        with self._lock:
            return dict(self._con.execute(sql + " group by model order by model", args).fetchall())

    def clear(self, model: str | None = None) -> int:
        """Forget one model's rows, or all; returns how many were removed."""
        with self._lock:
            if model is None:
                return self._con.execute("delete from results").rowcount
            return self._con.execute("delete from results where model = ?", (model,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._con.close()
