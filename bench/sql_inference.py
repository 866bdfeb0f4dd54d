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
2. SQL path: a `byzer_like.session.Session` on that client runs

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
import sys
from pathlib import Path
from typing import Any, Callable

from _common import (Setup, add_model_args, add_replica_args, add_run_args, chat_requests, greedy_chats, parser,
                     run_in_env)
from _report import (Own, Timings, balanced_order, cpu_cell, log, matches, median_ms, medians_of, path_header,
                     path_row, path_rule, print_header, proc_cpu_s, ratio_runs, rounded, runs_of, self_cpu_s,
                     time_paths, timed)

UDF = "bench_chat"


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_model_args(ap, rows=512)
    add_replica_args(ap)
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs of each path (order changed every repeat; 6 balances it fully)")
    add_run_args(ap)
    return run_in_env(ap.parse_args(argv), run)


def write_jsonl(path: Path, rows: list[str]) -> None:
    path.write_text("".join(json.dumps({"id": i, "q": q}) + "\n" for i, q in enumerate(rows)), encoding="utf-8")


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


def in_generate_s(calls: list[tuple[int, float]]) -> float:
    """Seconds spent inside `ByzerLLM.generate` over a run's calls ((rows, seconds) each)."""
    return sum(s for _, s in calls)


def run(args: argparse.Namespace, work: Path) -> int:
    from byzer_like.session import functions as fx

    K = args.max_new_tokens
    rows, convs, cfg = greedy_chats(args.rows, K, 0.0)
    write_jsonl(work / "rows.jsonl", rows)
    for n in (1, 2):  # warm-up rows: one batch per replica
        write_jsonl(work / f"warm{n}.jsonl", rows[: n * args.max_batch_size])
    param_sql = f'llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", {K}))'
    load_stmt = "load json.`rows.jsonl` as questions;"
    select_stmt = f"select id, {UDF}({param_sql}) as r from questions as answered;"
    warm_stmt = f"load json.`warm{{n}}.jsonl` as warm; select id, {UDF}({param_sql}) as r from warm as warm_answered;"
    no_model_stmt = f"select id, {param_sql} as p from questions as params;"

    b = Setup.tiny(work, args.size)
    llm = b.llm
    session = b.session()
    recorder = GenerateRecorder(llm)

    def sql_outputs(table: Any) -> list[str | None]:
        out: list[str | None] = [None] * len(rows)
        for i, r in zip(table.column("id").to_pylist(), table.column("r").to_pylist()):
            out[int(i)] = None if r is None else json.loads(r)["output"]
        return out

    # The SQL path leaves its load time and UDF calls here, for `calls_after` to take.
    extra: dict[str, Any] = {}

    def sql_path() -> Own:
        _, load_s = timed(lambda: session.sql(load_stmt))
        recorder.take()
        res, select_s = timed(lambda: session.sql(select_stmt))
        extra["sql"] = (load_s, recorder.take())
        return Own(sql_outputs(res[-1].table), select_s)  # the select alone; the load is kept apart

    def batch_chat_path() -> list[str | None]:
        return [r.output for r in llm.batch_chat(convs, model=UDF, llm_config=cfg)]

    def calls_after(name: str) -> tuple[float | None, list[tuple[int, float]]]:
        """(load seconds of the SQL path, else None; the run's ByzerLLM.generate calls as (rows, seconds))."""
        return extra.pop("sql") if name == "sql" else (None, recorder.take())

    def timed_paths(paths: dict[str, Callable[[], Any]], pid: int, label: str) -> Timings:
        """Time each path `repeats` times in balanced orders; CPU seconds of the replica and of this process."""
        cpu = {"replica": lambda: proc_cpu_s(pid), "driver": self_cpu_s}
        return time_paths(paths, args.repeats, balanced_order, cpu=cpu, before=lambda name: recorder.take(),
                          after=calls_after, rows=len(rows), label=f"{label} ")

    results: dict[str, Any] = {}
    try:
        # ---- one replica ---------------------------------------------------------------------------
        C = args.cpus_per_worker
        meta, threads, n_threads, plain = b.deploy_with_plain(UDF, C, args.max_batch_size)
        batch_size, pid = plain.batch_size, int(meta["replica_pid"])
        # warm-up: one batch each (the SQL one also registers the model function and loads DuckDB's json reader)
        session.sql(warm_stmt.format(n=1))
        llm.batch_chat(convs[:batch_size], model=UDF, llm_config=cfg)
        plain.run(rows[:batch_size], K)

        one = timed_paths({"sql": sql_path, "batch_chat": batch_chat_path, "plain": lambda: plain.run(rows, K)}, pid,
                          "1 replica")
        sql_out, bc_out, plain_out = (one.answers[k] for k in ("sql", "batch_chat", "plain"))
        rps = one.rates(len(rows))

        # ---- where the select's time goes, without the model (in-process, medians of 5) ------------------
        params = [p for p in session.sql(no_model_stmt)[-1].table.column("p").to_pylist()]
        reqs, _, _ = fx.build_requests(params)
        fake = [{"output": a or "", "metadata": {"input_tokens": 10, "generated_tokens": K}} for a in sql_out]
        micro = {
            "select_without_model": lambda: session.sql(no_model_stmt),
            "build_requests": lambda: fx.build_requests(params),
            "result_json": lambda: [fx.result_json(q, r) for q, r in zip(reqs, fake)],
            "chat_request_batch_chat": lambda: chat_requests(convs, cfg),
        }
        micro_ms = {k: median_ms([timed(fn)[1] for _ in range(5)]) for k, fn in micro.items()}

        sql_sel = one.secs["sql"]
        sql_load = [load for load, _ in one.notes["sql"]]
        sql_gen = [in_generate_s(calls) for _, calls in one.notes["sql"]]
        bc_secs = one.secs["batch_chat"]
        bc_gen = [in_generate_s(calls) for _, calls in one.notes["batch_chat"]]
        udf_calls = [n for n, _ in one.notes["sql"][-1][1]]
        results.update(
            medians_of({k: rps[k] for k in ("sql", "batch_chat", "plain")}),
            **runs_of({k: rps[k] for k in ("sql", "batch_chat", "plain")}),
            ratio_sql_plain_runs=ratio_runs(rps["sql"], rps["plain"]),
            ratio_sql_batch_chat_runs=ratio_runs(rps["sql"], rps["batch_chat"]),
            **runs_of(one.cpu_of("replica", "sql", "batch_chat"), "replica_cpu_s"),
            **runs_of(one.cpu_of("driver", "sql", "batch_chat"), "driver_cpu_s"),
            **runs_of(one.cpu_of("driver", "plain"), "cpu_s"),
            sql_load_ms=median_ms(sql_load),
            sql_select_ms=median_ms(sql_sel),
            sql_in_generate_ms=median_ms(sql_gen),
            sql_outside_generate_ms=median_ms([a - b for a, b in zip(sql_sel, sql_gen)]),
            batch_chat_ms=median_ms(bc_secs),
            batch_chat_in_generate_ms=median_ms(bc_gen),
            batch_chat_outside_generate_ms=median_ms([a - b for a, b in zip(bc_secs, bc_gen)]),
            sql_load_ms_runs=rounded([x * 1000 for x in sql_load]),
            sql_in_generate_ms_runs=rounded([x * 1000 for x in sql_gen]),
            sql_outside_generate_ms_runs=rounded([(a - b) * 1000 for a, b in zip(sql_sel, sql_gen)]),
            batch_chat_in_generate_ms_runs=rounded([x * 1000 for x in bc_gen]),
            sql_udf_rows_per_call=udf_calls,
            sql_udf_calls=len(udf_calls),
            micro_ms=micro_ms,
            orders=one.orders,
            threads=threads,
        )
        results["ratio_sql_plain"] = round(results["sql_rows_per_s"] / results["plain_rows_per_s"], 3)
        results["ratio_sql_batch_chat"] = round(results["sql_rows_per_s"] / results["batch_chat_rows_per_s"], 3)
        results["ratio_batch_chat_plain"] = round(results["batch_chat_rows_per_s"] / results["plain_rows_per_s"], 3)
        for key, (x, y) in {"sql_batch_chat": (sql_out, bc_out), "sql_plain": (sql_out, plain_out),
                            "batch_chat_plain": (bc_out, plain_out)}.items():
            results[f"answers_match_{key}"], results[f"answers_mismatched_rows_{key}"] = matches(x, y)

        # ---- two replicas --------------------------------------------------------------------------------
        results["sql_2_rows_per_s"] = results["batch_chat_2_rows_per_s"] = results["ratio_sql_2_vs_1"] = None
        C2 = args.cpus_per_worker_2 if args.cpus_per_worker_2 is not None else max(C / 2, 1.0)
        results["cpus_per_worker_2"] = C2 if args.replicas == 2 else None
        if args.replicas == 2:
            b.undeploy(UDF)
            meta2 = b.deploy(UDF, C2, replicas=2, max_batch_size=args.max_batch_size)
            session.sql(warm_stmt.format(n=2))  # warm-up: one batch per replica
            llm.batch_chat(convs[: 2 * batch_size], model=UDF, llm_config=cfg)
            two = timed_paths({"sql": sql_path, "batch_chat": batch_chat_path}, int(meta2["replica_pid"]), "2 replicas")
            two_rps = {f"{k}_2": v for k, v in two.rates(len(rows)).items()}
            results.update(
                medians_of(two_rps),
                **runs_of(two_rps),
                sql_2_udf_rows_per_call=[n for n, _ in two.notes["sql"][-1][1]],
                answers_match_2_sql_plain=matches(two.answers["sql"], plain_out)[0],
                answers_match_2_batch_chat_plain=matches(two.answers["batch_chat"], plain_out)[0],
            )
            results["ratio_sql_2_vs_1"] = round(results["sql_2_rows_per_s"] / results["sql_rows_per_s"], 3)
            results["ratio_sql_batch_chat_2"] = round(results["sql_2_rows_per_s"] / results["batch_chat_2_rows_per_s"], 3)
    finally:
        try:
            session.close()
        except Exception as e:  # noqa: BLE001 - shutting down anyway
            log(f"closing the SQL session failed: {e}")
        b.undeploy(UDF)

    return b.publish(results, report, args.json,
                     rows=len(rows), max_new_tokens=K, replicas=args.replicas, cpus_per_worker=C,
                     max_batch_size=batch_size, torch_threads=n_threads, repeats=args.repeats)


