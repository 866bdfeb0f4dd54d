"""A runtime for the SQL session's statement tests: the members of `session.protocol.SessionRuntime`, with
no cluster behind them (the evaluation verbs are the runtime's own, `runtime.evaluation.Evaluations`). Deployments are names in a dict; a model answers `echo:<instruction>`; training
and merge record what they were given. The workspace, its catalog and the result cache are the real
(SQLite) ones. Imports neither ray nor torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from byzer_like.catalog import Catalog
from byzer_like.config import DeployOptions, SetupConfig
from byzer_like.errors import ModelNotDeployedError
from byzer_like.result_cache import ResultCache
from byzer_like.runtime.evaluation import Evaluations
from byzer_like.workspace import Workspace


@dataclass
class FakeJobs:
    rows: dict[str, dict] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _row(self, job_id: str, state: str) -> dict:
        return {"job_id": job_id, "kind": "sft", "method": "lora", "state": state, "step": 0, "total_steps": None, "output_table": None,
                "model_version": None, "artifact": None, "metrics": "{}", "error": None, "detached": True,
                "ray_job_id": None, "created_at": time.time(), "finished_at": None}

    def list(self, limit: int | None = None) -> list[dict]:
        return list(self.rows.values())

    def status(self, job_id: str) -> dict:
        self.calls.append(("status", job_id))
        return self.rows[job_id]

    def stop(self, job_id: str) -> dict:
        self.calls.append(("stop", job_id))
        self.rows[job_id] = self._row(job_id, "STOPPED")
        return self.rows[job_id]

    def resume(self, job_id: str) -> dict:
        self.calls.append(("resume", job_id))
        self.rows[job_id] = self._row(job_id, "RUNNING")
        return self.rows[job_id]

    def logs(self, job_id: str) -> str:
        self.calls.append(("logs", job_id))
        return f"line 1 of {job_id}\nline 2 of {job_id}"


class FakeRuntime(Evaluations):
    def __init__(self, root: str):
        self.workspace = Workspace.from_env(root)
        self.setup_config = SetupConfig()
        self.deployed: dict[str, dict] = {}
        self.generated: list[tuple[str, list[dict]]] = []
        self.scored: list[tuple[str, list[dict]]] = []
        self.rewarded: list[tuple[str, list[dict]]] = []
        self.trained: list[dict] = []
        self.merged: list[tuple[str, str, bool]] = []
        self.converted: list[Any] = []
        self.quantized: list[dict] = []
        self.listed_with_start: list[bool] = []
        self.jobs = FakeJobs()
        self.catalog = Catalog(self.workspace)
        self.result_cache = ResultCache(self.workspace.path("cache", "results.sqlite"))

    def setup(self, values: Mapping[str, Any]) -> SetupConfig:
        self.setup_config = self.setup_config.with_values(values)
        return self.setup_config

    def deploy_spec(self, options: Mapping[str, Any], session_models: Any = None) -> Any:
        opts = dict(options)
        table = DeployOptions.given(opts, "model_table")
        model_dir = session_models(table) if (session_models and table) else None
        return SimpleNamespace(udf_name=DeployOptions.given(opts, "udf_name"), options=opts, ignored=(),
                               model_dir=model_dir or DeployOptions.given(opts, "model_dir"))

    def deploy(self, spec: Any) -> dict:
        self.deployed[spec.udf_name] = {"options": spec.options, "model_dir": spec.model_dir}
        return {"udf_name": spec.udf_name, "status": "deployed", "model_dir": spec.model_dir}

    def undeploy(self, name: str) -> None:
        if name not in self.deployed:
            raise ModelNotDeployedError(name, self.deployed)
        del self.deployed[name]

    def deployment_exists(self, name: str) -> bool:
        return name in self.deployed

    def meta(self, name: str, *, refresh: bool = False) -> dict:
        if name not in self.deployed:
            raise ModelNotDeployedError(name, self.deployed)
        kind = "reward" if DeployOptions.given(self.deployed[name]["options"], "pretrained_model_type") == "reward" \
            else None
        return {"engine": "threads", "num_workers": 1, "model_dir": self.deployed[name]["model_dir"],
                "engine_load": {"requests_running": 0, "requests_waiting": 0}, "requests_served": 0, "kind": kind}

    def deployments(self, *, start: bool = True) -> dict[str, str]:
        self.listed_with_start.append(start)
        return {n: "RUNNING" for n in self.deployed}

    def generate(self, name: str, requests: Sequence[Mapping[str, Any]], *, on_rows: Any = None, cache: bool = False,
                 rows: Sequence[int] | None = None, on_cached: Any = None, dedupe: bool = True,
                 known: dict | None = None, on_shared: Any = None) -> list[dict]:
        reqs = [dict(r) for r in requests]
        self.generated.append((name, reqs))
        out = []
        for r in reqs:
            if r["ins"].startswith("FAIL"):
                out.append({"error": "prompt too long", "error_code": "prompt_too_long"})
            else:
                out.append({"output": f"echo:{r['ins']}", "metadata": {"input_tokens": len(r["ins"])}})
        if on_rows:
            on_rows(len(out))
        return out

    def embed(self, name: str, texts: Sequence[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0] for t in texts]

    def loaded_adapters(self, name: str) -> list[dict]:
        """The adapters the requests sent to `name` asked for, as held by one replica "r1"."""
        refs = sorted({r["adapter"] for n, reqs in self.generated if n == name for r in reqs if r.get("adapter")})
        return [{"replica": "r1", "adapter": ref, "version": 1, "ref": f"{ref}@v1", "loaded_at": 0.0,
                 "requests": 1, "capacity": 8} for ref in refs] or \
            [{"replica": "r1", "adapter": None, "version": None, "ref": None, "loaded_at": None, "requests": 0,
              "capacity": 8}]

    def rewards(self, name: str, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """The response's length minus the instruction's, per pair (a reward model that likes long answers)."""
        self.rewarded.append((name, [dict(p) for p in pairs]))
        return [float(len(p["response"]) - len(p.get("instruction") or "")) for p in pairs]

    def score(self, name: str, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """-1 nat per character of each text, one token per character."""
        self.scored.append((name, [dict(i) for i in items]))
        return [{"logprob": -float(len(i["text"])), "tokens": len(i["text"])} for i in items]

    def train(self, task: str | None, params: Mapping[str, Any], table: Any, *, options: Any = None,
              progress: bool = False, eval_table: Any = None, partitions: Any = None) -> dict:
        self.trained.append({"task": task, "params": dict(params), "rows": table.num_rows, "table": table,
                             "options": options,
                             "eval_rows": None if eval_table is None else eval_table.num_rows,
                             "partitions": None if partitions is None else list(partitions)})
        job_id = f"{task}-job-{len(self.trained)}"
        self.jobs.rows[job_id] = self.jobs._row(job_id, "SUCCEEDED")
        return self.jobs.rows[job_id]

    def merge(self, model_table: str, output_table: str, *, overwrite: bool = False) -> dict:
        self.merged.append((model_table, output_table, overwrite))
        return {"name": output_table, "version": 1, "kind": "model", "path": "/x", "merged_from": model_table}

    def convert(self, options: Any, *, session_models: Any = None) -> dict:
        self.converted.append(options)
        return {"name": options.output_table, "version": 1 if options.output_table else None, "kind": "model",
                "path": options.save_path or "/x", "source_format": options.source()}

    def quantize(self, model_table: str, output_table: str, method: str, *, calibration: Any = None,
                 calibration_column: str | None = None, calibration_rows: int = 128, group_size: int | None = None,
                 overwrite: bool = False, session_models: Any = None) -> dict:
        from byzer_like.convert.quantize import method_of

        name = method_of(method)  # the real check: an unknown method lists the valid ones
        self.quantized.append({"model_table": model_table, "output_table": output_table, "method": name,
                               "calibration_rows": None if calibration is None else calibration.num_rows,
                               "calibration_column": calibration_column, "group_size": group_size,
                               "overwrite": overwrite})
        return {"name": output_table, "version": 1, "kind": "model", "path": "/q", "method": name,
                "quantized_from": model_table}
