"""The catalog: a SQLite database in the workspace that remembers training jobs and trained models.

Ray forgets a job once its cluster goes away; the catalog keeps the parameters, state, progress,
metrics and final artifact of every job, and the model registry (name, version, kind, base model,
parameters, metrics) that `modelTable="name"` / `"name@v2"` deploys from.

Every call opens its own connection (WAL mode, a generous busy timeout), so the client, a job's
runner and its training workers can all write to it at once. This module imports neither ray nor torch.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import ConfigError, JobNotFoundError, ModelExistsError, ModelNotFoundError
from .workspace import Workspace

CATALOG_FILE = ("catalog", "catalog.sqlite")
JOB_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")
MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
MODEL_REF = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.-]{0,127}?)"
                       r"(?:@v(?P<version>[0-9]+)|@(?P<stage>candidate|production|archived))?$")

_SCHEMA = """
create table if not exists jobs (
    id text primary key,
    kind text not null,
    state text not null,
    model_type text,
    base_model text,
    output_table text,
    params text not null default '{}',
    options text not null default '{}',
    sys_conf text not null default '{}',
    detached integer not null default 0,
    ray_job_id text,
    jobs_address text,
    runner text,
    attempts integer not null default 0,
    step integer not null default 0,
    total_steps integer,
    metrics text not null default '{}',
    artifact text,
    model_version integer,
    error text,
    run_dir text,
    created_at real not null,
    updated_at real not null,
    started_at real,
    finished_at real
);
create table if not exists job_metrics (
    job_id text not null,
    step integer not null,
    at real not null,
    metrics text not null
);
create index if not exists job_metrics_job on job_metrics(job_id, step);
create table if not exists models (
    name text not null,
    version integer not null,
    kind text not null,
    path text not null,
    base_model text,
    model_type text,
    method text,
    params text not null default '{}',
    metrics text not null default '{}',
    job_id text,
    created_at real not null,
    primary key (name, version)
);
create table if not exists evals (
    id text primary key,
    model text not null,
    version integer,
    udf_name text,
    evalset text,
    fingerprint text not null,
    rows integer not null,
    metrics text not null default '{}',
    judge text,
    judge_prompt text,
    params text not null default '{}',
    row_data text not null default '{}',
    report text,
    created_at real not null
);
create index if not exists evals_model on evals(model, version, fingerprint);
"""
EVAL_COLUMNS = ("id", "model", "version", "udf_name", "evalset", "fingerprint", "rows", "metrics", "judge",
                "judge_prompt", "params", "row_data", "report", "created_at")
STAGES = ("candidate", "production", "archived")
MODEL_KINDS = ("adapter", "model", "reward")

_JSON_COLUMNS = ("params", "options", "sys_conf", "metrics")








@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    # "adapter" (LoRA weights over base_model), "model" (a whole Hugging Face model) or "reward" (a whole
    # sequence-classification model giving one score per text: deployed as a scoring function)
    kind: str
    path: str
    base_model: str | None
    model_type: str | None
    method: str | None
    params: dict
    metrics: dict
    job_id: str | None
    created_at: float
    stage: str = "candidate"  # candidate (every new version), production (one per name), archived (a former production)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


_READY: set[Path] = set()  # catalogs whose schema this process has already created


class Catalog:
    def __init__(self, workspace: Workspace | str | Path):
        ws = workspace if isinstance(workspace, Workspace) else Workspace.from_env(workspace)
        self.workspace = ws
        self.path = ws.path(*CATALOG_FILE)
        if self.path not in _READY or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.executescript(_SCHEMA)
                columns = {r[1] for r in db.execute("pragma table_info(models)")}
                if "stage" not in columns:  # a catalog written before versions carried stages
                    db.execute("alter table models add column stage text not null default 'candidate'")
                if "options" not in {r[1] for r in db.execute("pragma table_info(jobs)")}:  # before options were kept
                    db.execute("alter table jobs add column options text not null default '{}'")
            _READY.add(self.path)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            db.execute("pragma journal_mode=wal")
            db.execute("pragma busy_timeout=60000")
            yield db

    # -- jobs ------------------------------------------------------------------------------------
    def create_job(self, job_id: str, kind: str, *, model_type: str, base_model: str, output_table: str | None,
                   params: dict, sys_conf: dict, detached: bool, run_dir: str, options: dict | None = None) -> dict:
        """Record a new PENDING job: `params` the user's keys as given, `sys_conf` the setup it runs with,
        `options` the task's options model as checked at submit (JSON; the runner and `resume` read it back;
        none: the runner parses `params`)."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "insert into jobs (id, kind, state, model_type, base_model, output_table, params, options, sys_conf,"
                " detached, run_dir, created_at, updated_at) values (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, model_type, base_model, output_table, json.dumps(params), json.dumps(options or {}),
                 json.dumps(sys_conf), int(detached), run_dir, now, now),
            )
        return self.job(job_id)

    def end_job(self, job_id: str, state: str, error: str) -> None:
        """Record a job that ended before finishing (STOPPED, FAILED) with its `error`: nothing is left to wait
        for, so its metrics lose their ETA."""
        metrics = {k: v for k, v in self.job(job_id)["metrics"].items() if k != "eta_s"}
        self.update_job(job_id, state=state, error=error, finished_at=time.time(), metrics=metrics)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        if "state" in fields and fields["state"] not in JOB_STATES:
            raise ValueError(f"bad job state {fields['state']!r}")
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [json.dumps(v) if k in _JSON_COLUMNS else v for k, v in fields.items()]
        with self._db() as db:
            cur = db.execute(f"update jobs set {sets} where id = ?", (*values, job_id))
            if cur.rowcount == 0:
                raise JobNotFoundError(job_id, self._recent_ids(db))

    def record_progress(self, job_id: str, step: int, metrics: dict, *, total_steps: int | None = None) -> None:
        """One progress point: the job's current step and metrics, and a row of its metric history."""
        now = time.time()
        with self._db() as db:
            db.execute("insert into job_metrics (job_id, step, at, metrics) values (?, ?, ?, ?)",
                       (job_id, step, now, json.dumps(metrics)))
            row = db.execute("select metrics from jobs where id = ?", (job_id,)).fetchone()
            merged = {**(json.loads(row["metrics"]) if row else {}), **metrics}
            db.execute("update jobs set step = ?, metrics = ?, updated_at = ?, total_steps = coalesce(?, total_steps)"
                       " where id = ?", (step, json.dumps(merged), now, total_steps, job_id))

    def metric_history(self, job_id: str) -> list[dict]:
        with self._db() as db:
            rows = db.execute("select step, at, metrics from job_metrics where job_id = ? order by rowid", (job_id,))
            return [{"step": r["step"], "at": r["at"], **json.loads(r["metrics"])} for r in rows]

    def job(self, job_id: str) -> dict:
        with self._db() as db:
            row = db.execute("select * from jobs where id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(job_id, self._recent_ids(db))
            return _job_dict(row)

    def jobs(self, limit: int | None = None) -> list[dict]:
        with self._db() as db:
            q = "select * from jobs order by created_at desc"
            rows = db.execute(q + (f" limit {int(limit)}" if limit else "")).fetchall()
            return [_job_dict(r) for r in rows]

    @staticmethod
    def _recent_ids(db: sqlite3.Connection) -> list[str]:
        return [r[0] for r in db.execute("select id from jobs order by created_at desc limit 10")]

    # -- models ----------------------------------------------------------------------------------
    def register_model(self, name: str, *, kind: str, path: str, base_model: str | None, model_type: str | None,
                       method: str | None, params: dict, metrics: dict, job_id: str | None,
                       overwrite: bool = False) -> RegisteredModel:
        """Add a version of `name` (version 1 if new). An existing name needs overwrite=True, which
        adds a version: earlier versions stay deployable as `name@vN`."""
        check_model_name(name)
        if kind not in MODEL_KINDS:
            raise ValueError(f"bad model kind {kind!r}")
        with self._db() as db:
            db.execute("begin immediate")
            try:
                latest = db.execute("select max(version) from models where name = ?", (name,)).fetchone()[0]
                if latest is not None and not overwrite:
                    raise ModelExistsError(
                        f"model {name!r} is already registered (latest {name}@v{latest}); "
                        'choose another outputTable or ask for a new version with overwrite="true"')
                version = (latest or 0) + 1
                db.execute(
                    "insert into models (name, version, kind, path, base_model, model_type, method, params, metrics,"
                    " job_id, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, version, kind, path, base_model, model_type, method, json.dumps(params),
                     json.dumps(metrics), job_id, time.time()),
                )
                db.execute("commit")
            except BaseException:
                db.execute("rollback")
                raise
        return self.model(f"{name}@v{version}")

    def check_new_name(self, name: str, *, overwrite: bool = False) -> None:
        """Before any work that ends in `register_model(name)`: a valid name, free unless overwrite."""
        check_model_name(name)
        if self.model_exists(name) and not overwrite:
            raise ModelExistsError(f"outputTable {name!r} is already a registered model ({self.model(name).ref}); "
                                   'choose another name or add overwrite="true" to register a new version'
                                   ).suggesting(output_table="outputTable", overwrite='overwrite="true"')

    def model_exists(self, name: str) -> bool:
        with self._db() as db:
            return db.execute("select 1 from models where name = ? limit 1", (name,)).fetchone() is not None

    def model(self, ref: str) -> RegisteredModel:
        """`name` (its latest version), `name@vN`, or `name@production` / `name@candidate` (the latest
        version holding that stage)."""
        m = MODEL_REF.match(ref or "")
        if not m:
            raise ConfigError(f"{ref!r} is not a model reference; use name, name@v2 or name@production")
        name, version, stage = m.group("name"), m.group("version"), m.group("stage")
        with self._db() as db:
            if stage is not None:
                row = db.execute("select * from models where name = ? and stage = ? order by version desc limit 1",
                                 (name, stage)).fetchone()
                if row is None:
                    held = [f"{r[0]}@v{r[1]} ({r[2]})" for r in db.execute(
                        "select name, version, stage from models where name = ? order by version", (name,))]
                    if not held:
                        raise ModelNotFoundError(ref, [f"{r[0]}@v{r[1]}" for r in db.execute(
                            "select name, max(version) from models group by name order by name")])
                    err = ModelNotFoundError(ref, held)
                    err.args = (f"no version of {name!r} holds stage {stage!r} (versions: {', '.join(held)}); "
                                f"promote one first: !byzerllm model promote {name}@vN [if ...]",)
                    raise err
                return _model(row)
            if version is None:
                row = db.execute("select * from models where name = ? order by version desc limit 1", (name,)).fetchone()
            else:
                row = db.execute("select * from models where name = ? and version = ?", (name, int(version))).fetchone()
            if row is None:
                known = [f"{r[0]}@v{r[1]}" for r in db.execute(
                    "select name, max(version) from models group by name order by name")]
                raise ModelNotFoundError(ref, known)
            return _model(row)

    def models(self) -> list[RegisteredModel]:
        with self._db() as db:
            return [_model(r) for r in db.execute("select * from models order by name, version")]

    def set_stage(self, ref: str, stage: str) -> RegisteredModel:
        """Give version `ref` the stage `stage`; promoting to production moves the version that held it to
        archived (one production version per name). Returns the updated version."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        m = self.model(ref)
        with self._db() as db:
            db.execute("begin immediate")
            try:
                if stage == "production":
                    db.execute("update models set stage = 'archived' where name = ? and stage = 'production' "
                               "and version != ?", (m.name, m.version))
                db.execute("update models set stage = ? where name = ? and version = ?", (stage, m.name, m.version))
                db.execute("commit")
            except BaseException:
                db.execute("rollback")
                raise
        return self.model(m.ref)

    # -- evaluations -----------------------------------------------------------------------------
    def record_eval(self, record: dict) -> dict:
        """Keep one evaluation: `id`, `model` (a registry name, or a deployment's name), `version` (None for
        a deployment that is no registry version), `udf_name`, `evalset` (the table's name), `fingerprint`,
        `rows`, `metrics` (the summary), `judge`, `judge_prompt`, `params` (the options), `row_data` (per-row
        keys, predictions, references and metric values: what `eval compare` pairs), `report`."""
        fields = EVAL_COLUMNS
        rec = {"created_at": time.time(), "params": {}, "row_data": {}, **record}
        values = [json.dumps(rec.get(k)) if k in ("metrics", "params", "row_data") else rec.get(k) for k in fields]
        if isinstance(rec.get("report"), dict):
            values[fields.index("report")] = json.dumps(rec["report"])
        with self._db() as db:
            db.execute(f"insert into evals ({', '.join(fields)}) values ({', '.join('?' * len(fields))})", values)
        return self.eval_record(rec["id"])

    def set_eval_report(self, eval_id: str, report: dict) -> None:
        with self._db() as db:
            db.execute("update evals set report = ? where id = ?", (json.dumps(report), eval_id))

    def eval_record(self, eval_id: str) -> dict:
        with self._db() as db:
            row = db.execute("select * from evals where id = ?", (eval_id,)).fetchone()
        if row is None:
            from .errors import EvalNotFoundError

            raise EvalNotFoundError(f"no evaluation {eval_id!r} in this workspace's catalog")
        return _eval_dict(row)

    def evals(self, model: str | None = None, version: int | None = None, *, fingerprint: str | None = None,
              evalset: str | None = None, with_rows: bool = False) -> list[dict]:
        """Stored evaluations, newest first, optionally of one model (and version) on one eval set (by its
        fingerprint or its table name). `with_rows`: include the per-row data (large)."""
        columns = "*" if with_rows else ", ".join(c for c in EVAL_COLUMNS if c != "row_data")  # row_data is large
        q, args = f"select {columns} from evals where 1 = 1", []
        for column, value in (("model", model), ("version", version), ("fingerprint", fingerprint),
                              ("evalset", evalset)):
            if value is not None:
                q += f" and {column} = ?"
                args.append(value)
        with self._db() as db:
            rows = db.execute(q + " order by created_at desc, rowid desc", args).fetchall()
        return [_eval_dict(r, with_rows) for r in rows]


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name or ""):
        raise ConfigError(f"{name!r} is not a valid model name: use letters, digits, _ . - "
                          "(starting with a letter or _), at most 128 characters")
    if "@v" in name:
        raise ConfigError(f"{name!r}: '@v' is reserved for versions (name@v2)")
    return name


def main_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The metrics a table of jobs or models shows as columns: `loss` (the final loss, else the last one
    logged), `tokens_per_s` and `reward_margin` (a preference run's last logged `rewards/margins`, TRL's
    mean chosen minus rejected reward); None where a record has none."""
    loss = metrics.get("final_loss", metrics.get("loss"))
    return {"loss": _float(loss), "tokens_per_s": _float(metrics.get("tokens_per_s")),
            "reward_margin": _float(metrics.get("rewards/margins"))}


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _job_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in _JSON_COLUMNS:
        d[k] = json.loads(d[k]) if d.get(k) else {}
    d["detached"] = bool(d["detached"])
    return d


def _eval_dict(row: sqlite3.Row, with_rows: bool = True) -> dict:
    d = dict(row)
    for k in ("metrics", "params", "row_data"):
        if k in d:
            d[k] = json.loads(d[k]) if d.get(k) else {}
    d["report"] = json.loads(d["report"]) if d.get("report") else None
    if not with_rows:
        d.pop("row_data", None)
    return d


def _model(row: sqlite3.Row) -> RegisteredModel:
    d = dict(row)
    d["params"] = json.loads(d["params"] or "{}")
    d["metrics"] = json.loads(d["metrics"] or "{}")
    return RegisteredModel(**d)


__all__ = ["STAGES", "Catalog", "JobNotFoundError", "ModelExistsError", "ModelNotFoundError", "RegisteredModel",
           "check_model_name", "main_metrics"]
