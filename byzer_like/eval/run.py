"""Running an evaluation: an eval set's rows answered by a model through the runtime, then measured.

    result = evaluate(runtime, table, model_table="m@v2", metrics="exact_match,rouge_l")
    result.summary["exact_match"]; result.rows (pyarrow: prediction, reference, a column per metric)

The model is a deployment (`udf_name`) or a registry version (`model_table`: deployed for the evaluation
under `eval_<name>_v<N>` and removed after it unless `keep_deployed`). Every row is answered through the
runtime's batched path (`Runtime.generate`: chunks on every replica, retries, the result cache), greedy
by default, so an evaluation run twice asks the model only for rows it has not answered. Every check that
can fail (metrics, eval set columns, the judge, the model) runs before a model is deployed or asked.
The evaluation is recorded in the catalog (`Catalog.record_eval`) with a Markdown and PNG report.

This module takes the runtime as an argument (any object with the members it calls); it imports no face.
"""
from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..config import chat_request
from ..errors import ConfigError, EvalSetError, JudgeNotDeployedError, ModelNotDeployedError
from . import judge as J
from . import metrics as M
from .evalset import EvalSet, from_table


@dataclass
class EvalResult:
    """One evaluation: `summary` (a dict: the metrics and facts of the run, the report's paths) and `rows`
    (a pyarrow table, one row per eval row). Unpacks as `summary, rows_dataframe`."""

    summary: dict
    rows: Any

    def __iter__(self):
        yield self.summary
        yield self.rows.to_pandas()

    def summary_table(self):
        """The summary as a one-row pyarrow table."""
        import pyarrow as pa

        return pa.Table.from_pylist([{k: _cell(v) for k, v in self.summary.items()}])


def _cell(v: Any) -> Any:
    import json

    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def plan(table: Any, *, metrics: str | Sequence[str] | None = None, choices: str | Sequence[str] | None = None,
         reference_column: str | None = None, prompt_column: str | None = None, name: str | None = None
         ) -> tuple[list[M.Metric], EvalSet, list[str] | None]:
    """The checks of an evaluation that need no model: the metrics (UnknownMetricError), the eval set
    (EvalSetError: no prompt column, no reference column for a reference metric) and `choices` for label
    metrics (ConfigError)."""
    ms = M.parse_metrics(metrics)
    need_ref = any(m.needs in ("reference", "choices") for m in ms)
    es = from_table(table, name=name, reference_column=reference_column, prompt_column=prompt_column,
                    need_reference=need_ref)
    labels = [c.strip() for c in choices.split(",") if c.strip()] if isinstance(choices, str) else (
        list(choices) if choices else None)
    if any(m.needs == "choices" for m in ms) and not labels:
        raise ConfigError("accuracy / macro_f1 compare labels: give the labels with choices=\"yes,no\" (SQL) or "
                          "choices=[...] (Python)")
    if es.form == "text":
        other = [m.name for m in ms if m.name != "perplexity"]
        if other:
            raise EvalSetError(f"the eval table has only a text column, so only perplexity can be measured on it, not "
                               f"{', '.join(other)}; add prompt and reference columns ({', '.join(('instruction', 'output'))})")
    return ms, es, labels


