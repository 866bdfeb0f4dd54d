"""How tables are shown to people: the CLI's lists, the SQL results printed by `byzer-like run` / `sql`,
and the DataFrames a notebook cell shows.

One small formatter for every list: a header row, then aligned columns on a terminal (text left-aligned,
cut with "..." to the terminal's width), or columns separated by tabs when the output goes to a pipe or a
file, for `cut` and `awk`; "(none)" under the header when there is nothing to list. Times are local, `YYYY-MM-DD HH:MM:SS`; whole numbers show
as integers (`2`, never `2.0`). A column of model-call results (`m(llm_param(...))`'s JSON, or Byzer's
`[{"predict": ...}]`) shows as the answers' text unless the raw JSON is asked for (`set llm_show="json"`,
`byzer-like run --raw`); only what is shown changes, never the table. This module imports neither ray nor torch.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # a CLI command that prints no table does not pay for pyarrow
    import pyarrow as pa

NONE = "(none)"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def local_time(epoch: float | None) -> str:
    """Seconds since the epoch as local time, `YYYY-MM-DD HH:MM:SS` ("" for None)."""
    return "" if epoch is None else dt.datetime.fromtimestamp(epoch).strftime(TIME_FORMAT)


def local_timestamp(epoch: float | None) -> dt.datetime | None:
    """Seconds since the epoch as a local wall-clock datetime, to the second (what the SQL tables hold)."""
    return None if epoch is None else dt.datetime.fromtimestamp(int(epoch))


def cell(value: Any) -> str:
    """One value as a table shows it: "" for None, integers without `.0`, 4 significant digits for
    other floats, local times for datetimes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return (value.astimezone() if value.tzinfo else value).strftime(TIME_FORMAT)
    return str(value)


MIN_WIDTH = 12  # a column cut to fit the terminal keeps at least this many characters
ELLIPSIS = "..."


