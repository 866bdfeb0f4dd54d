"""IPython / Jupyter integration: `%load_ext byzer_like`, then

    %%byzer
    !byzerllm setup "num_workers=2";
    run command as LLM.`` where action="infer" and pretrainedModelType="llama"
        and localModelDir="models/smollm2" and udfName="smol_chat";
    load json.`quickstart/data/questions.jsonl` as questions;
    select task, llm_result(smol_chat(llm_param(map("instruction", task, "max_new_tokens", 48)))) as answer
    from questions as answers;

A cell runs as one script: each statement prints one line as it finishes (`kind: message (seconds[,
rows/s])`, rows/s for a select that called models), and the cell shows the last statement's table as a
pandas DataFrame; a column of model-call results shows the answers' text (`set llm_show="json";` shows
their JSON; the session's tables keep the JSON either way). `%byzer <statement>` runs one statement. Tables
and `set` variables live in one session per kernel: `byzer_like.notebook.session()`.

The whole cell is checked before its first statement runs (see `byzer_like.session.check`). A statement
that fails raises `CellError` after the lines of the statements before it, so that a notebook run
(nbclient, papermill, `jupyter nbconvert --execute`) stops at that cell; the notebook shows the error's
message alone (with its line and column), without a traceback into byzer-like. `CellError.error.results`
holds the results that finished before it.
"""
from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class

from . import logs
from .display import readable_frame
from .errors import ByzerError

_session = None


class CellError(ByzerError):
    """A `%%byzer` cell's statement failed with `error` (a ByzerError). IPython shows it as the
    error's message alone (`_render_traceback_`), and a notebook run stops at the cell."""

    def __init__(self, error: ByzerError):
        super().__init__(str(error))
        self.error = error

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the error's kind and message."""
        return f"{type(self.error).__name__}: {self.error}".splitlines()


def session():
    """The kernel's SQL session (created on first use; it joins or starts a Ray cluster when a
    statement first needs one)."""
    global _session
    if _session is None:
        from .session import Session
        from .runtime import Runtime

        _session = Session(Runtime(announce=True))
    return _session


@magics_class
class ByzerMagics(Magics):
    @line_cell_magic
    def byzer(self, line: str, cell: str | None = None) -> Any:
        """Run Byzer-LLM SQL: the cell (or the line) as a script; return the last table as a DataFrame."""
        script = cell if cell is not None else line
        try:
            results = session().sql(script, on_result=lambda i, r: print(_line(r), flush=True))
        except ByzerError as e:  # the cell fails; shown without a traceback into byzer-like
            raise CellError(e) from None
        if not results or results[-1].table is None:
            return None
        return readable_frame(results[-1].table, raw=session().variables.get("llm_show") == "json")


def _line(result: Any) -> str:
    """A finished statement's line: `kind: message (seconds[, rows/s])`."""
    timing = result.timing()
    return (f"{result.kind}: {result.message}" if result.message else result.kind) + (f" ({timing})" if timing else "")


def load_ipython_extension(ipython: Any) -> None:
    """Register `%%byzer` / `%byzer`; from here on the kernel shows byzer-like's output and real
    warnings, not the libraries' log lines (`BYZER_LIKE_LOG=debug` shows them, see `byzer_like.logs`)."""
    logs.configure()
    ipython.register_magics(ByzerMagics)
