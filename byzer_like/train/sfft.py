"""Continued pretraining (sfft): a causal LM trained on a text table by Ray Train workers with DeepSpeed ZeRO.

The driver checks everything it can cheaply (options, the DeepSpeed config, the parquet schema and row
count; it reads no data), then runs a `ray.train.torch.TorchTrainer` (Ray Train V2, the default in Ray
2.60). The table reaches the workers as a Ray Dataset, split between them in a fixed order
(`preserve_order`), so a restarted worker group sees the same rows in the same order. Each worker
tokenizes its rows, joins them with EOS and packs the stream into `max_length`-token blocks
(labels = input ids).

Checkpoints: every `checkpoint_steps` optimizer steps and at the end, every rank writes its part of a
DeepSpeed checkpoint and reports it; Ray Train merges the parts into one directory under
`<run_dir>/ray_train/<run_name>/` and keeps `save_total_limit` of them. Beside DeepSpeed's files,
`byzer_like_state.json` records the step and the data position (epoch, micro batch within the epoch).
A restarted worker group (a worker died; `FailureConfig(max_failures)`) and a new `sfft_train` call
with the same `run_dir` + `run_name` (the driver died) both start from the latest checkpoint: Ray Train
V2 finds the run's checkpoints by name and storage path, the workers load model + optimizer + LR
schedule and skip the micro batches of the epoch already trained on.

At the end rank 0 writes a plain Hugging Face model directory (full weights, gathered from ZeRO-3
partitions when needed, safetensors) plus the base model's tokenizer and generation config.

torch, deepspeed, transformers and ray are imported inside the functions.
"""
from __future__ import annotations

import collections
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .data import text_column as text_column_of
from .ds_config import fill_schedule, uses_client_optimizer, validate_deepspeed_config
from .options import SfftOptions
from .progress import Reporter

STATE_FILE = "byzer_like_state.json"
DS_TAG = "ds"  # one DeepSpeed tag per Ray Train checkpoint directory
BYTES_PER_TOKEN = 3.5  # for the step estimate before any text is seen (the reporter refines it)
MIN_LR_FRACTION = 0.1  # the linear decay stops here: the step count for epochs is an estimate
READ_CPUS = 0.25  # per Ray Data read task, so reads still run when the workers hold every CPU