def terminal_width(stream: Any = None) -> int | None:
    """The width in characters of the terminal `stream` (default stdout) writes to: `COLUMNS` when set,
    else the terminal's own size; None for a pipe or file, or a terminal that does not say (nothing is cut)."""
    if os.environ.get("COLUMNS", "").isdigit() and int(os.environ["COLUMNS"]) > 0:
        return int(os.environ["COLUMNS"])
    stream = stream or sys.stdout
    try:
        columns = os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or None


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, its end replaced by "..." when it is longer."""
    return text if len(text) <= width else text[:max(width - len(ELLIPSIS), 0)] + ELLIPSIS


def fit_widths(widths: list[int], total: int | None, gap: int = 2) -> list[int]:
    """Column widths narrowed, widest first and never below MIN_WIDTH (or the column's own width), until a
    line of them with `gap` spaces between fits in `total` characters; unchanged when `total` is None."""
    widths = list(widths)
    if total is None:
        return widths
    while sum(widths) + gap * (len(widths) - 1) > total:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        over = sum(widths) + gap * (len(widths) - 1) - total
        if widths[widest] <= MIN_WIDTH:
            break
        widths[widest] = max(MIN_WIDTH, widths[widest] - over)
    return widths


def align(lines: list[list[str]], *, right: Sequence[bool] = (), width: int | None = None) -> list[str]:
    """Rows of cells as aligned text lines: text columns left-aligned, the columns marked in `right`
    (numbers) right-aligned, two spaces between; cells cut with "..." so that lines fit in `width`."""
    if not lines:
        return []
    n = len(lines[0])
    widths = fit_widths([max(len(line[i]) for line in lines) for i in range(n)], width)
    flags = list(right) + [False] * (n - len(right))
    return ["  ".join(cut(v, w).rjust(w) if r else cut(v, w).ljust(w) for v, w, r in zip(line, widths, flags)).rstrip()
            for line in lines]


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, aligned: bool = True,
                 width: int | None = None) -> str:
    """A header row and one row per item. `aligned`: columns padded to their widest cell (for a
    terminal), left-aligned, cut with "..." to fit `width` characters (a terminal's, `terminal_width`;
    None: never cut), with "(none)" under the header when there are no rows; otherwise tab-separated
    cells (for a pipe) and only the header when there are no rows. Values go through `cell`."""
    lines = [list(header)] + [[cell(v).replace("\t", " ").replace("\n", " ") for v in row] for row in rows]
    if not aligned:
        return "\n".join("\t".join(line) for line in lines)
    text = align(lines, width=width)
    if len(lines) == 1:
        text.append(NONE)
    return "\n".join(text)


SHOW = ("text", "json")  # what `set llm_show` may say: a model call's answer text (default) or its raw JSON
_NOT_AN_ANSWER = object()


def answer_text(value: Any) -> Any:
    """The text to show for one model-call result: `{"output": ..., "metadata": ...}` (this project's form,
    `session/functions.py`) -> its output (an embedding's list as JSON; a failed row's `error: ...`);
    Byzer-LLM's `[{"predict": ..., "metadata": ...}]` -> its predict texts, one per line. Anything else
    (None included) -> `_NOT_AN_ANSWER`."""
    if not isinstance(value, str) or value[:1] not in ("{", "["):
        return _NOT_AN_ANSWER
    try:
        data = json.loads(value)
    except ValueError:
        return _NOT_AN_ANSWER
    if isinstance(data, dict) and "output" in data and ("metadata" in data or "input" in data):
        out = data["output"]
        if out is None:
            return f"error: {data['error']}" if data.get("error") else None
        return out if isinstance(out, str) else json.dumps(out, ensure_ascii=False)
    if isinstance(data, list) and data and all(isinstance(d, dict) and "predict" in d for d in data):
        return "\n".join(d["predict"] if isinstance(d["predict"], str) else json.dumps(d["predict"]) for d in data)
    return _NOT_AN_ANSWER


def answers_shown(frame: Any) -> Any:
    """`frame` (pandas) with each column whose every non-null value is a model-call result (`answer_text`)
    replaced by the answers' text; a new frame, `frame` itself is left as it is."""
    import pandas as pd

    out = frame
    for name in frame.columns:
        column = frame[name]
        if not (pd.api.types.is_string_dtype(column) or pd.api.types.is_object_dtype(column)):
            continue
        texts = [None if _missing(v) else answer_text(v) for v in column]
        if all(t is None for t in texts) or any(t is _NOT_AN_ANSWER for t in texts):
            continue
        if out is frame:
            out = frame.copy()
        out[name] = pd.Series(texts, index=frame.index, dtype=object)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def readable_frame(table: "pa.Table", *, raw: bool = False):
    """`table` as a pandas DataFrame for people: integer columns stay integers when they have NULLs
    (pandas' nullable Int64, not float `2.0`), times with a time zone show in local time, and columns of
    model-call results show the answers' text (`answers_shown`) unless `raw`."""
    import pandas as pd
    import pyarrow as pa

    ints = {t: pd.Int64Dtype() for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())}
    ints.update({t: pd.UInt64Dtype() for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())})
    frame = table.to_pandas(types_mapper=ints.get)
    local = dt.datetime.now().astimezone().tzinfo
    for name, field in zip(frame.columns, table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            frame[name] = frame[name].dt.tz_convert(local).dt.tz_localize(None)
    return frame if raw else answers_shown(frame)


def frame_text(table: "pa.Table", *, width: int | None = None, max_colwidth: int = 80, raw: bool = False) -> str:
    """`table` as printed text (the CLI's SQL results): `readable_frame`'s values through `cell` (model-call
    results as their answers' text unless `raw`), NULLs blank, line breaks shown as `\\n`; text columns
    left-aligned, numbers right-aligned; each cell at most `max_colwidth` characters, and the columns cut
    further to fit `width` (a terminal's; None: not)."""
    import pandas as pd

    frame = readable_frame(table, raw=raw)
    right = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns]

    def shown(v: Any) -> str:
        if v is None or (not isinstance(v, (list, dict)) and not hasattr(v, "__len__") and pd.isna(v)):
            return ""
        return cut(cell(v).replace("\n", "\\n").replace("\t", " "), max_colwidth)

    lines = [[str(c) for c in frame.columns]] + [[shown(v) for v in row] for row in frame.itertuples(index=False)]
    return "\n".join(align(lines, right=right, width=width))


class ProgressLine:
    """One line on stderr that a long step (a GGUF import, a quantization) rewrites as it goes, instead
    of a bar per library stage: `title: what it does now` on a terminal (rewritten at most every
    `interval_s` seconds, cut to the terminal's width), then `done(...)` ends it with a newline. Into a
    pipe or a file, only the `done` line is written: one line whichever the output."""

    def __init__(self, title: str, stream: Any = None, *, interval_s: float = 0.2):
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = 0  # characters on the line now
        self._last = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        """Say what the step does now (`converting tensors 41/272`); on a terminal only."""
        import time

        now = time.monotonic()
        if not self._live or (not force and now - self._last < self.interval_s):
            return
        self._last = now
        self._write(f"{self.title}: {text}", end="")

    def done(self, text: str) -> None:
        """End the line with `title: text` (`done in 24.3 s`) and a newline, on a terminal or not."""
        self._write(f"{self.title}: {text}", end="\n")

    def _write(self, line: str, end: str) -> None:
        width = terminal_width(self.stream) if self._live else None
        if width:
            line = cut(line, width - 1)
        pad = " " * max(self._shown - len(line), 0)
        self.stream.write(("\r" if self._live else "") + line + pad + end)
        self.stream.flush()
        self._shown = 0 if end else len(line)


__all__ = ["NONE", "SHOW", "ProgressLine", "align", "answer_text", "answers_shown", "cell", "cut", "fit_widths", "format_table", "frame_text", "local_time", "local_timestamp",
           "readable_frame", "terminal_width"]
