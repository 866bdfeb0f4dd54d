"""`select`: run by DuckDB over the session's tables, with deployed models as SQL functions.

A model is called as a vectorised DuckDB function: the rows of each vector go to the model's replicas in
concurrent chunks and come back in row order (the runtime's `generate`), so no row is lost or duplicated.
Identical deterministic requests of one select are asked once (`set llm_dedupe`), answers can come from the
result cache (`set llm_cache`), and a row that fails raises with its row number or gives NULL (`set
llm_on_error`). Spark's rule on ambiguous columns holds; a DuckDB error is positioned in the statement.
"""
from __future__ import annotations

import json
import re
import threading
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import duckdb
import pyarrow as pa
from duckdb import sqltypes

from ..errors import ExecutionError, RowError, SqlError, UnknownFunctionError
from ..runtime.evaluation import metric_value
from ..sql import Select, to_duckdb
from . import functions as fx
from .position import error_at
from .result import Result

HELPERS = ("llm_prompt", "llm_stack", "llm_eval", "llm_with_adapter")  # the dialect's functions that call no model


@dataclass
class _Call:
    """Bookkeeping of the model calls of one select (row numbers, progress)."""

    rows: int = 0
    error: BaseException | None = None
    bar: Any = None
    cached: int = 0  # rows taken from the result cache
    computed: int = 0  # rows sent to a model
    shared: int = 0  # rows answered with the answer of an identical request (not sent again)
    known: dict = field(default_factory=dict)  # per model: answers of deterministic requests (runtime.batching)

    def notes(self) -> str:
        """What the select's message says of its model calls (cached and shared rows), or ''."""
        notes = []
        if self.cached:
            notes.append(f"{self.cached} model answers from the result cache, {self.computed} computed")
        if self.shared:
            notes.append(f"{self.shared} duplicate requests answered once: {self.computed - self.shared} sent to the model")
        return f" ({'; '.join(notes)})" if notes else ""


