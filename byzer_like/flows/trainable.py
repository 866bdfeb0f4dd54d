"""TrainableModule: LazyLLM's trainable module over this project's jobs, registry, deployments and evaluations.

    m = (TrainableModule("smollm2", "qa_model")
         .trainset(rows).finetune_method("sft", learning_rate=3e-4, num_train_epochs=3)
         .deploy_method("transformers").evalset(questions, metrics="exact_match"))
    m.update()            # the training job, the deployment, the answers to the eval set (m.eval_result)
    m("a question")       # chats with the deployment `qa_model`

Every step is a statement of this project's SQL dialect run on a session (`byzer_like.session.Session`), so it
is a real job (`byzer-like jobs list`), a registry version, a deployment and, with metrics, an evaluation
(`!byzerllm eval list`). `update()` skips the training job when a job of the same fingerprint (a SHA-256 over
the training rows, the base, the task and its options) registered the model's latest version, so a flow that
crashed after training resumes at its deployment.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import chat_request
from ..errors import ConfigError
from ..tasks import TASKS
from .core import make_repr
from .modules import ModuleBase
from .stages import _as_session, _as_table, _session_lock, default_session

FINGERPRINTS = "flows/fingerprints.json"  # under the workspace: module name -> {fingerprint, job_id}


def _lit(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _keys(options: dict[str, Any]) -> str:
    return "".join(f" and `{k}`={_lit(v)}" for k, v in options.items())


class TrainableModule(ModuleBase):
    """A model to train, deploy, call and evaluate, named `name` in the registry and as its deployment.

    `base`: a registered model's name (`smollm2`, `m@v2`) or a model folder; `name`: the registry name the
    training registers (a new version each time its inputs change) and the deployment (`udfName`) `m(input)`
    chats with; `session`: the session its statements run on (a Session, or a runtime / client handle; default:
    the flows' default session, `byzer_like.flows.set_session`). The setters return the module, so they chain.
    Without a trainset, `update()` deploys the base itself under `name`. ConfigError for an unknown task."""

    def __init__(self, base: str | Path, name: str, *, session: Any = None, return_trace: bool = False):
        super().__init__(return_trace=return_trace)
        self.base, self.name = str(base), name
        self._session = None if session is None else _as_session(session)
        self._trainset: Any = None
        self._task, self._train_options = "sft", {}
        self._deploy_options: dict[str, Any] = {}
        self._metrics: str | None = None
        self._template: str | None = None
        self.job: dict | None = None  # the training job's row (None: nothing trained yet, or it was skipped)
        self.eval_report: Any = None  # with evalset(..., metrics=...): the evaluation's summary rows

    # -- the setters, LazyLLM's chain ---------------------------------------------------------------
    def trainset(self, data: Any) -> "TrainableModule":
        """The training rows: a pyarrow Table, a list of row dicts, or a file (.jsonl, .json, .csv, .parquet)."""
        self._trainset = data
        return self

    def finetune_method(self, task: str = "sft", **options: Any) -> "TrainableModule":
        """The task of `byzer_like.tasks` (sft, sfft, dpo, orpo, kto, rm, ppo) and its options (SQL's keys or
        their snake_case names: `learning_rate=3e-4`, `method="lora"`, ...)."""
        if task not in TASKS:
            raise ConfigError(f"unknown training task {task!r}; the tasks are {', '.join(TASKS)}")
        self._task, self._train_options = task, dict(options)
        return self

    def deploy_method(self, backend: str = "transformers", **options: Any) -> "TrainableModule":
        """The deployment's back end (`transformers`, `vllm`) and its keys (`num_workers`, ...)."""
        self._deploy_options = {"inferBackend": backend, **options}
        return self

    def evalset(self, rows: Any, metrics: str | None = None) -> "TrainableModule":  # type: ignore[override]
        """Rows to answer after `update()` (questions, or rows with `instruction` and `output`): their answers go
        to `eval_result`; with `metrics` (e.g. "exact_match,rouge_l", rows with an `output` reference), an
        evaluation of this project is run on them too, its summary in `eval_report`."""
        self._evalset = list(rows) if isinstance(rows, (list, tuple)) else _as_table((rows,)).to_pylist()
        self._metrics = metrics
        return self

    def prompt(self, template: str) -> "TrainableModule":
        """A template each call's input is put into (`"Answer briefly: {input}"`; without `{input}`, a system
        message)."""
        self._template = template
        return self

    # -- the lifecycle ----------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        """The session this module's statements run on (its own, else the flows' default one)."""
        return self._session if self._session is not None else default_session()

    def _sql(self, script: str) -> list:
        with _session_lock(self.session):
            return self.session.sql(script)

    def _model_ref(self) -> str:
        folder = Path(self.base).expanduser()
        return f'localModelDir={_lit(folder.resolve())}' if folder.is_dir() else f"modelTable={_lit(self.base)}"

    def _get_train_tasks(self) -> Any:
        return self._train if self._trainset is not None else None

    def _get_deploy_tasks(self) -> Any:
        return self._deploy

    def fingerprint(self) -> str:
        """SHA-256 (hex) over the training rows (Arrow IPC bytes), the base, the task and its options."""
        import pyarrow as pa

        table = self._table()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h = hashlib.sha256(sink.getvalue().to_pybytes())
        h.update(json.dumps([self.base, self._task, self._train_options], sort_keys=True, default=str).encode())
        return h.hexdigest()

    def _table(self) -> Any:
        data = self._trainset
        if isinstance(data, (str, Path)):
            table_name = f"{self.name}_trainset"
            fmt = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(Path(data).suffix)
            if fmt is None:
                raise ConfigError(f"trainset {data}: give a .jsonl, .json, .csv or .parquet file, or rows")
            self._sql(f"load {fmt}.`{Path(data).expanduser().resolve()}` as {table_name};")
            return self.session.table(table_name)
        return _as_table((data,))

    def _fingerprints(self) -> tuple[Path, dict]:
        path = Path(self.session.workspace.root) / FINGERPRINTS
        return path, (json.loads(path.read_text()) if path.is_file() else {})

    def _train(self) -> None:
        table = self._table()
        fp = self.fingerprint()
        path, known = self._fingerprints()
        seen = known.get(self.name, {})
        catalog = self.session.runtime.catalog
        if seen.get("fingerprint") == fp and catalog.model_exists(self.name) \
                and catalog.model(self.name).job_id == seen.get("job_id"):
            self.job = None  # the registry's latest version is this very training's: nothing to do
            return
        table_name = f"{self.name}_trainset"
        self.session.put(table_name, table)
        # a new version of a model this module trained before; a name registered otherwise stays refused
        again = ' and overwrite="true"' if seen and catalog.model_exists(self.name) else ""
        (row,) = self._sql(f'run command as LLM.`` where pretrainedModelType="{self._task}/auto" and {self._model_ref()}'
                           f' and inputTable="{table_name}" and outputTable={_lit(self.name)}{again}'
                           f'{_keys(self._train_options)} as {self.name}_job;')[-1:]
        self.job = row.table.to_pylist()[0]
        if self.job.get("state") != "SUCCEEDED":
            raise ConfigError(f"the training job {self.job.get('job_id')} of {self.name} ended {self.job.get('state')}; "
                              f"see byzer-like jobs logs {self.job.get('job_id')}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**known, self.name: {"fingerprint": fp, "job_id": self.job["job_id"]}}, indent=1))

    def _deploy(self) -> None:
        source = f"modelTable={_lit(self.name)}" if self._trainset is not None else self._model_ref()
        if self.session.runtime.deployment_exists(self.name):
            self.session.runtime.undeploy(self.name)  # a new version, or a redeploy asked for by start()
        self._sql(f'run command as LLM.`` where action="infer" and {source} and udfName={_lit(self.name)}'
                  f'{_keys(self._deploy_options)};')

    def _run_eval(self) -> None:
        """The answers to the evalset's questions (`instruction` of a row, or the row itself) into `eval_result`;
        with metrics, this project's evaluation of the registered model on the rows into `eval_report`."""
        self.eval_result = [self(r.get("instruction") if isinstance(r, dict) else r) for r in self._evalset or []]
        if self._metrics and self._evalset:
            import pyarrow as pa

            self.session.put(f"{self.name}_evalset", pa.Table.from_pylist(self._evalset))
            (res,) = self._sql(f'run command as LLM.`` where action="eval" and modelTable={_lit(self.name)}'
                               f' and inputTable="{self.name}_evalset" and metrics={_lit(self._metrics)};')[-1:]
            self.eval_report = res.table.to_pylist()

    def forward(self, question: Any) -> str:
        """The deployment's answer's text to `question` (a string; put through `prompt`'s template)."""
        if not isinstance(question, str):
            raise ConfigError(f"module {self.name} takes a question (a string), not {type(question).__name__}")
        messages = [{"role": "user", "content": question}]
        if self._template:
            if "{input}" in self._template:
                messages = [{"role": "user", "content": self._template.replace("{input}", question)}]
            else:
                messages = [{"role": "system", "content": self._template}, *messages]
        return self.session.runtime.chat(self.name, chat_request(messages, {}).model_dump())["output"]

    def __repr__(self) -> str:
        return make_repr("Module", "Trainable", name=self.name, base=self.base, task=self._task)


__all__ = ["TrainableModule"]
