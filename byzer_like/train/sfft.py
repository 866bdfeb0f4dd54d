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
from the parquet file itself (`assign_partitions`, `_PartitionShard`).

Evaluation: with an evalTable (`<run_dir>/eval.parquet`, written by the job), every `eval_steps` optimizer
steps (default: logging_steps) and at the end the workers measure evalMetrics on the model being trained
(`train.evaluation.TrainingEval`: perplexity by default, generation metrics on prompt + reference rows),
each rank a share of the rows; rank 0 reports `eval_<metric>` (and `eval_loss`, the held-out mean token
negative log-likelihood, beside the training loss) to the job's progress and history.

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
from typing import Any, Sequence

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
               reporter: Reporter | None = None, partition_sizes: Sequence[int] | None = None) -> dict:
    """Continue pretraining the model in `model_dir` on the text table in `data_path` (parquet).

    Returns {"model_dir": output_dir, "metrics": {steps, tokens, first_loss, final_loss, train_runtime_s,
    tokens_per_s, resumed_from_step}}, plus the last evaluation's `eval_<metric>` with an evalTable
    (`<run_dir>/eval.parquet`) and `keep_partition_num` (partitions and rows per worker) when whole
    partitions were kept. `steps` counts optimizer steps since the run began (across resumes); `tokens`,
    the losses and the rates cover this call only. `partition_sizes`: rows per partition, in row order
    (TableRepartition's), used with keepPartitionNum. Raises ConfigError (before any worker starts) for a
    bad option, DeepSpeed config, table or eval table, and RuntimeError when training fails.
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
    placement = _placement(options, partition_sizes, table["num_rows"], num_workers)
    evaluator = _training_eval(Path(run_dir) / "eval.parquet", options)
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

    datasets: dict[str, Any] = {}
    data_config = None
    if placement is None:
        datasets["train"] = _read_parquet(data_path, table["text_column"])
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
        "data_path": data_path,
        "placement": placement,  # per worker: [(partition, first row, rows)], or None: Ray Data's split
        "evaluator": evaluator,
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
        datasets=datasets or None,
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
    if "epoch" in metrics:  # where the run ended in its data (not when it resumed at its end)
        out["epoch"] = metrics["epoch"]
    out.update({k: v for k, v in metrics.items() if k.startswith("eval_")})
    if placement is not None:
        out["keep_partition_num"] = {"partitions": len(partition_sizes or ()),
                                     "partitions_per_worker": [[p for p, _, _ in w] for w in placement],
                                     "rows_per_worker": [sum(n for _, _, n in w) for w in placement]}
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


def assign_partitions(sizes: Sequence[int], num_workers: int) -> list[list[tuple[int, int, int]]]:
    """Whole partitions per worker: partition i (the `sizes[i]` rows after those of partitions 0..i-1)
    goes to worker i % num_workers. Returns, per worker, its (partition, first row, rows) in order;
    empty partitions are left out."""
    placement: list[list[tuple[int, int, int]]] = [[] for _ in range(num_workers)]
    start = 0
    for i, n in enumerate(sizes):
        if n:
            placement[i % num_workers].append((i, start, int(n)))
        start += int(n)
    return placement


def _placement(options: SfftOptions, sizes: Sequence[int] | None, num_rows: int,
               num_workers: int) -> list[list[tuple[int, int, int]]] | None:
    """keepPartitionNum's assignment of whole partitions to workers (`assign_partitions`), logged; None
    (Ray Data splits the rows) without keepPartitionNum or without a recorded partitioning. ConfigError
    when the sizes do not match the table or a worker would get no rows."""
    if not options.keep_partition_num:
        return None
    if sizes is None:
        print("[byzer-like] keepPartitionNum: the input table has no recorded partitioning (make it with "
              "`run <t> as TableRepartition.`` where partitionNum=\"N\" as <t2>;`); its rows are split across the "
              "workers as usual", flush=True)
        return None
    if sum(sizes) != num_rows:
        raise ConfigError(f"keepPartitionNum: the partitions hold {sum(sizes)} rows, the input table {num_rows}")
    placement = assign_partitions(sizes, num_workers)
    idle = [w for w, parts in enumerate(placement) if not parts]
    if idle:
        raise ConfigError(f"keepPartitionNum: {len(sizes)} partitions ({sum(1 for n in sizes if n)} not empty) leave "
                          f"worker(s) {', '.join(map(str, idle))} of {num_workers} without rows; repartition into at "
                          "least as many non-empty partitions as workers, or use fewer workers")
    rows = [sum(n for _, _, n in parts) for parts in placement]
    shown = "; ".join(f"worker {w}: partitions {', '.join(str(p) for p, _, _ in parts)} ({rows[w]} rows)"
                      for w, parts in enumerate(placement))
    print(f"[byzer-like] keepPartitionNum: {len(sizes)} partitions kept whole, partition i -> worker i % "
          f"{num_workers}: {shown}", flush=True)
    if max(rows) > 2 * min(rows):
        print(f"[byzer-like] note: the workers' rows are uneven ({min(rows)} to {max(rows)}): an epoch ends when the "
              "worker with the least text runs out", flush=True)
    return placement


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
        self.engine = _build_engine(self.config["model_dir"], self.opts, self.config["ds_config"], self.total_steps)
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


def _build_engine(model_dir: str, opts: SfftOptions, ds_config: dict, total_steps: int) -> Any:
    """The causal LM in `model_dir` (float32, no KV cache) wrapped in a DeepSpeed engine.

    The schedule (`total_steps` optimizer steps, warmup_ratio of them warming up) is filled into
    `ds_config`. Unless the config names DeepSpeed's own optimizer, an AdamW is built here (weight decay
    on the parameters with >= 2 dimensions only) and, unless it names a scheduler, `_lr_factor`'s schedule."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    lr = opts.lr()
    warmup = math.ceil(opts.warmup_ratio * total_steps)
    cfg = fill_schedule(ds_config, total_steps=total_steps, warmup_steps=warmup, lr=lr)
    optimizer = scheduler = None
    if uses_client_optimizer(cfg):
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    if cfg.get("scheduler") is None and optimizer is not None:
        # A plain function (not a callable object or bound method): LambdaLR's state_dict, saved in the
        # DeepSpeed checkpoint, leaves it out, so a resumed run follows its own total_steps.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg,
                                           dist_init_required=False)
    return engine