class ModelCalls:
    """The session's model functions: one DuckDB function per deployed model a select calls."""

    def __init__(self, session: Any):
        """`session`: the `Session` whose connection the functions are registered on."""
        self.session = session
        con = session.con
        self.threads = int(con.sql("select current_setting('threads')").fetchall()[0][0])
        self.builtin = {r[0].lower() for r in con.sql("select distinct function_name from duckdb_functions()").fetchall()}
        self.registered: set[str] = set()  # lower-cased names of the functions the session added
        self.call = _Call()

    def prepare(self, names: frozenset[str], s: Select) -> set[str]:
        """Register a DuckDB function for every deployed model the select calls; return those models."""
        unknown = [n for n in names if n not in self.registered and n not in self.builtin]
        models = {n for n in names if n in self.registered and n not in HELPERS}
        if not unknown:
            return models
        # a typo should not start a cluster: with none running, nothing is deployed
        deployed = {m.lower(): m for m in self.session.runtime.deployments(start=False)}
        for n in unknown:
            if n not in deployed:
                listed = ", ".join(sorted(deployed.values())) or "(none)"
                raise error_at(UnknownFunctionError, s, n,
                               f"unknown function {n!r}: not a SQL function, not one of {', '.join(HELPERS)}, "
                               f"and no model of that name is deployed; deployed models: {listed}")
            self.register(deployed[n])
            models.add(n)
        return models

    def register(self, name: str) -> None:
        """Make deployment `name` a SQL function of one VARCHAR (an `llm_param(...)`) returning the answer JSON,
        or, for a reward model (its meta's `kind` is "reward"), the DOUBLE score of the row's pair."""
        if self._kind(name) == "reward":  # each row's llm_param(map("instruction", q, "response", a)) scored
            self._register(name, self.rewards, pa.float64(), sqltypes.DOUBLE)
        else:
            self._register(name, self.answer, pa.string(), sqltypes.VARCHAR)

    def _register(self, name: str, answer: Any, arrow_type: Any, sql_type: Any) -> None:
        """Deployment `name` as a SQL function of one VARCHAR (the llm_param JSON) returning `sql_type`: each
        batch of rows answered by `answer(name, rows)`, in order. An error is kept on `self.call` and re-raised
        (DuckDB would flatten it to text)."""
        def call(params: pa.Array) -> pa.Array:
            try:
                return pa.array(answer(name, params.to_pylist()), type=arrow_type)
            except BaseException as e:  # noqa: BLE001 - kept and re-raised
                self.call.error = e
                raise

        self.session.con.create_function(name, call, [sqltypes.VARCHAR], sql_type, type="arrow",
                                         null_handling="special", side_effects=True)
        self.registered.add(name.lower())

    def _kind(self, name: str) -> str | None:
        """What deployment `name` serves, from its meta (`kind`: "reward", "embedding", ...; None for a chat model
        or a runtime without metadata)."""
        meta = getattr(self.session.runtime, "meta", None)
        if meta is None:
            return None
        return meta(name).get("kind")

    def rewards(self, model: str, params: list[str | None]) -> list[float | None]:
        """One vector of a reward model's function: the rows' `llm_param` JSON in, a score per row out."""
        c = self.call
        pairs = fx.reward_pairs(params)
        asked = [i for i, p in enumerate(pairs) if p is not None]
        out: list[float | None] = [None] * len(params)
        if asked:
            for i, v in zip(asked, self.session.runtime.rewards(model, [pairs[i] for i in asked])):
                out[i] = v
            c.computed += len(asked)
            if c.bar is not None:
                c.bar.update(len(asked))
        c.rows += len(params)
        return out

    def forget(self, name: str) -> None:
        """Deployment `name` was removed: the next select calling it looks it up again."""
        self.registered.discard(name.lower())

    def answer(self, model: str, params: list[str | None]) -> list[str | None]:
        """One vector of a model function: the rows' `llm_param` JSON in, the answer JSON per row out (NULL
        for a NULL request, and for a failed row under `llm_on_error = null`)."""
        session, c = self.session, self.call
        on_error = session.variables.get("llm_on_error", "raise")
        requests, embedding, inputs = fx.build_requests(params)
        out: list[str | None] = [None] * len(params)
        chat = [i for i, r in enumerate(requests) if r is not None and not embedding[i]]
        if chat:
            results = session.runtime.generate(
                model, [requests[i] for i in chat], on_rows=c.bar.update if c.bar is not None else None,
                cache=session.flag("llm_cache"), rows=[c.rows + i for i in chat], on_cached=self._note_cached,
                dedupe=session.flag("llm_dedupe"), on_shared=self._note_shared,
                known=c.known.setdefault(model.lower(), {}))
            c.computed += len(chat)
            for i, res in zip(chat, results):
                if "error" in res and on_error != "null":
                    raise RowError(model, c.rows + i + 1, res["error"], inputs[i])
                out[i] = fx.result_json(requests[i], res)
        embed = [i for i, r in enumerate(requests) if r is not None and embedding[i]]
        if embed:
            vectors = session.runtime.embed(model, [requests[i]["ins"] for i in embed])
            for i, v in zip(embed, vectors):
                out[i] = fx.result_json(requests[i], {"output": v, "metadata": {"dimensions": len(v)}})
        c.rows += len(params)
        return out

    def llm_eval(self, predictions: pa.Array, references: pa.Array, metric_names: pa.Array) -> pa.Array:
        """`llm_eval(prediction, reference, 'rouge_l')`: one row's value of a per-row metric (NULL when an
        argument is NULL). `references` arrive as JSON (the `llm_eval` macro's `to_json`): a text, or a list of
        texts (`array('Paris', 'paris, France')`), of which the best counts."""
        try:
            return pa.array([None if r is None or m is None else metric_value(m, p, json.loads(r))
                             for p, r, m in zip(predictions.to_pylist(), references.to_pylist(),
                                                metric_names.to_pylist())], type=pa.float64())
        except BaseException as e:  # noqa: BLE001 - DuckDB would flatten it to text; kept and re-raised
            self.call.error = e
            raise

    def _note_shared(self, n: int) -> None:
        self.call.shared += n

    def _note_cached(self, n: int) -> None:
        self.call.cached += n
        self.call.computed -= n
        if self.call.bar is not None:
            self.call.bar.update(n)


