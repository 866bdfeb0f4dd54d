"""Comparing stored evaluations across versions, and promotion gated on them.

    compare(catalog, "m@v1", "m@v2")          -> one row per metric: a, b, delta, ci_low, ci_high, significant
    promote(rt, "m@v3", "exact_match >= m@v2.exact_match + 0.02", evalset="qa")
        -> {"promoted": True/False, "conditions": [...], "reason": ...}; the version becomes `production`

A condition is `<metric> <op> <value>` (op: >=, >, <=, <, =), `value` a number or `<ref>.<metric>` plus or
minus a number; several are joined with `and`. Values come from the newest stored evaluation of each version
on the eval set (`evalset`: a table name or a fingerprint); when a version has none and the caller can
give the eval set's table, it is evaluated first (fresh results). Nothing is promoted unless every
condition holds.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, EvalNotFoundError, ModelNotFoundError, PromotionError
from . import metrics as M
from .stats import paired_bootstrap

_REF = r"[A-Za-z_][A-Za-z0-9_.-]*?(?:@v\d+|@production|@candidate|@archived)?"
_CONDITION = re.compile(r"^\s*(?P<metric>[A-Za-z_]\w*)\s*(?P<op>>=|<=|==|=|>|<)\s*(?P<rhs>.+?)\s*$")
_RHS = re.compile(rf"^(?:(?P<ref>{_REF})\.(?P<metric>[A-Za-z_]\w*))?\s*(?P<num>[+-]?\s*\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)?$")
OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                                  "<": operator.lt, "=": operator.eq, "==": operator.eq}


@dataclass(frozen=True)
class Condition:
    """`metric op (ref.metric + offset)` or `metric op offset` (ref None)."""

    metric: str
    op: str
    ref: str | None
    ref_metric: str | None
    offset: float
    text: str


def parse_conditions(text: str) -> list[Condition]:
    """`"exact_match >= m@v2.exact_match + 0.02 and rouge_l > 0.5"` -> conditions. PromotionError for text
    that does not parse; UnknownMetricError for a metric name no one knows."""
    parts = [p for p in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE) if p.strip()]
    if not parts:
        raise PromotionError("promote ... if needs a condition, e.g. `exact_match >= m@v2.exact_match + 0.02`")
    out = []
    for part in parts:
        m = _CONDITION.match(part)
        rhs = _RHS.match(m.group("rhs")) if m else None
        if not m or not rhs or not (rhs.group("ref") or rhs.group("num")):
            raise PromotionError(f"cannot read the condition {part!r}; write `<metric> >= <number>` or "
                                 "`<metric> >= <model>@v<N>.<metric> + <number>` (ops: >=, >, <=, <, =)")
        metric = _metric_name(m.group("metric"))
        ref_metric = _metric_name(rhs.group("metric")) if rhs.group("metric") else None
        offset = float(rhs.group("num").replace(" ", "")) if rhs.group("num") else 0.0
        out.append(Condition(metric, m.group("op"), rhs.group("ref"), ref_metric, offset, part.strip()))
    return out


def _metric_name(name: str) -> str:
    """A metric's name as the summaries store it (its aliases accepted; judge_parse_failures and the
    perplexity extras are summary keys too)."""
    if name in ("mean_token_logprob", "judge_parse_failures", "failed_rows"):
        return name
    return M.metric(name).name


def split_ref(ref: str, catalog: Any) -> tuple[str, int | None]:
    """`m@v2` / `m@production` / `m` (a registry name: its latest version) -> (name, version); a name the
    registry does not have is a deployment's name (version None)."""
    from ..errors import ModelNotFoundError

    if "@" in ref:
        m = catalog.model(ref)  # ModelNotFoundError lists the registered versions
        return m.name, m.version
    try:
        m = catalog.model(ref)
        return m.name, m.version
    except (ModelNotFoundError, ConfigError):
        return ref, None


def stored(catalog: Any, ref: str, *, evalset: str | None = None, fingerprint: str | None = None,
           metric: str | None = None, with_rows: bool = False) -> dict | None:
    """The newest stored evaluation of `ref` on the eval set (by table name or fingerprint; `evalset` may
    be either), having `metric` when given; None when there is none."""
    name, version = split_ref(ref, catalog)
    records = catalog.evals(name, version, fingerprint=fingerprint, with_rows=with_rows)
    if evalset:
        records = [r for r in records if evalset in (r.get("evalset"), r.get("fingerprint"))]
    if version is None and "@" not in ref:
        records = [r for r in records if r.get("version") is None] or records
    for r in records:
        if metric is None or metric in (r.get("metrics") or {}):
            return r
    return None


