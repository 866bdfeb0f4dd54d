"""Evaluation's library: eval sets, metrics, LLM-as-judge prompts, measuring, stored results compared with
bootstrap intervals, gated promotion, reports. It asks no model and knows nothing of plugins or deployments:
the runtime's verbs (`byzer_like.runtime.evaluation`: `Runtime.evaluate`, `eval_compare`, `promote`) ask the
models and hand the answers here.

Modules: `metrics` (pure functions and the METRICS table), `evalset` (tables -> prompts and references),
`judge` (LLM-as-judge prompts and parsing), `measure` (the checks before an evaluation, and the summary and
per-row table from a model's answers and scores), `stats` (paired bootstrap), `compare` (deltas across
versions, gated promotion over a catalog), `report` (Markdown and PNG).
"""
from __future__ import annotations

from .compare import compare, parse_conditions, promote
from .measure import EvalResult, measure, plan

__all__ = ["EvalResult", "compare", "measure", "parse_conditions", "plan", "promote"]
