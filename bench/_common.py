"""Pieces shared by the benchmarks in bench/: rows, timing, machine facts, the set-up / clean-up of a
benchmark's temporary workspace and embedded cluster, what it runs on there (the client, the model, its
deployments), the plain `transformers` loop every benchmark compares against, and the replica thread probe.
How a benchmark times its paths and reports the figures is in bench/_report.py.

Nothing here imports torch, Ray or byzer_like at module level: a benchmark must set its environment
(`prepare_env`) before any of them is imported. The byzer_like modules that several benchmarks use are
imported here, each in one function ("-- what a benchmark runs on"), when that function is first called.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from _report import loadavg, log, timed

WORDS = ("the quick brown fox jumps over the lazy dog while seven wizards quietly judge "
         "boxing matches in a dim hall").split()


# -- rows, timing, machine -------------------------------------------------------------------------
def make_rows(n: int) -> list[str]:
    return [f"Question {i}: " + " ".join(WORDS[: i % 13 + 1]) for i in range(n)]


def conversations(rows: list[str]) -> list[list[dict[str, str]]]:
    """Each row as a one-message chat: `[{"role": "user", "content": row}]`."""
    return [[{"role": "user", "content": r}] for r in rows]


def greedy_chats(n: int, max_new_tokens: int, temperature: float = 0) -> tuple[list[str], list[list[dict[str, str]]],
                                                                              dict[str, Any]]:
    """`n` rows (`make_rows`), the same as one-message chats, and the greedy llm_config every path sends
    them with: `{"temperature": temperature, "max_new_tokens": max_new_tokens}`."""
    rows = make_rows(n)
    return rows, conversations(rows), {"temperature": temperature, "max_new_tokens": max_new_tokens}


# -- options ----------------------------------------------------------------------------------------
def parser(doc: str, *, raw: bool = True) -> argparse.ArgumentParser:
    """A benchmark's option parser, described by its docstring's first paragraph (`raw`: as written)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)


def add_model_args(ap: Any, rows: int) -> None:
    """--rows (default `rows`), --max-new-tokens (32) and --size (tiny|small) of the random-init llama."""
    ap.add_argument("--rows", type=int, default=rows)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny")


def add_replica_args(ap: Any) -> None:
    """--replicas (1, or 2 to measure two as well), the CPUs of the one replica and of each of two, and
    the replicas' --max-batch-size (32)."""
    ap.add_argument("--replicas", type=int, choices=(1, 2), default=1, help="2: also measure two replicas")
    ap.add_argument("--cpus-per-worker", type=float, default=2.0, help="CPUs of the one replica (default 2)")
    ap.add_argument("--cpus-per-worker-2", type=float, default=None,
                    help="CPUs of each of two replicas (default: cpus-per-worker / 2)")
    ap.add_argument("--max-batch-size", type=int, default=32)


def add_run_args(ap: Any) -> None:
    """The options every benchmark takes: OMP_WAIT_POLICY and --json."""
    ap.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default="PASSIVE",
                    help="OMP_WAIT_POLICY for this process and the embedded cluster's workers (default: PASSIVE, as replicas use)")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")


# -- workspace and cluster -------------------------------------------------------------------------
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


# -- what a benchmark runs on: byzer_like's client, models, deployments and SQL sessions -----------------
def quiet_transformers() -> None:
    """Import transformers and turn its progress bars off (the benchmark's stderr is its log)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def client() -> Any:
    """A new `byzer_like.ByzerLLM` client, not connected yet."""
    from byzer_like import ByzerLLM

    return ByzerLLM()


def connect(llm: Any = None) -> Any:
    """`llm` (default: a new client) connected to the embedded cluster; logs the cluster's logical CPUs."""
    import ray

    llm = client() if llm is None else llm
    conn = llm.connect()
    log(f"ray: {conn['mode']} cluster, {ray.cluster_resources().get('CPU', 0):g} logical CPUs")
    return llm