def evaluate(rt: Any, table: Any, *, udf_name: str | None = None, model_table: str | None = None,
             metrics: str | Sequence[str] | None = None, judge: str | None = None, judge_mode: str = "score",
             judge_prompt: str | None = None, choices: str | Sequence[str] | None = None,
             reference_column: str | None = None, prompt_column: str | None = None, max_new_tokens: int = 64,
             temperature: float = 0.0, cache: bool = True, evalset: str | None = None, report: bool = True,
             record: bool = True, keep_deployed: bool = False, session_models: Callable[[str], str | None] | None = None,
             on_rows: Callable[[int], Any] | None = None) -> EvalResult:
    """Evaluate a model on an eval set; see the module docstring.

    `table`: the eval set (pyarrow, pandas or a list of row dicts; forms in `eval.evalset`). `metrics`:
    names from `eval.metrics.METRICS` (a comma-separated string or a list; default exact_match).
    `judge`: the deployed model that grades (`judge` metric), in `judge_mode` score / pairwise, with
    `judge_prompt` replacing the default (placeholders {question}, {prediction}, {reference}).
    `choices`: the labels of accuracy / macro_f1. `max_new_tokens`, `temperature`: the answers' request
    (temperature 0: greedy). `cache`: take answers from the runtime's result cache and keep new ones.

    Returns an EvalResult. Raises UnknownMetricError, EvalSetError, ConfigError, JudgeNotDeployedError,
    ModelNotDeployedError / ModelNotFoundError (the model), and what deploying and generating raise."""
    started = time.monotonic()
    ms, es, labels = plan(table, metrics=metrics, choices=choices, reference_column=reference_column,
                          prompt_column=prompt_column, name=evalset)
    names = [m.name for m in ms]
    template = None
    if "judge" in names:
        if not judge:
            raise ConfigError('metric judge needs the deployed model that grades: judge="<udfName>"')
        template = J.prompt_template(judge_mode, judge_prompt)
        if not rt.deployment_exists(judge):
            raise JudgeNotDeployedError(judge, rt.deployments())
    elif judge:
        names.append("judge")
        ms.append(M.metric("judge"))
        template = J.prompt_template(judge_mode, judge_prompt)
        if not rt.deployment_exists(judge):
            raise JudgeNotDeployedError(judge, rt.deployments())
    if bool(udf_name) == bool(model_table):
        raise ConfigError('evaluate needs the model: modelTable="<name or name@v2>" (a registry version) or '
                          'udfName="<deployed model>", one of them')
    if report:  # matplotlib loads while the model answers
        from .report import warm_up

        warm_up()
    target, label, version, deployed_here = _target(rt, udf_name, model_table, session_models)
    try:
        summary, table_out, row_data = _measure(rt, target, es, ms, labels, judge, judge_mode, template,
                                                max_new_tokens, temperature, cache, on_rows)
    finally:
        if deployed_here and not keep_deployed:
            rt.undeploy(target)
    seconds = time.monotonic() - started
    eval_id = f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    head = {"eval_id": eval_id, "model": label, "version": version,
            "model_ref": f"{label}@v{version}" if version is not None else label, "udf_name": target,
            "evalset": es.name, "fingerprint": es.fingerprint, "rows": es.rows}
    summary = {**head, **summary, "seconds": round(seconds, 3), "rows_per_s": round(es.rows / seconds, 3) if seconds else None}
    if judge:
        summary["judge_model"] = judge
        summary["judge_mode"] = judge_mode
    params = {"metrics": names, "choices": labels, "max_new_tokens": max_new_tokens, "temperature": temperature,
              "judge_mode": judge_mode if judge else None, "reference_column": reference_column,
              "prompt_column": prompt_column}
    recorded = {k: v for k, v in summary.items() if k not in head}
    paths = None
    if report:  # written first, so that the evaluation is recorded with its report in one write
        from .report import write_report

        history = ([{"id": eval_id, "version": version, "metrics": recorded},
                    *rt.catalog.evals(label, fingerprint=es.fingerprint)] if record else [])
        # the PNG on a thread of its own: the result does not wait for its drawing
        paths = write_report(rt.workspace, summary, table_out, names, history, background=True)
        summary.update(report_md=paths["markdown"], report_png=paths["png"])
    if record:
        rt.catalog.record_eval({"id": eval_id, "model": label, "version": version, "udf_name": target,
                                "evalset": es.name, "fingerprint": es.fingerprint, "rows": es.rows,
                                "metrics": recorded, "judge": judge, "judge_prompt": template if judge else None,
                                "params": params, "row_data": row_data, "report": paths})
    elif not report:
        summary.pop("eval_id")
    return EvalResult(summary, table_out)


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


def _plugin_for(model_type: str | None) -> str:
    """The plugin that serves a registry model: its recorded family when a plugin has that name, else auto."""
    from ..plugins import registry

    return model_type if model_type and model_type in registry.available() else "auto"


