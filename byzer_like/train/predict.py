"""Predict after training (llm-module's `steps=train,eval,predict`, PaddleNLP's batch predictor): the model a
job trained answers a table, `predictTable="t"`, before the job ends.

The table is stored beside the job's input at submit (`predict.parquet`); once the model is registered, the
runner loads it through the plugin's `init_model` as a replica would (an adapter on its base, a whole model
alone) and answers the rows with the plugin's batched call (`Plugin.batch`, what a replica's chat engine runs
for the chunks of a `select`), `max_batch_size` rows at a time. Each row's request is what

    select m(llm_param(map("instruction", <predictColumn>, "max_new_tokens", <predictMaxNewTokens>,
                           "temperature", 0))) from t

sends (greedy decoding, as a batch predictor decodes), so the answers equal that select's on a deployment of
the registered model. The rows come back in the table's order with one more column, `answer` (the text; NULL for a NULL
prompt or a row the model refused, whose reason is in `answer_error`), in `predictions.parquet` in the job's
folder; the job's metrics name the file (`predictions`) and its rows (`predict_rows`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

from ..config import SetupConfig, chat_request
from ..errors import ConfigError

PREDICT_INPUT = "predict.parquet"  # the predictTable, stored at submit
PREDICTIONS = "predictions.parquet"  # its answers, written by the runner
PROMPT_COLUMNS = ("instruction", "prompt", "question", "input", "text")  # looked for in this order


def prompt_column(table: pa.Table, given: str | None, *, name: str = "predictTable") -> str:
    """The column of `table` whose text the model answers: `given` (predictColumn), else the first of
    PROMPT_COLUMNS the table has. ConfigError naming the table's columns when there is none, or when `given`
    is not a text column of it."""
    columns = table.column_names
    if given:
        if given not in columns:
            raise ConfigError(f"predictColumn {given!r} is not a column of {name}; its columns: {', '.join(columns)}")
        column = given
    else:
        column = next((c for c in PROMPT_COLUMNS if c in columns), None)
        if column is None:
            raise ConfigError(f"{name} has none of the prompt columns {', '.join(PROMPT_COLUMNS)}; its columns: "
                              f"{', '.join(columns)}: name one with predictColumn=\"<column>\"")
    if not (pa.types.is_string(table.schema.field(column).type) or pa.types.is_large_string(table.schema.field(column).type)):
        raise ConfigError(f"{name}'s column {column!r} holds {table.schema.field(column).type}, not text; "
                          "name a text column with predictColumn")
    return column


def check(table: pa.Table, opts: Any) -> None:
    """At submit: the predictTable has rows and a prompt column (ConfigError otherwise)."""
    if table.num_rows == 0:
        raise ConfigError(f"predictTable {opts.predict_table!r} is empty: nothing to predict")
    prompt_column(table, opts.predict_column, name=f"predictTable {opts.predict_table!r}")


def requests(table: pa.Table, column: str, max_new_tokens: int) -> list[dict | None]:
    """One greedy chat request per row (None for a NULL prompt), as a select's llm_param(map(...)) builds it."""
    return [None if text is None else
            chat_request([], {"instruction": text, "max_new_tokens": max_new_tokens, "temperature": 0.0}).model_dump()
            for text in table.column(column).to_pylist()]


def predict(plugin: Any, model_dir: str, infer_params: Mapping[str, str], sys_conf: Mapping[str, str],
            table: pa.Table, *, column: str | None, max_new_tokens: int) -> pa.Table:
    """`table` with `answer` and `answer_error` columns: the model's answers, in row order. The model is
    loaded with `plugin.init_model(model_dir, infer_params, sys_conf)` and released afterwards."""
    setup = SetupConfig.from_sys_conf(sys_conf)
    column = prompt_column(table, column)
    reqs = requests(table, column, max_new_tokens)
    model, tokenizer = plugin.init_model(model_dir, dict(infer_params), dict(sys_conf))
    answers: list[str | None] = [None] * len(reqs)
    errors: list[str | None] = [None] * len(reqs)
    todo = [i for i, r in enumerate(reqs) if r is not None]
    try:
        for start in range(0, len(todo), setup.max_batch_size):
            chunk = todo[start:start + setup.max_batch_size]
            for i, result in zip(chunk, plugin.batch(model, tokenizer, [reqs[i] for i in chunk])):
                answers[i], errors[i] = result.get("output"), result.get("error")
    finally:
        del model, tokenizer
    return table.append_column("answer", pa.array(answers, pa.string())) \
                .append_column("answer_error", pa.array(errors, pa.string()))


def model_to_load(kind: str, model_dir: str, base_model: str) -> tuple[str, dict[str, str]]:
    """(model_dir, infer_params) that load a registered model as `modelTable` deploys it: an adapter on
    its base, a whole model alone."""
    if kind == "adapter":
        return base_model, {"adapter_dir": model_dir}
    return model_dir, {}


def run(plugin: Any, run_dir: Path, opts: Any, kind: str, model_dir: str, base_model: str,
        sys_conf: Mapping[str, str]) -> dict[str, Any]:
    """The runner's predict step: metrics to record (`predictions`, `predict_rows`), {} without a
    predictTable. Writes `run_dir/predictions.parquet`."""
    import pyarrow.parquet as pq

    source = run_dir / PREDICT_INPUT
    if not source.is_file():
        return {}
    load_dir, infer = model_to_load(kind, model_dir, base_model)
    out = predict(plugin, load_dir, infer, sys_conf, pq.read_table(source), column=opts.predict_column,
                  max_new_tokens=opts.predict_max_new_tokens)
    target = run_dir / PREDICTIONS
    pq.write_table(out, target)
    print(f"[byzer-like] predicted {out.num_rows} row(s) of {opts.predict_table} -> {target}", flush=True)
    return {"predictions": str(target), "predict_rows": out.num_rows}


__all__ = ["PREDICTIONS", "PREDICT_INPUT", "PROMPT_COLUMNS", "check", "model_to_load", "predict", "prompt_column",
           "requests", "run"]
