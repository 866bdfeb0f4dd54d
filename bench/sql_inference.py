#!/usr/bin/env python3
"""SQL inference benchmark: a model called from a SQL `select` vs. `batch_chat` vs. a plain `transformers` loop.

    .venv/bin/python bench/sql_inference.py [--rows 512] [--max-new-tokens 32] [--size tiny|small]
                                            [--replicas 1|2] [--repeats 3] [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process, on the same rows and the same model:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`, size tiny = 1.5M or small = 5.5M
   parameters) inside a temporary workspace (`BYZER_LIKE_HOME`), writes the rows there as
   `rows.jsonl` (`{"id": i, "q": "Question i: ..."}`), starts an *embedded* Ray cluster (`ByzerLLM()`)
   and deploys the model on one replica with `cpus_per_worker` CPUs (default 2), as
   bench/inference.py does. The replica's torch thread count is probed the same way, and the plain
   loop is given the same count.
2. SQL path: a `byzer_like.engine.Session` on that client runs

       load json.`rows.jsonl` as questions;
       select id, bench_chat(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", K)))
           as r from questions as answered;

   Each statement is timed on its own; rows/s is rows / the select's time (parsing, transpiling,
   DuckDB, the model UDF and its JSON in and out; the load is reported separately). Answers are
   `json.loads(r)["output"]`, matched to rows by `id`.
3. batch_chat path: `ByzerLLM.batch_chat` over the same instructions with the same config
   (`{"temperature": 0.0, "max_new_tokens": K}`).
4. Plain path: the in-process batched greedy `generate` loop of bench/inference.py (`bench/_common.py`).
   Each path is warmed up once (one batch; the SQL warm-up also registers the model as a DuckDB
   function), then the three are timed `--repeats` times, changing their order every repeat (the
   rotations of sql > batch_chat > plain, then those of the reverse order: with `--repeats 6` every
   path runs in every position and after every other path equally often); medians and min..max
   are reported.
5. Where the select's time goes: `ByzerLLM.generate` (the batch path under both `batch_chat` and the
   SQL UDF) is wrapped on this client to count the UDF's calls, the rows per call and the seconds
   spent inside it; the rest of the select is driver-side SQL work. Also timed in-process, with no
   model: the same select with the model call removed (parse + transpile + DuckDB + `llm_param`),
   the UDF's request parsing (`functions.build_requests`) and result JSON (`functions.result_json`)
   for all rows, and `batch_chat`'s own request building (`config.chat_request`).
6. With `--replicas 2`, redeploys on two replicas (each `--cpus-per-worker-2`, default half the
   one-replica CPUs, so the thread budget stays the same) and times the SQL and batch_chat paths again.
7. Checks that the SQL answers equal the batch_chat answers and the plain-loop answers (greedy, so
   all should match) and prints the match counts.

Reading the output: `SQL / plain` is the goal figure (>= 0.9 on one replica: the SQL front end plus
Serve cost at most 10 % of a hand-written loop); `SQL / batch_chat` isolates what the SQL layer
adds on top of the client (1.0 = nothing). Per-run ratios pair the paths of the same repeat, so
they are less noisy than the medians' ratio. `in generate` vs `outside generate` splits the
select's median time: `outside` is what the SQL layer costs per select; `in generate` runs the
same code as batch_chat's, so a gap there is noise or the model UDF's call pattern. The UDF is
called once per DuckDB vector (up to 2048 rows; fewer after a filter), one call after the other
(the session runs model selects with `SET threads=1`): `rows per call` shows it, and with
`--rows` above 2048 the select has several calls. CPU-seconds per run: the replica
process (Serve paths) and this process (the driver; for the plain path, the model itself). Noise:
see bench/inference.py's docstring (OMP_WAIT_POLICY=PASSIVE by default for the same reason); run
more than once and look at the spread. No figure is asserted.

`--json OUT` writes every figure to OUT (rows, max_new_tokens, model, params, replicas,
sql_rows_per_s, batch_chat_rows_per_s, plain_rows_per_s, ratio_sql_plain, ratio_sql_batch_chat,
sql_2_rows_per_s, batch_chat_2_rows_per_s, the per-run figures, the breakdown, answers_match_*,
machine, timestamp).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from _common import (PlainLoop, add_run_args, finish, loadavg, log, make_rows, median_ms, print_header,
                     probe_threads, proc_cpu_s, run_in_env, self_cpu_s, spread, timed, write_json)

UDF = "bench_chat"


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--replicas", type=int, choices=(1, 2), default=1, help="2: also measure two replicas")
    ap.add_argument("--cpus-per-worker", type=float, default=2.0, help="CPUs of the one replica (default 2)")
    ap.add_argument("--cpus-per-worker-2", type=float, default=None,
                    help="CPUs of each of two replicas (default: cpus-per-worker / 2)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs of each path (order changed every repeat; 6 balances it fully)")
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


def write_jsonl(path: Path, rows: list[str]) -> None:
    path.write_text("".join(json.dumps({"id": i, "q": q}) + "\n" for i, q in enumerate(rows)), encoding="utf-8")


def balanced_order(names: list[str], rep: int) -> list[str]:
    """The order of the paths in repeat `rep`: the rotations of `names`, then those of its reverse, so
    that over 2 * len(names) repeats every path runs in every position and after every other path
    equally often (a path that always follows the same one would inherit its after-effects)."""
    k = len(names)
    base = names if (rep // k) % 2 == 0 else names[::-1]
    return base[rep % k:] + base[: rep % k]


class GenerateRecorder:
    """Wraps `llm.generate` on one client (the batch path under `batch_chat` and the SQL UDF):
    records (rows, seconds) per call, so a select's time splits into model calls and the rest."""

    def __init__(self, llm: Any):
        self.calls: list[tuple[int, float]] = []
        inner = llm.generate

        def generate(requests: Any, model: str | None = None, **kwargs: Any) -> list[dict]:
            out, secs = timed(lambda: inner(requests, model=model, **kwargs))
            self.calls.append((len(requests), secs))
            return out

        llm.generate = generate

    def take(self) -> list[tuple[int, float]]:
        calls, self.calls = self.calls, []
        return calls