def _measure(rt: Any, target: str, es: EvalSet, ms: list[M.Metric], labels: list[str] | None, judge: str | None,
             judge_mode: str, template: str | None, max_new_tokens: int, temperature: float, cache: bool,
             on_rows: Callable[[int], Any] | None) -> tuple[dict, Any, dict]:
    import pyarrow as pa

    names = [m.name for m in ms]
    generating = any(m.needs != "scores" for m in ms)
    predictions: list[str | None] = [None] * es.rows
    errors: list[str | None] = [None] * es.rows
    if generating:
        options = {"temperature": temperature, "max_new_tokens": max_new_tokens}
        requests = [chat_request(p, options).model_dump() for p in es.prompts]
        answers = rt.generate(target, requests, cache=cache, on_rows=on_rows)
        for i, a in enumerate(answers):
            if "error" in a:
                errors[i] = a["error"]
            else:
                out = a.get("output")
                predictions[i] = out.strip() if isinstance(out, str) else (None if out is None else str(out))
    columns: dict[str, list] = {}
    summary: dict[str, Any] = {}
    for m in ms:
        if m.row is not None:
            values = [m.row(p, r) if r is not None else None for p, r in zip(predictions, es.references)]
            columns[m.name] = values
            summary[m.name] = _round(M.summarise(m, values, predictions, es.references, labels))
        elif m.needs == "choices":
            summary[m.name] = _round(M.summarise(m, [], predictions, es.references, labels))
            if "label" not in columns:
                columns["label"] = [M.label_of(p, labels or []) for p in predictions]
            if m.name == "accuracy":
                columns["accuracy"] = [float(lab is not None and M.normalise(lab) == M.normalise(r))
                                       for lab, r in zip(columns["label"], es.references)]
    if "perplexity" in names:
        items = []
        for prompt, ref in zip(es.prompts, es.references):
            if es.form == "text":
                items.append({"text": prompt[-1]["content"]})
            else:
                items.append({"text": ref or "", "ins": prompt[-1]["content"], "his": prompt[:-1]})
        scores = rt.score(target, items)
        lps, ns = [s["logprob"] for s in scores], [s["tokens"] for s in scores]
        columns["perplexity"] = [math.exp(-lp / n) if n else None for lp, n in zip(lps, ns)]
        columns["token_logprob"] = [lp / n if n else None for lp, n in zip(lps, ns)]
        summary["perplexity"] = _round(M.perplexity(lps, ns))
        summary["mean_token_logprob"] = _round(M.mean_token_logprob(lps, ns))
        summary["scored_tokens"] = sum(ns)
    if "judge" in names and judge and template:
        prompts = [J.build_prompt(template, q, p, r) for q, p, r in zip(es.questions, predictions, es.references)]
        asked = [i for i, p in enumerate(predictions) if p is not None]
        replies: list[str | None] = [None] * es.rows
        if asked:
            answers = rt.generate(judge, [chat_request(prompts[i], {"temperature": 0.0, "max_new_tokens": 24}).model_dump()
                                          for i in asked], cache=cache)
            for i, a in zip(asked, answers):
                replies[i] = a.get("output") if "error" not in a else None
        grades = [J.parse_grade(judge_mode, r) for r in replies]
        columns["judge"] = grades
        columns["judge_reply"] = replies
        summary.update({k: _round(v) if isinstance(v, float) else v for k, v in J.summary(judge_mode, grades).items()})
    summary["failed_rows"] = sum(e is not None for e in errors)
    data: dict[str, list] = {"row": list(range(1, es.rows + 1))}
    data.update({k: v for k, v in es.extra.items() if k not in ("row", "prediction", "reference", *columns)})
    data.update({"question": es.questions, "prediction": predictions, "reference": es.references})
    data.update(columns)
    data["error"] = errors
    table = pa.table({k: _column(v) for k, v in data.items()})
    row_data = {"keys": es.keys, "predictions": predictions, "references": es.references,
                "values": {k: columns[k] for k in columns if k not in ("label", "judge_reply")}, "choices": labels}
    return summary, table, row_data


def _column(values: list) -> Any:
    import pyarrow as pa

    if values and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values) \
            and any(isinstance(v, float) for v in values):
        return pa.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values],
                        type=pa.float64())
    if all(v is None for v in values):
        return pa.array(values, type=pa.string())
    return pa.array(values)


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isnan(v) or math.isinf(v) else round(v, 6)
    return v


def row_values(record: Mapping[str, Any], metric_name: str) -> list:
    """A stored evaluation's per-row values of one metric (empty when it has none)."""
    return list((record.get("row_data") or {}).get("values", {}).get(metric_name) or [])


__all__ = ["EvalResult", "evaluate", "plan", "row_values"]
