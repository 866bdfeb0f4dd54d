"""An evaluation's report: a Markdown page and a PNG, written under the workspace's `evals/<eval id>/`.

The Markdown has the metrics, the best and worst rows of the first per-row metric, and the PNG's
name; the PNG shows each per-row metric's distribution and, when the model has evaluations of two or
more versions on the same eval set, the first metric version over version (matplotlib, no display
needed). `warm_up()` imports matplotlib in the background, for a caller that will write a report after
waiting on a model. With `background=True` the PNG is drawn on a thread of its own after the Markdown is
written, so that the evaluation's result does not wait for it; `wait_for_reports()` waits for such
drawings (the interpreter also waits for them before it exits: the threads are not daemons).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)
_drawing: list[threading.Thread] = []  # PNGs being drawn in the background
_drawing_lock = threading.Lock()

SHOWN_ROWS = 3  # best and worst rows in the Markdown


def write_report(workspace: Any, summary: dict, rows: Any, metrics: Sequence[str], history: Sequence[dict],
                 *, background: bool = False) -> dict:
    """Write `report.md` and `report.png` for one evaluation; returns {"markdown": path, "png": path}.

    `rows`: the per-row pyarrow table; `metrics`: the metric names asked for; `history`: the model's stored
    evaluations on the same eval set (newest first, as `Catalog.evals` gives them). With `background`, the
    PNG is drawn on a thread of its own and may appear after this returns (`wait_for_reports`); a drawing
    that fails is logged and leaves no PNG."""
    folder = Path(workspace.path("evals", summary.get("eval_id") or "latest"))
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "report.png"
    md = folder / "report.md"
    data = rows.to_pylist()
    per_row = [m for m in metrics if m in rows.column_names and _numeric(r.get(m) for r in data)]
    md.write_text(_markdown(summary, data, per_row, metrics, png.name), encoding="utf-8")
    if not background:
        _plot(png, data, per_row, history, metrics, summary)
        return {"markdown": str(md), "png": str(png)}

    def draw() -> None:
        try:
            _plot(png, data, per_row, history, metrics, summary)
        except Exception:  # noqa: BLE001 - the evaluation itself is recorded; say why its picture is missing
            log.exception("the PNG report %s could not be drawn", png)

    thread = threading.Thread(target=draw, name="byzer-report-png", daemon=False)
    with _drawing_lock:
        _drawing[:] = [t for t in _drawing if t.is_alive()]
        _drawing.append(thread)
    thread.start()
    return {"markdown": str(md), "png": str(png)}


def wait_for_reports(timeout_s: float = 60.0) -> bool:
    """Wait until every PNG report drawn in the background is written, at most `timeout_s` seconds in all;
    returns whether they all are."""
    deadline = time.monotonic() + timeout_s
    with _drawing_lock:
        threads = list(_drawing)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


def _numeric(values: Any) -> bool:
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _cut(text: Any, n: int = 80) -> str:
    s = "" if text is None else str(text).replace("\n", " ").replace("|", "\\|")
    return s if len(s) <= n else s[: n - 1] + "…"


def _markdown(summary: dict, data: list[dict], per_row: list[str], metrics: Sequence[str], png: str) -> str:
    lines = [f"# Evaluation {summary.get('eval_id', '')}", "",
             f"Model **{summary.get('model_ref')}** (deployment `{summary.get('udf_name')}`) on eval set "
             f"**{summary.get('evalset') or '(unnamed)'}** (fingerprint `{summary.get('fingerprint')}`, "
             f"{summary.get('rows')} rows, {summary.get('failed_rows', 0)} failed).", "",
             "| metric | value |", "| --- | --- |"]
    for k in (*metrics, "mean_token_logprob", "judge_parse_failures"):
        if k in summary:
            lines.append(f"| {k} | {_fmt(summary[k])} |")
    if summary.get("judge_model"):
        lines += ["", f"Judge: `{summary['judge_model']}` ({summary.get('judge_mode')})."]
    if per_row:
        key = per_row[0]
        scored = [r for r in data if isinstance(r.get(key), (int, float))]
        ranked = sorted(scored, key=lambda r: r[key])
        for title, chosen in (("Best", list(reversed(ranked))[:SHOWN_ROWS]), ("Worst", ranked[:SHOWN_ROWS])):
            lines += ["", f"## {title} rows by {key}", "", f"| row | question | prediction | reference | {key} |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {r['row']} | {_cut(r.get('question'))} | {_cut(r.get('prediction'))} | "
                      f"{_cut(r.get('reference'))} | {_fmt(r[key])} |" for r in chosen]
    lines += ["", f"![metric distributions and history]({png})", ""]
    return "\n".join(lines)


def _plot(out: Path, data: list[dict], per_row: list[str], history: Sequence[dict], metrics: Sequence[str],
          summary: dict) -> None:
    """One PNG: a histogram per per-row metric and, when the model has evaluations of at least two versions
    on this eval set, the first metric version over version.

    Drawn for speed (a report is a fixed cost of every evaluation): one filled step outline per histogram
    (`stairs`, not a bar per bin), at most 4 ticks an axis, no panel for a history of one version, fixed
    margins (tight_layout would draw the figure once more just to measure it)."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    key = next((m for m in metrics if any(m in (h.get("metrics") or {}) for h in history)), None)
    latest: dict[int, float] = {}
    for h in history:  # newest first: the latest evaluation of each version
        value = (h.get("metrics") or {}).get(key) if key else None
        version = h.get("version") if h.get("version") is not None else 0
        if isinstance(value, (int, float)) and version not in latest:
            latest[version] = value
    by_version = dict(sorted(latest.items()))
    show_history = len(by_version) >= 2
    panels = max(1, len(per_row) + int(show_history))
    fig = Figure(figsize=(3.6 * panels, 3.2), dpi=90)
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    for k, (ax, name) in enumerate(zip(axes, per_row)):
        values = [r[name] for r in data if isinstance(r.get(name), (int, float)) and not math.isnan(r[name])]
        counts, edges = np.histogram(values, bins=min(20, max(5, len(set(values)))))
        ax.stairs(counts, edges, fill=True, color="#4477aa")
        ax.set_title(f"{name} per row")
        ax.set_xlabel(name)
        if k == 0:
            ax.set_ylabel("rows")
        ax.xaxis.set_major_locator(MaxNLocator(4, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
    if show_history:
        ax = axes[-1]
        ax.plot([f"v{v}" for v in by_version], list(by_version.values()), "o-", color="#cc6677")
        ax.set_title(f"{key} by version")
        ax.set_ylabel(key)
        ax.yaxis.set_major_locator(MaxNLocator(4))
    elif not per_row:
        axes[0].text(0.5, 0.5, "no per-row metric and no earlier version", ha="center", va="center")
        axes[0].set_axis_off()
    fig.suptitle(f"{summary.get('model_ref')} on {summary.get('evalset') or summary.get('fingerprint')}", fontsize=10)
    left = 0.06 if panels > 1 else 0.15
    fig.subplots_adjust(left=left, right=0.98, bottom=0.17, top=0.8, wspace=0.35)
    fig.savefig(out)


def warm_up() -> None:
    """Import matplotlib (and its Agg backend) in a background thread, so that a report written later in
    this process does not wait for the import (about half a second, once)."""
    import sys
    import threading

    if "matplotlib.backends.backend_agg" in sys.modules:
        return

    def load() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # noqa: BLE001 - the report imports it again and says what is wrong
            pass

    threading.Thread(target=load, name="byzer-report-warm-up", daemon=True).start()


__all__ = ["wait_for_reports", "warm_up", "write_report"]