def sfft_train(*, model_dir: str, data_path: str, output_dir: str, run_dir: str, run_name: str,
               options: SfftOptions, num_workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
               reporter: Reporter | None = None) -> dict:
    """Continue pretraining the model in `model_dir` on the text table in `data_path` (parquet).

    Returns {"model_dir": output_dir, "metrics": {steps, tokens, first_loss, final_loss, train_runtime_s,
    tokens_per_s, resumed_from_step}}. `steps` counts optimizer steps since the run began (across
    resumes); `tokens`, the losses and the rates cover this call only. Raises ConfigError (before any
    worker starts) for a bad option, DeepSpeed config or table, and RuntimeError when training fails.
    """
    t_start = time.monotonic()
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ConfigError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not (cpus_per_worker > 0):
        raise ConfigError(f"cpus_per_worker must be > 0, got {cpus_per_worker!r}")
    if not (gpus_per_worker >= 0):
        raise ConfigError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise ConfigError(f"run_name must be a plain name (no '/'), got {run_name!r}")
    on_gpu = gpus_per_worker > 0
    model_dir, data_path = os.path.abspath(model_dir), os.path.abspath(data_path)
    output_dir, run_dir = os.path.abspath(output_dir), os.path.abspath(run_dir)
    _check_model_dir(model_dir)
    _check_output_dir(output_dir)
    table = inspect_table(data_path, options.text_column)
    if table["num_rows"] < num_workers:
        raise ConfigError(f"the input table has {table['num_rows']} row(s), fewer than the {num_workers} training "
                          "workers; add rows or use fewer workers")
    ds_config = validate_deepspeed_config(options.deepspeed_config, options, num_workers=num_workers, on_gpu=on_gpu)
    micro, accum = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    est_tokens_per_worker = (table["text_bytes"] / BYTES_PER_TOKEN + table["num_rows"]) / num_workers
    steps_per_epoch_est = max(1, math.ceil(est_tokens_per_worker / options.max_length / micro / accum))
    if options.max_steps > 0:
        total_steps = options.max_steps
    else:
        total_steps = max(1, math.ceil(options.num_train_epochs * steps_per_epoch_est))

    storage = os.path.join(run_dir, "ray_train")
    previous = latest_checkpoint_state(os.path.join(storage, run_name))
    if previous and previous.get("world_size") not in (None, num_workers):
        raise ConfigError(f"sfft run {run_name!r} in {run_dir} was trained by {previous['world_size']} workers and its "
                          f"ZeRO checkpoint is split that way; resume it with num_workers={previous['world_size']}, "
                          "or give a new run name to start over")
    if previous and (previous.get("max_length"), previous.get("micro_batch")) != (options.max_length, micro):
        print(f"[byzer-like] note: sfft run {run_name!r} continues with max_length={options.max_length} and micro batch "
              f"{micro} (it was {previous.get('max_length')} and {previous.get('micro_batch')}): the batches skipped "
              "in the current epoch are counted in the new size", file=sys.stderr, flush=True)

    import ray
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        from ..cluster import connect

        connect()
    os.makedirs(storage, exist_ok=True)
    if previous:
        print(f"[byzer-like] sfft run {run_name!r}: a checkpoint at step {previous['step']} exists "
              f"(epoch {previous['epoch']}, batch {previous['batch_in_epoch']}); training resumes from it", flush=True)
    else:
        print(f"[byzer-like] sfft run {run_name!r}: no checkpoint yet; training starts from step 0", flush=True)

    ds = _read_parquet(data_path, table["text_column"])
    with warnings.catch_warnings():  # Ray's own defaults pass a deprecated option (exclude_resources)
        warnings.simplefilter("ignore")
        ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same rows reach the same worker in the same order after a restart
    data_config = DataConfig(execution_options=ingest, enable_shard_locality=False)

    resources = {"CPU": float(cpus_per_worker)}
    if on_gpu:
        resources["GPU"] = float(gpus_per_worker)
    env_vars = {k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR", "RAY_TRAIN_V2_ENABLED") if os.environ.get(k)}
    env_vars.setdefault("TOKENIZERS_PARALLELISM", "false")
    train_config = {
        "model_dir": model_dir,
        "output_dir": output_dir,
        "text_column": table["text_column"],
        "rows": table["num_rows"],
        "ds_config": ds_config,
        "options": options,
        "total_steps": total_steps,
        "cpus_per_worker": cpus_per_worker,
        "reporter": reporter or Reporter(),
    }
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=train_config,
        torch_config=_torch_config(on_gpu, options.setup_nccl_socket_ifname_by_ip),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=on_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=options.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=options.save_total_limit),
            worker_runtime_env={"env_vars": env_vars},
        ),
        datasets={"train": ds},
        dataset_config=data_config,
    )
    # fit() installs a SIGINT handler holding the run's controller actor, which keeps the controller (and
    # the dataset's SplitCoordinator) alive until the process ends: the old handler is put back afterwards.
    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(_failure_message(e)) from None
    finally:
        if main_thread and previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        del trainer
    metrics = result.return_value if isinstance(result.return_value, dict) else dict(result.metrics or {})
    if metrics.get("error"):
        raise ConfigError(metrics["error"])
    out = {k: metrics.get(k) for k in ("steps", "tokens", "first_loss", "final_loss", "train_runtime_s",
                                       "tokens_per_s", "resumed_from_step")}
    print(f"[byzer-like] sfft run {run_name!r}: trained from step {out['resumed_from_step']} to {out['steps']} "
          f"in {time.monotonic() - t_start:.1f} s (loss {out['first_loss']} -> {out['final_loss']}); "
          f"model written to {output_dir}", flush=True)
    return {"model_dir": output_dir, "metrics": out}


# -- driver-side checks ------------------------------------------------------------------------------
def inspect_table(data_path: str, text_column: str | None = None) -> dict:
    """Schema, row count and the text column's size from parquet metadata only (no data is read)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not os.path.exists(data_path):
        raise ConfigError(f"the input table {data_path} does not exist")
    try:
        dataset = pads.dataset(data_path, format="parquet")
        schema = dataset.schema
        fragments = list(dataset.get_fragments())
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"the input table {data_path} is not readable parquet: {e}") from None
    column = text_column_of(schema, text_column)
    num_rows, text_bytes = 0, 0
    for fragment in fragments:
        meta = fragment.metadata
        num_rows += meta.num_rows
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema == column:
                    text_bytes += chunk.total_uncompressed_size
    if num_rows == 0:
        raise ConfigError(f"the input table {data_path} is empty: continued pretraining needs rows of text")
    return {"text_column": column, "num_rows": num_rows, "text_bytes": text_bytes, "columns": schema.names}


def _read_parquet(data_path: str, column: str):
    """The table as a Ray Dataset of its text column, read by Ray tasks (never through this process).

    Ray 2.60's default parquet reader (datasource V2) first starts a pool of 32 footer-reader actors,
    ~15-20 s per epoch on a small machine; the V1 reader takes well under a second, so it is used."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = getattr(ctx, "use_datasource_v2", None)
    if before is not None:
        ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(data_path, columns=[column], num_cpus=READ_CPUS)
    finally:
        if before is not None:
            ctx.use_datasource_v2 = before


