#!/usr/bin/env python3
"""Duplicate rows benchmark: a SQL `select` over a table with repeated questions, with and without dedupe.

    .venv/bin/python bench/dedupe.py [--rows 512] [--duplicates 0.4] [--max-new-tokens 32] [--size tiny|small]
                                     [--repeats 3] [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process, on the same rows and the same model:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`, as bench/sql_inference.py) in a temporary
   workspace, starts an embedded Ray cluster and deploys the model on one replica of `--cpus-per-worker`
   CPUs (default 2).
2. Writes a table of `--rows` rows whose questions repeat: a fraction `--duplicates` (default 0.4) of
   the rows ask a question that an earlier row of the table asked too (the repeats are spread through
   the table at random, seeded; each distinct question has its own length).
3. Times the same statement twice per repeat, alternating which goes first:

       set llm_dedupe = "true" | "false";
       select id, bench_dedupe(llm_param(map("instruction", q, "temperature", 0, "max_new_tokens", K))) as r
           from questions as answered;

   With dedupe (the default) each distinct greedy request goes to the model once and its answer is
   given to every row that asked it; without it every row is sent. The replica's `requests_generated`
   counter (its metadata) says how many requests reached the model in each run.
4. Checks that the two selects give the same answer on every row.

Reading the output: `ratio` = rows/s with dedupe / rows/s without (the goal is >= 1.5 at 40 %
duplicates; the ideal is 1 / (1 - duplicates) = 1.67, less the SQL work every row still costs).
Noise: see bench/inference.py's docstring; no figure is asserted.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from _common import Setup, add_run_args, make_rows, parser, run_in_env
from _report import (Own, alternated, log, medians_of, path_header, path_row, print_header, ratio_runs, runs_of,
                     time_paths, timed)

UDF = "bench_dedupe"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--duplicates", type=float, default=0.4, help="fraction of rows that repeat an earlier row")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--cpus-per-worker", type=float, default=2.0)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


def questions(rows: int, duplicates: float, seed: int) -> list[str]:
    """`rows` questions of which a fraction `duplicates` repeat an earlier one, in a seeded random order."""
    distinct = rows - round(rows * duplicates)
    base = make_rows(distinct)
    rng = random.Random(seed)
    table = base + [rng.choice(base) for _ in range(rows - distinct)]
    rng.shuffle(table)
    return table


def run(args: argparse.Namespace, work: Path) -> int:
    K = args.max_new_tokens
    qs = questions(args.rows, args.duplicates, args.seed)
    n_distinct = len(set(qs))
    (work / "questions.jsonl").write_text("".join(json.dumps({"id": i, "q": q}) + "\n" for i, q in enumerate(qs)))
    b = Setup.tiny(work, args.size)
    log(f"{len(qs)} rows, {n_distinct} distinct questions")
    llm = b.llm
    b.deploy(UDF, args.cpus_per_worker, max_batch_size=args.max_batch_size)
    session = b.session("load json.`questions.jsonl` as questions;")
    stmt = (f'select id, {UDF}(llm_param(map("instruction", q, "temperature", 0, "max_new_tokens", {K}))) as r '
            f"from questions order by id as answered;")

    def generated() -> int:
        return int(llm.get_meta(UDF, refresh=True)["requests_generated"])

    def path(dedupe: bool) -> Own:
        """The select with llm_dedupe on or off, timed alone: (answers, requests that reached the model, its message)."""
        session.sql(f'set llm_dedupe = "{str(dedupe).lower()}";')
        before = generated()
        results, secs = timed(lambda: session.sql(stmt))
        table = results[-1].table
        answers = [json.loads(r)["output"] for r in table.column("r").to_pylist()]
        return Own((answers, generated() - before, results[-1].message), secs)

    results: dict[str, Any] = {}
    try:
        session.sql(f"select {UDF}(llm_param(map('instruction', 'warm up', 'temperature', 0, "
                    f"'max_new_tokens', {K}))) as r as warm;")
        t = time_paths({"dedupe": lambda: path(True), "all_rows": lambda: path(False)}, args.repeats, alternated,
                       rows=len(qs))
        rps = t.rates(len(qs))
        (answers, sent, message), (all_answers, all_sent, _) = t.answers["dedupe"], t.answers["all_rows"]
        results.update(
            duplicates=args.duplicates, distinct_questions=n_distinct,
            **medians_of(rps), **runs_of(rps),
            ratio_runs=ratio_runs(rps["dedupe"], rps["all_rows"]),
            requests_to_model_dedupe=sent, requests_to_model_all_rows=all_sent,
            select_message=message, answers_match=sum(a == b for a, b in zip(answers, all_answers)),
        )
        results["ratio"] = round(results["dedupe_rows_per_s"] / results["all_rows_rows_per_s"], 3)
    finally:
        b.undeploy(UDF)

    return b.publish(results, report, args.json,
                     rows=len(qs), max_new_tokens=K, replicas=1, cpus_per_worker=args.cpus_per_worker,
                     max_batch_size=args.max_batch_size, torch_threads=int(args.cpus_per_worker), repeats=args.repeats)


def report(r: dict) -> None:
    print_header(r)
    print()
    print(f"{r['rows']} rows, {r['distinct_questions']} distinct questions ({r['duplicates']:.0%} duplicate rows)")
    print(path_header(34, ("requests to model", 18)))
    for key, on in (("dedupe", "true"), ("all_rows", "false")):
        print(path_row(f"select, llm_dedupe={on}", 34, r[f"{key}_rows_per_s"], r[f"{key}_rows_per_s_runs"],
                       f"{r[f'requests_to_model_{key}']:>18}"))
    print()
    print(f"ratio dedupe / all rows: {r['ratio']:.3f}   per run: {r['ratio_runs']}   (goal >= 1.5)")
    print(f"select message: {r['select_message']}")
    print(f"answers equal: {r['answers_match']}/{r['rows']}")


if __name__ == "__main__":
    sys.exit(main())