def report(r: dict) -> None:
    print_header(r, orders=True)
    print()
    w = 42
    cells = (("cpu-s/run", 10), ("driver cpu-s", 13))
    print(path_header(w, *cells))
    print(path_rule(w, *cells))
    for key, label in (("sql", "SQL select"), ("batch_chat", "batch_chat")):
        print(path_row(f"{label}, 1 replica x %g CPU" % r["cpus_per_worker"], w, r[f"{key}_rows_per_s"],
                       r[f"{key}_rows_per_s_runs"], cpu_cell(r[f"{key}_replica_cpu_s_runs"], 10),
                       cpu_cell(r[f"{key}_driver_cpu_s_runs"], 13)))
    print(path_row("plain transformers loop, in-process", w, r["plain_rows_per_s"], r["plain_rows_per_s_runs"],
                   cpu_cell(r["plain_cpu_s_runs"], 10), "(same)".rjust(13)))
    if r.get("sql_2_rows_per_s") is not None:
        for key, label in (("sql", "SQL select"), ("batch_chat", "batch_chat")):
            print(path_row(f"{label}, 2 replicas x %g CPU" % r["cpus_per_worker_2"], w, r[f"{key}_2_rows_per_s"],
                           r[f"{key}_2_rows_per_s_runs"]))
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
