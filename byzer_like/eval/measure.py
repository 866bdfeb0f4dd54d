"""Measuring an evaluation from what a model gave: its answers, token scores and a judge's replies in, the
summary, the per-row table and the stored row data out. Nothing here asks a model: the runtime does
(`runtime.evaluation`), then hands the results here.

    ms, es, labels = plan(table, metrics="exact_match,perplexity")          # every check that needs no model
    summary, rows, row_data = measure(es, ms, labels, predictions, errors, scores=scores)

This module imports neither ray nor torch, and knows nothing of plugins or deployments.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, EvalSetError
from . import judge as J
from . import metrics as M
from .evalset import EvalSet, from_table, shown_reference


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
        """The summary as a one-row pyarrow table (nested values as JSON text, NaN as null)."""
        import pyarrow as pa

        return pa.Table.from_pylist([{k: _cell(v) for k, v in self.summary.items()}])


def _cell(v: Any) -> Any:
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
    metrics (ConfigError). Returns (metrics, eval set, labels or None)."""
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


def score_items(es: EvalSet) -> list[dict]:
    """What a model scores for perplexity, one item per row (`plugins.contract.ScoreText`'s items): a text
    row's text; else the reference as the answer after the row's prompt."""
    if es.form == "text":
        return [{"text": prompt[-1]["content"]} for prompt in es.prompts]
    return [{"text": (ref[0] if isinstance(ref, list) else ref) or "", "ins": prompt[-1]["content"], "his": prompt[:-1]}
            for prompt, ref in zip(es.prompts, es.references)]


def judge_prompts(template: str, es: EvalSet, predictions: Sequence[str | None]) -> list[str]:
    """The judge's prompt for each row (`judge.build_prompt`)."""
    return [J.build_prompt(template, q, p, shown_reference(r)) for q, p, r in zip(es.questions, predictions, es.references)]


def measure(es: EvalSet, ms: Sequence[M.Metric], labels: list[str] | None, predictions: list[str | None],
            errors: list[str | None], *, scores: Sequence[Mapping[str, Any]] | None = None,
            judge_mode: str = "score", judge_replies: Sequence[str | None] | None = None,
            rewards: Sequence[float | None] | None = None) -> tuple[dict, Any, dict]:
    """The metrics of one evaluation from what the model gave.

    `predictions[i]`: row i's answer (None: none, `errors[i]` says why); `scores`: the rows' `{"logprob",
    "tokens"}` (perplexity); `judge_replies`: the judge's reply per row (None: not asked), read in
    `judge_mode`; `rewards`: a reward model's score of each row's answer (None: no answer). Returns (summary dict, per-row pyarrow table, row data for the catalog: keys, predictions,
    references, per-row values, choices)."""
    import pyarrow as pa

    names = [m.name for m in ms]
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
                columns["accuracy"] = [float(lab is not None and M.is_label(lab, r))
                                       for lab, r in zip(columns["label"], es.references)]
    if "perplexity" in names and scores is not None:
        summary.update(_perplexity(scores, columns))
    if "judge" in names and judge_replies is not None:
        grades = [J.parse_grade(judge_mode, r) for r in judge_replies]
        columns["judge"] = grades
        columns["judge_reply"] = list(judge_replies)
        summary.update({k: _round(v) if isinstance(v, float) else v for k, v in J.summary(judge_mode, grades).items()})
    if "reward" in names and rewards is not None:
        columns["reward"] = [None if r is None else float(r) for r in rewards]
        summary["reward"] = _round(M.mean(columns["reward"]))
    summary["failed_rows"] = sum(e is not None for e in errors)
    data: dict[str, list] = {"row": list(range(1, es.rows + 1))}
    data.update({k: v for k, v in es.extra.items() if k not in ("row", "prediction", "reference", *columns)})
    data.update({"question": es.questions, "prediction": predictions, "reference": [shown_reference(r) for r in es.references]})
    data.update(columns)
    data["error"] = errors
    table = pa.table({k: _column(v) for k, v in data.items()})
    row_data = {"keys": es.keys, "predictions": predictions, "references": es.references,
                "values": {k: columns[k] for k in columns if k not in ("label", "judge_reply")}, "choices": labels}
    return summary, table, row_data


def _perplexity(scores: Sequence[Mapping[str, Any]], columns: dict[str, list]) -> dict[str, Any]:
    """Perplexity's summary keys from the rows' scores; its per-row columns go into `columns`."""
    lps, ns = [s["logprob"] for s in scores], [s["tokens"] for s in scores]
    columns["perplexity"] = [math.exp(-lp / n) if n else None for lp, n in zip(lps, ns)]
    columns["token_logprob"] = [lp / n if n else None for lp, n in zip(lps, ns)]
    return {"perplexity": _round(M.perplexity(lps, ns)), "mean_token_logprob": _round(M.mean_token_logprob(lps, ns)),
            "scored_tokens": sum(ns)}


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


__all__ = ["EvalResult", "judge_prompts", "measure", "plan", "score_items"]
