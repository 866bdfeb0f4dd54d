#!/usr/bin/env python3
"""Batching benchmark: batch-32 vs batch-1 throughput through Ray Serve, same rows, same model.

    .venv/bin/python bench/batching.py [--rows 256] [--max-new-tokens 32] [--size tiny|small] [--batch-size 32]
                                       [--repeats 3] [--no-plain] [--concurrent-chats 8]
                                       [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`, size tiny = 1.5M or small = 5.5M
   parameters) inside a temporary workspace (`BYZER_LIKE_HOME`), starts an *embedded* Ray cluster
   (`ByzerLLM()`), probes the torch thread count a replica with `cpus_per_worker` CPUs runs with (as
   bench/inference.py does) and gives this process the same.
2. Deploys the model twice, side by side, each on one replica with `cpus_per_worker` CPUs (default 2;
   the embedded cluster has at least 4 logical CPUs): `bench_b32` with the setup option
   `max_batch_size` = `--batch-size` (default 32) and `bench_b1` with `max_batch_size` = 1. Only one of
   them works at a time; the idle one sleeps (OMP_WAIT_POLICY=PASSIVE), so both see the same machine
   and their timings can alternate within one run instead of one deployment after the other.
3. Times `ByzerLLM.batch_chat(rows, model=..., llm_config={"temperature": 0, "max_new_tokens": K})`
   (greedy) on each. `batch_chat` -> `ByzerLLM.generate` cuts the rows into chunks of the
   deployment's `max_batch_size` (its meta) and keeps 2 chunks in flight per replica; the replica's
   `generate` hands each chunk to the plugin's `batch_chat` (byzer_like/plugins/hf.py), which cuts
   again at its own `max_batch_size` (the same setup value) and runs one `model.generate` per cut.
   So with max_batch_size=1 every forward pass holds one request (two such 1-row passes may run at
   the same time on two of the replica's threads: the two chunks in flight), and with 32 a forward
   pass holds 32 rows. The plugin writes each answer's batch size into its metadata; the run counts
   them (`forward_batch_sizes_*`) and `one_row_forward_passes` says whether the batch-1 deployment
   only ever ran 1-row passes.
4. With the plain loop (default; `--no-plain` skips it): the in-process batched greedy `generate`
   loop of bench/inference.py (bench/_common.py) at batch 32 and at batch 1 on the same rows, i.e.
   what batching gains in the model alone, without Serve.
   All paths are warmed up once, then timed `--repeats` times, changing their order every repeat
   (rotations of the list, then of its reverse); medians and min..max are reported.
5. Single chats: `--concurrent-chats` `chat_oai` calls sent at once (3 rounds) to each deployment.
   The replica's `chat` queues them through its `ChatBatcher` (chats that arrive while a batch runs
   go together in the next one), whose max batch size the replica sets to min(max_batch_size,
   max_ongoing_requests); the batch sizes seen in their metadata must all be 1 on `bench_b1` (on
   `bench_b32`, whatever arrived while the previous pass ran shares the next one).
6. Checks that the answers are equal across the two settings (greedy decoding; padding in the
   batch-32 passes must not change them), and to the plain loop's.

Reading the output: `ratio` = batch-32 rows/s / batch-1 rows/s through Serve (what the
`max_batch_size` option buys on this model and machine); `ratio_plain` = the same for the plain
loop (the model's own batching gain; a Serve ratio above it comes from Serve's per-call overhead,
paid per row at batch 1 and per 32 rows at batch 32). CPU-seconds per run: the replica process
(Serve) and this process (plain). Noise: see bench/inference.py's docstring (OMP_WAIT_POLICY=PASSIVE by
default for the same reason); run more than once and look at the spread. No figure is asserted.

`--json OUT` writes every figure to OUT (rows, max_new_tokens, model, params, serve_b32_rows_per_s,
serve_b1_rows_per_s, ratio, plain_b32_rows_per_s, plain_b1_rows_per_s, ratio_plain, the per-run
figures, forward_batch_sizes_*, chat_batch_sizes_*, answers_match_*, machine, timestamp).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from _common import PlainLoop, Setup, add_model_args, add_run_args, greedy_chats, parser, run_in_env
from _report import (balanced_order, cpu_cell, log, matches, medians_of, path_header, path_row, path_rule,
                     print_header, proc_cpu_s, ratio_runs, runs_of, self_cpu_s, time_paths)

UDF_BIG = "bench_b32"
UDF_ONE = "bench_b1"
CHAT_ROUNDS = 3


def batch_sizes(counts: Counter) -> dict[str, int]:
    """How many answers came from forward passes of each batch size, by size (the JSON's keys are strings)."""
    return {str(k): v for k, v in sorted(counts.items())}


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_model_args(ap, rows=256)
    ap.add_argument("--cpus-per-worker", type=float, default=2.0, help="CPUs of each of the two replicas (default 2)")
    ap.add_argument("--batch-size", type=int, default=32, help="max_batch_size of the batched deployment (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path (order changed every repeat)")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain transformers loop at batch 32 and 1")
    ap.add_argument("--concurrent-chats", type=int, default=8, help="single chat_oai calls sent at once (0: skip)")
    add_run_args(ap)
    args = ap.parse_args(argv)
    if args.batch_size < 2:
        ap.error("--batch-size must be at least 2 (it is compared with 1)")

    return run_in_env(args, run)


def run(args: argparse.Namespace, work: Path) -> int:
    import ray

    K = args.max_new_tokens
    B = args.batch_size
    C = args.cpus_per_worker
    rows, convs, cfg = greedy_chats(args.rows, K)
    b = Setup.tiny(work, args.size)
    llm = b.llm
    cluster_cpus = ray.cluster_resources().get("CPU", 0)
    if cluster_cpus < 2 * C:
        raise SystemExit(f"two replicas of {C:g} CPUs do not fit the cluster's {cluster_cpus:g} logical CPUs; "
                         f"lower --cpus-per-worker")

    llm.setup_num_workers(1).setup_cpus_per_worker(C)  # the probe runs init_model with the replicas' sys_conf
    threads, n_threads = b.match_threads(C)

    deployed: list[str] = []
    results: dict[str, Any] = {}
    try:
        metas = {}
        for udf, mbs in ((UDF_BIG, B), (UDF_ONE, 1)):
            deployed.append(udf)
            metas[udf] = b.deploy(udf, C, max_batch_size=mbs)
        pids = {udf: int(m["replica_pid"]) for udf, m in metas.items()}
        for udf, want in ((UDF_BIG, B), (UDF_ONE, 1)):
            got = int(metas[udf].get("max_batch_size") or 0)
            if got != want:
                raise RuntimeError(f"{udf}: the replica reports max_batch_size {got}, not {want}")

        sizes: dict[str, Counter] = {UDF_BIG: Counter(), UDF_ONE: Counter()}

        def serve_path(udf: str) -> Callable[[], list[str]]:
            def answers() -> list[str]:
                out = llm.batch_chat(convs, model=udf, llm_config=cfg)
                sizes[udf].update(int(r.metadata.get("batch_size", 0)) for r in out)
                return [r.output for r in out]
            return answers

        paths: dict[str, Callable[[], list[str]]] = {"serve_b32": serve_path(UDF_BIG), "serve_b1": serve_path(UDF_ONE)}
        plains: dict[str, PlainLoop] = {}
        if not args.no_plain:
            plains = {"plain_b32": PlainLoop(str(b.model_dir), B), "plain_b1": PlainLoop(str(b.model_dir), 1)}
            for name, loop in plains.items():
                paths[name] = (lambda loop=loop: loop.run(rows, K))

        # warm-up: one batch of the big size each (the batch-1 paths run it as B one-row passes)
        for udf in (UDF_BIG, UDF_ONE):
            llm.batch_chat(convs[:B], model=udf, llm_config=cfg)
        for loop in plains.values():
            loop.run(rows[:B], K)

        cpu = {UDF_BIG: lambda: proc_cpu_s(pids[UDF_BIG]), UDF_ONE: lambda: proc_cpu_s(pids[UDF_ONE]), "driver": self_cpu_s}
        t = time_paths(paths, args.repeats, balanced_order, cpu=cpu, rows=len(rows))
        rps = t.rates(len(rows))
        med = {k: statistics.median(v) for k, v in rps.items()}
        answers = t.answers

        # ---- single chats sent at once: what the chat batcher makes of them ----------------------------------
        chat_sizes: dict[str, Counter] = {UDF_BIG: Counter(), UDF_ONE: Counter()}
        chat_mismatch: dict[str, int] = {UDF_BIG: 0, UDF_ONE: 0}
        n_chat = min(args.concurrent_chats, len(rows))
        if n_chat > 0:
            with ThreadPoolExecutor(n_chat) as pool:
                for udf in (UDF_BIG, UDF_ONE):
                    for _ in range(CHAT_ROUNDS):
                        got = list(pool.map(lambda i, udf=udf: llm.chat_oai(convs[i], model=udf, llm_config=cfg)[0],
                                            range(n_chat)))
                        chat_sizes[udf].update(int(r.metadata.get("batch_size", 0)) for r in got)
                        chat_mismatch[udf] += sum(r.output != answers["serve_b1"][i] for i, r in enumerate(got))
            log(f"concurrent chats: batch sizes {UDF_BIG} {dict(chat_sizes[UDF_BIG])}, {UDF_ONE} {dict(chat_sizes[UDF_ONE])}")

        results.update(
            batch_size=B,
            **medians_of({k: rps[k] for k in ("serve_b32", "serve_b1")}),
            ratio=round(med["serve_b32"] / med["serve_b1"], 3),
            ratio_runs=ratio_runs(rps["serve_b32"], rps["serve_b1"]),
            **runs_of({k: rps[k] for k in ("serve_b32", "serve_b1")}),
            **runs_of({"serve_b32": t.cpu[UDF_BIG]["serve_b32"], "serve_b1": t.cpu[UDF_ONE]["serve_b1"]}, "replica_cpu_s"),
            forward_batch_sizes_b32=batch_sizes(sizes[UDF_BIG]),
            forward_batch_sizes_b1=batch_sizes(sizes[UDF_ONE]),
            one_row_forward_passes=set(sizes[UDF_ONE]) == {1},
            chat_concurrent=n_chat,
            chat_batch_sizes_b32=batch_sizes(chat_sizes[UDF_BIG]),
            chat_batch_sizes_b1=batch_sizes(chat_sizes[UDF_ONE]),
            chat_one_row_b1=(set(chat_sizes[UDF_ONE]) <= {1}) if n_chat else None,
            chat_answers_mismatch_b32=chat_mismatch[UDF_BIG],
            chat_answers_mismatch_b1=chat_mismatch[UDF_ONE],
            orders=t.orders,
            threads=threads,
            deployments={udf: {"max_batch_size": m.get("max_batch_size"), "replica_pid": m.get("replica_pid")}
                         for udf, m in metas.items()},
        )
        results["answers_match"], results["answers_mismatched_rows"] = matches(answers["serve_b32"], answers["serve_b1"])
        results["plain_b32_rows_per_s"] = results["plain_b1_rows_per_s"] = results["ratio_plain"] = None
        if plains:
            results.update(
                **medians_of({k: rps[k] for k in ("plain_b32", "plain_b1")}),
                ratio_plain=round(med["plain_b32"] / med["plain_b1"], 3),
                **runs_of({k: rps[k] for k in ("plain_b32", "plain_b1")}),
                **runs_of(t.cpu_of("driver", "plain_b32", "plain_b1"), "cpu_s"),
                ratio_serve_plain_b32=round(med["serve_b32"] / med["plain_b32"], 3),
                ratio_serve_plain_b1=round(med["serve_b1"] / med["plain_b1"], 3),
            )
            for key, (x, y) in {"plain_b1_b32": ("plain_b1", "plain_b32"), "serve_plain_b32": ("serve_b32", "plain_b32"),
                                "serve_plain_b1": ("serve_b1", "plain_b1")}.items():
                results[f"answers_match_{key}"], results[f"answers_mismatched_rows_{key}"] = matches(answers[x], answers[y])
    finally:
        b.undeploy(*deployed)

    return b.publish(results, report, args.json,
                     rows=len(rows), max_new_tokens=K, replicas=1, cpus_per_worker=C, max_batch_size=B,
                     torch_threads=n_threads, repeats=args.repeats)


def report(r: dict) -> None:
    print_header(r, orders=True)
    print()
    w = 46
    B = r["batch_size"]
    cells = (("cpu-s/run", 10),)
    print(path_header(w, *cells))
    print(path_rule(w, *cells))
    rows = [("serve_b32", f"Serve batch_chat, max_batch_size {B}", "serve_b32_replica_cpu_s_runs"),
            ("serve_b1", "Serve batch_chat, max_batch_size 1", "serve_b1_replica_cpu_s_runs")]
    if r.get("plain_b32_rows_per_s") is not None:
        rows += [("plain_b32", f"plain transformers loop, batch {B}", "plain_b32_cpu_s_runs"),
                 ("plain_b1", "plain transformers loop, batch 1", "plain_b1_cpu_s_runs")]
    for key, label, cpu_key in rows:
        print(path_row(label, w, r[f"{key}_rows_per_s"], r[f"{key}_rows_per_s_runs"], cpu_cell(r[cpu_key], 10)))
    print()
    print(f"ratio batch {B} / batch 1 through Serve: {r['ratio']:.3f}   per run: {r['ratio_runs']}")
    if r.get("ratio_plain") is not None:
        print(f"ratio batch {B} / batch 1, plain loop:   {r['ratio_plain']:.3f}   (the model's own batching gain)")
        print(f"ratio Serve / plain at batch {B}: {r['ratio_serve_plain_b32']:.3f};  at batch 1: {r['ratio_serve_plain_b1']:.3f}")
    print()
    print(f"forward-pass batch sizes (answers per size), batch_chat: max_batch_size {B}: {r['forward_batch_sizes_b32']}; "
          f"max_batch_size 1: {r['forward_batch_sizes_b1']} "
          f"({'only 1-row passes' if r['one_row_forward_passes'] else 'NOT only 1-row passes'})")
    if r["chat_concurrent"]:
        print(f"{r['chat_concurrent']} concurrent chat_oai calls x {CHAT_ROUNDS} rounds, batch sizes: max_batch_size {B}: "
              f"{r['chat_batch_sizes_b32']}; max_batch_size 1: {r['chat_batch_sizes_b1']} "
              f"({'only 1-row passes' if r['chat_one_row_b1'] else 'NOT only 1-row passes'})")
    n = r["rows"]
    ok = "all match" if r["answers_match"] == n else f"MISMATCH rows {r['answers_mismatched_rows']}"
    line = f"answers (greedy): batch {B} == batch 1 through Serve {r['answers_match']}/{n} ({ok})"
    if "answers_match_plain_b1_b32" in r:
        line += (f"; plain batch {B} == plain batch 1 {r['answers_match_plain_b1_b32']}/{n}; Serve == plain: "
                 f"batch {B} {r['answers_match_serve_plain_b32']}/{n}, batch 1 {r['answers_match_serve_plain_b1']}/{n}")
    if r["chat_concurrent"]:
        line += (f"; concurrent chats differing from batch 1: {r['chat_answers_mismatch_b32']} (b{B}), "
                 f"{r['chat_answers_mismatch_b1']} (b1)")
    print(line)
    print(f"replica threads: {r['threads']}")


if __name__ == "__main__":
    sys.exit(main())
