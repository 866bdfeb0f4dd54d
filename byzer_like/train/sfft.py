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

With keepPartitionNum="true" and a table that TableRepartition split (`partition_sizes`), Ray Data is
not used: partition i goes whole to worker i % num_workers, which reads its partitions' rows, in order,
from the parquet file itself (`sfft_data.assign_partitions`, `sfft_data._PartitionShard`).

Evaluation: with an evalTable (`<run_dir>/eval.parquet`, written by the job), every `eval_steps` optimizer
steps (default: logging_steps) and at the end the workers measure evalMetrics on the model being trained
(`train.evaluation.TrainingEval`: perplexity by default, generation metrics on prompt + reference rows),
each rank a share of the rows; rank 0 reports `eval_<metric>` (and `eval_loss`, the held-out mean token
negative log-likelihood, beside the training loss) to the job's progress and history.

At the end rank 0 writes a plain Hugging Face model directory (full weights, gathered from ZeRO-3
partitions when needed, safetensors) plus the base model's tokenizer and generation config.

This module is the driver: `sfft_train` and its checks. The table's side (metadata, partition placement,
the workers' packed micro batches) is in `sfft_data`, a worker's run (engine, loop, checkpoints, export) in
`sfft_worker`.

torch, deepspeed, transformers and ray are imported inside the functions.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .ds_config import place_monitors, validate_deepspeed_config
from .options import SfftOptions
from .progress import Reporter
from .sfft_data import _placement, _read_parquet, inspect_table
from .sfft_worker import STATE_FILE, _train_loop_per_worker

BYTES_PER_TOKEN = 3.5  # for the step estimate before any text is seen (the reporter refines it)


def sfft_train(*, model_dir: str, data_path: str, output_dir: str, run_dir: str, run_name: str,
               options: SfftOptions, num_workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
               reporter: Reporter | None = None, partition_sizes: Sequence[int] | None = None,
               target_modules: Sequence[str] = ()) -> dict:
    """Continue pretraining the model in `model_dir` on the text table in `data_path` (parquet): every weight
    (method full; `output_dir` holds a whole model) or a LoRA adapter over the frozen base (method lora, on
    `options.lora_target_modules`, else `target_modules` (the plugin's), else every linear layer; `output_dir`
    holds the adapter, as sft's LoRA writes it).

    Returns {"model_dir": output_dir, "metrics": {steps, tokens, first_loss, final_loss, train_runtime_s,
    tokens_per_s, resumed_from_step}}, plus the last evaluation's `eval_<metric>` with an evalTable
    (`<run_dir>/eval.parquet`) and `keep_partition_num` (partitions and rows per worker) when whole
    partitions were kept. `steps` counts optimizer steps since the run began (across resumes); `tokens`,
    the losses and the rates cover this call only. `partition_sizes`: rows per partition, in row order
    (TableRepartition's), used with keepPartitionNum. Raises ConfigError (before any worker starts) for a
    bad option, DeepSpeed config, table or eval table, and RuntimeError when training fails.
    """
    t_start = time.monotonic()
    _check_scaling(num_workers, cpus_per_worker, gpus_per_worker, run_name)
    on_gpu = gpus_per_worker > 0
    model_dir, data_path = os.path.abspath(model_dir), os.path.abspath(data_path)
    output_dir, run_dir = os.path.abspath(output_dir), os.path.abspath(run_dir)
    _check_model_dir(model_dir)
    _check_output_dir(output_dir)
    table = inspect_table(data_path, options.text_column)
    if table["num_rows"] < num_workers:
        raise ConfigError(f"the input table has {table['num_rows']} row(s), fewer than the {num_workers} training "
                          "workers; add rows or use fewer workers")
    placement = _placement(options, partition_sizes, table["num_rows"], num_workers)
    evaluator = _training_eval(Path(run_dir) / "eval.parquet", options)
    ds_config = validate_deepspeed_config(options.deepspeed_config, options, num_workers=num_workers, on_gpu=on_gpu)
    ds_config = place_monitors(ds_config, run_dir, run_name)
    total_steps = _total_steps(table, ds_config, options, num_workers)
    storage = os.path.join(run_dir, "ray_train")
    previous = _previous_run(os.path.join(storage, run_name), run_name, run_dir, options, num_workers,
                             micro=ds_config["train_micro_batch_size_per_gpu"])

    _start_ray(storage, run_name, previous)
    datasets, data_config = _ray_datasets(placement, data_path, table["text_column"])
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
        "data_path": data_path,
        "placement": placement,  # per worker: [(partition, first row, rows)], or None: Ray Data's split
        "evaluator": evaluator,
        "target_modules": list(target_modules),
    }
    result = _fit(_trainer(train_config, run_name=run_name, storage=storage, options=options, num_workers=num_workers,
                           on_gpu=on_gpu, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                           datasets=datasets, data_config=data_config))
    out = _run_metrics(result, placement, partition_sizes)
    print(f"[byzer-like] sfft run {run_name!r}: trained from step {out['resumed_from_step']} to {out['steps']} "
          f"in {time.monotonic() - t_start:.1f} s (loss {out['first_loss']} -> {out['final_loss']}); "
          f"model written to {output_dir}", flush=True)
    return {"model_dir": output_dir, "metrics": out}