def latest_checkpoint_state(run_path: str) -> dict | None:
    """The byzer_like_state.json of the checkpoint a restart of this run would load (None if there is none).

    That is the latest checkpoint Ray Train registered in its snapshot (checkpoint_manager_snapshot.json,
    written once every worker's part is stored); without a readable snapshot, the newest directory."""
    root = Path(run_path)
    if not root.is_dir():
        return None
    snapshot_file = root / "checkpoint_manager_snapshot.json"
    if not snapshot_file.exists():
        return None
    try:
        snapshot = json.loads(snapshot_file.read_text())
        name = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        if not name:
            return None
        return json.loads((root / name / STATE_FILE).read_text())
    except (OSError, ValueError, AttributeError):  # another Ray version's snapshot: look at the directories
        pass
    best = None
    for d in root.glob("checkpoint_step_*"):
        f = d / STATE_FILE
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if best is None or state.get("step", -1) > best.get("step", -1):
            best = state
    return best


def _check_model_dir(model_dir: str) -> None:
    if not os.path.isdir(model_dir) or not os.path.isfile(os.path.join(model_dir, "config.json")):
        from ..errors import ModelDirError

        raise ModelDirError(f"{model_dir} is not a Hugging Face model directory (no config.json); "
                            "give the base model's directory")


def _check_output_dir(output_dir: str) -> None:
    p = Path(output_dir)
    if p.exists() and (not p.is_dir() or (any(p.iterdir()) and not (p / "config.json").exists())):
        raise ConfigError(f"the output directory {output_dir} exists and does not hold a model; "
                          "choose a new or empty directory")