def compare(catalog: Any, a: str, b: str, *, evalset: str | None = None, metrics: Sequence[str] | None = None,
            resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[dict]:
    """Metric deltas of `b` over `a` on one eval set, each with its paired bootstrap interval (`eval.stats`).

    The eval set: `evalset` (a table name or fingerprint), else the one of `b`'s newest evaluation. Rows are
    paired by their keys. Returns one row per metric both have: {"metric", "a", "b", "delta", "ci_low",
    "ci_high", "rows", "significant"} (significant: the interval excludes 0). Raises EvalNotFoundError
    (saying how to evaluate) when either has no evaluation there, ModelNotFoundError for an unknown version."""
    rb = stored(catalog, b, evalset=evalset, with_rows=True)
    if rb is None:
        raise EvalNotFoundError(_missing(b, evalset))
    ra = stored(catalog, a, fingerprint=rb["fingerprint"], with_rows=True)
    if ra is None:
        raise EvalNotFoundError(_missing(a, rb.get("evalset") or rb["fingerprint"]))
    da, db = ra.get("row_data") or {}, rb.get("row_data") or {}
    index_a = {k: i for i, k in enumerate(da.get("keys") or [])}
    pairs = [(index_a[k], j) for j, k in enumerate(db.get("keys") or []) if k in index_a]
    names = [n for n in (metrics or list(rb["metrics"])) if n in ra["metrics"] and n in rb["metrics"]
             and isinstance(ra["metrics"][n], (int, float)) and n in {**M.METRICS, "mean_token_logprob": 0}]
    out = []
    for name in names:
        m = M.METRICS.get(name)
        va, vb = (da.get("values") or {}).get(name), (db.get("values") or {}).get(name)
        statistic = None
        if m is not None and m.summary is not None and m.name != "perplexity":  # a corpus formula: recomputed per draw
            sides = [(da, [i for i, _ in pairs]), (db, [j for _, j in pairs])]

            def statistic(idx: list[int], side: int, m: M.Metric = m, sides: list = sides) -> float:
                data, rows = sides[side]
                picked = [rows[i] for i in idx]
                return M.summarise(m, [], [data["predictions"][k] for k in picked],
                                   [data["references"][k] for k in picked], data.get("choices"))
            a_vals = b_vals = [0.0] * len(pairs)
        elif va and vb:
            a_vals, b_vals = [va[i] for i, _ in pairs], [vb[j] for _, j in pairs]
        else:
            continue
        ci = paired_bootstrap(a_vals, b_vals, n=resamples, alpha=alpha, seed=seed, statistic=statistic)
        significant = not (math.isnan(ci["ci_low"]) or ci["ci_low"] <= 0 <= ci["ci_high"])
        out.append({"metric": name, "a": ra["metrics"][name], "b": rb["metrics"][name], "delta": _r(ci["delta"]),
                    "ci_low": _r(ci["ci_low"]), "ci_high": _r(ci["ci_high"]), "rows": ci["rows"],
                    "significant": significant, "a_eval": ra["id"], "b_eval": rb["id"],
                    "evalset": rb.get("evalset") or rb["fingerprint"]})
    return out


def _r(v: float) -> float:
    return v if math.isnan(v) else round(v, 6)


def _missing(ref: str, evalset: str | None) -> str:
    on = f" on eval set {evalset!r}" if evalset else ""
    return (f"no stored evaluation of {ref}{on}; evaluate it first: run command as LLM.`` where action=\"eval\" and "
            f"modelTable=\"{ref}\" and inputTable=\"<eval set>\" and metrics=\"...\"")


def promote(catalog: Any, ref: str, condition: str | None = None, *, evalset: str | None = None,
            tables: Mapping[str, Any] | None = None, stage: str = "production",
            evaluate: Callable[..., Any] | None = None) -> dict:
    """Give registry version `ref` the stage `stage` (production by default) in `catalog` if every condition
    holds.

    `tables`: the caller's tables by name (a SQL session's), so that a version with no stored result on
    `evalset` is evaluated first with `evaluate(table, model_table=..., metrics=..., evalset=...)` (the
    runtime's verb). Returns {"model", "version", "promoted", "stage", "conditions": [{"condition", "value",
    "threshold", "holds", "margin", "ref", "ref_value", "offset", "op"}], "reason"}: `value` is `ref`'s, `ref_value`
    the other version's (None against a number), `threshold` what `value` was held against (`ref_value +
    offset`); the reason shows both values, and after a refusal which version stays in the stage. Raises ModelNotFoundError (an unknown version),
    UnknownMetricError, PromotionError (a condition that does not parse), EvalNotFoundError (no result and no
    table to make one)."""
    target = catalog.model(ref)  # ModelNotFoundError before anything else
    conditions = parse_conditions(condition) if condition else []
    for c in conditions:  # every version named must exist before any result is looked up
        if c.ref:
            catalog.model(c.ref)
    fingerprint = None
    results: list[dict] = []
    for c in conditions:
        value, fingerprint = _value(catalog, target.ref, c.metric, evalset, fingerprint, tables, evaluate)
        threshold, other = c.offset, None
        if c.ref:
            other, fingerprint = _value(catalog, c.ref, c.ref_metric or c.metric, evalset, fingerprint, tables, evaluate)
            threshold = other + c.offset
        holds = OPS[c.op](value, threshold)
        margin = value - threshold if c.op in (">=", ">") else threshold - value if c.op in ("<=", "<") else -abs(value - threshold)
        results.append({"condition": c.text, "value": _r(value), "threshold": _r(threshold), "holds": bool(holds),
                        "margin": _r(margin), "ref": c.ref, "ref_value": None if other is None else _r(other),
                        "offset": c.offset, "op": c.op})
    failed = [r for r in results if not r["holds"]]
    if failed:
        reason = "; ".join(f"{_compared(r, target.ref)}, short by {abs(r['margin']):.4g}" for r in failed)
        return {"model": target.name, "version": target.version, "promoted": False, "stage": target.stage,
                "conditions": results, "reason": f"not promoted: {reason}{_stays(catalog, target, stage)}"}
    updated = catalog.set_stage(target.ref, stage)
    why = "; ".join(_compared(r, target.ref) for r in results) or "no condition"
    return {"model": updated.name, "version": updated.version, "promoted": True, "stage": updated.stage,
            "conditions": results, "reason": f"promoted to {stage}: {why}"}


def _compared(r: Mapping[str, Any], ref: str) -> str:
    """One condition with the two values it compared: `rouge_l >= m@v1.rouge_l + 0.02: m@v2 has 0.41, m@v1 has
    0.4 (+ 0.02: 0.42)`, or, against a number, `rouge_l > 0.5: m@v2 has 0.41`."""
    shown = f"{r['condition']}: {ref} has {r['value']:.4g}"
    if r.get("ref") is None:
        return shown
    offset = r["offset"]
    extra = f" ({'+' if offset >= 0 else '-'} {abs(offset):.4g}: {r['threshold']:.4g})" if offset else ""
    return f"{shown}, {r['ref']} has {r['ref_value']:.4g}{extra}"


def _stays(catalog: Any, target: Any, stage: str) -> str:
    """After a refusal: which version keeps `stage` (`target` itself when it already held it), or ""."""
    if target.stage == stage:
        return f"; {target.ref} stays in {stage}"
    try:
        holder = catalog.model(f"{target.name}@{stage}")
    except ModelNotFoundError:
        return ""
    return f"; {holder.ref} stays in {stage}"


def _value(catalog: Any, ref: str, metric: str, evalset: str | None, fingerprint: str | None,
           tables: Mapping[str, Any] | None, evaluate: Callable[..., Any] | None) -> tuple[float, str]:
    """A version's stored value of `metric` on the eval set (evaluating it first when it has none and the
    table is at hand); and the eval set's fingerprint, which every later value must share."""
    rec = stored(catalog, ref, evalset=None if fingerprint else evalset, fingerprint=fingerprint, metric=metric)
    if rec is None and evalset and tables is not None and evaluate is not None:
        table = next((t for k, t in tables.items() if k.lower() == evalset.lower()), None)
        if table is not None:
            evaluate(table, model_table=ref, metrics=[metric], evalset=evalset)
            rec = stored(catalog, ref, evalset=evalset, fingerprint=fingerprint, metric=metric)
    if rec is None:
        has_any = stored(catalog, ref, evalset=None if fingerprint else evalset, fingerprint=fingerprint)
        if has_any is not None:
            raise PromotionError(f"the evaluation of {ref} on {evalset or has_any.get('evalset')} has no {metric!r} "
                                 f"(it has {', '.join(sorted(has_any['metrics']))}); evaluate it with "
                                 f"metrics=\"{metric}\" first")
        raise EvalNotFoundError(_missing(ref, evalset))
    value = rec["metrics"][metric]
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        raise PromotionError(f"{metric} of {ref} on {rec.get('evalset') or rec['fingerprint']} is not a number ({value!r})")
    return float(value), rec["fingerprint"]


__all__ = ["Condition", "compare", "parse_conditions", "promote", "split_ref", "stored"]
