"""Evaluation as a stage of the lifecycle: eval sets, metrics, LLM-as-judge, stored results, reports,
comparison with bootstrap intervals, and promotion gated on results.

    from byzer_like.eval import evaluate, compare, promote, metrics
    result = evaluate(runtime, table, model_table="m@v2", metrics="exact_match,rouge_l")

Modules: `metrics` (pure functions and the METRICS table), `evalset` (tables -> prompts and references),
`judge` (LLM-as-judge prompts and parsing), `stats` (paired bootstrap), `run` (an evaluation through the
runtime), `compare` (deltas across versions, gated promotion), `report` (Markdown and PNG). The package
uses the runtime it is handed and never imports a face (client, CLI, notebook).
"""
from __future__ import annotations

from .compare import compare, parse_conditions, promote
from .run import EvalResult, evaluate, plan

__all__ = ["EvalResult", "compare", "evaluate", "parse_conditions", "plan", "promote"]
