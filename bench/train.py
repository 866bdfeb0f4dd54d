#!/usr/bin/env python3
"""Training benchmark: LoRA fine-tuning through a byzer-like job vs. a plain transformers Trainer + peft script
(`--task sft`, the default), or DPO with LoRA through a job vs. a plain TRL `DPOTrainer` script (`--task dpo`).

    .venv/bin/python bench/train.py [--task sft|dpo] [--rows 400] [--epochs 2] [--size tiny|small]
                                    [--max-seq-length 128] [--cpus 2] [--repeats 1] [--omp-wait-policy PASSIVE]
                                    [--json OUT]

What one run does, on the same rows, the same model and the same hyperparameters:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`, size small = 5.5M parameters by default)
   in a temporary workspace and `--rows` alpaca rows (`instruction`, `output`).
2. Job path: `ByzerLLM().sft(rows, ..., method="lora")` on an embedded Ray cluster, blocking: the
   client writes the table to the job's folder, a Ray task holding `--cpus` CPUs runs the job runner,
   which renders and tokenizes the rows, trains with transformers' Trainer + peft, saves the adapter,
   plots the loss and registers the model. Two figures: training tokens/s (non-padding tokens over
   the Trainer's own train() time, as the job records them), and end-to-end tokens/s (the same
   tokens over the whole `sft()` call, job start and save included).
3. Plain path, in this process: what a user would write without byzer-like — load the model,
   `get_peft_model` with the same LoRA config, a `Trainer` over the same tokenized examples
   (`byzer_like.train.data.encode_all`, so both paths see exactly the same tokens), torch threads set
   to `--cpus`, train(), save the adapter. Tokens/s over train() and over the whole script.
4. The paths alternate (plain, job, then job, plain with `--repeats 2`...); medians are reported.

`--task dpo` does the same with `--rows` preference pairs (`prompt`, `chosen`, `rejected`): the job path is
`ByzerLLM().dpo(rows, ..., method="lora")`; the plain path is what a TRL user writes: the same conversational
examples (`byzer_like.train.preference_data.examples`, so both see the same rows), a `DPOConfig` with the same
batch, learning rate, epochs, beta, max_length and seed, the same `LoraConfig` given as `peft_config` (the
reference is the base with the adapter off, as in the job), `DPOTrainer.train()`, save. Tokens are TRL's own
count in both paths (prompt + chosen and prompt + rejected, no padding; the job's `metrics["tokens"]`).

Reading the output: `job / plain (training)` is the goal figure (>= 0.95: running as a job costs at
most 5 % of the training loop's speed); `end to end` adds the job's fixed costs (a Ray task, imports
in a fresh process, writing the table, registering), which shrink relative to a longer run. No figure
is asserted; the machine is shared and noisy, so run it more than once.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from _report import machine_info, utc_now, write_json  # noqa: E402

LORA = {"lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05}


def make_rows(n: int) -> list[dict]:
    words = C.WORDS
    return [{"instruction": f"Repeat item {i}: " + " ".join(words[: i % 11 + 2]),
             "output": " ".join(reversed(words[: i % 11 + 2])) + f" ({i})"} for i in range(n)]


def plain_run(model_dir: str, rows: list[dict], args: argparse.Namespace, out_dir: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from byzer_like.train import data as D

    t0 = time.perf_counter()
    torch.set_num_threads(args.cpus)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    eos = AutoModelForCausalLM.from_pretrained(model_dir).generation_config.eos_token_id
    examples, _ = D.encode_all(tok, D.conversations(rows, "alpaca"), args.max_seq_length,
                               eos if isinstance(eos, list) else [eos])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"],
                                             lora_dropout=LORA["lora_dropout"],
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out_dir / "ckpt"), per_device_train_batch_size=8,
                               learning_rate=2e-4, num_train_epochs=args.epochs, logging_steps=5,
                               save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=42,
                               data_seed=42, include_num_input_tokens_seen="non_padding",
                               remove_unused_columns=False),
        train_dataset=[{"input_ids": i, "labels": lab, "attention_mask": [1] * len(i)} for i, lab in examples],
        data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=D.IGNORE, padding=True),
    )
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    model.save_pretrained(out_dir / "adapter")
    total_s = time.perf_counter() - t0
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"tokens": tokens, "train_s": train_s, "total_s": total_s, "steps": trainer.state.global_step}


def make_pairs(n: int) -> list[dict]:
    words = C.WORDS
    return [{"prompt": f"Repeat item {i}: " + " ".join(words[: i % 11 + 2]),
             "chosen": " ".join(words[: i % 11 + 2]) + f" ({i})",
             "rejected": " ".join(reversed(words[: i % 11 + 2])) + f" ({i})"} for i in range(n)]


def plain_dpo_run(model_dir: str, rows: list[dict], args: argparse.Namespace, out_dir: Path) -> dict:
    import datasets
    import pyarrow as pa
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from byzer_like.train import preference_data as P

    t0 = time.perf_counter()
    torch.set_num_threads(args.cpus)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(output_dir=str(out_dir / "ckpt"), per_device_train_batch_size=8, learning_rate=5e-5,
                       num_train_epochs=args.epochs, logging_steps=5, save_strategy="no", report_to=[],
                       disable_tqdm=True, use_cpu=True, seed=42, data_seed=42, max_length=args.max_seq_length,
                       beta=0.1, remove_unused_columns=False, dataloader_num_workers=0),
        processing_class=tok,
        train_dataset=datasets.Dataset.from_list(P.examples("dpo", pa.Table.from_pylist(rows))),
        peft_config=LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"),
    )
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    trainer.model.save_pretrained(out_dir / "adapter")
    total_s = time.perf_counter() - t0
    return {"tokens": int(trainer._total_train_tokens), "train_s": train_s, "total_s": total_s,
            "steps": trainer.state.global_step}


def job_dpo_run(llm, model_dir: str, rows: list[dict], args: argparse.Namespace, name: str) -> dict:
    import json

    t0 = time.perf_counter()
    row = llm.dpo(rows, model_path=model_dir, pretrained_model_type="dpo/llama", output_table=name, method="lora",
                  epochs=args.epochs, max_length=args.max_seq_length, learning_rate=5e-5, batch_size=8, beta=0.1,
                  checkpoint_steps=100_000, logging_steps=5, lora_target_modules="q_proj,k_proj,v_proj,o_proj",
                  **LORA)
    total_s = time.perf_counter() - t0
    m = json.loads(row["metrics"])
    return {"tokens": m["tokens"], "train_s": m["train_runtime_s"], "total_s": total_s, "steps": m["steps"],
            "job_id": row["job_id"]}


def job_run(llm, model_dir: str, rows: list[dict], args: argparse.Namespace, name: str) -> dict:
    import json

    t0 = time.perf_counter()
    row = llm.sft(rows, model_path=model_dir, pretrained_model_type="sft/llama", output_table=name, method="lora",
                  epochs=args.epochs, max_seq_length=args.max_seq_length, learning_rate=2e-4, batch_size=8,
                  checkpoint_steps=100_000, logging_steps=5, lora_target_modules="q_proj,k_proj,v_proj,o_proj",
                  **LORA)
    total_s = time.perf_counter() - t0
    m = json.loads(row["metrics"])
    return {"tokens": m["tokens"], "train_s": m["train_runtime_s"], "total_s": total_s, "steps": m["steps"],
            "job_id": row["job_id"]}


def main() -> int:
    p = C.parser(__doc__, raw=False)
    p.add_argument("--task", choices=("sft", "dpo"), default="sft", help="sft: LoRA sft vs Trainer + peft; dpo: DPO "
                   "with LoRA vs TRL's DPOTrainer")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--size", choices=("tiny", "small"), default="small")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--cpus", type=int, default=2, help="CPUs (torch threads) of the training process, both paths")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--omp-wait-policy", default="PASSIVE")
    p.add_argument("--json", help="write every figure to this file")
    args = p.parse_args()

    work = C.prepare_env(args.omp_wait_policy)
    load_start = C.loadavg()
    try:
        model_path, info = C.tiny_model(work, args.size, name="bench-llama")
        model_dir = str(model_path)
        dpo = args.task == "dpo"
        rows = make_pairs(args.rows) if dpo else make_rows(args.rows)
        plain_path, job_path = (plain_dpo_run, job_dpo_run) if dpo else (plain_run, job_run)
        llm = C.client()
        llm.setup_cpus_per_worker(args.cpus)
        C.log("warm-up: one short job (Ray task start, imports)")
        if dpo:
            llm.dpo(rows[:16], model_path=model_dir, pretrained_model_type="dpo/llama", output_table="warmup",
                    max_steps=2, max_length=args.max_seq_length)
        else:
            llm.sft(rows[:16], model_path=model_dir, pretrained_model_type="sft/llama", output_table="warmup",
                    max_steps=2, max_seq_length=args.max_seq_length)
        job, plain = [], []
        for k in range(args.repeats):
            order = ("plain", "job") if k % 2 == 0 else ("job", "plain")
            for path in order:
                C.log(f"repeat {k + 1}: {path}")
                if path == "plain":
                    plain.append(plain_path(model_dir, rows, args, work / f"plain-{k}"))
                else:
                    job.append(job_path(llm, model_dir, rows, args, f"bench_{k}"))

        def rate(runs: list[dict], key: str) -> float:
            return statistics.median(r["tokens"] / r[key] for r in runs)

        results = {
            "job_train_tokens_per_s": round(rate(job, "train_s"), 1),
            "plain_train_tokens_per_s": round(rate(plain, "train_s"), 1),
            "job_end_to_end_tokens_per_s": round(rate(job, "total_s"), 1),
            "plain_end_to_end_tokens_per_s": round(rate(plain, "total_s"), 1),
            "job_runs": job, "plain_runs": plain,
        }
        results["ratio_job_plain_train"] = round(results["job_train_tokens_per_s"] / results["plain_train_tokens_per_s"], 3)
        results["ratio_job_plain_end_to_end"] = round(
            results["job_end_to_end_tokens_per_s"] / results["plain_end_to_end_tokens_per_s"], 3)
        out = {"task": args.task, "rows": args.rows, "epochs": args.epochs, "max_seq_length": args.max_seq_length,
               "model": {"family": "llama", "size": args.size, "params": info["params"]}, "cpus": args.cpus,
               "repeats": args.repeats, "omp_wait_policy": args.omp_wait_policy, **results,
               "machine": machine_info(load_start),
               "timestamp": utc_now()}
        m = out["machine"]
        print()
        what = "DPO (beta 0.1), " if dpo else ""
        print(f"llama {args.size} ({info['params']:,} params), {what}LoRA r={LORA['lora_r']} on q/k/v/o, {args.rows} rows, "
              f"{args.epochs:g} epochs, max_seq_length {args.max_seq_length}, {args.cpus} CPUs, "
              f"median of {args.repeats} run(s)")
        print(f"{m['cores']} cores ({m['cpu_model']}), load {m['loadavg_start']} -> {m['loadavg_end']}, "
              f"torch {m['torch']}, ray {m['ray']}, transformers {m['transformers']}")
        print(f"{'':28s}{'tokens/s (train)':>18s}{'tokens/s (end to end)':>24s}")
        print(f"{'job (Ray task + runner)':28s}{results['job_train_tokens_per_s']:>18,.0f}"
              f"{results['job_end_to_end_tokens_per_s']:>24,.0f}")
        print(f"{'plain DPOTrainer + peft' if dpo else 'plain Trainer + peft':28s}{results['plain_train_tokens_per_s']:>18,.0f}"
              f"{results['plain_end_to_end_tokens_per_s']:>24,.0f}")
        print(f"job / plain (training): {results['ratio_job_plain_train']:.3f}   "
              f"end to end: {results['ratio_job_plain_end_to_end']:.3f}   (goal: training >= 0.95)")
        write_json(args.json, out)
    finally:
        C.shutdown(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
