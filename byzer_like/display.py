"""How tables are shown to people: the CLI's lists, the SQL results printed by `byzer-like run` / `sql`,
and the DataFrames a notebook cell shows.

One small formatter for every list: a header row, then aligned columns on a terminal (or columns
separated by tabs when the output goes to a pipe or a file, for `cut` and `awk`); "(none)" under the
header when there is nothing to list. Times are local, `YYYY-MM-DD HH:MM:SS`; whole numbers show
as integers (`2`, never `2.0`). This module imports neither ray nor torch.
"""
from __future__ import annotations

import datetime as dt
import math
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


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, aligned: bool = True) -> str:
    """A header row and one row per item. `aligned`: columns padded to their widest cell (for a
    terminal), with "(none)" under the header when there are no rows; otherwise tab-separated cells
    (for a pipe) and only the header when there are no rows. Values go through `cell`."""
    lines = [list(header)] + [[cell(v).replace("\t", " ").replace("\n", " ") for v in row] for row in rows]
    if not aligned:
        return "\n".join("\t".join(line) for line in lines)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    if len(lines) == 1:
        text.append(NONE)
    return "\n".join(text)


def readable_frame(table: "pa.Table"):
    """`table` as a pandas DataFrame for people: integer columns stay integers when they have NULLs
    (pandas' nullable Int64, not float `2.0`) and times with a time zone show in local time."""
    import pandas as pd
    import pyarrow as pa

    ints = {t: pd.Int64Dtype() for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())}
    ints.update({t: pd.UInt64Dtype() for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())})
    frame = table.to_pandas(types_mapper=ints.get)
    local = dt.datetime.now().astimezone().tzinfo
    for name, field in zip(frame.columns, table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            frame[name] = frame[name].dt.tz_convert(local).dt.tz_localize(None)
    return frame


def frame_text(table: "pa.Table") -> str:
    """`table` as printed text (the CLI's SQL results): `readable_frame`'s columns, NULLs blank."""
    frame = readable_frame(table)
    for name in frame.columns:
        if str(frame[name].dtype) in ("Int64", "UInt64"):  # pandas prints their NULLs as <NA>, na_rep or not
            frame[name] = frame[name].astype(object).where(frame[name].notna(), "").astype(str)
    return frame.to_string(index=False, na_rep="")


__all__ = ["NONE", "cell", "format_table", "frame_text", "local_time", "local_timestamp", "readable_frame"]
