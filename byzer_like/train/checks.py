"""Checks a training task runs before its job is submitted (named in `byzer_like.tasks.TASKS`).

Each takes `(options, table, base_dir, plugin, setup)`: the parsed options model, the input table
(pyarrow), the base model's directory, the `plugins.registry.Plugin` and the `config.SetupConfig` the job
runs with, and raises ConfigError for data or settings the run would fail on, so a bad job never starts.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..errors import ConfigError
from . import data as D

SAMPLE_ROWS = 2000  # rows tokenized up front to find examples longer than max_seq_length


def check_sft(opts: Any, table: pa.Table, base_dir: str, plugin: Any, setup: Any) -> None:
    """The table has a known sft form and its first SAMPLE_ROWS rows tokenize within max_seq_length."""
    from .methods import check_method
    from .sft import prepare_tokenizer, stop_token_ids

    check_method(opts, base_dir)
    form = D.sft_form(table.column_names)
    sample = table.slice(0, min(table.num_rows, SAMPLE_ROWS)).to_pylist()
    convs = D.conversations(sample, form)
    target = plugin.target
    tok = prepare_tokenizer(base_dir, getattr(target, "fallback_chat_template", None), getattr(opts, "template", None))
    stops = stop_token_ids(base_dir, tok, getattr(target, "stop_tokens", ()))
    D.encode_all(tok, convs, opts.max_seq_length, stops)


def check_sfft(opts: Any, table: pa.Table, base_dir: str, plugin: Any, setup: Any) -> None:
    """A text column, at least one row per worker, and a DeepSpeed config that fits the workers."""
    from .ds_config import validate_deepspeed_config

    D.text_column(table.schema, opts.text_column)
    workers = setup.num_workers
    if table.num_rows < workers:
        raise ConfigError(f"the input table has {table.num_rows} row(s), fewer than the {workers} training "
                          "workers; add rows or use fewer workers")
    validate_deepspeed_config(opts.deepspeed_config, opts, num_workers=workers, on_gpu=setup.gpus_per_worker > 0)
