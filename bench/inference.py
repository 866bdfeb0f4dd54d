#!/usr/bin/env python3
"""Inference benchmark: batch chat through Ray Serve vs. a plain `transformers` loop, same model, same rows.

    .venv/bin/python bench/inference.py [--rows 256] [--max-new-tokens 32] [--size tiny|small]
                                        [--replicas 1|2] [--repeats 3] [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`, size tiny = 1.5M or small = 5.5M
   parameters) inside a temporary workspace (`BYZER_LIKE_HOME`), starts an *embedded* Ray cluster
   (`ByzerLLM()`), and deploys the model on one replica with `cpus_per_worker` CPUs (default 2 on a
   2-core machine). The replica's torch thread count is probed (a Ray task with the replica's CPUs
   runs the plugin's own `init_model` and reports `torch.get_num_threads()` from a pool thread, as
   the replica calls the model) and the plain loop is given the same count.
2. Times `ByzerLLM.batch_chat(rows, llm_config={"temperature": 0, "max_new_tokens": K})` (greedy).
   Diagnostic: the same chunks through the same Serve handle one at a time (`run_batched` with
   `in_flight=1`; `batch_chat` keeps 2 chunks per replica in flight), i.e. Serve's cost without the
   overlap of two batches on the replica.
3. Times a plain in-process loop over the same rows: the tokenizer's chat template, left padding,
   batches of `max_batch_size` (the replica's, default 32) in row order, `model.generate(do_sample=False,
   max_new_tokens=K)`, cut at the stop tokens, decode; `torch.set_num_threads` = the replica's count.
   The three timings alternate `--repeats` times after one warm-up each; medians are reported.
4. With `--replicas 2`, redeploys on two replicas and times `batch_chat` again. By default each of
   the two gets half the CPUs (`--cpus-per-worker-2`, default cpus_per_worker / 2 = 1), so the total
   thread budget equals the one-replica run's and the ratio shows what the second replica buys.
5. Per-request overhead: median latency of a one-token greedy call (`max_new_tokens=1`) through
   `chat_oai` vs. the same request on the plugin in-process (`registry.load("llama")`, `init_model`,
   `plugin.batch(model, tokenizer, [request])`). Also shown: the same one-row call sent to the
   replica's `generate` method, which skips `chat`'s batcher (`serving.replica.ChatBatcher`).
6. Checks that the Serve answers equal the plain-loop answers (greedy, so they should all match).

Reading the output: `ratio` = Serve rows/s / plain rows/s on one replica (1.0 = Serve costs nothing;
the goal is >= 0.9); `ratio_seq` = the same for the one-chunk-at-a-time diagnostic. `ratio_2_vs_1` =
two-replica rows/s / one-replica rows/s. `overhead_ms_*` = one-token latencies; their difference is
what one call through Serve costs beyond the model work. CPU-seconds per run (the replica process
for Serve, this process for plain) show whether a path burns more CPU for the same rows.

Noise: the machine is small and shared. With torch's OpenMP (libgomp) at its default wait policy,
idle worker threads spin; when other processes hold the cores, that spinning can make a run several
times slower and burn 2-3x the CPU, and whether it happens depends on how many OpenMP thread teams
a process has (the replica calls the model from several pool threads, the plain loop from one), so
the figures can flip between runs. Replicas therefore run with OMP_WAIT_POLICY=PASSIVE, and so does
this process by default (`--omp-wait-policy`, set before torch is imported, inherited by the embedded
cluster's workers), so both paths compare alike; run more than once and look at the spread. No
figure is asserted.

`--json OUT` writes every figure to OUT (rows, max_new_tokens, model, params, replicas,
serve_rows_per_s, plain_rows_per_s, ratio, serve_2_rows_per_s, ratio_2_vs_1, overhead_ms_serve,
overhead_ms_direct, answers_match, machine, timestamp, and the per-run and diagnostic figures).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from _common import (Setup, add_model_args, add_replica_args, add_run_args, chat_requests, greedy_chats, parser,
                     run_in_env)
from _report import (cpu_cell, matches, median_ms, medians_of, path_header, path_row, path_rule, print_header,
                     proc_cpu_s, ratio_runs, runs_of, self_cpu_s, time_paths, timed)

UDF = "bench_chat"


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_model_args(ap, rows=256)
    add_replica_args(ap)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path (alternating)")
    ap.add_argument("--overhead-calls", type=int, default=30)
    add_run_args(ap)
    return run_in_env(ap.parse_args(argv), run)


def run(args: argparse.Namespace, work: Path) -> int:
    from byzer_like.serving import manager

    K = args.max_new_tokens
    rows, convs, cfg = greedy_chats(args.rows, K)
    b = Setup.tiny(work, args.size)
    llm = b.llm

    def serve_answers() -> list[str]:
        return [r.output for r in llm.batch_chat(convs, model=UDF, llm_config=cfg)]

    results: dict[str, Any] = {}
    try:
        # ---- one replica ---------------------------------------------------------------------------
        C = args.cpus_per_worker
        meta, threads, n_threads, plain = b.deploy_with_plain(UDF, C, args.max_batch_size)
        batch_size, pid = plain.batch_size, int(meta["replica_pid"])
        # warm-up: one batch each
        llm.batch_chat(convs[:batch_size], model=UDF, llm_config=cfg)
        plain.run(rows[:batch_size], K)

        # Three paths per repeat, in the same order every time (load from elsewhere hits all alike):
        #   serve     ByzerLLM.batch_chat (chunks of max_batch_size, 2 chunks in flight per replica)
        #   serve_seq the same chunks through the same handle one at a time (diagnostic: no overlap)
        #   plain     the plain loop (one batch after the other)
        handle = manager.get_handle(UDF)
        reqs = chat_requests(convs, cfg)

        def serve_seq_answers() -> list[str]:
            res = manager.run_batched(handle, reqs, udf_name=UDF, chunk_size=batch_size, in_flight=1, timeout_s=600)
            return [r["output"] for r in res]

        paths: dict[str, Callable[[], list[str]]] = {
            "serve": serve_answers, "serve_seq": serve_seq_answers, "plain": lambda: plain.run(rows, K),
        }
        one = time_paths(paths, args.repeats, cpu={"replica": lambda: proc_cpu_s(pid), "driver": self_cpu_s},
                         rows=len(rows))
        rps = one.rates(len(rows))
        serve_out, plain_out = one.answers["serve"], one.answers["plain"]

        # ---- per-request overhead (one token) ------------------------------------------------------------
        one_token = {**cfg, "max_new_tokens": 1}
        req = chat_requests([[{"role": "user", "content": rows[1]}]], one_token)[0]
        plugin, d_model, d_tok = b.in_process(n_threads)

        def via_chat() -> Any:
            return llm.chat_oai([{"role": "user", "content": rows[1]}], model=UDF, llm_config=one_token)

        def via_generate() -> Any:
            return manager.call(handle, "generate", [req], udf_name=UDF, timeout_s=60)

        def direct() -> Any:
            return plugin.batch(d_model, d_tok, [req])

        lat: dict[str, list[float]] = {"chat": [], "generate": [], "direct": []}
        for _ in range(3):  # warm-up
            via_chat(), via_generate(), direct()
        for _ in range(args.overhead_calls):  # interleaved, so drift hits all three alike
            lat["chat"].append(timed(via_chat)[1])
            lat["generate"].append(timed(via_generate)[1])
            lat["direct"].append(timed(direct)[1])
        assert via_chat()[0].output == direct()[0]["output"]

        results.update(
            medians_of({k: rps[k] for k in ("serve", "plain", "serve_seq")}),
            **runs_of({k: rps[k] for k in ("serve", "plain", "serve_seq")}),
            **runs_of(one.cpu_of("replica", "serve", "serve_seq"), "replica_cpu_s"),
            **runs_of(one.cpu_of("driver", "plain"), "cpu_s"),
        )
        results["answers_match"], results["answers_mismatched_rows"] = matches(serve_out, plain_out)
        results.update(
            overhead_ms_serve=median_ms(lat["chat"]),
            overhead_ms_serve_generate=median_ms(lat["generate"]),
            overhead_ms_direct=median_ms(lat["direct"]),
            overhead_ms_diff=round(median_ms(lat["chat"]) - median_ms(lat["direct"]), 3),
            threads=threads,
        )
        results["ratio"] = round(results["serve_rows_per_s"] / results["plain_rows_per_s"], 3)
        results["ratio_runs"] = ratio_runs(rps["serve"], rps["plain"])
        results["ratio_seq"] = round(results["serve_seq_rows_per_s"] / results["plain_rows_per_s"], 3)
        results["answers_match_seq"] = matches(one.answers["serve_seq"], plain_out)[0]
        del d_model, d_tok

        # ---- two replicas --------------------------------------------------------------------------------
        results["serve_2_rows_per_s"] = None
        results["ratio_2_vs_1"] = None
        C2 = args.cpus_per_worker_2 if args.cpus_per_worker_2 is not None else max(C / 2, 1.0)
        results["cpus_per_worker_2"] = C2 if args.replicas == 2 else None
        if args.replicas == 2:
            b.undeploy(UDF)
            b.deploy(UDF, C2, replicas=2, max_batch_size=args.max_batch_size)
            llm.batch_chat(convs[: 2 * batch_size], model=UDF, llm_config=cfg)  # warm-up: one batch per replica
            two = time_paths({"serve": serve_answers}, args.repeats, rows=len(rows), label="2 replicas: ")
            two_rps = {"serve_2": two.rates(len(rows))["serve"]}
            results.update(medians_of(two_rps), **runs_of(two_rps))
            results["ratio_2_vs_1"] = round(results["serve_2_rows_per_s"] / results["serve_rows_per_s"], 3)
            results["answers_match_2"] = matches(two.answers["serve"], plain_out)[0]
    finally:
        b.undeploy(UDF)

    return b.publish(results, report, args.json,
                     rows=len(rows), max_new_tokens=K, replicas=args.replicas, cpus_per_worker=C,
                     max_batch_size=batch_size, torch_threads=n_threads, repeats=args.repeats)


def report(r: dict) -> None:
    print_header(r)
    print()
    w = 42
    cells = (("cpu-s/run", 10),)
    print(path_header(w, *cells))
    print(path_rule(w, *cells))
    print(path_row("Serve batch_chat, 1 replica x %g CPU" % r["cpus_per_worker"], w, r["serve_rows_per_s"],
                   r["serve_rows_per_s_runs"], cpu_cell(r["serve_replica_cpu_s_runs"], 10)))
    print(path_row("  diagnostic: same chunks, 1 in flight", w, r["serve_seq_rows_per_s"], r["serve_seq_rows_per_s_runs"],
                   cpu_cell(r["serve_seq_replica_cpu_s_runs"], 10)))
    print(path_row("plain transformers loop, in-process", w, r["plain_rows_per_s"], r["plain_rows_per_s_runs"],
                   cpu_cell(r["plain_cpu_s_runs"], 10)))
    if r.get("serve_2_rows_per_s") is not None:
        print(path_row("Serve batch_chat, 2 replicas x %g CPU" % r["cpus_per_worker_2"], w, r["serve_2_rows_per_s"],
                       r["serve_2_rows_per_s_runs"], " " * 10))
    print()
    print(f"ratio Serve / plain (1 replica): {r['ratio']:.3f}   per run: {r['ratio_runs']}   (goal >= 0.9)")
    print(f"ratio Serve 1-in-flight / plain: {r['ratio_seq']:.3f}   (Serve's cost with no overlap of chunks)")
    if r.get("ratio_2_vs_1") is not None:
        print(f"ratio 2 replicas / 1 replica:    {r['ratio_2_vs_1']:.3f}")
    print()
    print("one-token request (max_new_tokens=1), median latency:")
    print(f"  chat_oai through Serve:            {r['overhead_ms_serve']:8.2f} ms")
    print(f"  replica.generate through Serve:    {r['overhead_ms_serve_generate']:8.2f} ms   (no chat batcher)")
    print(f"  plugin.batch in-process:           {r['overhead_ms_direct']:8.2f} ms")
    print(f"  Serve overhead per request:        {r['overhead_ms_diff']:8.2f} ms "
          f"(chat_oai - direct)")
    print()
    ok = "all match" if r["answers_match"] == r["rows"] else f"MISMATCH rows {r['answers_mismatched_rows']}"
    print(f"answers Serve == plain (greedy): {r['answers_match']}/{r['rows']} ({ok}); 1 in flight: "
          f"{r['answers_match_seq']}/{r['rows']}"
          + (f"; 2 replicas: {r['answers_match_2']}/{r['rows']}" if "answers_match_2" in r else ""))
    print(f"replica threads: {r['threads']}")


if __name__ == "__main__":
    sys.exit(main())
