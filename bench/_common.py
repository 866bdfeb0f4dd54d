"""Pieces shared by the benchmarks in bench/: rows, timing, machine facts, the plain `transformers`
loop every benchmark compares against, the replica thread probe, and the set-up / clean-up of a
benchmark's temporary workspace and embedded cluster.

Nothing here imports torch, Ray or byzer_like at module level: a benchmark must set its environment
(`prepare_env`) before any of them is imported.
"""
from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

WORDS = ("the quick brown fox jumps over the lazy dog while seven wizards quietly judge "
         "boxing matches in a dim hall").split()


# -- rows, timing, machine -------------------------------------------------------------------------
def make_rows(n: int) -> list[str]:
    return [f"Question {i}: " + " ".join(WORDS[: i % 13 + 1]) for i in range(n)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def proc_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def spread(xs: list[float]) -> str:
    return f"{min(xs):,.1f}..{max(xs):,.1f}" if len(xs) > 1 else ""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info(loadavg_start: str) -> dict[str, Any]:
    """The `machine` entry of a benchmark's JSON (call after torch, Ray and transformers are imported)."""
    import ray
    import torch
    import transformers

    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "transformers": transformers.__version__,
    }


# -- workspace and cluster -------------------------------------------------------------------------
def add_run_args(ap: Any) -> None:
    """The options every benchmark takes: OMP_WAIT_POLICY and --json."""
    ap.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default="PASSIVE",
                    help="OMP_WAIT_POLICY for this process and the embedded cluster's workers (default: PASSIVE, as replicas use)")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")


def run_in_env(args: Any, run: Callable[[Any, Path], int]) -> int:
    """`run(args, work)` inside a prepared environment (workspace, embedded cluster, OMP policy),
    which is torn down afterwards whatever happens."""
    work = prepare_env(args.omp_wait_policy)
    try:
        return run(args, work)
    finally:
        shutdown(work)


def prepare_env(omp_wait_policy: str | None) -> Path:
    """A temporary workspace; call before byzer_like, Ray or torch is imported. Sets BYZER_LIKE_HOME,
    drops RAY_ADDRESS (an embedded cluster, never a remote one) and sets OMP_WAIT_POLICY (read when
    torch loads; the embedded cluster's workers inherit it)."""
    # SIGTERM (bench/run_all.py's timeout) unwinds like Ctrl-C, so `shutdown` still stops the
    # embedded cluster and removes the workspace
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="byzer-like-bench-"))
    os.environ["BYZER_LIKE_HOME"] = str(work)
    os.environ.pop("RAY_ADDRESS", None)
    if omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy
    return work


def shutdown(work: Path) -> None:
    """Stop Serve and Ray if this process started them, then remove the workspace."""
    try:
        import ray

        if ray.is_initialized():
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the plain transformers loop ----------------------------------------------------------------
class PlainLoop:
    """What a user would write without byzer-like: one process, batched greedy `generate`."""

    def __init__(self, model_dir: str, batch_size: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        self.batch_size = batch_size

    def run(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        answers: list[str] = []
        for k in range(0, len(prompts), self.batch_size):
            texts = [
                self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts[k:k + self.batch_size]
            ]
            enc = self.tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
            with self.torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                for j, t in enumerate(row):
                    if t in self.stop_ids:
                        row = row[:j]
                        break
                answers.append(self.tok.decode(row, skip_special_tokens=True))
        return answers


# -- probing what the replica runs with -----------------------------------------------------------
def probe_threads(model_dir: str, sys_conf: dict, num_cpus: float) -> dict:
    """Run the plugin's own init_model in a Ray task given the replica's CPUs; report torch threads
    (in the task's main thread and in a pool thread, where the replica runs its model calls)."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    def probe(model_dir: str, sys_conf: dict) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from byzer_like.plugins import registry

        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        before = torch.get_num_threads()
        registry.load("llama").init_model(model_dir, {}, sys_conf)
        with ThreadPoolExecutor(1) as pool:
            in_pool = pool.submit(torch.get_num_threads).result()
        return {**env, "torch_threads_before_init": before,
                "torch_threads": torch.get_num_threads(), "torch_threads_pool_thread": in_pool}

    return ray.get(probe.remote(model_dir, sys_conf), timeout=300)


def finish(results: dict[str, Any], *, rows: int, max_new_tokens: int, size: str, params: int, replicas: int,
           cpus_per_worker: float, max_batch_size: int, torch_threads: int, repeats: int,
           load_start: str) -> dict[str, Any]:
    """The figures every benchmark reports, around its own `results`."""
    import datetime as _dt
    import os

    return {
        "rows": rows,
        "max_new_tokens": max_new_tokens,
        "model": {"family": "llama", "size": size, "params": params},
        "params": params,
        "replicas": replicas,
        "cpus_per_worker": cpus_per_worker,
        "max_batch_size": max_batch_size,
        "torch_threads": torch_threads,
        "repeats": repeats,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **results,
        "machine": machine_info(load_start),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | None, results: dict[str, Any]) -> None:
    import json

    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {path}")


def print_header(r: dict[str, Any]) -> None:
    """The run's setting and machine, the first lines of every benchmark's report."""
    m = r["machine"]
    print()
    print(f"llama {r['model']['size']} ({r['params']:,} params), {r['rows']} rows, max_new_tokens={r['max_new_tokens']}, "
          f"greedy, batch {r['max_batch_size']}, {r['torch_threads']} torch threads, median of {r['repeats']} runs")
    print(f"OMP_WAIT_POLICY={r['omp_wait_policy'] or '(unset)'}; load average (1/5/15 min) at start {m['loadavg_start']}, "
          f"at end {m['loadavg_end']}")
    print(f"{m['cores']} cores ({m['cpu_model']}), python {m['python']}, torch {m['torch']}, ray {m['ray']}, "
          f"transformers {m['transformers']}")