def run(args: argparse.Namespace, work: Path) -> int:
    import ray
    import torch
    import transformers

    from byzer_like import ByzerLLM
    from byzer_like.config import chat_request
    from byzer_like.engine import Session
    from byzer_like.engine import functions as fx
    from byzer_like.tiny import make_tiny

    transformers.utils.logging.disable_progress_bar()

    load_start = loadavg()
    K = args.max_new_tokens
    cfg = {"temperature": 0.0, "max_new_tokens": K}
    rows = make_rows(args.rows)
    convs = [[{"role": "user", "content": r}] for r in rows]
    write_jsonl(work / "rows.jsonl", rows)
    for n in (1, 2):  # warm-up rows: one batch per replica
        write_jsonl(work / f"warm{n}.jsonl", rows[: n * args.max_batch_size])
    param_sql = f'llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", {K}))'
    load_stmt = "load json.`rows.jsonl` as questions;"
    select_stmt = f"select id, {UDF}({param_sql}) as r from questions as answered;"
    warm_stmt = f"load json.`warm{{n}}.jsonl` as warm; select id, {UDF}({param_sql}) as r from warm as warm_answered;"
    no_model_stmt = f"select id, {param_sql} as p from questions as params;"

    model_dir = work / "models" / f"bench-llama-{args.size}"
    built = make_tiny("llama", model_dir, size=args.size, seed=0)
    log(f"built {built['params']:,}-parameter llama ({args.size}) in {built['seconds']} s")

    llm = ByzerLLM()
    conn = llm.connect()
    log(f"ray: {conn['mode']} cluster, {ray.cluster_resources().get('CPU', 0):g} logical CPUs")
    session = Session(llm, progress=False)
    recorder = GenerateRecorder(llm)

    def deploy(replicas: int, cpus: float) -> dict:
        llm.setup_num_workers(replicas).setup_cpus_per_worker(cpus).setup("max_batch_size", args.max_batch_size)
        _, secs = timed(lambda: llm.deploy(str(model_dir), "llama", UDF, {}))
        meta = llm.get_meta(UDF)
        log(f"deployed {replicas} replica(s) x {cpus:g} CPU in {secs:.1f} s")
        return meta

    def undeploy() -> None:
        if llm.is_model_exist(UDF):
            llm.undeploy(UDF)

    def sql_outputs(table: Any) -> list[str | None]:
        out: list[str | None] = [None] * len(rows)
        for i, r in zip(table.column("id").to_pylist(), table.column("r").to_pylist()):
            out[int(i)] = None if r is None else json.loads(r)["output"]
        return out

    # Every path returns its answers; the SQL path also leaves its load time and UDF calls in `extra`.
    extra: dict[str, Any] = {}

    def sql_path() -> list[str | None]:
        _, extra["load_s"] = timed(lambda: session.sql(load_stmt))
        recorder.take()
        res, extra["select_s"] = timed(lambda: session.sql(select_stmt))
        extra["calls"] = recorder.take()
        return sql_outputs(res[-1].table)

    def batch_chat_path() -> list[str | None]:
        return [r.output for r in llm.batch_chat(convs, model=UDF, llm_config=cfg)]

    def timed_paths(paths: dict[str, Callable[[], list]], pid: int, label: str) -> dict[str, Any]:
        """Time each path `repeats` times, rotating the order; per path: seconds, replica / driver CPU."""
        names = list(paths)
        got: dict[str, Any] = {k: {"secs": [], "replica_cpu": [], "driver_cpu": [], "load_s": [], "select_s": [],
                                   "in_generate_s": [], "udf_calls": [], "answers": None} for k in names}
        orders = []
        for rep in range(args.repeats):
            order = balanced_order(names, rep)
            orders.append(order)
            for name in order:
                r0, d0 = proc_cpu_s(pid), self_cpu_s()
                recorder.take()
                answers, t = timed(paths[name])
                r1, d1 = proc_cpu_s(pid), self_cpu_s()
                g = got[name]
                if name == "sql":
                    t = extra["select_s"]  # the select alone; the load is kept apart
                    g["load_s"].append(extra["load_s"])
                    g["in_generate_s"].append(sum(s for _, s in extra["calls"]))
                    g["udf_calls"].append([n for n, _ in extra["calls"]])
                elif name == "batch_chat":
                    g["in_generate_s"].append(sum(s for _, s in recorder.take()))
                g["secs"].append(t)
                g["answers"] = answers
                if r0 is not None and r1 is not None and name != "plain":
                    g["replica_cpu"].append(r1 - r0)
                g["driver_cpu"].append(d1 - d0)
            log(f"{label} repeat {rep + 1} ({' > '.join(order)}): "
                + ", ".join(f"{k} {len(rows) / got[k]['secs'][-1]:,.1f} rows/s" for k in names))
        for g in got.values():
            g["rps"] = [len(rows) / t for t in g["secs"]]
            g["median"] = statistics.median(g["rps"])
        got["orders"] = orders
        return got

    results: dict[str, Any] = {}
    try:
        # ---- one replica ---------------------------------------------------------------------------
        C = args.cpus_per_worker
        meta = deploy(1, C)
        batch_size = int(meta.get("max_batch_size") or args.max_batch_size)
        pid = int(meta["replica_pid"])
        threads = probe_threads(str(model_dir), llm.sys_conf, C)
        n_threads = int(threads["torch_threads_pool_thread"])
        torch.set_num_threads(n_threads)
        log(f"replica threads: {threads}; plain loop uses torch.set_num_threads({n_threads})")

        plain = PlainLoop(str(model_dir), batch_size)
        # warm-up: one batch each (the SQL one also registers the model function and loads DuckDB's json reader)
        session.sql(warm_stmt.format(n=1))
        llm.batch_chat(convs[:batch_size], model=UDF, llm_config=cfg)
        plain.run(rows[:batch_size], K)

        one = timed_paths({"sql": sql_path, "batch_chat": batch_chat_path, "plain": lambda: plain.run(rows, K)}, pid,
                          "1 replica")
        sql_out, bc_out, plain_out = one["sql"]["answers"], one["batch_chat"]["answers"], one["plain"]["answers"]

        def match(a: list, b: list) -> tuple[int, list[int]]:
            bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
            return len(rows) - len(bad), bad[:20]

        # ---- where the select's time goes, without the model (in-process, medians of 5) ------------------
        params = [p for p in session.sql(no_model_stmt)[-1].table.column("p").to_pylist()]
        reqs, _, _ = fx.build_requests(params)
        fake = [{"output": a or "", "metadata": {"input_tokens": 10, "generated_tokens": K}} for a in sql_out]
        micro = {
            "select_without_model": lambda: session.sql(no_model_stmt),
            "build_requests": lambda: fx.build_requests(params),
            "result_json": lambda: [fx.result_json(q, r) for q, r in zip(reqs, fake)],
            "chat_request_batch_chat": lambda: [chat_request(c, cfg).model_dump() for c in convs],
        }
        micro_ms = {k: median_ms([timed(fn)[1] for _ in range(5)]) for k, fn in micro.items()}

        sql_sel = one["sql"]["secs"]
        sql_gen = one["sql"]["in_generate_s"]
        results.update(
            sql_rows_per_s=round(one["sql"]["median"], 2),
            batch_chat_rows_per_s=round(one["batch_chat"]["median"], 2),
            plain_rows_per_s=round(one["plain"]["median"], 2),
            sql_rows_per_s_runs=[round(x, 2) for x in one["sql"]["rps"]],
            batch_chat_rows_per_s_runs=[round(x, 2) for x in one["batch_chat"]["rps"]],
            plain_rows_per_s_runs=[round(x, 2) for x in one["plain"]["rps"]],
            ratio_sql_plain_runs=[round(a / b, 3) for a, b in zip(one["sql"]["rps"], one["plain"]["rps"])],
            ratio_sql_batch_chat_runs=[round(a / b, 3) for a, b in zip(one["sql"]["rps"], one["batch_chat"]["rps"])],
            sql_replica_cpu_s_runs=[round(x, 2) for x in one["sql"]["replica_cpu"]],
            batch_chat_replica_cpu_s_runs=[round(x, 2) for x in one["batch_chat"]["replica_cpu"]],
            sql_driver_cpu_s_runs=[round(x, 2) for x in one["sql"]["driver_cpu"]],
            batch_chat_driver_cpu_s_runs=[round(x, 2) for x in one["batch_chat"]["driver_cpu"]],
            plain_cpu_s_runs=[round(x, 2) for x in one["plain"]["driver_cpu"]],
            sql_load_ms=median_ms(one["sql"]["load_s"]),
            sql_select_ms=median_ms(sql_sel),
            sql_in_generate_ms=median_ms(sql_gen),
            sql_outside_generate_ms=median_ms([a - b for a, b in zip(sql_sel, sql_gen)]),
            batch_chat_ms=median_ms(one["batch_chat"]["secs"]),
            batch_chat_in_generate_ms=median_ms(one["batch_chat"]["in_generate_s"]),
            batch_chat_outside_generate_ms=median_ms([a - b for a, b in zip(one["batch_chat"]["secs"],
                                                                             one["batch_chat"]["in_generate_s"])]),
            sql_load_ms_runs=[round(x * 1000, 2) for x in one["sql"]["load_s"]],
            sql_in_generate_ms_runs=[round(x * 1000, 2) for x in sql_gen],
            sql_outside_generate_ms_runs=[round((a - b) * 1000, 2) for a, b in zip(sql_sel, sql_gen)],
            batch_chat_in_generate_ms_runs=[round(x * 1000, 2) for x in one["batch_chat"]["in_generate_s"]],
            sql_udf_rows_per_call=one["sql"]["udf_calls"][-1],
            sql_udf_calls=len(one["sql"]["udf_calls"][-1]),
            micro_ms=micro_ms,
            orders=one["orders"],
            threads=threads,
        )
        results["ratio_sql_plain"] = round(results["sql_rows_per_s"] / results["plain_rows_per_s"], 3)
        results["ratio_sql_batch_chat"] = round(results["sql_rows_per_s"] / results["batch_chat_rows_per_s"], 3)
        results["ratio_batch_chat_plain"] = round(results["batch_chat_rows_per_s"] / results["plain_rows_per_s"], 3)
        for key, (a, b) in {"sql_batch_chat": (sql_out, bc_out), "sql_plain": (sql_out, plain_out),
                            "batch_chat_plain": (bc_out, plain_out)}.items():
            results[f"answers_match_{key}"], results[f"answers_mismatched_rows_{key}"] = match(a, b)

        # ---- two replicas --------------------------------------------------------------------------------
        results["sql_2_rows_per_s"] = results["batch_chat_2_rows_per_s"] = results["ratio_sql_2_vs_1"] = None
        C2 = args.cpus_per_worker_2 if args.cpus_per_worker_2 is not None else max(C / 2, 1.0)
        results["cpus_per_worker_2"] = C2 if args.replicas == 2 else None
        if args.replicas == 2:
            undeploy()
            meta2 = deploy(2, C2)
            session.sql(warm_stmt.format(n=2))  # warm-up: one batch per replica
            llm.batch_chat(convs[: 2 * batch_size], model=UDF, llm_config=cfg)
            two = timed_paths({"sql": sql_path, "batch_chat": batch_chat_path}, int(meta2["replica_pid"]), "2 replicas")
            results.update(
                sql_2_rows_per_s=round(two["sql"]["median"], 2),
                batch_chat_2_rows_per_s=round(two["batch_chat"]["median"], 2),
                sql_2_rows_per_s_runs=[round(x, 2) for x in two["sql"]["rps"]],
                batch_chat_2_rows_per_s_runs=[round(x, 2) for x in two["batch_chat"]["rps"]],
                sql_2_udf_rows_per_call=two["sql"]["udf_calls"][-1],
                answers_match_2_sql_plain=match(two["sql"]["answers"], plain_out)[0],
                answers_match_2_batch_chat_plain=match(two["batch_chat"]["answers"], plain_out)[0],
            )
            results["ratio_sql_2_vs_1"] = round(results["sql_2_rows_per_s"] / results["sql_rows_per_s"], 3)
            results["ratio_sql_batch_chat_2"] = round(results["sql_2_rows_per_s"] / results["batch_chat_2_rows_per_s"], 3)
    finally:
        try:
            session.close()
            undeploy()
        except Exception as e:  # noqa: BLE001 - shutting down anyway
            log(f"clean-up failed: {e}")

    results = finish(results, rows=len(rows), max_new_tokens=K, size=args.size, params=built["params"],
                     replicas=args.replicas, cpus_per_worker=C, max_batch_size=batch_size, torch_threads=n_threads,
                     repeats=args.repeats, load_start=load_start)
    report(results)
    write_json(args.json, results)
    return 0


