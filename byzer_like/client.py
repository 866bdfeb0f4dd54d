"""The Python client: `from byzer_like import ByzerLLM`.

    llm = ByzerLLM()                       # embedded local cluster, or the workspace's persistent one
    llm.setup_num_workers(2)
    llm.deploy(model_path="byzer_workspace/models/tiny-llama", pretrained_model_type="llama",
               udf_name="tiny_chat", infer_params={})
    llm.chat_oai([{"role": "user", "content": "hello"}], model="tiny_chat")[0].output
    for delta, meta in llm.stream_chat_oai([{"role": "user", "content": "tell me"}], model="tiny_chat"):
        print(delta, end="")

Names follow Byzer-LLM's client (`setup_num_workers`, `deploy`, `chat_oai`, `stream_chat_oai`, `emb`,
`is_model_exist`, `undeploy`) so existing code ports unchanged.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from . import cluster
from .config import DeployOptions, SetupConfig, chat_request, check_udf_name
from .errors import ConfigError, ModelNotDeployedError, UnknownOptionError
from .plugins import registry
from .serving import manager
from .workspace import Workspace


@dataclass
class LLMResponse:
    """One answer: the text, what was asked, and metadata (token counts, timings, finish reason)."""

    output: Any
    input: Any
    metadata: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return str(self.output)


class ByzerLLM:
    """A connection to a Ray cluster and the models deployed on it."""

    def __init__(self, address: str | None = None, *, workspace: str | os.PathLike | None = None):
        self.address = address
        self.workspace = Workspace.from_env(workspace)
        self._setup = SetupConfig()
        self.default_model_name: str | None = None
        self._handles: dict[str, Any] = {}
        self._meta: dict[str, dict] = {}
        self._session = None
        self._result_cache = None

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, key: str, value: Any) -> "ByzerLLM":
        """Set one sys_conf value (`num_workers`, `cpus_per_worker`, `gpus_per_worker`, limits...)."""
        self._setup = self._setup.with_values({key: value})
        return self

    def setup_num_workers(self, num_workers: int) -> "ByzerLLM":
        return self.setup("num_workers", num_workers)

    def setup_cpus_per_worker(self, cpus: float) -> "ByzerLLM":
        return self.setup("cpus_per_worker", cpus)

    def setup_gpus_per_worker(self, gpus: float) -> "ByzerLLM":
        return self.setup("gpus_per_worker", gpus)

    def setup_default_model_name(self, name: str) -> "ByzerLLM":
        self.default_model_name = name
        return self

    @property
    def sys_conf(self) -> dict[str, str]:
        return self._setup.sys_conf()

    @property
    def setup_config(self) -> SetupConfig:
        return self._setup

    def connect(self) -> dict[str, Any]:
        """Connect to Ray now (otherwise the first call that needs it connects)."""
        return cluster.connect(self.address, self.workspace)

    # -- deployments ---------------------------------------------------------------------------
    def deploy(self, model_path: str | os.PathLike | None, pretrained_model_type: str, udf_name: str,
               infer_params: Mapping[str, Any] | None = None, *, reconnect: bool | None = None) -> dict:
        """Deploy `model_path` as `udf_name` on `num_workers` replicas; wait until all have loaded it.

        Every check that can fail (plugin, options, model directory) runs before anything starts."""
        params = dict(infer_params or {})
        task, name = registry.split_model_type(pretrained_model_type)
        if task:
            raise ConfigError(f"pretrained_model_type {pretrained_model_type!r} names a training task; "
                              f"deploy the model type itself (e.g. {name!r})")
        plugin = registry.load(name)
        extra = {k: params.pop(k) for k in list(params) if k in plugin.infer_param_names()}
        given = {"pretrained_model_type": pretrained_model_type, "udf_name": udf_name, **params}
        if model_path is not None:
            given["local_model_dir"] = os.fspath(model_path)
        if reconnect is not None:
            given["reconnect"] = reconnect
        try:
            opts = DeployOptions.parse(given, where="deploy")
        except UnknownOptionError as e:
            raise UnknownOptionError("deploy", e.key, set(e.valid) | plugin.infer_param_names()) from None
        if opts.model_table not in (None, "command"):  # a registered model: its weights, or its base + adapter
            m = self.catalog.model(opts.model_table)
            update = {"local_model_dir": m.base_model if m.kind == "adapter" else m.path,
                      "adapter_dir": m.path if m.kind == "adapter" else None}
            opts = opts.model_copy(update=update)
        if opts.reconnect:
            self.connect()
            if manager.exists(udf_name):
                self._forget(udf_name)
                return {"udf_name": udf_name, "status": "reconnected"}
        if opts.local_model_dir:
            model_dir = str(self.workspace.resolve(opts.local_model_dir, what="model_path"))
        elif plugin.needs_model_dir():
            raise ConfigError("deploy needs model_path (SQL: localModelDir)")
        else:  # a remote model (saas/...): its plugin's options say where it is
            model_dir = ""
        if opts.adapter_dir:
            opts = opts.model_copy(update={"adapter_dir": str(self.workspace.resolve(opts.adapter_dir, what="adapter_dir"))})
        # what the plugin's init_model receives: snake_case options as strings, then the user's own keys
        infer = {k: _as_str(v) for k, v in opts.model_dump(exclude={"local_model_dir"}).items() if v is not None}
        infer.update({k: _as_str(v) for k, v in {**params, **extra}.items()})
        plugin.check_model_dir(model_dir, infer)
        spec = {
            "udf_name": udf_name,
            "pretrained_model_type": pretrained_model_type,
            "plugin": plugin.name,
            "import_path": plugin.import_path,
            "model_dir": model_dir,
            "infer_params": infer,
            "sys_conf": self.sys_conf,
            "deployed_at": time.time(),
        }
        self.connect()  # only now: a bad name, path or option never starts a cluster
        manager.deploy(spec, self._setup)
        self._forget(udf_name)
        return {"udf_name": udf_name, "status": "deployed", "num_workers": self._setup.num_workers, "model_dir": model_dir}

    def undeploy(self, udf_name: str) -> None:
        _valid_name(udf_name)
        self.connect()
        manager.undeploy(udf_name)
        self._forget(udf_name)

    def is_model_exist(self, udf_name: str) -> bool:
        try:
            _valid_name(udf_name)
        except ConfigError:
            return False  # no deployment can have such a name
        self.connect()
        return manager.exists(udf_name)

    def list_models(self) -> list[str]:
        self.connect()
        return sorted(manager.list_deployments())

    def get_meta(self, model: str | None = None, *, refresh: bool = False) -> dict:
        """A deployment's metadata (asked once, then kept; `refresh=True` asks again, for its counters)."""
        name = self._model(model)
        if refresh or name not in self._meta:
            self._meta[name] = manager.call(self._handle(name), "meta", udf_name=name, timeout_s=60)
        return dict(self._meta[name])

    def _forget(self, udf_name: str) -> None:
        self._handles.pop(udf_name, None)
        self._meta.pop(udf_name, None)

    def _model(self, model: str | None) -> str:
        name = model or self.default_model_name
        if not name:
            self.connect()
            raise ModelNotDeployedError("(none given)", manager.list_deployments())
        return name

    def _handle(self, name: str) -> Any:
        if name not in self._handles:
            self.connect()
            self._handles[name] = manager.get_handle(name)
        return self._handles[name]

    # -- training and the model registry ----------------------------------------------------------
    @property
    def catalog(self):
        """This workspace's catalog: jobs and the model registry (SQLite)."""
        from .catalog import Catalog

        return Catalog(self.workspace)

    @property
    def jobs(self):
        """Training jobs: `submit`, `list`, `status`, `logs`, `stop`, `resume`, `wait`."""
        from .jobs import Jobs

        return Jobs(self)

    def sft(self, data: Any, *, model_path: str | os.PathLike | None = None, pretrained_model_type: str = "sft/auto",
            output_table: str | None = None, detached: bool = False, model_table: str | None = None,
            progress: bool = False, **options: Any) -> dict:
        """Fine-tune on `data` (a pyarrow Table, a pandas DataFrame or a list of dicts in alpaca or chat
        form). Options are those of SQL's sft (`method`, `max_seq_length`, `learning_rate`, `lora_r`...).
        Returns the job's row; with `detached=True` at once, otherwise when training has finished."""
        return self._train("sft", data, model_path, pretrained_model_type, output_table, detached, model_table,
                           progress, options)

    def pretrain(self, data: Any, *, model_path: str | os.PathLike | None = None,
                 pretrained_model_type: str = "sfft/auto", output_table: str | None = None, detached: bool = False,
                 model_table: str | None = None, progress: bool = False, **options: Any) -> dict:
        """Continued pretraining (sfft) on a table of text, on `num_workers` Ray Train workers with DeepSpeed."""
        return self._train("sfft", data, model_path, pretrained_model_type, output_table, detached, model_table,
                           progress, options)

    def _train(self, task: str, data: Any, model_path: Any, model_type: str, output_table: str | None,
               detached: bool, model_table: str | None, progress: bool, options: Mapping[str, Any]) -> dict:
        if "/" not in model_type:
            model_type = f"{task}/{model_type}"
        params: dict[str, Any] = {"pretrained_model_type": model_type, "detached": detached, **options}
        if model_path is not None:
            params["local_model_dir"] = os.fspath(model_path)
        for key, value in (("output_table", output_table), ("model_table", model_table)):
            if value is not None:
                params[key] = value
        return self.jobs.submit(params, _as_table(data), progress=progress)

    def merge(self, model_table: str, output_table: str, *, overwrite: bool = False) -> dict:
        """Merge a registered LoRA adapter into its base model and register the result."""
        from .train.sft import merge_adapter

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

    # -- calls -----------------------------------------------------------------------------------
    def chat_oai(self, conversations: Sequence[Mapping[str, Any]] | str, model: str | None = None,
                 llm_config: Mapping[str, Any] | None = None, **_: Any) -> list[LLMResponse]:
        """Answer one conversation (OpenAI-style messages; the last one is the question).

        Returns a one-item list, as Byzer-LLM does; `str(result[0])` is the answer text."""
        name = self._model(model)
        req = chat_request(conversations, llm_config).model_dump()
        res = manager.call(self._handle(name), "chat", req, udf_name=name, timeout_s=self._setup.request_timeout_s)
        manager.raise_row_error(res)
        return [LLMResponse(output=res["output"], input=req["ins"], metadata=res.get("metadata", {}))]

    def stream_chat_oai(self, conversations: Sequence[Mapping[str, Any]] | str, model: str | None = None,
                        llm_config: Mapping[str, Any] | None = None, delta_mode: bool = True,
                        **_: Any) -> Iterator[tuple[str, dict]]:
        """Stream an answer as `(text, metadata)` pairs: new text only (`delta_mode=True`, default) or
        the whole text so far. The last pair carries the final metadata."""
        name = self._model(model)
        req = chat_request(conversations, llm_config).model_dump()
        text = ""
        for item in manager.stream(self._handle(name), req, udf_name=name, timeout_s=self._setup.request_timeout_s):
            if "text" in item:
                text = item["text"]
                piece = text
            else:
                piece = item.get("delta", "")
                text += piece
            meta = item.get("metadata", {})
            if piece or item.get("done"):
                yield (piece if delta_mode else text), meta

    def batch_chat(self, conversations: Sequence[Sequence[Mapping[str, Any]] | str], model: str | None = None,
                   llm_config: Mapping[str, Any] | None = None, *, on_error: str = "raise",
                   progress: bool = False, cache: bool = False) -> list[LLMResponse | None]:
        """Answer many conversations at once, spread over all replicas; answers in input order.

        A conversation that fails on its own (prompt too long...) raises with its index, or gives
        `None` with `on_error="null"`. `cache=True` keeps each answer in the workspace's result
        cache as it arrives, and takes the ones already there (an interrupted batch resumes)."""
        if on_error not in ("raise", "null"):
            raise ConfigError(f"on_error must be 'raise' or 'null', not {on_error!r}")
        reqs = [chat_request(c, llm_config).model_dump() for c in conversations]
        results = self.generate(reqs, model=model, progress=progress, cache=cache)
        out: list[LLMResponse | None] = []
        for i, (req, res) in enumerate(zip(reqs, results)):
            if "error" in res:
                if on_error == "raise":
                    manager.raise_row_error(res, i)
                out.append(None)
            else:
                out.append(LLMResponse(output=res["output"], input=req["ins"], metadata=res.get("metadata", {})))
        return out

    def generate(self, requests: Sequence[Mapping[str, Any]], model: str | None = None, *,
                 progress: bool = False, on_rows: Any = None, cache: bool = False,
                 rows: Sequence[int] | None = None, on_cached: Any = None) -> list[dict]:
        """The batch path under `batch_chat` and SQL: built requests (`config.ChatRequest` dicts) in,
        one `{"output", "metadata"}` or `{"error", "error_code"}` per request out, in order.

        With `cache=True`, answers already in the result cache (same model, row and request) are
        taken from it (`on_cached(n)` hears how many) and the others are kept as they arrive; `rows`
        numbers the requests (default: their positions)."""
        name = self._model(model)
        meta = self.get_meta(name)
        reqs = list(requests)
        keys: list[str] = []
        found: dict[str, dict] = {}
        if cache:
            from .result_cache import ResultCache, model_identity

            store = self.result_cache
            identity = model_identity(meta)
            numbers = list(rows) if rows is not None else range(len(reqs))
            keys = [ResultCache.key(identity, n, r) for n, r in zip(numbers, reqs)]
            found = store.get_many(keys)
            if on_cached:
                on_cached(len(found))
        todo = [i for i in range(len(reqs)) if not cache or keys[i] not in found]

        def keep(start: int, answers: list[dict]) -> None:  # a chunk's answers, as soon as it is back
            store.put_many(name, ((keys[todo[start + j]], a) for j, a in enumerate(answers)))

        workers = int(meta.get("num_workers") or 1)
        # chunks of the replicas' batch size, but at least two per replica, so that Serve's router
        # (which picks between two random replicas) spreads the work even for small batches
        chunk = max(1, min(int(meta.get("max_batch_size") or self._setup.max_batch_size),
                           -(-len(todo) // (2 * workers))))
        bar = _progress(len(reqs), name, progress)
        if bar and found:
            bar.update(len(found))
        try:
            answers = manager.run_batched(
                self._handle(name), [reqs[i] for i in todo], udf_name=name, chunk_size=chunk, in_flight=2 * workers,
                timeout_s=self._setup.request_timeout_s, on_rows=_both(bar.update if bar else None, on_rows),
                on_answers=keep if cache else None,
            ) if todo else []
        finally:
            if bar:
                bar.close()
        if not cache:
            return answers
        out = [found.get(k) for k in keys]
        for i, answer in zip(todo, answers):
            out[i] = answer
        return out  # type: ignore[return-value]

    @property
    def result_cache(self):
        """The workspace's result cache (`byzer_like.result_cache.ResultCache`)."""
        if self._result_cache is None:
            from .result_cache import ResultCache

            self._result_cache = ResultCache(self.workspace.path("cache", "results.sqlite"))
        return self._result_cache

    def emb(self, model: str | None, texts: str | Sequence[str]) -> list[list[float]]:
        """Embedding vectors for one text or many (the plugin's `embed_query`)."""
        name = self._model(model)
        items = [texts] if isinstance(texts, str) else list(texts)
        return manager.call(self._handle(name), "embed", items, udf_name=name, timeout_s=self._setup.request_timeout_s)

    def emb_query(self, text: str, model: str | None = None) -> list[float]:
        return self.emb(model, [text])[0]

    # -- HTTP API --------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
              max_tokens_cap: int = 4096, max_body_bytes: int = 1 << 20, replace: bool = False,
              block: bool = False):
        """Start the OpenAI-compatible HTTP API and the chat page for every deployment, on this node.

        Returns an `api.server.ApiServer` (`url`, `base_url`, `api_key`, `stop()`). The key is
        `api_key`, else BYZER_LIKE_API_KEY; bound to anything but loopback without one, a key is
        generated and printed once. `block=True` waits until the server is stopped (or Ctrl-C)."""
        from .api import server

        self.connect()
        srv = server.start(host=host, port=port, api_key=api_key, max_tokens_cap=max_tokens_cap,
                           max_body_bytes=max_body_bytes, request_timeout_s=self._setup.request_timeout_s,
                           replace=replace)
        if srv.key_generated:
            print(f"byzer-like API key (shown once): {srv.api_key}", file=sys.stderr)
        if block:
            try:
                server.wait(srv)
            except KeyboardInterrupt:
                srv.stop()
        return srv

    def stop_serving(self) -> bool:
        """Stop the HTTP API; False if none was running."""
        from .api import server

        self.connect()
        return server.stop()

    # -- SQL -------------------------------------------------------------------------------------
    @property
    def session(self):
        """This client's SQL session (tables and `set` variables persist between `sql()` calls)."""
        if self._session is None:
            from .engine import Session

            self._session = Session(self)
        return self._session

    def sql(self, script: str, **variables: str):
        """Run a script in the Byzer-LLM dialect; return the last statement's table as a pandas DataFrame
        (None when it has none). `variables` fill `${name}` like `set` does. All results:
        `llm.session.sql(script)`."""
        self.session.variables.update({k: str(v) for k, v in variables.items()})
        results = self.session.sql(script)
        return results[-1].to_pandas() if results else None


def _valid_name(udf_name: str) -> None:
    try:
        check_udf_name(udf_name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _as_table(data: Any):
    import pyarrow as pa

    if data is None or isinstance(data, pa.Table):
        return data
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if hasattr(data, "to_arrow_table"):
        return data.to_arrow_table()
    return pa.Table.from_pandas(data, preserve_index=False)


def _as_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _both(a: Any, b: Any) -> Any:
    if a and b:
        return lambda n: (a(n), b(n))
    return a or b


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", leave=False)


__all__ = ["ByzerLLM", "LLMResponse"]
