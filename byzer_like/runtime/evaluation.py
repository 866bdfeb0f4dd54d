"""Evaluation as runtime verbs: a model answers an eval set through the runtime's batched path, the metric
library (`byzer_like.eval`) measures it, and the result is recorded with its report; stored results are
listed, compared and gate a promotion.

    result = rt.evaluate(table, model_table="m@v2", metrics="exact_match,rouge_l")
    result.summary["exact_match"]; result.rows (pyarrow: prediction, reference, a column per metric)
    rt.eval_compare("m@v1", "m@v2"); rt.promote("m@v2", "exact_match >= m@v1.exact_match + 0.02")

The model is a deployment (`udf_name`) or a registry version (`model_table`: deployed for the evaluation under
`eval_<name>_v<N>` and removed after it unless `keep_deployed`). Every row is answered through `generate`
(chunks on every replica, retries, the result cache), greedy by default, so an evaluation run twice asks the
model only for rows it has not answered. Every check that can fail (metrics, eval set columns, the judge, the
model) runs before a model is deployed or asked. SQL (`action="eval"`, `!byzerllm eval ...`, `!byzerllm
model promote`), the client and the CLI all take this one route.

`Evaluations` holds the verbs; `Runtime` has them, and so can any object with the members they call
(`catalog`, `workspace`, `deployment_exists`, `deployments`, `deploy_spec`, `deploy`, `undeploy`, `generate`,
`score`, `rewards` for metric reward, optionally `meta`).
"""
from __future__ import annotations

import re
import time
import uuid
from typing import Any, Callable, Mapping, Sequence

from ..config import chat_request
from ..errors import ConfigError, JudgeNotDeployedError, ModelNotDeployedError
from ..eval import judge as J
from ..eval import metrics as M
from ..eval.compare import compare, promote, split_ref
from ..eval.evalset import reference_value
from ..eval.measure import EvalResult, judge_prompts, measure, plan, score_items
from .spec import plugin_for

# the metric names in the metric table's order (what tables of results show as columns)
METRIC_NAMES: tuple[str, ...] = tuple(M.METRICS)


def metric_value(name: str, prediction: str | None, reference: Any) -> float | None:
    """One row's value of per-row metric `name` (`eval.metrics.row_value`: SQL's `llm_eval`); a list
    `reference` (or SQuAD's `{"text": [...]}`) is several references, the best counting
    (`eval.evalset.reference_value`). UnknownMetricError for a name that is no metric or has no per-row value."""
    return M.row_value(name, prediction, reference_value(reference))


class Evaluations:
    """The evaluation verbs of a runtime (a mix-in: see the module docstring for what it needs)."""

    def evaluate(self, table: Any, **options: Any) -> EvalResult:
        """Evaluate a deployment (`udf_name=`) or a registry version (`model_table=`) on an eval set; the
        options are `evaluate`'s below. Returns an `EvalResult` (summary, rows)."""
        return evaluate(self, table, **options)

    def eval_list(self, model: str | None = None) -> list[dict]:
        """Stored evaluations, newest first; of one model (`m`, `m@v2`) when given."""
        name, version = split_ref(model, self.catalog) if model and "@" in model else (model, None)
        return self.catalog.evals(name, version)

    def eval_compare(self, a: str, b: str, *, evalset: str | None = None) -> list[dict]:
        """Metric deltas of `b` over `a` on one eval set, each with its paired bootstrap 95% interval
        (`eval.compare.compare`)."""
        return compare(self.catalog, a, b, evalset=evalset)

    def promote(self, ref: str, condition: str | None = None, *, evalset: str | None = None,
                tables: Mapping[str, Any] | None = None) -> dict:
        """Make registry version `ref` the production one if `condition` holds on the stored results on
        `evalset`; a version with no result there is evaluated first when `tables` (the caller's tables by
        name) holds the eval set (`eval.compare.promote`)."""
        return promote(self.catalog, ref, condition, evalset=evalset, tables=tables,
                       evaluate=lambda table, **kw: self.evaluate(table, **kw))


