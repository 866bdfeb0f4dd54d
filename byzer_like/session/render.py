"""The tables SQL statements answer with: a verb's result row, jobs, the model registry, stored
evaluations, the adapters each replica holds. Times are local timestamps; nested values are JSON text."""
from __future__ import annotations

import json
from typing import Any, Sequence

import pyarrow as pa

from ..catalog import main_metrics
from ..display import local_timestamp
from ..runtime.evaluation import METRIC_NAMES


def row_table(info: dict) -> pa.Table:
    """A verb's result dict as a one-row table (nested values as JSON text, None kept as null)."""
    row = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in info.items()}
    return pa.Table.from_pylist([row])


# `!byzerllm model deployed`: the columns a deployment's meta gives (None where it has no such value)
DEPLOYMENT_SCHEMA = pa.schema([
    ("udf_name", pa.string()), ("engine", pa.string()), ("num_workers", pa.int64()), ("model_dir", pa.string()),
    ("requests_running", pa.int64()), ("requests_waiting", pa.int64()), ("kv_cache_usage", pa.float64()),
    ("requests_served", pa.int64()), ("deployed_at", pa.timestamp("s")), ("engine_load", pa.string())])


def deployments_table(metas: dict[str, dict]) -> pa.Table:
    """Deployments by name -> their meta (`Runtime.meta`, asked of one replica) as a table: the engine
    (`vllm`, or `threads`: the plugin's functions on worker threads), replicas, and that replica's load
    (`engine_load`: requests running and waiting, vLLM's KV-cache usage 0-1; the whole dict as JSON text)."""
    rows = []
    for name, meta in metas.items():
        load = meta.get("engine_load") or {}
        rows.append({"udf_name": name, "engine": meta.get("engine") or load.get("engine"),
                     "num_workers": meta.get("num_workers"), "model_dir": meta.get("model_dir"),
                     "requests_running": load.get("requests_running"), "requests_waiting": load.get("requests_waiting"),
                     "kv_cache_usage": load.get("kv_cache_usage"), "requests_served": meta.get("requests_served"),
                     "deployed_at": local_timestamp(meta.get("deployed_at")),
                     "engine_load": json.dumps(load, sort_keys=True) if load else None})
    return pa.Table.from_pylist(rows, schema=DEPLOYMENT_SCHEMA)


def jobs_table(rows: Sequence[dict]) -> pa.Table:
    """Job rows (`train.jobs.ROW_FIELDS`) as the table SQL shows: times as local timestamps, and the main
    metrics (`catalog.main_metrics`: `loss`, `tokens_per_s`, `reward_margin`) as columns beside the whole
    `metrics` JSON."""
    schema = pa.schema([
        ("job_id", pa.string()), ("kind", pa.string()), ("method", pa.string()), ("state", pa.string()), ("step", pa.int64()),
        ("total_steps", pa.int64()), ("output_table", pa.string()), ("model_version", pa.int64()),
        ("artifact", pa.string()), ("loss", pa.float64()), ("tokens_per_s", pa.float64()),
        ("reward_margin", pa.float64()), ("metrics", pa.string()), ("error", pa.string()), ("detached", pa.bool_()),
        ("ray_job_id", pa.string()),
        ("created_at", pa.timestamp("s")), ("finished_at", pa.timestamp("s")),
    ])
    shown = []
    for row in rows:
        metrics = row.get("metrics") or {}
        metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
        shown.append({**row, **main_metrics(metrics), "created_at": local_timestamp(row.get("created_at")),
                      "finished_at": local_timestamp(row.get("finished_at"))})
    return pa.Table.from_pylist(shown, schema=schema)


def registry_table(models: Sequence[Any]) -> pa.Table:
    """The model registry as a table (`!byzerllm model list`): `created_at` a local timestamp, the main
    metrics (`loss`, `tokens_per_s`, `reward_margin`) as columns beside the whole `metrics` JSON."""
    rows = [{"name": m.name, "version": m.version, "ref": m.ref, "stage": m.stage, "kind": m.kind,
             "model_type": m.model_type,
             "method": m.method, "base_model": m.base_model, "path": m.path, "job_id": m.job_id,
             **main_metrics(m.metrics), "metrics": json.dumps(m.metrics, sort_keys=True),
             "created_at": local_timestamp(m.created_at)} for m in models]
    schema = pa.schema([("name", pa.string()), ("version", pa.int64()), ("ref", pa.string()), ("stage", pa.string()),
                        ("kind", pa.string()),
                        ("model_type", pa.string()), ("method", pa.string()), ("base_model", pa.string()),
                        ("path", pa.string()), ("job_id", pa.string()), ("loss", pa.float64()),
                        ("tokens_per_s", pa.float64()), ("reward_margin", pa.float64()), ("metrics", pa.string()),
                        ("created_at", pa.timestamp("s"))])
    return pa.Table.from_pylist(rows, schema=schema)


def evals_table(records: Sequence[dict]) -> pa.Table:
    """Stored evaluations as a table (`!byzerllm eval list`): one row each, a column per metric found
    (in the order of the metric table, `eval.metrics.METRICS`), the whole summary as `metrics` JSON, the
    report's paths."""
    found = [m for m in (*METRIC_NAMES, "judge_parse_failures") if any(m in (r.get("metrics") or {}) for r in records)]
    rows = []
    for r in records:
        ms = r.get("metrics") or {}
        rows.append({"eval_id": r["id"], "model": r["model"], "version": r["version"],
                     "evalset": r.get("evalset"), "fingerprint": r["fingerprint"], "rows": r["rows"],
                     **{m: (float(ms[m]) if isinstance(ms.get(m), (int, float)) else None) for m in found},
                     "judge": r.get("judge"), "metrics": json.dumps(ms, sort_keys=True),
                     "report_md": (r.get("report") or {}).get("markdown"),
                     "created_at": local_timestamp(r["created_at"])})
    schema = pa.schema([("eval_id", pa.string()), ("model", pa.string()), ("version", pa.int64()),
                        ("evalset", pa.string()), ("fingerprint", pa.string()), ("rows", pa.int64()),
                        *[(m, pa.float64()) for m in found], ("judge", pa.string()), ("metrics", pa.string()),
                        ("report_md", pa.string()), ("created_at", pa.timestamp("s"))])
    return pa.Table.from_pylist(rows, schema=schema)


def adapters_table(rows: Sequence[dict]) -> pa.Table:
    """The adapters each replica holds (`Runtime.loaded_adapters` rows) as `!byzerllm adapter list` shows
    them: one row per replica and adapter, `loaded_at` a local timestamp."""
    schema = pa.schema([("replica", pa.string()), ("adapter", pa.string()), ("version", pa.int64()),
                        ("ref", pa.string()), ("loaded_at", pa.timestamp("s")), ("requests", pa.int64()),
                        ("capacity", pa.int64())])
    shown = [{**r, "loaded_at": local_timestamp(r["loaded_at"]) if r.get("loaded_at") is not None else None}
             for r in rows]
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in shown], schema=schema)


__all__ = ["adapters_table", "evals_table", "jobs_table", "registry_table", "row_table"]
