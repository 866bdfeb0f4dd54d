"""Comparing two evaluations: the paired bootstrap confidence interval of a metric's difference.

For rows that both evaluations answered (paired by the row's key: its prompt and reference), rows are
drawn with replacement `n` times; each draw's difference of the metric (its own summary formula over
the drawn rows: a mean, or corpus BLEU) is kept, and the interval is the (alpha/2, 1 - alpha/2)
percentiles of those differences: the percentile bootstrap of Efron & Tibshirani (1993), applied to
paired system outputs as in Koehn (2004), "Statistical Significance Tests for Machine Translation
Evaluation". An interval that excludes 0 says the difference is unlikely to be the sampling of rows.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], *, n: int = 1000, alpha: float = 0.05,
                     seed: int = 0, statistic: Callable[[list[int], int], float] | None = None
                     ) -> dict[str, float]:
    """The difference b - a of a metric over paired rows, with its bootstrap interval.

    `a`, `b`: per-row values of the same rows in the same order (None rows are left out of a mean).
    `statistic(indices, side)`: the metric over the rows `indices` of side 0 (a) or 1 (b), when it is not
    a mean (corpus BLEU). Returns {"delta", "ci_low", "ci_high", "rows", "resamples"}; with no rows the
    numbers are NaN."""
    import numpy as np

    rows = len(a)
    if rows != len(b):
        raise ValueError(f"paired values differ in length: {rows} and {len(b)}")
    nan = float("nan")
    if rows == 0:
        return {"delta": nan, "ci_low": nan, "ci_high": nan, "rows": 0, "resamples": 0}
    if statistic is None:
        va = np.array([nan if v is None else float(v) for v in a])
        vb = np.array([nan if v is None else float(v) for v in b])

        def statistic(idx: list[int], side: int) -> float:  # noqa: F811 - the default: a mean
            vals = (va if side == 0 else vb)[idx]
            vals = vals[~np.isnan(vals)]
            return float(vals.mean()) if len(vals) else nan

    everything = list(range(rows))
    delta = statistic(everything, 1) - statistic(everything, 0)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, rows, rows).tolist()
        d = statistic(idx, 1) - statistic(idx, 0)
        if not math.isnan(d):
            draws.append(d)
    if not draws:
        return {"delta": delta, "ci_low": nan, "ci_high": nan, "rows": rows, "resamples": 0}
    low, high = np.percentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"delta": delta, "ci_low": float(low), "ci_high": float(high), "rows": rows, "resamples": len(draws)}


__all__ = ["paired_bootstrap"]
