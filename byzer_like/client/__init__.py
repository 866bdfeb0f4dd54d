"""The Python client: `from byzer_like import ByzerLLM`.

    llm = ByzerLLM()                       # embedded local cluster, or the workspace's persistent one
    llm.setup_num_workers(2)
    llm.deploy(model_path="byzer_workspace/models/tiny-llama", pretrained_model_type="llama",
               udf_name="tiny_chat", infer_params={})   # relative paths start at the current directory
    llm.chat_oai([{"role": "user", "content": "hello"}], model="tiny_chat")[0].output
    for delta, meta in llm.stream_chat_oai([{"role": "user", "content": "tell me"}], model="tiny_chat"):
        print(delta, end="")

Names follow Byzer-LLM's client (`setup_num_workers`, `deploy`, `chat_oai`, `stream_chat_oai`, `emb`,
`is_model_exist`, `undeploy`) so existing code ports unchanged. The client is a face: every verb is the
runtime's (`byzer_like.runtime.Runtime`, `llm.runtime`), which the SQL session, the CLI, the notebook and
the HTTP API use too.

Paths given to the client (`model_path`) are read like any Python program reads them: a relative one
starts at the current directory (SQL's paths, in `sql()`, start at the workspace). Either way they must
lie inside the workspace's allowed roots (`byzer_like.workspace`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

from .. import logs, prompt_functions, structured
from ..config import SetupConfig, chat_request
from ..errors import ConfigError, NotSupportedError, raise_row_error
from ..runtime import Runtime
from .types import InferBackend, LLMClassResponse, LLMRequest, LLMResponse, ModelHandle, Template, Templates


class ByzerLLM:
    """A connection to a Ray cluster and the models deployed on it, with Byzer-LLM's names.

    `address`: a Ray address, or None for the workspace's persistent head if it runs, else an
    embedded local cluster (started on first use). `workspace`: the folder for the catalog, models and
    jobs (default $BYZER_LIKE_HOME or ./byzer_workspace). Creating one applies `byzer_like.logs`'s
    policy to the program: Ray's and Serve's INFO lines stay out of its stderr (`BYZER_LIKE_LOG=debug`
    lets them in)."""

    def __init__(self, address: str | None = None, *, workspace: str | os.PathLike | None = None,
                 runtime: Runtime | None = None):
        logs.configure()
        self.runtime = runtime or Runtime(address, workspace=workspace, announce=True)
        self.default_model_name: str | None = None
        self.default_emb_model_name: str | None = None
        self.infer_backend = InferBackend.Transformers
        # per model, as Byzer-LLM keeps them: request options added to every call, role names, answer tidying
        self.mapping_extra_generation_params: dict[str, dict] = {}
        self.mapping_role_mapping: dict[str, dict] = {}
        self.mapping_clean_func: dict[str, Callable[[str], str]] = {}
        self._session = None

    @property
    def address(self) -> str | None:
        return self.runtime.address

    @property
    def workspace(self):
        """The `workspace.Workspace` this client works in."""
        return self.runtime.workspace

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, key: str, value: Any) -> "ByzerLLM":
        """Set one sys_conf value (`num_workers`, `cpus_per_worker`, `gpus_per_worker`, limits...)."""
        self.runtime.setup({key: value})
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

    def setup_default_emb_model_name(self, name: str) -> "ByzerLLM":
        """The model `emb` / `emb_query` use when none is named (else the default model)."""
        self.default_emb_model_name = name
        return self

    def setup_infer_backend(self, backend: str | InferBackend) -> "ByzerLLM":
        """Byzer-LLM's back end choice for the next deploys: `InferBackend.Transformers` (the built-in engine)
        or `InferBackend.VLLM` (vLLM's async engine in each replica; its Python environment is built by
        `python3 dev.py setup --vllm`). llama.cpp and DeepSpeed inference raise NotSupportedError."""
        value = str(backend.value if isinstance(backend, InferBackend) else backend).strip().lower()
        known = {b.value for b in InferBackend} | {"vllm", "deepspeed"}
        if value in ("transformers", "vllm", "ray/vllm"):
            self.runtime.setup({"infer_backend": value})
            self.infer_backend = InferBackend.VLLM if "vllm" in value else InferBackend.Transformers
            return self
        if value in known:
            raise NotSupportedError(f"infer backend {value!r} is not available in byzer-like; use InferBackend.Transformers "
                                    "(the built-in engine) or InferBackend.VLLM (vLLM), which serve the same models")
        raise ConfigError(f"unknown infer backend {backend!r}; use InferBackend.Transformers or InferBackend.VLLM")

    def setup_worker_concurrency(self, num: int) -> "ByzerLLM":
        """Requests one worker (replica) works on at once (Byzer's workerMaxConcurrency)."""
        return self.setup("max_ongoing_requests", num)

    def setup_max_model_length(self, model: str, max_model_length: int) -> "ByzerLLM":
        """Prompt + answer tokens for every call to `model` (the request's `max_length`)."""
        return self.setup_extra_generation_params(model, {"max_length": int(max_model_length)})

    def setup_max_output_length(self, model: str, max_output_length: int) -> "ByzerLLM":
        """Answer tokens for every call to `model` (the request's `max_new_tokens`)."""
        return self.setup_extra_generation_params(model, {"max_new_tokens": int(max_output_length)})

    def setup_role_mapping(self, model: str, role_mapping: Mapping[str, str]) -> "ByzerLLM":
        """Write `model`'s prompts as a plain-text dialogue with these role names (`user_role`,
        `assistant_role`, `system_msg`) instead of its chat template. The engine puts the ':' after
        each role name itself, so Byzer's "User:" and "User" mean the same."""
        unknown = sorted(set(role_mapping) - {"user_role", "assistant_role", "system_msg"})
        if unknown:
            raise ConfigError(f"role_mapping keys {unknown} are not understood; use user_role, assistant_role, system_msg")
        self.mapping_role_mapping[model] = dict(role_mapping)
        return self

    def setup_extra_generation_params(self, model: str, params: Mapping[str, Any]) -> "ByzerLLM":
        """Request options added to every call to `model` (any `llm_config` key: `generation.*`,
        `temperature`, `max_new_tokens`, `stop`...), merged with those set before. Checked now."""
        merged = {**self.mapping_extra_generation_params.get(model, {}), **params}
        chat_request("check", merged)  # an unknown or ill-typed option fails here, not at the first call
        self.mapping_extra_generation_params[model] = merged
        return self

    def setup_template(self, model: str, template: str | Template) -> "ByzerLLM":
        """How `model`'s prompts are written: "auto" (or any of `Templates`' chat templates) uses the
        tokenizer's chat template, which the built-in engine applies anyway; `Templates.default()` a
        plain `User:` / `Assistant:` dialogue. A template's generation options apply to every call."""
        if isinstance(template, str):
            if template != "auto":
                raise ConfigError(f"template {template!r} is not known; use \"auto\" or one of Templates' "
                                  "(Templates.default(), Templates.qwen(), ...)")
            template = Templates.auto()
        if not isinstance(template, Template):
            raise ConfigError(f"setup_template takes \"auto\" or a Template (Templates.qwen()...), not {template!r}")
        if template.role_mapping:
            self.setup_role_mapping(model, template.role_mapping)
        else:
            self.mapping_role_mapping.pop(model, None)
        if template.generation_config:
            self.setup_extra_generation_params(model, template.generation_config)
        if template.clean_func:
            self.mapping_clean_func[model] = template.clean_func
        return self

    @property
    def sys_conf(self) -> dict[str, str]:
        return self.runtime.sys_conf

    @property
    def setup_config(self) -> SetupConfig:
        return self.runtime.setup_config

    def connect(self) -> dict[str, Any]:
        """Connect to Ray now (otherwise the first call that needs it connects)."""
        return self.runtime.connect()

    def connect_cluster(self, address: str | None = None, **_: Any) -> "ByzerLLM":
        """Byzer-LLM's `connect_cluster(address=...)`: use the Ray cluster at `address` ("auto", None:
        this workspace's head or an embedded one) and connect now. Returns the client."""
        if address not in (None, "auto"):
            self.runtime.address = address
        self.runtime.connect()
        return self

    # -- deployments ---------------------------------------------------------------------------
    def deploy(self, model_path: str | os.PathLike | None, pretrained_model_type: str | None, udf_name: str,
               infer_params: Mapping[str, Any] | None = None, *, reconnect: bool | None = None,
               replace: bool | None = None) -> dict:
        """Deploy `model_path` as `udf_name` on `num_workers` replicas; wait until all have loaded it.

        `infer_params` may also hold `model_table` (a registered model, `name@v2`) and the plugin's
        own keys. Every check that can fail (plugin, options, model directory) runs before anything
        starts. A relative `model_path` starts at the current directory. `reconnect=True` uses a running
        deployment of that name if it serves this model (a DeployError says what differs otherwise);
        `replace=True` undeploys it and deploys anew. `pretrained_model_type` None with a `model_table`: the type the
        registry knows (a reward model's scoring back end, else its family). Returns `{"udf_name", "status":
        "deployed"|"reconnected", ...}`."""
        options: dict[str, Any] = {**(infer_params or {}), "udf_name": udf_name}
        if pretrained_model_type is not None:
            options["pretrained_model_type"] = pretrained_model_type
        if model_path is not None:
            options["model_dir"] = self._local_path(model_path)
        for key, value in (("reconnect", reconnect), ("replace", replace)):
            if value is not None:
                options[key] = value
        return self.runtime.deploy(self.runtime.deploy_spec(options))

    def undeploy(self, udf_name: str, force: bool = False) -> None:
        """Remove deployment `udf_name`; ModelNotDeployedError if there is none, unless `force=True`
        (Byzer's: remove it if it is there)."""
        if force and not self.is_model_exist(udf_name):
            return
        self.runtime.undeploy(udf_name)

    def is_model_exist(self, udf_name: str) -> bool:
        """Whether a deployment named `udf_name` runs (Byzer-LLM's name)."""
        return self.runtime.deployment_exists(udf_name)

    def list_deployments(self) -> list[str]:
        """Names of the deployments on the cluster (not the registry: see `list_registered_models`)."""
        return sorted(self.runtime.deployments())

    list_models = list_deployments  # the older name: deployments, as `byzer-like list` shows them

    def list_registered_models(self) -> list:
        """The model registry: every registered model and version (`catalog.RegisteredModel`)."""
        return self.runtime.catalog.models()

    def loaded_adapters(self, model: str | None = None) -> list[dict]:
        """The LoRA adapters each replica of `model` holds now (SQL: `!byzerllm adapter list <model>`): one
        row per replica and adapter, with `replica`, `adapter`, `version`, `ref`, `loaded_at`, `requests`,
        `capacity` (max_adapters_per_replica)."""
        return self.runtime.loaded_adapters(self._model(model))

    def get_meta(self, model: str | None = None, *, refresh: bool = False, llm_config: Any = None) -> dict:
        """A deployment's metadata (asked once, then kept; `refresh=True` asks again, for its counters),
        with Byzer-LLM's keys too: `model_deploy_type`, `backend`, `support_stream`,
        `support_chat_template`, `max_model_len`."""
        meta = self.runtime.meta(self._model(model), refresh=refresh)
        saas = str(meta.get("pretrained_model_type", "")).startswith("saas/")
        meta.setdefault("model_deploy_type", "saas" if saas else "proprietary")
        engine = InferBackend.VLLM.value if meta.get("engine") == "vllm" else InferBackend.Transformers.value
        meta.setdefault("backend", "saas" if saas else engine)
        meta.setdefault("support_stream", bool(meta.get("streaming", True)))
        meta.setdefault("support_chat_template", not saas)
        if meta.get("context_length"):
            meta.setdefault("max_model_len", meta["context_length"])
        return meta

    def tokenize(self, model: str | None, s: str, llm_config: Any = None) -> list[LLMResponse]:
        """`s` split into the model's tokens: `[LLMResponse(output=[token, ...])]`, as Byzer-LLM returns it."""
        name = self._model(model)
        return [LLMResponse(output=self.runtime.tokenize(name, s), input=s)]

    def apply_chat_template(self, model: str | None, s: str | Sequence[Mapping[str, Any]],
                            llm_config: Mapping[str, Any] | None = None) -> str:
        """The prompt text the model is given for conversation `s` (a list of messages, or that list as
        JSON, as Byzer-LLM passes it), its chat template applied."""
        if isinstance(s, str):
            try:
                s = json.loads(s)
            except ValueError:
                s = [{"role": "user", "content": s}]
        name = self._model(model)
        req = chat_request(s, self._options(name, llm_config)).model_dump()
        return self.runtime.prompt_text(name, req)

    def abort(self, request_id: str, model: str | None = None) -> None:
        """Byzer-LLM aborts a request by id only on its vLLM back end, and so here: the built-in engine
        stops a generation when its stream is closed (leave the `for` over `stream_chat_oai`)."""
        raise NotSupportedError(f"abort({request_id!r}) needs the vLLM back end, which byzer-like does not have yet; "
                                "to stop a generation, stop iterating over stream_chat_oai (closing the stream "
                                "cancels it on the replica)")

    def _local_path(self, path: str | os.PathLike) -> str:
        """A path given in Python: relative to the current directory, checked against the allowed roots,
        handed down absolute (the runtime reads relative paths from the workspace, as SQL does)."""
        return str(self.workspace.resolve(path, what="model_path", relative_to="cwd"))

    def _model(self, model: str | None) -> str:
        return self.runtime.require_name(model or self.default_model_name)

    # -- training and the model registry ----------------------------------------------------------
    @property
    def catalog(self):
        """This workspace's catalog: jobs and the model registry (SQLite)."""
        return self.runtime.catalog

    @property
    def jobs(self):
        """Training jobs: `submit`, `list`, `status`, `logs`, `stop`, `resume`, `wait`."""
        return self.runtime.jobs

    def sft(self, data: Any, *, model_path: str | os.PathLike | None = None, pretrained_model_type: str = "sft/auto",
            output_table: str | None = None, detached: bool = False, model_table: str | None = None,
            progress: bool = False, **options: Any) -> dict:
        """Fine-tune on `data` (a pyarrow Table, a pandas DataFrame or a list of dicts in alpaca or chat
        form). Options are those of SQL's sft (`method`, `max_seq_length`, `learning_rate`, `lora_r`...).
        Returns the job's row; with `detached=True` at once, otherwise when training has finished."""
        return self.train("sft", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def sfft(self, data: Any, *, model_path: str | os.PathLike | None = None,
             pretrained_model_type: str = "sfft/auto", output_table: str | None = None, detached: bool = False,
             model_table: str | None = None, progress: bool = False, **options: Any) -> dict:
        """Continued pretraining (sfft) on a table of text, on `num_workers` Ray Train workers with DeepSpeed."""
        return self.train("sfft", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def dpo(self, data: Any, *, model_path: str | os.PathLike | None = None, pretrained_model_type: str = "dpo/auto",
            output_table: str | None = None, detached: bool = False, model_table: str | None = None,
            progress: bool = False, **options: Any) -> dict:
        """Direct preference optimisation (TRL) on `data`: rows of prompt (or instruction / input, or messages),
        chosen, rejected. Options are SQL's dpo keys (`beta`, `loss_type`, `max_length`, `max_prompt_length`,
        `method`, `lora_r`, ...); `orpo(...)` and `kto(...)` (prompt, completion, label rows) take the same."""
        return self.train("dpo", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def orpo(self, data: Any, *, model_path: str | os.PathLike | None = None, pretrained_model_type: str = "orpo/auto",
             output_table: str | None = None, detached: bool = False, model_table: str | None = None,
             progress: bool = False, **options: Any) -> dict:
        """Odds-ratio preference optimisation (TRL's experimental ORPO; no reference model): as `dpo`."""
        return self.train("orpo", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def kto(self, data: Any, *, model_path: str | os.PathLike | None = None, pretrained_model_type: str = "kto/auto",
            output_table: str | None = None, detached: bool = False, model_table: str | None = None,
            progress: bool = False, **options: Any) -> dict:
        """Kahneman-Tversky optimisation (TRL) on rows of prompt, completion, label (true: desirable)."""
        return self.train("kto", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def rm(self, data: Any, *, model_path: str | os.PathLike | None = None, pretrained_model_type: str = "rm/auto",
           output_table: str | None = None, detached: bool = False, model_table: str | None = None,
           progress: bool = False, **options: Any) -> dict:
        """Train a reward model on `data`, preference pairs (columns prompt or instruction, chosen, rejected).
        Options are those of SQL's rm (`method` lora / full, `max_seq_length`, `eval_split`, `lora_r`...); the
        registered model (kind "reward") deploys with `deploy(None, None, udf, {"model_table": name})`."""
        return self.train("rm", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def ppo(self, data: Any, *, reward_model: str | None = None, model_path: str | os.PathLike | None = None,
            pretrained_model_type: str = "ppo/auto", output_table: str | None = None, detached: bool = False,
            model_table: str | None = None, progress: bool = False, **options: Any) -> dict:
        """PPO (TRL's RLOO) on `data`, prompts (a column prompt, or instruction with an optional input, or
        messages): answers are sampled from the policy and scored by `reward_model`, a deployed reward model's
        name or a registered one's (trained with `rm(...)`), resolved to its folder at submit. Options are SQL's
        ppo keys (`num_generations`, `beta` (the KL coefficient), `max_new_tokens`, `learning_rate`, `max_steps`,
        `method`, `lora_r`, ...). Returns the job's row; its metrics hold each step's mean reward and KL."""
        if reward_model is not None:
            options["reward_model"] = reward_model
        return self.train("ppo", data, model_path=model_path, pretrained_model_type=pretrained_model_type,
                          output_table=output_table, detached=detached, model_table=model_table, progress=progress,
                          **options)

    def train(self, task: str, data: Any, *, model_path: str | os.PathLike | None = None,
              pretrained_model_type: str | None = None, output_table: str | None = None, detached: bool = False,
              model_table: str | None = None, progress: bool = False, predict_table: Any = None, **options: Any) -> dict:
        """Run training task `task` (a name of `byzer_like.tasks.TASKS`: sft, sfft, ...) on `data`.

        A relative `model_path` starts at the current directory; the other options are SQL's (their
        paths, such as `local_path_prefix`, start at the workspace). sfft takes `local_data_dir` (a folder
        of text files, read as SQL's `load text.` reads them) in place of `data` (None). `predict_table`: rows
        (a DataFrame, a list of dicts, an Arrow table) the trained model answers before the job ends, SQL's
        predictTable: the job's `metrics["predictions"]` names the parquet file of its answers."""
        from ..tasks import get as get_task

        get_task(task)
        model_type = pretrained_model_type or f"{task}/auto"
        if "/" not in model_type:
            model_type = f"{task}/{model_type}"
        params: dict[str, Any] = {"pretrained_model_type": model_type, "detached": detached, **options}
        if model_path is not None:
            params["model_dir"] = self._local_path(model_path)
        for key, value in (("output_table", output_table), ("model_table", model_table)):
            if value is not None:
                params[key] = value
        table = _as_table(data)
        data_dir = options.get("local_data_dir", options.get("localDataDir"))
        if data_dir is not None:  # sfft: a folder of raw text files, read as SQL's `load text.` reads it
            if table is not None:
                raise ConfigError("give the training data or local_data_dir, not both")
            from ..session.io import text_dir_table

            table = text_dir_table(self.runtime.workspace, str(data_dir))
        predict = None
        if predict_table is not None:  # SQL's predictTable names a table; here it is the rows themselves
            predict = _as_table(predict_table)
            params["predict_table"] = "predict_table"
        return self.runtime.train(task, params, table, progress=progress, predict_table=predict)

    def merge(self, model_table: str, output_table: str, *, overwrite: bool = False) -> dict:
        """Merge a registered LoRA adapter into its base model and register the result."""
        return self.runtime.merge(model_table, output_table, overwrite=overwrite)

    def convert(self, **options: Any) -> dict:
        """A GGUF file or a DeepSpeed ZeRO checkpoint made into a Hugging Face model and registered: the keys
        of SQL's `action="convert"` in either spelling, e.g. `convert(pretrained_model_type="deepspeed",
        model_name_or_path=..., checkpoint_dir=..., tag=..., output_table="m")`. Returns the registry row
        (`Runtime.convert`)."""
        return self.runtime.convert(options)

    def import_model(self, source: str | os.PathLike, name: str, *, save_path: str | os.PathLike | None = None,
                     overwrite: bool = False) -> dict:
        """Import a GGUF file (a path, a folder holding one, or a short name such as "smollm2" for the file
        an installed package ships) as a safetensors Hugging Face model registered as `name` (name@v1)."""
        options: dict[str, Any] = {"source_format": "gguf", "source_path": os.fspath(source), "output_table": name,
                                   "overwrite": overwrite}
        if save_path is not None:
            options["save_path"] = os.fspath(save_path)
        return self.runtime.convert(options)

    def quantize(self, model_table: str, output_table: str, method: str = "bnb-nf4", *, calibration: Any = None,
                 calibration_column: str | None = None, calibration_rows: int = 128, group_size: int | None = None,
                 overwrite: bool = False) -> dict:
        """Write a registered model weight-quantized (bnb-int8, bnb-nf4, bnb-fp4, torchao-int8, gptq-int4,
        gptq-int8) and register it as `output_table`; GPTQ calibrates on `calibration` (a list of strings or a
        table). Deploy it with `model_table=output_table`."""
        return self.runtime.quantize(model_table, output_table, method, calibration=calibration,
                                     calibration_column=calibration_column, calibration_rows=calibration_rows,
                                     group_size=group_size, overwrite=overwrite)

    # -- calls -----------------------------------------------------------------------------------
    def chat_oai(self, conversations: Sequence[Mapping[str, Any]] | str, model: str | None = None,
                 llm_config: Mapping[str, Any] | None = None, *, response_class: type | None = None,
                 role_mapping: Mapping[str, str] | None = None, tools: Sequence[Any] | None = None,
                 tool_choice: Any = None, impl_func: Callable | None = None, response_after_chat: bool = False,
                 enable_default_sys_message: bool = True, only_return_prompt: bool = False,
                 extra_request_params: Mapping[str, Any] | None = None, adapter: str | None = None,
                 **_: Any) -> list[LLMResponse] | list[LLMClassResponse]:
        """Answer one conversation (OpenAI-style messages; the last one is the question).

        `adapter`: a registered LoRA adapter trained on the model's base (`"qa_model"`, `"qa_model@v2"`), which
        the answer goes through; the deployment loads it on first use (AdapterNotFoundError lists the ones
        registered for that base, AdapterBaseError names the base an adapter needs).

        Returns a one-item list, as Byzer-LLM does: `result[0].output` is the answer text (`str(result[0])`
        too), `.metadata` its token counts, finish reason and timings. With `response_class` (a pydantic
        model class) the items are LLMClassResponse whose `.value` is a validated instance: the question
        gains the class's JSON schema and decoding is constrained to it (`structured`), so it parses;
        an answer cut at max_new_tokens gives `.value` None and `.metadata["reason"]`. The model's
        options set with `setup_extra_generation_params` / `setup_max_output_length` /
        `setup_role_mapping` apply, under `llm_config`. Tool calling and `impl_func` raise
        NotSupportedError. `only_return_prompt=True` returns the request that would be sent."""
        if tools or tool_choice or impl_func:
            raise NotSupportedError("tools, tool_choice and impl_func are not supported; ask for structured output "
                                    "with response_class=<a pydantic model> instead")
        name = self._model(model)
        msgs = [{"role": "user", "content": conversations}] if isinstance(conversations, str) \
            else [dict(m) for m in conversations]
        options = self._options(name, llm_config, role_mapping, adapter)
        if response_class is not None:
            fmt = structured.for_class(response_class)
            if msgs and msgs[-1].get("role") == "user" and not response_after_chat:
                msgs[-1]["content"] = f"{msgs[-1]['content']}{structured.instruction(response_class)}"
            if not response_after_chat:
                options["response_format"] = fmt
        req = chat_request(msgs, options).model_dump()
        if only_return_prompt:
            response = LLMResponse(output="", input=req["ins"], metadata=req)
            return [LLMClassResponse(response, None, {"reason": "only_return_prompt"})] if response_class else [response]
        res = self.runtime.chat(name, req)
        response = LLMResponse(output=self._clean(name, res["output"]), input=req["ins"],
                               metadata=res.get("metadata", {}))
        if response_class is None:
            return [response]
        if response_after_chat:  # Byzer's two-step form: answer freely, then restate the answer as the class
            follow = msgs + [{"role": "assistant", "content": response.output},
                             {"role": "user", "content": "Restate your answer." + structured.instruction(response_class)}]
            return self.chat_oai(follow, name, llm_config, response_class=response_class, role_mapping=role_mapping,
                                 adapter=adapter)
        value, why = structured.parse(response.output, response_class)
        return [LLMClassResponse(response, value, {**response.metadata, "reason": why})]

    def stream_chat_oai(self, conversations: Sequence[Mapping[str, Any]] | str, model: str | None = None,
                        llm_config: Mapping[str, Any] | None = None, delta_mode: bool = True, *,
                        role_mapping: Mapping[str, str] | None = None, adapter: str | None = None,
                        **_: Any) -> Iterator[tuple[str, dict]]:
        """Stream an answer as `(text, metadata)` pairs: new text only (`delta_mode=True`, default) or
        the whole text so far. The last pair carries the final metadata. Leaving the loop early stops
        the generation on the replica. `adapter`: as in `chat_oai`."""
        name = self._model(model)
        req = chat_request(conversations, self._options(name, llm_config, role_mapping, adapter)).model_dump()
        for piece, text, meta in self.runtime.stream_deltas(name, req):
            yield (piece if delta_mode else text), meta

    def _options(self, model: str, llm_config: Mapping[str, Any] | None,
                 role_mapping: Mapping[str, str] | None = None, adapter: str | None = None) -> dict[str, Any]:
        """A call's request options: the model's defaults (setup_extra_generation_params, its role
        mapping), then `role_mapping`, then `llm_config`, then the LoRA `adapter` if one is named."""
        options: dict[str, Any] = dict(self.mapping_extra_generation_params.get(model, {}))
        for key, value in (role_mapping or self.mapping_role_mapping.get(model) or {}).items():
            options[key] = str(value).rstrip().rstrip(":") if key != "system_msg" else value
        options.update(llm_config or {})
        if adapter:
            options["adapter"] = adapter
        return options

    def _clean(self, model: str, text: Any) -> Any:
        clean = self.mapping_clean_func.get(model)
        return clean(text) if clean and isinstance(text, str) else text

    # -- prompt functions ---------------------------------------------------------------------------
    def prompt(self, model: str | None = None, render: str = "jinja2", check_result: bool = False,
               options: Mapping[str, Any] | None = None, return_origin_response: bool = False,
               llm_config: Mapping[str, Any] | None = None, **_: Any) -> Callable[[Callable], Callable]:
        """Byzer-LLM's prompt functions: `@llm.prompt()` makes a function whose docstring is a prompt
        template call the model (`model`, else the default model, looked up at each call).

        The call's arguments fill the template (`render="jinja2"`: `{{ name }}`; `render="simple"`:
        `{name}`); a dict the body returns adds or overrides variables. The return annotation picks the
        answer: `-> str` the text, `-> SomeModel` (pydantic) a validated instance (None if it did not
        parse; `check_result=True` warns then), `-> Generator[str, None, None]` the text as it streams.
        `return_origin_response=True` gives the chat_oai list (or the stream of pairs) instead.
        `fn.prompt(*args)` returns the rendered prompt without calling the model. `options` may hold
        `llm_config`, `delta_mode` and `model`, as Byzer's do. Errors (no docstring, a template that
        does not render, an unsupported annotation) are ConfigError."""
        if render not in prompt_functions.RENDERS:
            raise ConfigError(f"render={render!r} is not supported; use one of {', '.join(prompt_functions.RENDERS)}")
        opts = dict(options or {})
        model = model or opts.pop("model", None)
        config = {**(opts.pop("llm_config", None) or {}), **(llm_config or {})}
        delta_mode = bool(opts.pop("delta_mode", True))
        return lambda func: prompt_functions.prompt_function(
            func, render, chat=lambda messages, cls: self.chat_oai(messages, model, config, response_class=cls),
            stream=lambda messages: self.stream_chat_oai(messages, model, config, delta_mode),
            check_result=check_result, return_origin_response=return_origin_response)

    def batch_chat(self, conversations: Sequence[Sequence[Mapping[str, Any]] | str], model: str | None = None,
                   llm_config: Mapping[str, Any] | None = None, *, on_error: str = "raise",
                   progress: bool = False, cache: bool = False,
                   adapter: str | Sequence[str | None] | None = None) -> list[LLMResponse | None]:
        """Answer many conversations at once, spread over all replicas; answers in input order.

        `adapter`: one registered LoRA adapter for every conversation, or one per conversation (None: the
        base model); conversations of different adapters share forward passes.

        A conversation that fails on its own (prompt too long...) raises with its index, or gives
        `None` with `on_error="null"`. `cache=True` keeps each answer in the workspace's result
        cache as it arrives, and takes the ones already there (an interrupted batch resumes)."""
        if on_error not in ("raise", "null"):
            raise ConfigError(f"on_error must be 'raise' or 'null', not {on_error!r}")
        per_row = [adapter] * len(conversations) if adapter is None or isinstance(adapter, str) else list(adapter)
        if len(per_row) != len(conversations):
            raise ConfigError(f"{len(per_row)} adapters for {len(conversations)} conversations; give one per conversation")
        reqs = [chat_request(c, {**(llm_config or {}), **({"adapter": a} if a else {})}).model_dump()
                for c, a in zip(conversations, per_row)]
        results = self.generate(reqs, model=model, progress=progress, cache=cache)
        out: list[LLMResponse | None] = []
        for i, (req, res) in enumerate(zip(reqs, results)):
            if "error" in res:
                if on_error == "raise":
                    raise_row_error(res, i)
                out.append(None)
            else:
                out.append(LLMResponse(output=res["output"], input=req["ins"], metadata=res.get("metadata", {})))
        return out

    def generate(self, requests: Sequence[Mapping[str, Any]], model: str | None = None, *,
                 progress: bool = False, on_rows: Any = None, cache: bool = False,
                 rows: Sequence[int] | None = None, on_cached: Any = None) -> list[dict]:
        """The batch path under `batch_chat` and SQL (`Runtime.generate`): built requests
        (`config.ChatRequest` dicts) in, one `{"output", "metadata"}` or `{"error", "error_code"}`
        per request out, in order; `cache=True` uses the workspace's result cache."""
        return self.runtime.generate(self._model(model), requests, progress=progress, on_rows=on_rows, cache=cache,
                                     rows=rows, on_cached=on_cached)

    @property
    def result_cache(self):
        """The workspace's result cache (`byzer_like.result_cache.ResultCache`)."""
        return self.runtime.result_cache

    def emb(self, model: str | None, texts: "str | Sequence[str] | LLMRequest",
            extract_params: Mapping[str, Any] | None = None) -> list:
        """Embedding vectors (the plugin's `embed_query`). Given a text or a list of texts: the vectors,
        one per text. Given Byzer-LLM's `LLMRequest(instruction=...)`: one LLMResponse per text, its
        `.output` the vector, as Byzer-LLM returns them. `model` None: the default embedding model."""
        name = self._model(model or self.default_emb_model_name)
        if isinstance(texts, LLMRequest):
            items = [texts.instruction] if isinstance(texts.instruction, str) else list(texts.instruction)
            return [LLMResponse(output=v, input=t) for t, v in zip(items, self.runtime.embed(name, items))]
        items = [texts] if isinstance(texts, str) else list(texts)
        return self.runtime.embed(name, items)

    def emb_query(self, text: str, model: str | None = None) -> list[float]:
        """One text's vector."""
        return self.emb(model, [text])[0]

    def score(self, model: str | None, pairs: "Mapping[str, Any] | Sequence[Mapping[str, Any]]") -> list[float]:
        """A deployed reward model's score of each pair, in order: `pairs` is one `{"instruction": question,
        "response": answer}` (optional `system`, `input`) or a list of them; one float per pair (higher: an answer
        the model prefers). ConfigError for a malformed pair; NotSupportedError when `model` is no reward model."""
        items = [pairs] if isinstance(pairs, Mapping) else list(pairs)
        return self.runtime.rewards(self._model(model), items)

    # -- HTTP API --------------------------------------------------------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
              max_tokens_cap: int = 4096, max_body_bytes: int = 1 << 20, replace: bool = False,
              block: bool = False):
        """Start the OpenAI-compatible HTTP API and the chat page for every deployment, on this node.

        Returns an `api.server.ApiServer` (`url`, `base_url`, `api_key`, `stop()`). The key is
        `api_key`, else BYZER_LIKE_API_KEY; bound to anything but loopback without one, a key is
        generated and printed once. `block=True` waits until the server is stopped (or Ctrl-C)."""
        from ..api import server

        srv = server.serve(self.runtime, host, port, api_key=api_key, max_tokens_cap=max_tokens_cap,
                           max_body_bytes=max_body_bytes, replace=replace)
        if block:
            try:
                server.wait(srv)
            except KeyboardInterrupt:
                srv.stop()
        return srv

    def stop_serving(self) -> bool:
        """Stop the HTTP API; False if none was running."""
        from ..api import server

        return server.stop_serving(self.runtime)

    # -- SQL -------------------------------------------------------------------------------------
    @property
    def session(self):
        """This client's SQL session (tables and `set` variables persist between `sql()` calls)."""
        if self._session is None:
            from ..session import Session

            self._session = Session(self)
        return self._session

    def sql(self, script: str, **variables: str):
        """Run a script in the Byzer-LLM dialect; return the last statement's table as a pandas DataFrame
        (None when it has none). `variables` fill `${name}` like `set` does. All results:
        `llm.session.sql(script)` (`on_result=` sees each as it finishes).

        The whole script is checked before its first statement runs; an error (a ByzerError, said at its
        statement's line and column) carries what the statements before it made: `err.results` (their
        `Result`s, in order) and `err.tables` (name -> pyarrow Table); the session keeps those tables."""
        self.session.variables.update({k: str(v) for k, v in variables.items()})
        results = self.session.sql(script)
        return results[-1].to_pandas() if results else None

    def pipeline(self, path: str | os.PathLike, *, dry_run: bool = False):
        """Run a pipeline file (llm-module's config file, INI or YAML: `byzer_like.flows.pipeline_file`) in this
        client's SQL session: it is read, checked and compiled to one SQL script, which the session checks whole
        before its first statement runs. `path` starts at the current directory.

        Returns a `pipeline_file.PipelineRun` (`.results`, `.answers`: the Chat's (question, answer) pairs,
        `.chat_model`, `.compiled.sql` / `.compiled.warnings`); with `dry_run`, the `pipeline_file.Compiled`
        alone (`.sql`, the script, runs with `llm.sql(...)` or `byzer-like run`), nothing run. Raises
        PipelineFileError (every problem of the file, with its line) before anything starts, then whatever the
        script's statements raise (ByzerError)."""
        from ..flows import pipeline_file

        compiled = pipeline_file.compile_path(os.path.abspath(os.fspath(path)))
        if dry_run:
            return compiled
        return pipeline_file.run(compiled, self.session)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model: str, data: Any, metrics: Sequence[str] | str = ("exact_match",), **options: Any):
        """Evaluate `model` (a deployed model's name, or a registry version: `m`, `m@v2`, `m@production`, deployed
        for the evaluation and removed after it) on `data` (a table or a list of row dicts with prompt and
        reference columns, see `byzer_like.eval.evalset`). `options`: the keys of SQL's `action="eval"` in
        snake_case (judge, judge_mode, judge_prompt, choices, reference_column, max_new_tokens, evalset, reward_model
        for metrics="reward"...).

        Returns an `EvalResult`: `.summary` (a dict of metrics and facts, recorded in the catalog) and
        `.rows` (pyarrow); `summary, rows = llm.evaluate(...)` gives the rows as a pandas DataFrame."""
        where = "udf_name" if "@" not in model and self.runtime.deployment_exists(model) else "model_table"
        return self.runtime.evaluate(_as_table(data), **{where: model}, metrics=metrics, **options)

    def eval_list(self, model: str | None = None) -> list[dict]:
        """Stored evaluations (newest first), of one model (`m` or `m@v2`) when given."""
        return self.runtime.eval_list(model)

    def eval_compare(self, a: str, b: str, *, evalset: str | None = None) -> list[dict]:
        """Metric deltas of `b` over `a` on one eval set, each with its paired bootstrap 95% interval."""
        return self.runtime.eval_compare(a, b, evalset=evalset)

    def promote(self, ref: str, condition: str | None = None, *, evalset: str | None = None,
                data: Any = None) -> dict:
        """Make registry version `ref` the production one if `condition` holds (`"exact_match >=
        m@v2.exact_match + 0.02"`) on the stored results on `evalset` (evaluated first from `data` when a
        version has none). Returns {"promoted", "stage", "conditions", "reason", ...}; nothing changes when
        a condition fails (`reason` says which and by how much)."""
        tables = {evalset: _as_table(data)} if evalset and data is not None else None
        return self.runtime.promote(ref, condition, evalset=evalset, tables=tables)

    def model(self, model: str) -> ModelHandle:
        """A callable handle on a deployed model (`"m"`, or `"m:adapter"` for one of its registered adapters):
        `llm.model("m")("question")` is the answer's text, `llm.model("m")(["q1", "q2"])` a batch's answers in
        order; a stage of a flow (`byzer_like.flows`). LazyLLM's habit too: `.evalset(rows)` sets its eval set and
        `.eval()` fills `.eval_result`."""
        return ModelHandle(self, model)

    def model_handle(self, model: str) -> ModelHandle:
        """The same handle as `model(...)`: `m = llm.model_handle("m@v2"); m.evalset(rows); m.eval();
        m.eval_result.summary`."""
        return ModelHandle(self, model)


def _as_table(data: Any):
    import pyarrow as pa

    if data is None or isinstance(data, pa.Table):
        return data
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if hasattr(data, "to_arrow_table"):
        return data.to_arrow_table()
    return pa.Table.from_pandas(data, preserve_index=False)


__all__ = ["ByzerLLM", "InferBackend", "LLMClassResponse", "LLMRequest", "LLMResponse", "ModelHandle", "Template",
           "Templates"]