def evaluate(rt: Any, table: Any, *, udf_name: str | None = None, model_table: str | None = None,
             metrics: str | Sequence[str] | None = None, judge: str | None = None, judge_mode: str = "score",
             judge_prompt: str | None = None, choices: str | Sequence[str] | None = None,
             reference_column: str | None = None, prompt_column: str | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, cache: bool = True, evalset: str | None = None, report: bool = True,
             record: bool = True, keep_deployed: bool = False, session_models: Callable[[str], str | None] | None = None,
             on_rows: Callable[[int], Any] | None = None, reward_model: str | None = None) -> EvalResult:
    """Evaluate a model on an eval set through runtime `rt`; see the module docstring.

    `table`: the eval set (pyarrow, pandas or a list of row dicts; forms in `eval.evalset`). `metrics`:
    names from `eval.metrics.METRICS` (a comma-separated string or a list; default exact_match).
    `judge`: the deployed model that grades (`judge` metric), in `judge_mode` score / pairwise, with
    `judge_prompt` replacing the default (placeholders {question}, {prediction}, {reference}).
    `choices`: the labels of accuracy / macro_f1. `max_new_tokens`, `temperature`: the answers' request
    (temperature 0: greedy). `cache`: take answers from the runtime's result cache and keep new ones.
    `reward_model`: the deployed reward model (`rm/<family>`) whose mean score of the answers is metric
    `reward` (naming it adds the metric).

    Returns an EvalResult. Raises UnknownMetricError, EvalSetError, ConfigError, JudgeNotDeployedError,
    ModelNotDeployedError / ModelNotFoundError (the model), and what deploying and generating raise."""
    started = time.monotonic()
    ms, es, labels = plan(table, metrics=metrics, choices=choices, reference_column=reference_column,
                          prompt_column=prompt_column, name=evalset)
    template = _judge_template(rt, ms, judge, judge_mode, judge_prompt)
    _check_reward_model(rt, ms, reward_model)
    names = [m.name for m in ms]
    if bool(udf_name) == bool(model_table):
        raise ConfigError('evaluate needs the model: modelTable="<name or name@v2>" (a registry version) or '
                          'udfName="<deployed model>", one of them')
    if report:  # matplotlib loads while the model answers
        from ..eval.report import warm_up

        warm_up()
    target, label, version, deployed_here = _target(rt, udf_name, model_table, session_models)
    try:
        predictions, errors = _answers(rt, target, es, ms, max_new_tokens, temperature, cache, on_rows)
        scores = rt.score(target, score_items(es)) if "perplexity" in names else None
        replies = _judge_replies(rt, judge, template, es, predictions, cache) if template else None
        rewards = _rewards(rt, reward_model, es, predictions) if reward_model else None
        summary, table_out, row_data = measure(es, ms, labels, predictions, errors, scores=scores,
                                               judge_mode=judge_mode, judge_replies=replies, rewards=rewards)
    finally:
        if deployed_here and not keep_deployed:
            rt.undeploy(target)
    seconds = time.monotonic() - started
    head = {"eval_id": f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", "model": label,
            "version": version, "model_ref": f"{label}@v{version}" if version is not None else label,
            "udf_name": target, "evalset": es.name, "fingerprint": es.fingerprint, "rows": es.rows}
    summary = {**head, **summary, "seconds": round(seconds, 3), "rows_per_s": round(es.rows / seconds, 3) if seconds else None}
    if judge:
        summary["judge_model"] = judge
        summary["judge_mode"] = judge_mode
    if reward_model:
        summary["reward_model"] = reward_model
    params = {"metrics": names, "choices": labels, "max_new_tokens": max_new_tokens, "temperature": temperature,
              "judge_mode": judge_mode if judge else None, "reference_column": reference_column,
              "prompt_column": prompt_column, "reward_model": reward_model}
    _keep(rt, head, summary, table_out, {"judge": judge, "judge_prompt": template if judge else None,
                                         "params": params, "row_data": row_data}, report=report, record=record)
    return EvalResult(summary, table_out)


def _judge_template(rt: Any, ms: list[M.Metric], judge: str | None, judge_mode: str,
                    judge_prompt: str | None) -> str | None:
    """The judge's prompt template when the evaluation has a judge (a judge named without the `judge` metric
    adds it to `ms`); None without one. ConfigError for the metric without a judge, JudgeNotDeployedError
    for a judge that is not deployed."""
    if "judge" not in [m.name for m in ms] and not judge:
        return None
    if not judge:
        raise ConfigError('metric judge needs the deployed model that grades: judge="<udfName>"')
    if "judge" not in [m.name for m in ms]:  # a judge named without the metric: it grades too
        ms.append(M.metric("judge"))
    template = J.prompt_template(judge_mode, judge_prompt)
    if not rt.deployment_exists(judge):
        raise JudgeNotDeployedError(judge, rt.deployments())
    return template


def _check_reward_model(rt: Any, ms: list[M.Metric], reward_model: str | None) -> None:
    """Before any model is asked: metric reward has its reward model (naming one adds the metric to `ms`) and
    that model is deployed. ConfigError, ModelNotDeployedError (listing the deployments) otherwise."""
    if "reward" not in [m.name for m in ms] and not reward_model:
        return
    if not reward_model:
        raise ConfigError('metric reward needs the deployed reward model that scores the answers: rewardModel="<udfName>" '
                          '(a model trained with pretrainedModelType="rm/<family>", deployed with modelTable="<its name>")')
    if "reward" not in [m.name for m in ms]:
        ms.append(M.metric("reward"))
    if not rt.deployment_exists(reward_model):
        raise ModelNotDeployedError(reward_model, rt.deployments())


def _rewards(rt: Any, reward_model: str, es: Any, predictions: list[str | None]) -> list[float | None]:
    """The reward model's score of each answered row (its question and answer); None for rows without one."""
    asked = [i for i, p in enumerate(predictions) if p is not None]
    out: list[float | None] = [None] * es.rows
    if asked:
        scores = rt.rewards(reward_model, [{"instruction": es.questions[i], "response": predictions[i]} for i in asked])
        for i, v in zip(asked, scores):
            out[i] = v
    return out