def report(r: dict) -> None:
    print_header(r)
    print(f"order of the paths per repeat: {' | '.join(' > '.join(o) for o in r['orders'])}")
    print()
    w = 42
    print(f"{'path':<{w}} {'rows/s':>10} {'runs (min..max)':>20} {'cpu-s/run':>10} {'driver cpu-s':>13}")
    print("-" * (w + 58))
    cpu = lambda xs: f"{statistics.median(xs):.2f}" if xs else "n/a"  # noqa: E731
    print(f"{'SQL select, 1 replica x %g CPU' % r['cpus_per_worker']:<{w}} {r['sql_rows_per_s']:>10,.1f} "
          f"{spread(r['sql_rows_per_s_runs']):>20} {cpu(r['sql_replica_cpu_s_runs']):>10} {cpu(r['sql_driver_cpu_s_runs']):>13}")
    print(f"{'batch_chat, 1 replica x %g CPU' % r['cpus_per_worker']:<{w}} {r['batch_chat_rows_per_s']:>10,.1f} "
          f"{spread(r['batch_chat_rows_per_s_runs']):>20} {cpu(r['batch_chat_replica_cpu_s_runs']):>10} "
          f"{cpu(r['batch_chat_driver_cpu_s_runs']):>13}")
    print(f"{'plain transformers loop, in-process':<{w}} {r['plain_rows_per_s']:>10,.1f} "
          f"{spread(r['plain_rows_per_s_runs']):>20} {cpu(r['plain_cpu_s_runs']):>10} {'(same)':>13}")
    if r.get("sql_2_rows_per_s") is not None:
        print(f"{'SQL select, 2 replicas x %g CPU' % r['cpus_per_worker_2']:<{w}} {r['sql_2_rows_per_s']:>10,.1f} "
              f"{spread(r['sql_2_rows_per_s_runs']):>20}")
        print(f"{'batch_chat, 2 replicas x %g CPU' % r['cpus_per_worker_2']:<{w}} {r['batch_chat_2_rows_per_s']:>10,.1f} "
              f"{spread(r['batch_chat_2_rows_per_s_runs']):>20}")
    print()
    print(f"ratio SQL / plain (1 replica):      {r['ratio_sql_plain']:.3f}   per run: {r['ratio_sql_plain_runs']}   (goal >= 0.9)")
    print(f"ratio SQL / batch_chat:             {r['ratio_sql_batch_chat']:.3f}   per run: {r['ratio_sql_batch_chat_runs']}")
    print(f"ratio batch_chat / plain:           {r['ratio_batch_chat_plain']:.3f}")
    if r.get("ratio_sql_2_vs_1") is not None:
        print(f"ratio SQL 2 replicas / 1 replica:   {r['ratio_sql_2_vs_1']:.3f}   "
              f"(SQL / batch_chat on 2 replicas: {r['ratio_sql_batch_chat_2']:.3f})")
    print()
    calls = r["sql_udf_rows_per_call"]
    print("where the time goes (medians, 1 replica):")
    print(f"  SQL load statement:                 {r['sql_load_ms']:10.2f} ms   (not in SQL rows/s)")
    print(f"  SQL select statement:               {r['sql_select_ms']:10.2f} ms")
    print(f"    in ByzerLLM.generate (UDF):       {r['sql_in_generate_ms']:10.2f} ms   "
          f"({r['sql_udf_calls']} UDF call(s), rows per call {calls})")
    print(f"    outside generate (SQL layer):     {r['sql_outside_generate_ms']:10.2f} ms")
    print(f"  batch_chat:                         {r['batch_chat_ms']:10.2f} ms")
    print(f"    in ByzerLLM.generate:             {r['batch_chat_in_generate_ms']:10.2f} ms")
    print(f"    outside generate:                 {r['batch_chat_outside_generate_ms']:10.2f} ms")
    mi = r["micro_ms"]
    print(f"  no model, in-process, all {r['rows']} rows:")
    print(f"    the select without the model:    {mi['select_without_model']:10.2f} ms   (parse, transpile, DuckDB, llm_param)")
    print(f"    UDF request parsing:              {mi['build_requests']:10.2f} ms   (functions.build_requests)")
    print(f"    UDF result JSON:                  {mi['result_json']:10.2f} ms   (functions.result_json)")
    print(f"    batch_chat request building:      {mi['chat_request_batch_chat']:10.2f} ms   (config.chat_request)")
    print()
    n = r["rows"]

    def shown(key: str) -> str:
        bad = r[f"answers_mismatched_rows_{key}"]
        return f"{r[f'answers_match_{key}']}/{n}" + (f" (MISMATCH rows {bad})" if bad else "")

    print(f"answers (greedy): SQL == batch_chat {shown('sql_batch_chat')}; SQL == plain {shown('sql_plain')}; "
          f"batch_chat == plain {shown('batch_chat_plain')}"
          + (f"; 2 replicas: SQL == plain {r['answers_match_2_sql_plain']}/{n}, batch_chat == plain "
             f"{r['answers_match_2_batch_chat_plain']}/{n}" if "answers_match_2_sql_plain" in r else ""))
    print(f"replica threads: {r['threads']}")


if __name__ == "__main__":
    sys.exit(main())
