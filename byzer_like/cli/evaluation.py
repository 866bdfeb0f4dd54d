"""`byzer-like eval ...`: `run` a model on an eval set (recorded), `list` stored evaluations, `compare` two
versions, `promote` a version when a condition holds (exit status 3 when it is refused)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import EvalOptions
from ..display import local_time
from ..errors import ConfigError
from .common import NOTHING_TO_DO, OK, Parents, data_file, print_row, print_table, runtime
from .flags import ModelFlags, add_model_flags, given

# the fields of the evaluation's options that `eval run` takes as flags (the model is its positional)
EVAL = ModelFlags(EvalOptions, ("metrics", "judge", "judge_mode", "choices", "reference_column", "max_new_tokens",
                                "prompt_column", "judge_prompt", "temperature", "cache", "report", "keep_deployed"))


def cmd_eval_run(args: argparse.Namespace) -> int:
    rt = runtime(args, running=False)
    data = data_file(rt, args.data, "--data") if args.data else None
    if data is None:
        raise ConfigError("byzer-like eval run needs --data <file> (the eval set)")
    where = "udf_name" if "@" not in args.model and rt.cluster_running() and rt.deployment_exists(args.model) else "model_table"
    result = rt.evaluate(data, **{where: args.model}, evalset=args.evalset or Path(args.data).stem, **given(args, EVAL))
    print_row(result.summary)
    return OK


def cmd_eval_list(args: argparse.Namespace) -> int:
    records = runtime(args, running=False).eval_list(args.model)
    metric_names = [m for m in dict.fromkeys(k for r in records for k in r["metrics"])
                    if isinstance(records[0]["metrics"].get(m), (int, float)) and m not in ("rows", "seconds")][:6]
    print_table(("eval", "model", "eval set", "rows", *metric_names, "created"),
                [(r["id"], f"{r['model']}@v{r['version']}" if r["version"] is not None else r["model"],
                  r.get("evalset") or r["fingerprint"], r["rows"],
                  *(_metric_cell(r["metrics"].get(m)) for m in metric_names), local_time(r["created_at"]))
                 for r in records])
    return OK


def cmd_eval_compare(args: argparse.Namespace) -> int:
    rows = runtime(args, running=False).eval_compare(args.a, args.b, evalset=args.on)
    print_table(("metric", args.a, args.b, "delta", "95% interval", "significant"),
                [(r["metric"], _metric_cell(r["a"]), _metric_cell(r["b"]), f"{r['delta']:+.4g}",
                  f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]", "yes" if r["significant"] else "no") for r in rows])
    return OK


def cmd_eval_promote(args: argparse.Namespace) -> int:
    rt = runtime(args, running=False)
    data = data_file(rt, args.data, "--data") if args.data else None
    tables = {args.on: data} if args.on and data is not None else None
    row = rt.promote(args.model, args.condition, evalset=args.on, tables=tables)
    print(f"{row['model']}@v{row['version']}: {row['reason']}")
    return OK if row["promoted"] else NOTHING_TO_DO


def _metric_cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def add_commands(sub: Any, parents: Parents) -> None:
    """`eval` and its actions."""
    common = parents.common
    ev = sub.add_parser("eval")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    er = esub.add_parser("run", parents=[common], help="answer an eval set with a model and measure it (recorded)")
    er.add_argument("model", help="a deployed model's name, or a registry version (m, m@v2, m@production)")
    er.add_argument("--data", required=True, help="the eval set: a .jsonl, .json, .csv or .parquet file")
    add_model_flags(er, EVAL)
    er.add_argument("--evalset", help="the eval set's name in the records (default: the file's name)")
    er.set_defaults(func=cmd_eval_run)
    el = esub.add_parser("list", parents=[common], help="stored evaluations, newest first")
    el.add_argument("model", nargs="?", help="only this model (m or m@v2)")
    el.set_defaults(func=cmd_eval_list)
    ec = esub.add_parser("compare", parents=[common], help="metric deltas of B over A with bootstrap 95%% intervals")
    ec.add_argument("a")
    ec.add_argument("b")
    ec.add_argument("--on", help="the eval set (name or fingerprint; default: B's newest)")
    ec.set_defaults(func=cmd_eval_compare)
    ep = esub.add_parser("promote", parents=[common], help="make a version production if a condition holds (exit 3: refused)")
    ep.add_argument("model", help="the registry version (m@v3)")
    ep.add_argument("--if", dest="condition", help='e.g. "exact_match >= m@v2.exact_match + 0.02"')
    ep.add_argument("--on", help="the eval set (name or fingerprint)")
    ep.add_argument("--data", help="the eval set's file, to evaluate a version that has no stored result on it")
    ep.set_defaults(func=cmd_eval_promote)