def _failure_message(e: BaseException) -> str:
    failures = getattr(e, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        return f"continued pretraining failed on worker rank {rank}: {_last_line(err)}"
    cause = getattr(e, "controller_failure", None) or e
    return f"continued pretraining failed: {_last_line(cause)}"


def _last_line(err: BaseException) -> str:
    """The worker's own exception line from the traceback text Ray wraps around it."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" not in text:  # the worker's own exception, as raised
        return f"{type(err).__name__}: {' '.join(lines)}"[:2000]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~", "Traceback", "The above exception", "During handling")):
            return ln[:2000]
    return (lines[-1] if lines else type(err).__name__)[:2000]


def _torch_config(on_gpu: bool, nccl_ifname_by_ip: bool):
    from ray.train.torch import TorchConfig

    if not (on_gpu and nccl_ifname_by_ip):
        return TorchConfig(backend="nccl" if on_gpu else "gloo")
    from ray.train.torch.config import _TorchBackend

    class _NcclIfnameBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            worker_group.execute(_set_nccl_socket_ifname)
            super().on_start(worker_group, backend_config)

    class _NcclIfnameConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _NcclIfnameBackend

    return _NcclIfnameConfig(backend="nccl")


def _set_nccl_socket_ifname() -> str | None:
    """Set NCCL_SOCKET_IFNAME to the interface owning this node's Ray IP (best effort)."""
    try:
        import socket

        import psutil
        import ray

        ip = ray.util.get_node_ip_address()
        for name, addrs in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
                os.environ["NCCL_SOCKET_IFNAME"] = name
                return name
    except Exception as e:  # noqa: BLE001 - best effort: NCCL picks an interface itself
        print(f"[byzer-like] could not set NCCL_SOCKET_IFNAME: {e}", file=sys.stderr)
    return None


# -- the workers -----------------------------------------------------------------------------------------
def _train_loop_per_worker(config: dict) -> dict:
    import tempfile

    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    opts: SfftOptions = config["options"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    torch.manual_seed(opts.seed)
    reporter: Reporter = config["reporter"]
    total_steps: int = config["total_steps"]
    cfg = config["ds_config"]
    micro, accum = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    max_len = opts.max_length
    rows_per_worker = max(1, config["rows"] // world)

    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the base model's tokenizer has no EOS token, so rows cannot be separated")

    # -- data: one pass over this worker's shard per epoch, packed into micro batches ------------------
    shard = ray.train.get_dataset_shard("train")

    def micro_batches(counter: dict):
        """Micro batches of `micro` blocks of max_length tokens (rows joined by EOS).

        counter["rows"]: rows whose last token has been handed out (the epoch's progress);
        counter["rows_read"] / counter["tokens_read"]: rows and tokens tokenized so far."""
        buf: list[int] = []
        chunk: list[list[int]] = []
        row_ends: collections.deque[int] = collections.deque()  # cumulative token offset where each row ends
        tokens_in = tokens_out = 0
        for batch in shard.iter_batches(batch_size=256, batch_format="pyarrow"):
            texts = batch.column(config["text_column"]).to_pylist()
            non_empty = [t for t in texts if t]
            encoded = tokenizer(non_empty, add_special_tokens=False)["input_ids"] if non_empty else []
            it = iter(encoded)
            for t in texts:
                if t:
                    ids = next(it)
                    buf.extend(ids)
                    buf.append(eos)
                    tokens_in += len(ids) + 1
                row_ends.append(tokens_in)
            counter["rows_read"] += len(texts)
            counter["tokens_read"] = tokens_in
            while len(buf) >= max_len:
                chunk.append(buf[:max_len])
                buf = buf[max_len:]
                tokens_out += max_len
                if len(chunk) == micro:
                    while row_ends and row_ends[0] <= tokens_out:
                        row_ends.popleft()
                        counter["rows"] += 1
                    yield torch.tensor(chunk, dtype=torch.long)
                    chunk = []

    # The first epoch's data starts flowing (Ray Data starts its readers, ~10 s on a small machine) while
    # the model loads and DeepSpeed starts.
    first_counter = {"rows": 0, "rows_read": 0, "tokens_read": 0}
    first_epoch = _Prefetched(micro_batches(first_counter))

    import deepspeed
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(config["model_dir"], dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    lr = opts.lr()
    warmup = math.ceil(opts.warmup_ratio * total_steps)
    cfg = fill_schedule(cfg, total_steps=total_steps, warmup_steps=warmup, lr=lr)
    optimizer = scheduler = None
    if uses_client_optimizer(cfg):
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    if cfg.get("scheduler") is None and optimizer is not None:
        def schedule(step: int) -> float:
            """Linear warmup, then linear decay to MIN_LR_FRACTION at the (estimated) last step."""
            if step < warmup:
                return (step + 1) / (warmup + 1)
            span = max(total_steps - warmup, 1)
            return max(MIN_LR_FRACTION, 1.0 - (1.0 - MIN_LR_FRACTION) * (step - warmup) / span)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg,
                                           dist_init_required=False)
    device = engine.device

    # -- resume --------------------------------------------------------------------------------------
    start_step, epoch, skip = 0, 0, 0
    state: dict = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = json.loads(Path(d, STATE_FILE).read_text())
            if state.get("world_size") not in (None, world):
                raise ValueError(f"the checkpoint was written by {state['world_size']} workers, this run has {world}; "
                                 "resume with the same number of workers (or start a new run name)")
            load_path, _ = engine.load_checkpoint(d, tag=DS_TAG)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed found no checkpoint to load in {d}")
        start_step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        if engine.global_steps != start_step:
            raise RuntimeError(f"checkpoint says step {start_step} but DeepSpeed restored step {engine.global_steps}")
        if rank == 0:
            print(f"[byzer-like] resuming from the checkpoint at step {start_step} "
                  f"(epoch {epoch}, skipping {skip} batches of it)", flush=True)
    if rank == 0:
        reporter.start(start_step, total_steps)

    def all_agree(flag: bool) -> bool:
        """True when every worker has a batch (the workers must take the same number of steps)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def global_mean(value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / world

    def save(step_no: int, epoch_no: int, batch_no: int, metrics: dict) -> None:
        """Every rank writes its part of the DeepSpeed checkpoint; Ray Train merges them in storage."""
        with tempfile.TemporaryDirectory(prefix="byzer-sfft-") as tmp:
            engine.save_checkpoint(tmp, tag=DS_TAG, client_state={"step": step_no})
            if rank == 0:
                Path(tmp, STATE_FILE).write_text(json.dumps({
                    "step": step_no, "epoch": epoch_no, "batch_in_epoch": batch_no, "world_size": world,
                    "micro_batch": micro, "gradient_accumulation_steps": accum, "max_length": max_len,
                    "last_loss": metrics.get("loss", metrics.get("final_loss")), "saved_at": time.time()}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step_{step_no:09d}")

    def done() -> bool:
        return opts.max_steps > 0 and step >= opts.max_steps

    step = last_saved = start_step
    batch_in_epoch = skip
    first_loss: float | None = None
    final_loss: float | None = None
    window_loss, window_n, window_micro = 0.0, 0, 0
    tokens_run = 0
    tokens_per_micro = micro * max_len * world
    data_error = None
    refined = False
    t0 = time.monotonic()
    while not done() and (opts.max_steps > 0 or epoch < opts.num_train_epochs):
        if first_epoch is not None:
            gen, counter, first_epoch = first_epoch, first_counter, None
        else:
            counter = {"rows": 0, "rows_read": 0, "tokens_read": 0}
            gen = micro_batches(counter)
        batch_in_epoch = 0
        seen_any = False
        # The last, partial epoch of a fractional num_train_epochs ends after that share of the rows.
        share = opts.num_train_epochs - epoch if opts.max_steps <= 0 and opts.num_train_epochs - epoch < 1 else None
        while not done():
            past_share = share is not None and counter["rows"] / rows_per_worker >= share
            ids = None if past_share else next(gen, None)
            if not all_agree(ids is not None):
                break
            seen_any = True
            batch_in_epoch += 1
            if batch_in_epoch <= skip:
                continue  # trained on before the restart
            ids = ids.to(device)
            out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
            engine.backward(out.loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            window_loss += float(out.loss.detach().float().item())
            window_n += 1
            window_micro += 1
            tokens_run += tokens_per_micro
            if not boundary:
                continue
            step = engine.global_steps
            if first_loss is None:
                first_loss = global_mean(window_loss / window_n)
            if step % opts.logging_steps == 0 or done():
                final_loss = global_mean(window_loss / window_n)
                if rank == 0:
                    seen_share = min(counter["rows"] / rows_per_worker, 1.0)
                    if not refined and opts.max_steps <= 0 and counter["rows_read"]:
                        refined = True  # a better total for the ETA, from the tokens per row seen so far
                        blocks = rows_per_worker * counter["tokens_read"] / counter["rows_read"] / max_len
                        per_epoch = max(1, math.floor(blocks / micro)) / accum
                        reporter.total_steps = max(step, math.ceil(per_epoch * opts.num_train_epochs))
                    reporter.step(step, tokens=window_micro * tokens_per_micro, loss=final_loss,
                                  learning_rate=engine.get_lr()[0], epoch=round(epoch + seen_share, 4))
                window_loss, window_n, window_micro = 0.0, 0, 0
            if step % opts.checkpoint_steps == 0 and not done():
                save(step, epoch, batch_in_epoch, {"step": step, "loss": final_loss, "epoch": epoch})
                last_saved = step
        gen.close()
        if not seen_any and skip == 0:
            data_error = (f"the input table holds too little text for one batch per worker: each of the {world} "
                          f"workers needs at least {micro} x {max_len} tokens (train_micro_batch_size_per_gpu x "
                          "max_length); add text, or lower max_length / the batch size")
            break
        if done():
            break
        epoch += 1
        skip = batch_in_epoch = 0
    if first_epoch is not None:
        first_epoch.close()  # resumed at the end: the prefetched epoch is not needed

    if window_n:  # a partly accumulated last step is not an optimizer step: its loss still counts
        final_loss = global_mean(window_loss / window_n)
    runtime = time.monotonic() - t0
    last_loss = final_loss if final_loss is not None else first_loss
    if last_loss is None:  # resumed at the end: nothing trained in this call
        last_loss = state.get("last_loss")
    metrics = {
        "steps": int(step),
        "tokens": int(tokens_run),
        "first_loss": first_loss if first_loss is not None else last_loss,
        "final_loss": last_loss,
        "train_runtime_s": round(runtime, 3),
        "tokens_per_s": round(tokens_run / runtime, 2) if runtime > 0 else 0.0,
        "resumed_from_step": int(start_step),
    }
    if data_error:
        metrics["error"] = data_error
        ray.train.report(metrics)
        return metrics
    if step > last_saved:
        save(step, epoch, batch_in_epoch, metrics)
    else:
        ray.train.report(metrics)
    _export(engine, tokenizer, config["model_dir"], config["output_dir"], rank)
    return metrics


class _Prefetched:
    """A generator whose first item is computed in a background thread, started at once."""

    _END = object()

    def __init__(self, gen):
        import threading

        self._gen = gen
        self._first: Any = self._END
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="byzer-sfft-prefetch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = next(self._gen, self._END)
        except BaseException as e:  # noqa: BLE001 - raised again in the training thread
            self._error = e

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise self._error
            if self._first is not self._END:
                first, self._first = self._first, self._END
                return first
            raise StopIteration
        return next(self._gen)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._gen.close()


def _export(engine: Any, tokenizer: Any, base_dir: str, output_dir: str, rank: int) -> None:
    """Write the trained weights as a Hugging Face model directory (rank 0; every rank takes part for ZeRO-3)."""
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


__all__ = ["inspect_table", "latest_checkpoint_state", "sfft_train"]