def _check_scaling(num_workers: int, cpus_per_worker: float, gpus_per_worker: float, run_name: str) -> None:
    """ConfigError unless num_workers is an integer >= 1, cpus_per_worker > 0, gpus_per_worker >= 0 and
    run_name a plain name (it names a folder under `<run_dir>/ray_train/`)."""
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ConfigError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not (cpus_per_worker > 0):
        raise ConfigError(f"cpus_per_worker must be > 0, got {cpus_per_worker!r}")
    if not (gpus_per_worker >= 0):
        raise ConfigError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise ConfigError(f"run_name must be a plain name (no '/'), got {run_name!r}")


def _total_steps(table: dict, ds_config: dict, options: SfftOptions, num_workers: int) -> int:
    """Optimizer steps of the run: max_steps when > 0, else num_train_epochs x an estimate of the steps per
    epoch from `inspect_table`'s text size (BYTES_PER_TOKEN bytes a token, one EOS a row, per worker,
    in max_length-token blocks of micro batch x accumulation), at least 1."""
    micro, accum = ds_config["train_micro_batch_size_per_gpu"], ds_config["gradient_accumulation_steps"]
    est_tokens_per_worker = (table["text_bytes"] / BYTES_PER_TOKEN + table["num_rows"]) / num_workers
    steps_per_epoch_est = max(1, math.ceil(est_tokens_per_worker / options.max_length / micro / accum))
    if options.max_steps > 0:
        return options.max_steps
    return max(1, math.ceil(options.num_train_epochs * steps_per_epoch_est))


def _previous_run(run_path: str, run_name: str, run_dir: str, options: SfftOptions, num_workers: int, *,
                  micro: int) -> dict | None:
    """The state of the run's latest checkpoint (`latest_checkpoint_state`), None for a new run. ConfigError
    when another number of workers wrote it (its ZeRO checkpoint is split that way); a note on stderr when
    max_length or the micro batch (`micro`, rows of max_length tokens) changed since."""
    previous = latest_checkpoint_state(run_path)
    if previous and previous.get("world_size") not in (None, num_workers):
        raise ConfigError(f"sfft run {run_name!r} in {run_dir} was trained by {previous['world_size']} workers and its "
                          f"ZeRO checkpoint is split that way; resume it with num_workers={previous['world_size']}, "
                          "or give a new run name to start over")
    if previous and (previous.get("max_length"), previous.get("micro_batch")) != (options.max_length, micro):
        print(f"[byzer-like] note: sfft run {run_name!r} continues with max_length={options.max_length} and micro batch "
              f"{micro} (it was {previous.get('max_length')} and {previous.get('micro_batch')}): the batches skipped "
              "in the current epoch are counted in the new size", file=sys.stderr, flush=True)
    return previous


def _start_ray(storage: str, run_name: str, previous: dict | None) -> None:
    """Connect to Ray (unless this process is connected), make the run's `storage` folder and say whether the
    run starts at step 0 or resumes from `previous`, its latest checkpoint's state."""
    import ray

    if not ray.is_initialized():
        from ..cluster import connect

        connect()
    os.makedirs(storage, exist_ok=True)
    if previous:
        print(f"[byzer-like] sfft run {run_name!r}: a checkpoint at step {previous['step']} exists "
              f"(epoch {previous['epoch']}, batch {previous['batch_in_epoch']}); training resumes from it", flush=True)
    else:
        print(f"[byzer-like] sfft run {run_name!r}: no checkpoint yet; training starts from step 0", flush=True)


