"""vLLM's offline `LLM.generate` on given prompts, run in the vLLM environment: the reference the tests and
bench/engine.py compare the deployed engine with.

    .venv-vllm/bin/python -m byzer_like.backends.vllm_offline job.json answers.json

`job.json`: {"model_dir", "prompts": [[token ids], ...] or "texts": [prompt text, ...] (tokenized here without
special tokens, as the deployment does after its chat template), "max_tokens": [n, ...] (or one n),
"stop_token_ids": [...], "enforce_eager": true, "dtype": "float32", optional "adapters": [adapter dir or null, ...]
(one per prompt: that prompt is answered through the LoRA adapter, vLLM's LoRARequest; starts the engine with
enable_lora; each adapter's prompts are generated together, apart from the others') and "max_lora_rank" (default 64)}. `answers.json`: {"texts": [...],
"output_tokens": [...], "engine_start_s", "generate_s"}. Greedy (temperature 0), as the deployment with
temperature 0. The engine is shut down before the script exits (its processes would outlive it).
"""
from __future__ import annotations

import json
import os
import sys
import time


def run(job: dict) -> dict:
    from vllm import LLM, SamplingParams

    cores = os.cpu_count() or 1
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}" if cores > 1 else "0")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.pop("OMP_NUM_THREADS", None)
    start = time.perf_counter()
    adapters = job.get("adapters")
    lora: dict = {}
    if adapters and any(adapters):
        from vllm.lora.request import LoRARequest

        dirs = sorted({a for a in adapters if a})
        lora = {"enable_lora": True, "max_loras": len(dirs), "max_lora_rank": int(job.get("max_lora_rank", 64))}
        requests = {d: LoRARequest(f"adapter_{i}", i + 1, d) for i, d in enumerate(dirs)}
    llm = LLM(model=job["model_dir"], dtype=job.get("dtype", "float32"), enforce_eager=job.get("enforce_eager", True),
              seed=0, **lora)
    started = time.perf_counter() - start
    if "texts" in job:
        tokenizer = llm.get_tokenizer()
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in job["texts"]]
    else:
        prompts = job["prompts"]
    max_tokens = job["max_tokens"] if isinstance(job["max_tokens"], list) else [job["max_tokens"]] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=int(n), stop_token_ids=job.get("stop_token_ids") or None,
                             skip_special_tokens=True) for n in max_tokens]
    start = time.perf_counter()
    if lora:
        # one generate per adapter, the base model's rows first: vLLM 0.32's CPU LoRA kernels apply the last
        # adapter slot to rows without an adapter once a slot is filled (backends/vllm_engine.py works around that; a
        # reference must not depend on the workaround)
        outs = [None] * len(prompts)
        for a in [None] + dirs:
            rows = [i for i, x in enumerate(adapters) if (x or None) == a]
            if rows:
                got = llm.generate([{"prompt_token_ids": prompts[i]} for i in rows], [params[i] for i in rows],
                                   use_tqdm=False, lora_request=requests[a] if a else None)
                for i, o in zip(rows, got):
                    outs[i] = o
    else:
        outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    stops = set(job.get("stop_token_ids") or ())

    def count(o) -> int:  # without the stop token that ended the answer, as the deployment counts
        ids = list(o.token_ids)
        return len(ids) - 1 if o.finish_reason == "stop" and ids and ids[-1] in stops else len(ids)

    result = {"texts": [o.outputs[0].text for o in outs], "output_tokens": [count(o.outputs[0]) for o in outs],
              "engine_start_s": round(started, 3), "generate_s": round(seconds, 3)}
    engine = getattr(llm.llm_engine, "engine_core", None)
    if engine is not None and callable(getattr(engine, "shutdown", None)):
        engine.shutdown()
    return result


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    answers = run(job)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(answers, f)
