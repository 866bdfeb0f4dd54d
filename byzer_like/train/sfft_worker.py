"""One Ray Train worker's part of a continued-pretraining (sfft) run: the DeepSpeed engine, the training loop
over the worker's shard, its checkpoints and the final export.

`_train_loop_per_worker` is the entry point `sfft.sfft_train` hands Ray Train; `_WorkerRun` holds the loop
with its helpers beside it (`_resume`, `_train`, `_train_epoch`, `_micro_step`, `_after_optimizer_step`,
`evaluate`, `save_checkpoint`, `_finish`). `_build_engine` makes the DeepSpeed engine (with `_lr_factor`'s
schedule unless the config names one), `_export` writes the Hugging Face model directory at the end.
A checkpoint is DeepSpeed's files (tag DS_TAG) plus STATE_FILE, the step and the data position.

torch, deepspeed, transformers and ray are imported inside the functions.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .ds_config import fill_schedule, uses_client_optimizer
from .options import SfftOptions
from .progress import Reporter
from .sfft_data import _PartitionShard, _ShardPass

STATE_FILE = "byzer_like_state.json"
DS_TAG = "ds"  # one DeepSpeed tag per Ray Train checkpoint directory
MIN_LR_FRACTION = 0.1  # the linear decay stops here: the step count for epochs is an estimate


def _train_loop_per_worker(config: dict) -> dict:
    """Ray Train's per-worker entry point; `config` is the train_loop_config that `sfft_train` builds.

    Returns the run's metrics (sfft_train reads rank 0's; see `_WorkerRun.run`)."""
    return _WorkerRun(config).run()


class _WorkerRun:
    """One Ray Train worker's part of an sfft run: the DeepSpeed engine, the data position and the counters.

    Position: `epoch` (0-based), `batch_in_epoch` (micro batches of the epoch taken, skipped ones included),
    `skip` (micro batches of the current epoch trained on before a restart), `step` (optimizer steps since
    the run began, across resumes). Every rank takes the same number of micro batches and steps: the ranks
    agree on each micro batch (`all_agree`) and average losses (`global_mean`) with collectives.
    """

    def __init__(self, config: dict):
        import ray.train
        import torch
        from transformers import AutoTokenizer

        self.config = config
        self.opts: SfftOptions = config["options"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
        torch.manual_seed(self.opts.seed)
        self.reporter: Reporter = config["reporter"]
        self.total_steps: int = config["total_steps"]
        self.micro = config["ds_config"]["train_micro_batch_size_per_gpu"]
        self.accum = config["ds_config"]["gradient_accumulation_steps"]
        self.max_len = self.opts.max_length
        placement = config.get("placement")
        if placement is not None:  # keepPartitionNum: this worker's whole partitions
            mine = placement[self.rank]
            self.rows_per_worker = max(1, sum(n for _, _, n in mine))
        else:
            self.rows_per_worker = max(1, config["rows"] // self.world)
        self.tokens_per_micro = self.micro * self.max_len * self.world  # all ranks together

        self.tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the base model's tokenizer has no EOS token, so rows cannot be separated")
        if placement is not None:
            self.shard: Any = _PartitionShard(config["data_path"], config["text_column"], placement[self.rank])
        else:
            self.shard = ray.train.get_dataset_shard("train")
        self.evaluator = config.get("evaluator")  # a train.evaluation.TrainingEval, or None
        self.eval_every = self.opts.eval_steps or self.opts.logging_steps
        self.evals: dict = {}  # the last evaluation's eval_<metric> values
        self.last_eval_step = -1

        self.engine: Any = None
        self.device: Any = None
        self.resumed_state: dict = {}  # the checkpoint's byzer_like_state.json ({} without one)
        self.start_step = self.step = self.last_saved = 0
        self.epoch = self.skip = self.batch_in_epoch = 0
        self.first_loss: float | None = None
        self.final_loss: float | None = None
        self.epoch_at: float | None = None  # the fractional epoch at the last optimizer step of this call
        self.window_loss, self.window_n, self.window_micro = 0.0, 0, 0  # since the last logged step
        self.tokens_run = 0  # tokens trained on in this call, all ranks together
        self.refined = False  # whether the reporter's total steps were re-estimated from the tokens seen
        self.t0 = 0.0

    def run(self) -> dict:
        """Train, checkpoint, export; returns {steps, tokens, first_loss, final_loss, train_runtime_s,
        tokens_per_s, resumed_from_step} plus "error" when the table holds too little text for one micro
        batch per worker (then nothing is exported). Raises ValueError / RuntimeError for a checkpoint that
        cannot be resumed (see `_resume`)."""
        # The first epoch's data starts flowing (Ray Data starts its readers, ~10 s on a small machine) while
        # the model loads and DeepSpeed starts.
        first = self.micro_batches(prefetch=True)
        self.engine = _build_engine(self.config["model_dir"], self.opts, self.config["ds_config"], self.total_steps,
                                    target_modules=self.config.get("target_modules") or ())
        self.device = self.engine.device
        self._resume()
        if self.rank == 0:
            self.reporter.start(self.start_step, self.total_steps)
        self.t0 = time.monotonic()
        data_error = self._train(first)
        return self._finish(data_error)

    def micro_batches(self, prefetch: bool = False) -> _ShardPass:
        """A new pass over this worker's shard: micro batches of shape [micro, max_len] (see `_ShardPass`)."""
        return _ShardPass(self.shard, self.tokenizer, self.config["text_column"], max_len=self.max_len,
                          micro=self.micro, prefetch=prefetch)

    def all_agree(self, flag: bool) -> bool:
        """True when `flag` is true on every worker (each has a batch: the workers take the same steps)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def global_mean(self, value: float) -> float:
        """The mean of `value` over the workers (a collective: every rank calls it)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def finished(self) -> bool:
        """True once max_steps optimizer steps are done (never when max_steps <= 0: epochs count then)."""
        return self.opts.max_steps > 0 and self.step >= self.opts.max_steps

    def save_checkpoint(self, metrics: dict) -> None:
        """Report `metrics` with a checkpoint of the current step and data position.

        Every rank writes its part of the DeepSpeed checkpoint (model, optimizer, LR schedule; tag DS_TAG),
        rank 0 adds STATE_FILE; Ray Train merges the parts into `checkpoint_step_<step, 9 digits>`."""
        import tempfile

        import ray.train

        with tempfile.TemporaryDirectory(prefix="byzer-sfft-") as tmp:
            self.engine.save_checkpoint(tmp, tag=DS_TAG, client_state={"step": self.step})
            if self.rank == 0:
                Path(tmp, STATE_FILE).write_text(json.dumps({
                    "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                    "world_size": self.world, "micro_batch": self.micro, "gradient_accumulation_steps": self.accum,
                    "max_length": self.max_len, "last_loss": metrics.get("loss", metrics.get("final_loss")),
                    "saved_at": time.time()}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step_{self.step:09d}")

    def _resume(self) -> None:
        """Load Ray Train's latest checkpoint of this run, if any: model, optimizer and LR schedule into the
        engine, step and data position into self. Raises ValueError when another number of workers wrote it,
        RuntimeError when DeepSpeed finds nothing to load or restores another step."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            state = json.loads(Path(d, STATE_FILE).read_text())
            if state.get("world_size") not in (None, self.world):
                raise ValueError(f"the checkpoint was written by {state['world_size']} workers, this run has "
                                 f"{self.world}; resume with the same number of workers (or start a new run name)")
            load_path, _ = self.engine.load_checkpoint(d, tag=DS_TAG)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed found no checkpoint to load in {d}")
        self.resumed_state = state
        self.start_step, self.epoch, self.skip = state["step"], state["epoch"], state["batch_in_epoch"]
        if self.engine.global_steps != self.start_step:
            raise RuntimeError(f"checkpoint says step {self.start_step} but DeepSpeed restored step "
                               f"{self.engine.global_steps}")
        if self.rank == 0:
            print(f"[byzer-like] resuming from the checkpoint at step {self.start_step} "
                  f"(epoch {self.epoch}, skipping {self.skip} batches of it)", flush=True)

    def _train(self, first: _ShardPass) -> str | None:
        """Epoch after epoch (the prefetched `first`, then new passes) until max_steps or num_train_epochs.

        Returns None, or the error message when the table holds too little text for one micro batch."""
        opts = self.opts
        self.step = self.last_saved = self.start_step
        self.batch_in_epoch = self.skip
        pending: _ShardPass | None = first  # until the first epoch takes it
        error = None
        while not self.finished() and (opts.max_steps > 0 or self.epoch < opts.num_train_epochs):
            data = pending if pending is not None else self.micro_batches()
            pending = None
            seen_any = self._train_epoch(data)
            data.close()
            if not seen_any and self.skip == 0:
                error = (f"the input table holds too little text for one batch per worker: each of the {self.world} "
                         f"workers needs at least {self.micro} x {self.max_len} tokens (train_micro_batch_size_per_gpu "
                         "x max_length); add text, or lower max_length / the batch size")
                break
            if self.finished():
                break
            self.epoch += 1
            self.skip = self.batch_in_epoch = 0
        if pending is not None:
            pending.close()  # resumed at the end: the prefetched epoch is not needed
        return error

    def _train_epoch(self, data: _ShardPass) -> bool:
        """Train on one pass over the shard, past the `skip` micro batches trained on before a restart.

        It stops at max_steps, after its share of the rows in a fractional last epoch, or when any worker
        has no micro batch left. Returns whether every worker had at least one micro batch."""
        opts = self.opts
        self.batch_in_epoch = 0
        seen_any = False
        # The last, partial epoch of a fractional num_train_epochs ends after that share of the rows.
        left = opts.num_train_epochs - self.epoch
        share = left if opts.max_steps <= 0 and left < 1 else None
        while not self.finished():
            past_share = share is not None and data.rows / self.rows_per_worker >= share
            ids = None if past_share else next(data, None)
            if not self.all_agree(ids is not None):
                break
            seen_any = True
            self.batch_in_epoch += 1
            if self.batch_in_epoch <= self.skip:
                continue  # trained on before the restart
            if self._micro_step(ids):
                self._after_optimizer_step(data)
        return seen_any

    def _micro_step(self, ids: Any) -> bool:
        """Forward and backward on one micro batch (ids: int64 [micro, max_len]; labels = ids), then
        DeepSpeed's step. Returns True when this micro batch completed an optimizer step."""
        import torch

        engine = self.engine
        ids = ids.to(self.device)
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        engine.backward(out.loss)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()
        self.window_loss += float(out.loss.detach().float().item())
        self.window_n += 1
        self.window_micro += 1
        self.tokens_run += self.tokens_per_micro
        return boundary

    def _after_optimizer_step(self, data: _ShardPass) -> None:
        """Losses, progress every logging_steps (and at max_steps), a checkpoint every checkpoint_steps."""
        opts = self.opts
        self.step = self.engine.global_steps
        self.epoch_at = round(self.epoch + min(data.rows / self.rows_per_worker, 1.0), 4)
        if self.first_loss is None:
            self.first_loss = self.global_mean(self.window_loss / self.window_n)
        evals = None
        if self.evaluator is not None and (self.step % self.eval_every == 0 or self.finished()):
            evals = self.evaluate()
        if self.step % opts.logging_steps == 0 or self.finished():
            self.final_loss = self.global_mean(self.window_loss / self.window_n)
            if self.rank == 0:
                self._report_progress(data, evals or {})
            self.window_loss, self.window_n, self.window_micro = 0.0, 0, 0
        elif evals and self.rank == 0:  # an evaluation step between two logged steps
            self.reporter.step(self.step, tokens=0, epoch=self.epoch_at, **evals)
        if self.step % opts.checkpoint_steps == 0 and not self.finished():
            self.save_checkpoint({"step": self.step, "loss": self.final_loss, "epoch": self.epoch})
            self.last_saved = self.step

    def evaluate(self) -> dict:
        """Measure evalMetrics on the model as it is now (a collective: every rank measures its share of
        the eval rows, see `train.evaluation`); returns `eval_<metric>` values, with `eval_loss` (the mean
        negative log-likelihood per token of the held-out text) when perplexity is measured."""
        import torch.distributed as dist

        def gather(obj: Any) -> list:
            parts: list = [None] * self.world
            dist.all_gather_object(parts, obj)
            return parts

        t0 = time.monotonic()
        evals = self.evaluator(self.engine.module, self.tokenizer, stop_ids=[self.tokenizer.eos_token_id],
                               rank=self.rank, world=self.world, gather=gather,
                               synced_gpus=bool(self.engine.zero_optimization_partition_weights()))
        if isinstance(evals.get("eval_mean_token_logprob"), float) and math.isfinite(evals["eval_mean_token_logprob"]):
            evals["eval_loss"] = round(-evals["eval_mean_token_logprob"], 6)
        evals["evaluation_s"] = round(time.monotonic() - t0, 3)
        self.evals, self.last_eval_step = evals, self.step
        return evals

    def _report_progress(self, data: _ShardPass, evals: dict) -> None:
        """Rank 0: the logged step to the reporter (tokens since the last report, loss, LR, fractional epoch,
        and `evals` when this step was also an evaluation step)."""
        opts = self.opts
        if not self.refined and opts.max_steps <= 0 and data.rows_read:
            self.refined = True  # a better total for the ETA, from the tokens per row seen so far
            blocks = self.rows_per_worker * data.tokens_read / data.rows_read / self.max_len
            per_epoch = max(1, math.floor(blocks / self.micro)) / self.accum
            self.reporter.total_steps = max(self.step, math.ceil(per_epoch * opts.num_train_epochs))
        self.reporter.step(self.step, tokens=self.window_micro * self.tokens_per_micro, loss=self.final_loss,
                           learning_rate=self.engine.get_lr()[0], epoch=self.epoch_at, **evals)

    def _finish(self, data_error: str | None) -> dict:
        """Report the final metrics (with a last checkpoint when steps were taken since the last one) and
        export the model; with `data_error` only report it."""
        import ray.train

        if data_error:
            metrics = self._final_metrics()
            metrics["error"] = data_error
            ray.train.report(metrics)
            return metrics
        if self.evaluator is not None and self.last_eval_step != self.step:  # the final model, once
            evals = self.evaluate()
            if self.rank == 0:
                self.reporter.step(self.step, tokens=0, epoch=self.epoch_at, **evals)
        metrics = self._final_metrics()
        if self.step > self.last_saved:
            self.save_checkpoint(metrics)
        else:
            ray.train.report(metrics)
        _export(self.engine, self.tokenizer, self.config["model_dir"], self.config["output_dir"], self.rank)
        return metrics

    def _final_metrics(self) -> dict:
        """The metrics `run` returns; losses are means over the workers (a collective when a step is partial)."""
        if self.window_n:  # a partly accumulated last step is not an optimizer step: its loss still counts
            self.final_loss = self.global_mean(self.window_loss / self.window_n)
        runtime = time.monotonic() - self.t0
        last_loss = self.final_loss if self.final_loss is not None else self.first_loss
        if last_loss is None:  # resumed at the end: nothing trained in this call
            last_loss = self.resumed_state.get("last_loss")
        metrics = {
            "steps": int(self.step),
            "tokens": int(self.tokens_run),
            "first_loss": self.first_loss if self.first_loss is not None else last_loss,
            "final_loss": last_loss,
            "train_runtime_s": round(runtime, 3),
            "tokens_per_s": round(self.tokens_run / runtime, 2) if runtime > 0 else 0.0,
            "resumed_from_step": int(self.start_step),
        }
        if self.epoch_at is not None:
            metrics["epoch"] = self.epoch_at
        metrics.update({k: v for k, v in self.evals.items() if k != "evaluation_s"})
        return metrics


def _build_engine(model_dir: str, opts: SfftOptions, ds_config: dict, total_steps: int,
                  target_modules: Any = ()) -> Any:
    """The causal LM in `model_dir` (float32, no KV cache) wrapped in a DeepSpeed engine; with method lora the
    model is first wrapped by peft (`_lora_model`: only the adapter's weights train, the optimizer holds only
    them); with gradientCheckpointing its layers recompute activations in the backward pass.

    The schedule (`total_steps` optimizer steps, warmup_ratio of them warming up) is filled into
    `ds_config`. Unless the config names DeepSpeed's own optimizer, an AdamW is built here (weight decay
    on the parameters with >= 2 dimensions only) and, unless it names a scheduler, `_lr_factor`'s schedule."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if opts.method == "lora":
        model = _lora_model(model, opts, target_modules)
    lr = opts.lr()
    warmup = math.ceil(opts.warmup_ratio * total_steps)
    cfg = fill_schedule(ds_config, total_steps=total_steps, warmup_steps=warmup, lr=lr)
    optimizer = scheduler = None
    if uses_client_optimizer(cfg):
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        # Empty groups are left out (with method lora every trained weight is a matrix): DeepSpeed's ZeRO
        # optimizer drops them, and a scheduler made over the full list would then step more groups than exist.
        groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, opts.weight_decay), (no_decay, 0.0)) if ps]
        optimizer = torch.optim.AdamW(groups, lr=lr)
    if cfg.get("scheduler") is None and optimizer is not None:
        # A plain function (not a callable object or bound method): LambdaLR's state_dict, saved in the
        # DeepSpeed checkpoint, leaves it out, so a resumed run follows its own total_steps.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg,
                                           dist_init_required=False)
    return engine


def _lora_model(model: Any, opts: SfftOptions, target_modules: Any) -> Any:
    """`model` wrapped by peft's LoRA (loraR, loraAlpha, loraDropout) on `opts.lora_target_modules`, else the
    plugin's `target_modules`, else every linear layer but the output head (peft's "all-linear")."""
    from peft import get_peft_model

    from .trainer import lora_config

    config = lora_config(opts, model, target_modules, check=False)
    return get_peft_model(model, config)


def _lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """The LR multiplier (of the peak LR) at 0-based optimizer step `step`: linear warmup over `warmup`
    steps, then linear decay to MIN_LR_FRACTION at the (estimated) last step `total_steps`, flat after."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total_steps - warmup, 1)
    return max(MIN_LR_FRACTION, 1.0 - (1.0 - MIN_LR_FRACTION) * (step - warmup) / span)


def _export(engine: Any, tokenizer: Any, base_dir: str, output_dir: str, rank: int) -> None:
    """Write the trained weights as a Hugging Face model directory (rank 0; every rank takes part for ZeRO-3);
    with method lora, peft's adapter directory (adapter_config.json, adapter_model.safetensors: the LoRA weights
    of the full state dict) with the tokenizer."""
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective; the dict is on rank 0
    else:
        state_dict = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        out = Path(output_dir)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        module = engine.module
        module.config.use_cache = True
        module.save_pretrained(tmp, state_dict={k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
        tokenizer.save_pretrained(tmp)
        gen_cfg = Path(base_dir, "generation_config.json")
        if gen_cfg.is_file():
            shutil.copyfile(gen_cfg, tmp / "generation_config.json")
        if out.exists():
            shutil.rmtree(out)  # a previous export of this run (checked on the driver)
        os.replace(tmp, out)
    dist.barrier()
