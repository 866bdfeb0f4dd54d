"""What a plugin's `sft_train` / `sfft_train` receives, unpacked.

The job runner calls `plugin.sft_train(data_refs, train_params, sys_conf)` as the contract says:
`data_refs` is a list with the path of the input table (parquet, written once by the client),
`train_params` the user's `where` keys plus `byzer.*` keys that say where this run lives (`byzer.options`:
the task's options model as the job stored it at submit; for a TableRepartition'ed table,
`byzer.partitions`: its partition sizes), `sys_conf` the setup. Each is read here once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..config import SetupConfig, parse_bool
from ..errors import ConfigError
from ..tasks import get as get_task
from .options import TrainOptions
from .progress import Reporter

INTERNAL = "byzer."


@dataclass
class TrainContext:
    """A training entry point's arguments, unpacked: the options model, where the data, base model, output
    and run folder are, whether to resume, the workers' resources and the progress reporter."""

    options: TrainOptions
    data_path: str
    model_dir: str
    output_dir: str
    run_dir: str
    run_name: str
    resume: bool
    num_workers: int
    cpus: float
    gpus: float
    reporter: Reporter
    partitions: list[int] | None = None  # the input table's partition sizes (TableRepartition), in row order

    @classmethod
    def from_call(cls, kind: str, data_refs: Sequence[Any], train_params: Mapping[str, Any],
                  sys_conf: Mapping[str, Any]) -> "TrainContext":
        """The arguments of `<kind>_train(data_refs, train_params, sys_conf)`; ConfigError when they are not
        a job runner's (no `byzer.model_dir` / `output_dir` / `run_dir`, data_refs not one path)."""
        internal = {k[len(INTERNAL):]: v for k, v in train_params.items() if k.startswith(INTERNAL)}
        user = {k: v for k, v in train_params.items() if not k.startswith(INTERNAL)}
        refs = list(data_refs or [])
        if len(refs) != 1 or not isinstance(refs[0], str):
            raise ConfigError(f"{kind}_train expects data_refs = [path of the input table (parquet)], got {refs!r}")
        for key in ("model_dir", "output_dir", "run_dir"):
            if not internal.get(key):
                raise ConfigError(f"{kind}_train needs train_params['byzer.{key}']")
        setup = SetupConfig.from_sys_conf(sys_conf)
        stored = json.loads(internal["options"]) if internal.get("options") else None
        return cls(
            options=get_task(kind).stored_options(stored, user),
            data_path=refs[0],
            model_dir=str(internal["model_dir"]),
            output_dir=str(internal["output_dir"]),
            run_dir=str(internal["run_dir"]),
            run_name=str(internal.get("job_id") or "run"),
            resume=parse_bool(internal.get("resume", False)),
            num_workers=setup.num_workers,
            cpus=setup.cpus_per_worker,
            gpus=setup.gpus_per_worker,
            reporter=Reporter(internal.get("workspace"), internal.get("job_id")),
            partitions=_sizes(internal.get("partitions")),
        )


def _sizes(value: Any) -> list[int] | None:
    """`byzer.partitions` (a JSON list of partition sizes, or a list) -> ints; None when not given."""
    if value in (None, ""):
        return None
    sizes = json.loads(value) if isinstance(value, str) else value
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise ConfigError(f"train_params['byzer.partitions'] must be a JSON list of partition sizes, got {value!r}")
    return sizes


__all__ = ["INTERNAL", "TrainContext"]
