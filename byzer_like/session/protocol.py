"""What the SQL session needs from a runtime: the members `Session` uses, and nothing else.

`byzer_like.runtime.Runtime` satisfies it; the session's statement tests use a fake that does too (no
Ray). Shapes: a request is a `config.ChatRequest` dict; an answer is `{"output", "metadata"}` or
`{"error", "error_code"}`; a job row has `train.jobs.ROW_FIELDS`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from ..config import SetupConfig
from ..workspace import Workspace


@runtime_checkable
class SessionRuntime(Protocol):
    workspace: Workspace
    setup_config: SetupConfig

    def setup(self, values: Mapping[str, Any]) -> SetupConfig:
        """Change setup values; UnknownOptionError / ConfigError for bad ones."""

    # deployments
    def deploy_spec(self, options: Mapping[str, Any], session_models: Callable[[str], str | None] | None = None) -> Any:
        """Check `action="infer"` options; returns a spec with `.udf_name`. `session_models(ref)` gives
        the model directory of the session's `load model.` table `ref`, or None."""

    def deploy(self, spec: Any) -> dict:
        """Deploy a spec; `{"udf_name", "status", ...}`."""

    def undeploy(self, name: str) -> None: ...

    def deployment_exists(self, name: str) -> bool: ...

    def deployments(self, *, start: bool = True) -> dict[str, str]:
        """name -> status; with `start=False` and no cluster running, `{}`."""

    # calls
    def generate(self, name: str, requests: Sequence[Mapping[str, Any]], *, on_rows: Callable[[int], Any] | None = None,
                 cache: bool = False, rows: Sequence[int] | None = None,
                 on_cached: Callable[[int], Any] | None = None, dedupe: bool = True,
                 known: dict[str, dict] | None = None, on_shared: Callable[[int], Any] | None = None) -> list[dict]:
        """One answer per request, in order. With `dedupe`, identical deterministic requests are asked
        once (`known`: answers given earlier in the same select, extended; `on_shared(n)`: how many rows
        were answered without being sent)."""

    def embed(self, name: str, texts: Sequence[str]) -> list[list[float]]: ...

    def loaded_adapters(self, name: str) -> list[dict]:
        """The LoRA adapters each replica of deployment `name` holds: rows with `replica`, `adapter`,
        `version`, `ref`, `loaded_at` (epoch seconds), `requests`, `capacity`."""

    def meta(self, name: str, *, refresh: bool = False) -> dict:
        """Deployment `name`'s metadata; `kind` "reward" makes its SQL function return a DOUBLE per row."""

    def rewards(self, name: str, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """A reward model's score of each `{"instruction", "response"}` pair, in order."""

    def score(self, name: str, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods (`{"logprob", "tokens"}` per item): perplexity in `action="eval"`."""

    # evaluation (`runtime.evaluation.Evaluations`)
    def evaluate(self, table: Any, **options: Any) -> Any:
        """action="eval": an `EvalResult` (`summary`, `rows`, `summary_table()`)."""

    def eval_list(self, model: str | None = None) -> list[dict]: ...

    def eval_compare(self, a: str, b: str, *, evalset: str | None = None) -> list[dict]: ...

    def promote(self, ref: str, condition: str | None = None, *, evalset: str | None = None,
                tables: Mapping[str, Any] | None = None) -> dict: ...

    # training, registry, jobs, result cache
    def train(self, task: str | None, params: Mapping[str, Any], table: Any, *, options: Any = None,
              progress: bool = False, eval_table: Any = None, partitions: Sequence[int] | None = None) -> dict:
        """Submit a training job (`options`: the task's options model, parsed from `params`); its row."""

    def merge(self, model_table: str, output_table: str, *, overwrite: bool = False) -> dict: ...

    def convert(self, options: Any, *, session_models: Callable[[str], str | None] | None = None) -> dict:
        """action="convert" (`config.ConvertOptions`): `{"name", "version", "kind", "path", "source_format", ...}`."""

    def quantize(self, model_table: str, output_table: str, method: str, *, calibration: Any = None,
                 calibration_column: str | None = None, calibration_rows: int = 128, group_size: int | None = None,
                 overwrite: bool = False, session_models: Callable[[str], str | None] | None = None) -> dict:
        """action="quantize": `{"name", "version", "kind", "path", "method", "quantized_from", ...}`."""

    @property
    def jobs(self) -> Any:
        """`list()`, `logs(id)`, `status(id)`, `stop(id)`, `resume(id)` (see `train.jobs.Jobs`)."""

    @property
    def catalog(self) -> Any:
        """`jobs(limit)`, `models()` (see `catalog.Catalog`)."""

    @property
    def result_cache(self) -> Any:
        """`count(model)`, `clear(model)` (see `result_cache.ResultCache`)."""


__all__ = ["SessionRuntime"]