def _ray_datasets(placement: list | None, data_path: str, column: str) -> tuple[dict[str, Any], Any]:
    """The trainer's datasets and DataConfig: ({}, None) with keepPartitionNum's `placement` (the workers read
    their partitions themselves); else the table's `column` as the Ray Dataset "train", handed out in a fixed
    order."""
    if placement is not None:
        return {}, None
    from ray.train import DataConfig

    datasets = {"train": _read_parquet(data_path, column)}
    with warnings.catch_warnings():  # Ray's own defaults pass a deprecated option (exclude_resources)
        warnings.simplefilter("ignore")
        ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same rows reach the same worker in the same order after a restart
    return datasets, DataConfig(execution_options=ingest, enable_shard_locality=False)


def _trainer(train_config: dict, *, run_name: str, storage: str, options: SfftOptions, num_workers: int,
             on_gpu: bool, cpus_per_worker: float, gpus_per_worker: float, datasets: dict[str, Any],
             data_config: Any) -> Any:
    """The run's TorchTrainer: `num_workers` workers, each running `_train_loop_per_worker(train_config)` on
    `cpus_per_worker` CPUs (and `gpus_per_worker` GPUs when `on_gpu`), restarted up to maxFailures times,
    keeping saveTotalLimit checkpoints in `storage`/`run_name`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": float(cpus_per_worker)}
    if on_gpu:
        resources["GPU"] = float(gpus_per_worker)
    env_vars = {k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR", "RAY_TRAIN_V2_ENABLED") if os.environ.get(k)}
    env_vars.setdefault("TOKENIZERS_PARALLELISM", "false")
    return TorchTrainer(
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
        datasets=datasets or None,
        dataset_config=data_config,
    )


def _fit(trainer: Any) -> Any:
    """Run `trainer` to its end; returns Ray Train's Result. RuntimeError (`_failure_message`) when it fails.

    fit() installs a SIGINT handler holding the run's controller actor, which keeps the controller (and
    the dataset's SplitCoordinator) alive until the process ends: the old handler is put back afterwards."""
    import ray.train

    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(_failure_message(e)) from None
    finally:
        if main_thread and previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        del trainer


def _run_metrics(result: Any, placement: list | None, partition_sizes: Sequence[int] | None) -> dict:
    """The metrics `sfft_train` returns, from rank 0's return value (`_WorkerRun.run`; Ray's last reported
    metrics when there is none), with keepPartitionNum's partitions and rows per worker. ConfigError for the
    workers' data error (too little text for one micro batch)."""
    metrics = result.return_value if isinstance(result.return_value, dict) else dict(result.metrics or {})
    if metrics.get("error"):
        raise ConfigError(metrics["error"])
    out = {k: metrics.get(k) for k in ("steps", "tokens", "first_loss", "final_loss", "train_runtime_s",
                                       "tokens_per_s", "resumed_from_step")}
    if "epoch" in metrics:  # where the run ended in its data (not when it resumed at its end)
        out["epoch"] = metrics["epoch"]
    out.update({k: v for k, v in metrics.items() if k.startswith("eval_")})
    if placement is not None:
        out["keep_partition_num"] = {"partitions": len(partition_sizes or ()),
                                     "partitions_per_worker": [[p for p, _, _ in w] for w in placement],
                                     "rows_per_worker": [sum(n for _, _, n in w) for w in placement]}
    return out


# -- driver-side checks ------------------------------------------------------------------------------
def _training_eval(eval_path: Path, options: SfftOptions) -> Any:
    """The evalTable at `eval_path` with evalMetrics (`train.evaluation.TrainingEval`), checked here on the
    driver; None without one."""
    if not eval_path.is_file():
        if options.eval_table:
            print(f"[byzer-like] evalTable={options.eval_table!r} was not stored with this run ({eval_path} is "
                  "missing): nothing is evaluated", file=sys.stderr, flush=True)
        return None
    import pyarrow.parquet as pq

    from .evaluation import TrainingEval

    return TrainingEval.from_table(pq.read_table(eval_path), metrics=options.eval_metric_names(),
                                   max_new_tokens=options.eval_max_new_tokens, max_length=options.max_length,
                                   name=options.eval_table, default=(options.default_eval_metrics,))


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


__all__ = ["latest_checkpoint_state", "sfft_train"]