def select(session: Any, s: Select) -> Result:
    """Run a select in `session` (a `Session`); keep its result as `s.table` when it names one."""
    tr = to_duckdb(s.sql)
    calls = session.models
    models = calls.prepare(tr.functions, s)
    for name in tr.tables:
        session.need_table(name, s)
    _check_ambiguous(session, tr.columns, s)
    calls.call = _Call()
    if models and session.progress:
        from tqdm import tqdm

        calls.call.bar = tqdm(desc="model rows", unit="row", leave=False)
    session.con.execute(f"SET threads={1 if models else calls.threads}")  # one vector at a time: row numbers
    try:
        query = lambda: session.con.sql(tr.sql).to_arrow_table()  # noqa: E731
        # model functions run in this thread, where Ctrl-C reaches them; DuckDB alone runs aside
        table = query() if models else _interruptible(session, query)
    except duckdb.Error as e:
        if calls.call.error is not None:
            raise calls.call.error from None
        raise _explain(session, e, s) from None
    finally:
        if calls.call.bar is not None:
            calls.call.bar.close()
    if s.table:
        session.put(s.table, table)
    return Result("select", table, s.table, f"{s.table or 'result'}: {table.num_rows} rows{calls.call.notes()}",
                  model_rows=calls.call.rows if models else 0)


def _check_ambiguous(session: Any, columns: tuple[tuple[str, tuple[str, ...]], ...], s: Select) -> None:
    """Spark's rule: a column name that a table holds twice (a `select *` over a join, `select 1 as x,
    2 as x`) cannot be referenced; DuckDB would silently read the first one."""
    for column, sources in columns:
        for name in sources:
            if not session.has_table(name):
                continue
            same = [c for c in session.table(name).column_names if c.lower() == column.lower()]
            if len(same) > 1:
                raise error_at(ExecutionError, s, column,
                               f"ambiguous reference to column {column!r}: table {name} has {len(same)} columns of that "
                               f"name (from a join or a select that repeated it); name them apart where {name} is made, "
                               f"e.g. `select a.{column} as a_{column}, b.{column} as b_{column} ...`")


def _interruptible(session: Any, query: Callable[[], pa.Table]) -> pa.Table:
    """Run a DuckDB query in a helper thread while this (main) thread waits, so that Ctrl-C
    interrupts it at once (DuckDB notices signals only now and then while it runs)."""
    if threading.current_thread() is not threading.main_thread():
        return query()
    future = ThreadPoolExecutor(max_workers=1, thread_name_prefix="byzer-like-select").submit(query)
    try:
        return future.result()
    except KeyboardInterrupt:
        while not futures.wait([future], timeout=0.05).done:  # until it stopped (it may not have started yet)
            session.con.interrupt()
        raise


def _explain(session: Any, e: duckdb.Error, s: Select) -> SqlError:
    """DuckDB's error as a SqlError positioned at the name it quotes (an unknown table lists the session's)."""
    message = str(e).split("\n", 1)[0]
    names = re.findall(r'"([^"]+)"', message) or re.findall(r"name (\w+)", message)
    if isinstance(e, duckdb.CatalogException) and "Table with name" in message and names:
        return session.unknown_table(names[0], s)
    return error_at(ExecutionError, s, names[0] if names else None, message)


__all__ = ["HELPERS", "ModelCalls", "select"]
