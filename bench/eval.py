#!/usr/bin/env python3
"""Evaluation benchmark: `action="eval"` vs a plain loop of generate + metric over the same rows.

    .venv/bin/python bench/eval.py [--rows 256] [--max-new-tokens 32] [--size tiny|small] [--repeats 5]
                                   [--metrics exact_match,token_f1,rouge_l] [--json OUT]

What one run does, in one process:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`) in a temporary workspace, starts an embedded
   Ray cluster (`ByzerLLM()`) and deploys the model as `bench_eval` on one replica (2 CPUs, batches of 32).
2. Writes an eval set of `--rows` prompt / reference rows (`{"question": "Question i: ...", "answer": ...}`).
3. Times two paths on the same rows, `--repeats` times each, alternating which goes first:
   - **eval**: `run command as LLM.`` where action="eval" and udfName="bench_eval" and inputTable="qs" and
     metrics="..." and cache="false"` in a SQL session: the eval set read, every row answered through
     `Runtime.generate`, the metrics computed, the per-row table built, the evaluation recorded in the
     catalog and its Markdown report written (all of what a user gets; the PNG is drawn on a thread of its
     own after the result returns, so its drawing competes for the CPU with whatever path runs next);
   - **plain**: what a user would write by hand: `ByzerLLM.generate` on the same built requests (the
     same batched path), then `eval.metrics`' per-row functions and means in a Python loop; nothing kept.
   The result cache is off on both paths, so every repeat asks the model for every row.
4. Checks that both paths' predictions and metric values agree.

`ratio` = eval rows/s / plain rows/s (what the eval layer costs over the hand-written loop: the acceptance
asks for >= 0.9). `ratio_no_report` is the same with `report="false"` (the report's matplotlib figure is the
largest fixed cost on a small set; the run waits for the last one before it ends). Medians over the repeats; figures on a shared machine move by +-20%.
`--json OUT` writes every figure.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (Setup, add_model_args, add_run_args, chat_requests, conversations, make_rows, parser,  # noqa: E402
                     run_in_env)
from _report import print_header, rotated, time_paths  # noqa: E402

UDF = "bench_eval"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, raw=False)
    add_model_args(ap, rows=256)
    ap.add_argument("--repeats", type=int, default=5)  # a full garbage collection can land in any one run
    ap.add_argument("--metrics", default="exact_match,token_f1,rouge_l")
    ap.add_argument("--cpus-per-worker", type=float, default=2.0)
    ap.add_argument("--max-batch-size", type=int, default=32)
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


def run(args: Any, work: Path) -> int:
    import torch

    from byzer_like.eval import metrics as M
    from byzer_like.eval.report import wait_for_reports

    questions = make_rows(args.rows)
    answers = [q.split(": ", 1)[1].split()[-1] for q in questions]  # a one-word reference per row
    (work / "qs.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                           for q, a in zip(questions, answers)))
    b = Setup.tiny(work, args.size)
    llm = b.llm
    b.deploy(UDF, args.cpus_per_worker, max_batch_size=args.max_batch_size)
    session = b.session("load json.`qs.jsonl` as qs;")
    metrics = [M.metric(n) for n in args.metrics.split(",")]
    where = (f'action="eval" and udfName="{UDF}" and inputTable="qs" and metrics="{args.metrics}" and cache="false" '
             f'and maxNewTokens="{args.max_new_tokens}" and outputTable="per_row"')

    def eval_path(report: bool) -> tuple[list, dict]:
        r = session.sql(f'run command as LLM.`` where {where} and report="{str(report).lower()}";')[-1]
        summary = r.table.to_pylist()[0]
        return session.table("per_row").column("prediction").to_pylist(), {m.name: summary[m.name] for m in metrics}

    def plain_path() -> tuple[list, dict]:
        reqs = chat_requests(conversations(questions), {"temperature": 0.0, "max_new_tokens": args.max_new_tokens})
        preds = [a.get("output", "").strip() for a in llm.runtime.generate(UDF, reqs)]
        return preds, {m.name: round(M.mean([m.row(p, r) for p, r in zip(preds, answers)]), 6) for m in metrics}

    paths = {"eval": lambda: eval_path(True), "eval_no_report": lambda: eval_path(False), "plain": plain_path}
    t = time_paths(paths, args.repeats, rotated, warmup=1, rows=args.rows)
    reports_done = wait_for_reports(120)  # the last PNG (drawn in the background) is written
    rate = {k: args.rows / statistics.median(v) for k, v in t.secs.items()}
    outputs = t.answers
    agree = outputs["eval"][0] == outputs["plain"][0] and outputs["eval"][1] == outputs["plain"][1]
    b.publish({
        "reports_written": reports_done,
        "eval_rows_per_s": round(rate["eval"], 2), "eval_no_report_rows_per_s": round(rate["eval_no_report"], 2),
        "plain_rows_per_s": round(rate["plain"], 2), "ratio": round(rate["eval"] / rate["plain"], 3),
        "ratio_no_report": round(rate["eval_no_report"] / rate["plain"], 3),
        "per_run_s": t.secs, "metrics": outputs["eval"][1], "answers_and_metrics_agree": agree,
    }, report, args.json, rows=args.rows, max_new_tokens=args.max_new_tokens, replicas=1,
        cpus_per_worker=args.cpus_per_worker, max_batch_size=args.max_batch_size, torch_threads=torch.get_num_threads(),
        repeats=args.repeats)
    session.close()
    return 0 if agree else 1


def report(r: dict) -> None:
    print_header(r)
    print(f"action=\"eval\": {r['eval_rows_per_s']} rows/s (without the report: "
          f"{r['eval_no_report_rows_per_s']}); plain generate + metric loop: {r['plain_rows_per_s']} rows/s")
    print(f"ratio {r['ratio']} (without the report {r['ratio_no_report']}); predictions and metrics agree: "
          f"{r['answers_and_metrics_agree']}")


if __name__ == "__main__":
    sys.exit(main())