def tiny_model(work: Path, size: str, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A random-init llama of `size` (tiny = 1.5M, small = 5.5M parameters) built in the workspace as
    models/`name` (default bench-llama-`size`): its directory and what `make_tiny` reports (`params`, `seconds`)."""
    from byzer_like.tiny import make_tiny

    model_dir = work / "models" / (name or f"bench-llama-{size}")
    built = make_tiny("llama", model_dir, size=size, seed=0)
    log(f"built {built['params']:,}-parameter llama ({size}) in {built['seconds']} s")
    return model_dir, built


def runtime(work: Path) -> Any:
    """A `byzer_like.runtime.Runtime` on the workspace (models imported and quantized in-process, no cluster)."""
    from byzer_like.runtime import Runtime

    return Runtime(workspace=work)


def sql_session(llm: Any, *statements: str) -> Any:
    """A `byzer_like.session.Session` on `llm` (no progress bars), after running `statements` in it."""
    from byzer_like.session import Session

    session = Session(llm, progress=False)
    for stmt in statements:
        session.sql(stmt)
    return session


def chat_requests(conversations: list[Any], llm_config: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request dicts `batch_chat` builds from `conversations` (lists of messages, or instructions)
    with `llm_config` (one for all, or a list: one per conversation)."""
    from byzer_like.config import chat_request

    if isinstance(llm_config, list):
        return [chat_request(c, cfg).model_dump() for c, cfg in zip(conversations, llm_config)]
    return [chat_request(c, llm_config).model_dump() for c in conversations]


def llama_plugin() -> Any:
    """The built-in llama plugin as a replica loads it (`registry.load("llama")`)."""
    from byzer_like.plugins import registry

    return registry.load("llama")


@dataclass
class Setup:
    """What a benchmark runs on: a connected `ByzerLLM` client (`llm`) on the embedded cluster, the model
    it deploys (`model_dir`; `size` and `params`, its parameter count where known, name it in the report)
    and the load average when the run began (`load_start`, the machine entry's first figure)."""

    llm: Any
    model_dir: Path
    size: str
    params: int | None
    load_start: str

    @classmethod
    def tiny(cls, work: Path, size: str) -> "Setup":
        """The usual start: transformers quiet, a random-init llama of `size` built in the workspace
        (`tiny_model`), a client connected to the embedded cluster."""
        quiet_transformers()
        load_start = loadavg()
        model_dir, built = tiny_model(work, size)
        return cls(connect(), model_dir, size, built["params"], load_start)

    def deploy(self, udf: str, cpus: float, *, replicas: int = 1, max_batch_size: int | None = None,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Deploy the model as `udf` on `replicas` replicas of `cpus` CPUs each (`max_batch_size`: the
        setup option, left as it is when None; `options`: the deployment's own); its meta."""
        llm = self.llm
        llm.setup_num_workers(replicas).setup_cpus_per_worker(cpus)
        if max_batch_size is not None:
            llm.setup("max_batch_size", max_batch_size)
        _, secs = timed(lambda: llm.deploy(str(self.model_dir), "llama", udf, options or {}))
        meta = llm.get_meta(udf)
        log(f"deployed {udf}: {replicas} replica(s) x {cpus:g} CPU, max_batch_size {meta.get('max_batch_size')} "
            f"in {secs:.1f} s")
        return meta

    def undeploy(self, *udfs: str) -> None:
        """Remove these deployments where they exist (a failure is logged: the run is ending anyway)."""
        for udf in udfs:
            try:
                if self.llm.is_model_exist(udf):
                    self.llm.undeploy(udf)
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log(f"undeploy {udf} failed: {e}")

    def match_threads(self, cpus: float) -> tuple[dict[str, Any], int]:
        """Probe the torch threads a replica of `cpus` CPUs runs its model calls with (`probe_threads`)
        and give this process as many; (what the probe reported, that thread count)."""
        import torch

        threads = probe_threads(str(self.model_dir), self.llm.sys_conf, cpus)
        n_threads = int(threads["torch_threads_pool_thread"])
        torch.set_num_threads(n_threads)
        log(f"replica threads: {threads}; this process uses torch.set_num_threads({n_threads})")
        return threads, n_threads

    def deploy_with_plain(self, udf: str, cpus: float,
                          max_batch_size: int) -> tuple[dict[str, Any], dict[str, Any], int, "PlainLoop"]:
        """Deploy the model as `udf` on one replica of `cpus` CPUs and make the plain loop it is measured
        against, at the replica's batch size (its meta's max_batch_size, else `max_batch_size`) and torch
        threads (`match_threads`): (the meta, what the probe reported, the thread count, the plain loop)."""
        meta = self.deploy(udf, cpus, max_batch_size=max_batch_size)
        batch_size = int(meta.get("max_batch_size") or max_batch_size)
        threads, n_threads = self.match_threads(cpus)
        return meta, threads, n_threads, PlainLoop(str(self.model_dir), batch_size)

    def in_process(self, n_threads: int) -> tuple[Any, Any, Any]:
        """The model loaded in this process by the llama plugin, as a replica loads it, then
        `n_threads` torch threads (init_model sets cpus_per_worker's): (plugin, model, tokenizer)."""
        import torch

        plugin = llama_plugin()
        model, tok = plugin.init_model(str(self.model_dir), {}, self.llm.sys_conf)
        torch.set_num_threads(n_threads)
        return plugin, model, tok

    def session(self, *statements: str) -> Any:
        return sql_session(self.llm, *statements)

    def publish(self, results: dict[str, Any], report: Callable[[dict[str, Any]], Any], json_path: str | None,
                **setting: Any) -> int:
        """The end of a run: `results` in the setting every benchmark reports (`_report.finish`: `setting`
        gives rows, max_new_tokens, replicas, cpus_per_worker, max_batch_size, torch_threads, repeats; this
        set-up the model and the load average), printed by `report` and written to `json_path` (`_report.publish`)."""
        from _report import finish, publish

        return publish(finish(results, size=self.size, params=self.params, load_start=self.load_start, **setting),
                       report, json_path)


# -- the plain transformers loop ----------------------------------------------------------------
def cut_at_stop(ids: list[int], stop_ids: set[int], *, keep: bool = False) -> list[int]:
    """Generated token ids up to the first stop token (`keep`: including it)."""
    for j, t in enumerate(ids):
        if t in stop_ids:
            return ids[:j + 1] if keep else ids[:j]
    return ids


def chat_text(tok: Any, prompt: str) -> str:
    """`prompt` as one user message with the tokenizer's chat template, ready for generation."""
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


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

    def answer(self, ids: list[int]) -> str:
        """The text of one generated row, cut at its first stop token."""
        return self.tok.decode(cut_at_stop(ids, self.stop_ids), skip_special_tokens=True)

    def run(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        answers: list[str] = []
        for k in range(0, len(prompts), self.batch_size):
            texts = [chat_text(self.tok, p) for p in prompts[k:k + self.batch_size]]
            enc = self.tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
            with self.torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            answers.extend(self.answer(row) for row in out[:, enc["input_ids"].shape[1]:].tolist())
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

        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        before = torch.get_num_threads()
        llama_plugin().init_model(model_dir, {}, sys_conf)
        with ThreadPoolExecutor(1) as pool:
            in_pool = pool.submit(torch.get_num_threads).result()
        return {**env, "torch_threads_before_init": before,
                "torch_threads": torch.get_num_threads(), "torch_threads_pool_thread": in_pool}

    return ray.get(probe.remote(model_dir, sys_conf), timeout=300)