def _lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """The LR multiplier (of the peak LR) at 0-based optimizer step `step`: linear warmup over `warmup`
    steps, then linear decay to MIN_LR_FRACTION at the (estimated) last step `total_steps`, flat after."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total_steps - warmup, 1)
    return max(MIN_LR_FRACTION, 1.0 - (1.0 - MIN_LR_FRACTION) * (step - warmup) / span)


class _ShardPass:
    """One epoch: a pass over this worker's shard of the table, as micro batches of packed token blocks.

    Iterating yields int64 tensors of shape [micro, max_len]: each non-empty row's token ids followed by
    EOS, joined into one stream and cut into max_len-token blocks, `micro` blocks a batch; the tail that
    fills no micro batch is dropped. Counters, updated as it goes: `rows` (rows whose last token has been
    handed out: the epoch's progress), `rows_read` and `tokens_read` (rows and tokens, EOS included,
    tokenized so far). With `prefetch` the first micro batch is computed at once in a background thread.
    `close()` ends the pass early.
    """

    def __init__(self, shard: Any, tokenizer: Any, text_column: str, *, max_len: int, micro: int,
                 prefetch: bool = False):
        self.rows = self.rows_read = self.tokens_read = 0
        self._shard, self._tokenizer, self._column = shard, tokenizer, text_column
        self._max_len, self._micro = max_len, micro
        batches = self._batches()
        self._it = _Prefetched(batches) if prefetch else batches

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self) -> None:
        """End the pass (waits for a prefetch in flight)."""
        self._it.close()

    def _batches(self):
        import torch

        max_len, micro, eos = self._max_len, self._micro, self._tokenizer.eos_token_id
        buf: list[int] = []
        chunk: list[list[int]] = []
        row_ends: collections.deque[int] = collections.deque()  # cumulative token offset where each row ends
        tokens_in = tokens_out = 0
        for batch in self._shard.iter_batches(batch_size=256, batch_format="pyarrow"):
            texts = batch.column(self._column).to_pylist()
            non_empty = [t for t in texts if t]
            encoded = self._tokenizer(non_empty, add_special_tokens=False)["input_ids"] if non_empty else []
            it = iter(encoded)
            for t in texts:
                if t:
                    ids = next(it)
                    buf.extend(ids)
                    buf.append(eos)
                    tokens_in += len(ids) + 1
                row_ends.append(tokens_in)
            self.rows_read += len(texts)
            self.tokens_read = tokens_in
            while len(buf) >= max_len:
                chunk.append(buf[:max_len])
                buf = buf[max_len:]
                tokens_out += max_len
                if len(chunk) == micro:
                    while row_ends and row_ends[0] <= tokens_out:
                        row_ends.popleft()
                        self.rows += 1
                    yield torch.tensor(chunk, dtype=torch.long)
                    chunk = []


class _PartitionShard:
    """A worker's whole partitions (keepPartitionNum), iterated like a Ray Data shard (`iter_batches`).

    `ranges`: (partition, first row, rows) in the table's row order (`assign_partitions`). The text
    column is read from the parquet table once, with pyarrow; batches never mix two partitions, and the
    rows of each come in their order."""

    def __init__(self, data_path: str, column: str, ranges: Sequence[tuple[int, int, int]]):
        self.data_path, self.column, self.ranges = data_path, column, list(ranges)
        self._table: Any = None

    def iter_batches(self, *, batch_size: int = 256, batch_format: str = "pyarrow", **_: Any):
        """pyarrow tables of at most `batch_size` rows, partition after partition."""
        if batch_format != "pyarrow":
            raise ValueError("only pyarrow batches are produced")
        if self._table is None:
            import pyarrow.dataset as pads

            self._table = pads.dataset(self.data_path, format="parquet").to_table(columns=[self.column])
        for _, start, rows in self.ranges:
            for k in range(0, rows, batch_size):
                yield self._table.slice(start + k, min(batch_size, rows - k))


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


__all__ = ["assign_partitions", "inspect_table", "latest_checkpoint_state", "sfft_train"]