def _keep(rt: Any, head: dict, summary: dict, rows: Any, extra: dict, *, report: bool, record: bool) -> None:
    """Write the evaluation's report (its paths go into `summary`) and record it in the catalog with `extra`
    (judge, judge_prompt, params, row_data); without either the summary loses its eval_id."""
    recorded = {k: v for k, v in summary.items() if k not in head}
    paths = None
    if report:  # written first, so that the evaluation is recorded with its report in one write
        from ..eval.report import write_report

        history = ([{"id": head["eval_id"], "version": head["version"], "metrics": recorded},
                    *rt.catalog.evals(head["model"], fingerprint=head["fingerprint"])] if record else [])
        # the PNG on a thread of its own: the result does not wait for its drawing
        paths = write_report(rt.workspace, summary, rows, extra["params"]["metrics"], history, background=True)
        summary.update(report_md=paths["markdown"], report_png=paths["png"])
    if record:
        rt.catalog.record_eval({"id": head["eval_id"], "model": head["model"], "version": head["version"],
                                "udf_name": head["udf_name"], "evalset": head["evalset"],
                                "fingerprint": head["fingerprint"], "rows": head["rows"], "metrics": recorded,
                                **extra, "report": paths})
    elif not report:
        summary.pop("eval_id")


def _target(rt: Any, udf_name: str | None, model_table: str | None,
            session_models: Callable[[str], str | None] | None) -> tuple[str, str, int | None, bool]:
    """(deployment to ask, model name recorded, registry version or None, deployed here)."""
    if udf_name:
        if not rt.deployment_exists(udf_name):
            raise ModelNotDeployedError(udf_name, rt.deployments())
        ref = None
        meta = getattr(rt, "meta", None)
        if meta is not None:
            try:
                ref = (meta(udf_name).get("infer_params") or {}).get("model_table")
            except Exception:  # noqa: BLE001 - a deployment without metadata is recorded under its own name
                ref = None
        m = re.fullmatch(r"(.+)@v(\d+)", ref or "")
        return (udf_name, m.group(1), int(m.group(2)), False) if m else (udf_name, udf_name, None, False)
    assert model_table is not None
    local = session_models(model_table) if session_models else None
    if local is not None:  # a `load model.` table: deployed from its directory, recorded under the table's name
        options = {"pretrainedModelType": "auto", "localModelDir": local}
        label, version = model_table, None
    else:
        found = rt.catalog.model(model_table)  # ModelNotFoundError lists the registered models
        options = {"pretrainedModelType": _plugin_for(found.model_type), "modelTable": found.ref}
        label, version = found.name, found.version
    name = "eval_" + re.sub(r"\W", "_", label)[:40] + (f"_v{version}" if version is not None else "")
    if rt.deployment_exists(name):
        rt.deploy(rt.deploy_spec({**options, "udfName": name, "reconnect": True}, session_models=session_models))
        return name, label, version, False
    rt.deploy(rt.deploy_spec({**options, "udfName": name}, session_models=session_models))
    return name, label, version, True


def _plugin_for(family: str | None) -> str:
    """The plugin that serves a registry model: its recorded family when a plugin has that name, else auto."""
    return plugin_for("model", family)


def _answers(rt: Any, target: str, es: Any, ms: Sequence[M.Metric], max_new_tokens: int, temperature: float,
             cache: bool, on_rows: Callable[[int], Any] | None) -> tuple[list[str | None], list[str | None]]:
    """Each row's answer (stripped; None where the row failed) and error (None where it did not); all None
    when no metric needs answers (perplexity alone)."""
    predictions: list[str | None] = [None] * es.rows
    errors: list[str | None] = [None] * es.rows
    if not any(m.needs != "scores" for m in ms):
        return predictions, errors
    options = {"temperature": temperature, "max_new_tokens": max_new_tokens}
    requests = [chat_request(p, options).model_dump() for p in es.prompts]
    for i, a in enumerate(rt.generate(target, requests, cache=cache, on_rows=on_rows)):
        if "error" in a:
            errors[i] = a["error"]
        else:
            out = a.get("output")
            predictions[i] = out.strip() if isinstance(out, str) else (None if out is None else str(out))
    return predictions, errors


def _judge_replies(rt: Any, judge: str, template: str, es: Any, predictions: list[str | None],
                   cache: bool) -> list[str | None]:
    """The judge's reply to each answered row (None for rows without an answer or whose grading failed)."""
    prompts = judge_prompts(template, es, predictions)
    asked = [i for i, p in enumerate(predictions) if p is not None]
    replies: list[str | None] = [None] * es.rows
    if asked:
        answers = rt.generate(judge, [chat_request(prompts[i], {"temperature": 0.0, "max_new_tokens": 24}).model_dump()
                                      for i in asked], cache=cache)
        for i, a in zip(asked, answers):
            replies[i] = a.get("output") if "error" not in a else None
    return replies


__all__ = ["METRIC_NAMES", "Evaluations", "evaluate", "metric_value"]
