"""Reading and writing tables: `load <format>.`path`` and `save ... as <format>.`path``.

Tables are pyarrow Tables. DuckDB reads json / csv / parquet (a file, a folder of files, or a
glob); `text` is one row per line in a `value` column; `model` describes a model directory as a
one-row table; `delta` is a Delta Lake table (a folder with a `_delta_log/`), read and written with the
`deltalake` package (delta-rs), its versions readable with `versionAsOf` / `timestampAsOf`. Saving writes a
folder, Spark style (`part-00000.<ext>` files and `_SUCCESS`), into a temporary sibling first and renames it
into place, so a failed save leaves nothing half-written; a delta save is one Delta transaction (a new
version of the table, committed whole or not at all).
"""
from __future__ import annotations

import codecs
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import AliasChoices, Field, field_validator

from ..config import _Options
from ..errors import (ConfigError, DataFileError, TableExistsError, WorkspacePathError,
                      did_you_mean)

LOAD_FORMATS = ("json", "jsonl", "csv", "parquet", "text", "model", "delta")
SAVE_FORMATS = ("json", "jsonl", "csv", "parquet", "text", "delta")
SAVE_MODES = ("overwrite", "append", "errorIfExists", "ignore")
_EXT = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "text": "txt"}
_GLOBS = {"json": ("*.json", "*.jsonl"), "jsonl": ("*.json", "*.jsonl"), "csv": ("*.csv",), "parquet": ("*.parquet",),
          "text": ("*.txt", "*.text")}
DELTA_LOG = "_delta_log"  # the folder that makes a folder a Delta table
# save modes as deltalake's write_deltalake spells them
_DELTA_MODES = {"overwrite": "overwrite", "append": "append", "errorIfExists": "error", "ignore": "ignore"}


class LoadOptions(_Options):
    """`where` keys of `load`: Spark's reader options, over DuckDB and pyarrow.

    An option that Spark's reader for another format reads is accepted on this one with a note, as Spark
    accepts and ignores it (`header` on json); a key no reader knows is an error ("did you mean")."""

    header: bool = Field(True, description="csv: the first line names the columns")
    delimiter: str = Field(",", min_length=1, max_length=1, validation_alias=AliasChoices("delimiter", "sep"),
                           description="csv: the field separator (Spark's sep)")
    infer_schema: bool = Field(True, description="csv: detect column types (false: every column is text, Spark's default)")
    multi_line: bool = Field(False, description="json: a file may hold one pretty-printed document or array; "
                             "csv: quoted values may span lines (both are read either way here)")
    encoding: str = Field("utf-8", validation_alias=AliasChoices("encoding", "charset"),
                          description="csv, json, text: the files' character encoding")
    wholetext: bool = Field(False, description="text: one row per file (`value` its content, `file` its path) "
                            "instead of one row per line")
    sampling_ratio: float = Field(1.0, gt=0, le=1, description="json, csv: the fraction of rows the schema is "
                                  "inferred from (1.0: all rows)")
    mode: str | None = Field(None, description="json, csv: PERMISSIVE (csv: missing trailing fields are null), "
                             "DROPMALFORMED (rows that cannot be parsed are skipped), FAILFAST (strict); without it, "
                             "a row that cannot be parsed is an error, never dropped silently")
    line_sep: str | None = Field(None, description="text: the line separator (default: any of \\n, \\r\\n)")
    version_as_of: int | None = Field(None, ge=0, description="delta: read this version of the table (Delta's time "
                                      "travel; 0 is the first write)")
    timestamp_as_of: str | None = Field(None, min_length=1, description="delta: read the table as it was at this time "
                                        "(ISO 8601, e.g. 2026-12-01T10:00:00Z; a date alone is midnight UTC)")

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() not in READ_MODES:
            raise ValueError(f"mode must be one of {', '.join(READ_MODES)}")
        return value.upper()

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError("not an encoding Python knows (e.g. utf-8, gbk, latin-1, utf-16)") from None


READ_MODES = ("PERMISSIVE", "DROPMALFORMED", "FAILFAST")
# which formats read each load option (Spark's readers); on another format an option is accepted with a note
_READS: dict[str, tuple[str, ...]] = {
    "header": ("csv",), "delimiter": ("csv",), "infer_schema": ("csv",), "multi_line": ("json", "jsonl", "csv"),
    "encoding": ("json", "jsonl", "csv", "text"), "wholetext": ("text",), "sampling_ratio": ("json", "jsonl", "csv"),
    "mode": ("json", "jsonl", "csv"), "line_sep": ("text", "json", "jsonl", "csv"),
    "version_as_of": ("delta",), "timestamp_as_of": ("delta",),
}


class SaveOptions(_Options):
    """`where` keys of `save`."""

    header: bool = Field(True, description="csv: write a header line")
    delimiter: str = Field(",", min_length=1, max_length=1, description="csv: the field separator")
    partition_by_col: str | None = Field(
        None, validation_alias=AliasChoices("partition_by_col", "partitionByCol", "partition_by", "partitionBy"),
        description="delta: comma-separated columns the table's files are partitioned by (Byzer's partitionByCol; "
        "a new table, or an overwrite)")
    merge_schema: bool = Field(False, description="delta, append: add the table's new columns to the Delta table's "
                               "schema (Delta's mergeSchema; without it a column the table lacks is an error)")


GLOB_CHARS = set("*?[]{}")


def _files(path: Path, fmt: str) -> list[str]:
    """The files to read: `path`, or the files of the format in the folder `path`. A file in the
    folder that is a link to somewhere outside it is refused (the folder was checked, not its
    links), and so is a name with glob characters, which DuckDB's readers would expand."""
    if not path.exists() and GLOB_CHARS & set(str(path)):
        return glob_files(path, fmt)
    if path.is_dir():
        root = path.resolve()
        found = sorted({p for pattern in _GLOBS[fmt] for p in path.rglob(pattern)})
        for p in found:
            if not p.resolve().is_relative_to(root):
                raise WorkspacePathError(f"{p} is a link to {p.resolve()}, outside the folder {path}; "
                                         "load reads only the files inside the folder")
        if not found:
            raise DataFileError(f"folder {path} holds no {fmt} files ({', '.join(_GLOBS[fmt])})")
        files = [str(p) for p in found]
    elif not path.exists():
        raise DataFileError(f"{path} does not exist")
    else:
        files = [str(path)]
    for f in files:
        if GLOB_CHARS & set(f):
            raise DataFileError(f"{f} has a glob character ({' '.join(sorted(GLOB_CHARS & set(f)))}) in its name; "
                                "rename it (load reads files by their exact names)")
    return files


def glob_files(path: Path, fmt: str) -> list[str]:
    """The files a Spark-style glob path names (`/data/raw/*`, `/data/part-*.json`): Python's glob from the
    path's first folder without glob characters; a matched folder gives its files of the format. A match
    that is a link out of that folder is refused; no match is a DataFileError naming the pattern."""
    parts = path.parts
    fixed = next(i for i, part in enumerate(parts) if GLOB_CHARS & set(part))
    base = Path(*parts[:fixed])
    pattern = str(Path(*parts[fixed:]))
    try:
        matches = sorted(base.glob(pattern)) if base.is_dir() else []
    except ValueError as e:  # pathlib's "Invalid pattern: '**' can only be an entire path component"
        raise DataFileError(f"{path} is not a glob pattern load can read ({e}); give a path such as "
                            "data/raw/* or data/part-*.json") from None
    if not matches:
        raise DataFileError(f"no file matches {path} (a glob pattern from {base})")
    root = base.resolve()
    files: list[str] = []
    for match in matches:
        if not match.resolve().is_relative_to(root):
            raise WorkspacePathError(f"{match} is a link to {match.resolve()}, outside {base}; load reads only the "
                                     "files inside the folder its pattern starts from: give a pattern that matches "
                                     "no link out of it")
        files.extend(_files(match, fmt) if match.is_dir() else [str(match)])
    return files



def load_options(fmt: str, options: Mapping[str, Any], notes: list[str] | None = None) -> LoadOptions:
    """The `where` options of `load <fmt>` checked (every problem in one error, "did you mean" for a typo;
    keys read case-insensitively, as Spark reads them); `notes` (if given) receives a line for each option
    accepted that has no effect on this format. ConfigError for an unknown format."""
    if fmt not in LOAD_FORMATS:
        raise ConfigError(f"unknown load format {fmt!r}; {did_you_mean(fmt, LOAD_FORMATS)}"
                          f"valid formats: {', '.join(LOAD_FORMATS)}")
    # Spark reads its option keys case-insensitively (inferschema, multiline, Header)
    spelled = {k.lower(): k for k in LoadOptions.option_names()}
    options = {spelled.get(k.lower(), k): v for k, v in options.items()}
    opts = LoadOptions.parse(options, where=f"load {fmt}")
    for key in options:
        field = next((n for n in LoadOptions.model_fields if key in LoadOptions.spellings(n)), None)
        if field and fmt not in _READS[field] and notes is not None:
            notes.append(f"{key} has no effect on {fmt} (Spark's {fmt} reader ignores it too; it is read by "
                         f"{', '.join(f for f in _READS[field] if f != 'jsonl')})")
    return opts


def load_table(con: duckdb.DuckDBPyConnection, fmt: str, path: Path, options: Mapping[str, Any],
               notes: list[str] | None = None) -> pa.Table:
    """Read `path` (already resolved inside the allowed roots) as a table, with DuckDB's readers on `con`.
    `notes` (if given) receives a line for each option accepted that has no effect on this format."""
    opts = load_options(fmt, options, notes)
    if fmt == "model":
        return _model_table(path)
    if fmt == "delta":
        return _delta_table(path, opts)
    if opts.version_as_of is not None or opts.timestamp_as_of is not None:
        raise ConfigError(f"versionAsOf / timestampAsOf read a version of a delta table; {fmt} files have no "
                          f"versions (load delta.`<path>` reads a Delta table)")
    files = _files(path, fmt)
    if fmt == "text":
        return _text_table(files, opts)
    try:
        if fmt in ("json", "jsonl"):
            if opts.encoding != "utf-8":
                return _json_transcoded(files, opts)
            return con.read_json(files, ignore_errors=opts.mode == "DROPMALFORMED",
                                 sample_size=-1 if opts.sampling_ratio >= 1 else _sample(files, opts)).to_arrow_table()
        if fmt == "csv":
            if opts.encoding not in ("utf-8", "utf-16", "latin-1", "iso8859-1"):
                return _csv_transcoded(files, opts)
            encoding = {"iso8859-1": "latin-1"}.get(opts.encoding, opts.encoding)
            kw = dict(header=opts.header, sep=opts.delimiter, all_varchar=not opts.infer_schema, encoding=encoding,
                      ignore_errors=opts.mode == "DROPMALFORMED", null_padding=opts.mode == "PERMISSIVE",
                      strict_mode=opts.mode == "FAILFAST",
                      sample_size=-1 if opts.sampling_ratio >= 1 else _sample(files, opts))
            # DuckDB 2.0's sniffer refuses null_padding over a plain list of files; one file, or a list read
            # with union_by_name (each file sniffed on its own, columns matched by name), works
            if len(files) == 1:
                return con.read_csv(files[0], **kw).to_arrow_table()
            return con.read_csv(files, union_by_name=opts.mode == "PERMISSIVE", **kw).to_arrow_table()
        return con.read_parquet(files).to_arrow_table()
    except duckdb.Error as e:
        first = str(e).splitlines()[0]
        raise DataFileError(f"cannot read {path} as {fmt}: {first.rstrip('. ')}{_mode_hint(fmt, opts, first)}") from None


def text_dir_table(workspace: Any, user_path: str, *, what: str = "localDataDir",
                   relative_to: str = "workspace") -> pa.Table:
    """A folder of raw text files as `load text.`<folder>`` reads it (every *.txt / *.text file under it, one
    row per line in a `value` column): sfft's localDataDir. `workspace`: the `workspace.Workspace` whose
    allowed roots the path must lie in (`relative_to` as its `resolve` takes it). WorkspacePathError outside
    them; DataFileError when the path is no folder, holds no text files or only empty ones."""
    path = workspace.resolve(user_path, what=what, relative_to=relative_to)
    if not path.is_dir():
        state = "does not exist" if not path.exists() else "is a file, not a folder"
        raise DataFileError(f"{what} {path} {state}; give a folder of text files ({', '.join(_GLOBS['text'])})")
    table = _text_table(_files(path, "text"), LoadOptions())
    if not any(v.strip() for v in table.column("value").to_pylist()):
        raise DataFileError(f"{what} {path}: its text files hold no text; continued pretraining needs some")
    return table


def _mode_hint(fmt: str, opts: LoadOptions, error: str = "") -> str:
    if "utf-8" in error.lower() or "unicode" in error.lower():
        return '; name the files\' encoding with encoding="<name>" (e.g. gbk, latin-1)'
    if fmt in ("json", "jsonl", "csv") and opts.mode != "DROPMALFORMED":
        return '; fix the file, or skip such rows with mode="DROPMALFORMED"'
    return ""


def _sample(files: list[str], opts: LoadOptions) -> int:
    """Rows DuckDB infers the schema from for samplingRatio < 1: that fraction of the lines (at least 1)."""
    lines = 0
    for f in files:
        with open(f, "rb") as fh:
            lines += sum(1 for _ in fh)
    return max(1, int(lines * opts.sampling_ratio))


def _decode(file: str, opts: LoadOptions) -> str:
    try:
        return Path(file).read_bytes().decode(opts.encoding)
    except UnicodeDecodeError as e:
        raise DataFileError(f"{file} is not {opts.encoding} text ({e.reason} at byte {e.start}); "
                            'name its encoding with encoding="<name>" (e.g. gbk, latin-1)') from None


def _lines(text: str, opts: LoadOptions) -> list[str]:
    if opts.line_sep:
        parts = text.split(opts.line_sep)
        return parts[:-1] if parts and parts[-1] == "" else parts
    return text.splitlines()


def _text_table(files: list[str], opts: LoadOptions) -> pa.Table:
    """`load text`: one row per line in `value`; with wholetext, one row per file, its path in `file`."""
    if opts.wholetext:
        return pa.table({"value": pa.array([_decode(f, opts) for f in files], type=pa.string()),
                         "file": pa.array(files, type=pa.string())})
    lines: list[str] = []
    for f in files:
        lines.extend(_lines(_decode(f, opts), opts))
    return pa.table({"value": pa.array(lines, type=pa.string())})


def _json_transcoded(files: list[str], opts: LoadOptions) -> pa.Table:
    """JSON in another encoding than UTF-8 (DuckDB reads only UTF-8): decoded and parsed here."""
    rows: list[Any] = []
    for f in files:
        text = _decode(f, opts)
        try:
            doc = json.loads(text)
            rows.extend(doc if isinstance(doc, list) else [doc])
            continue
        except json.JSONDecodeError:
            pass  # not one document: JSON lines
        for n, line in enumerate(_lines(text, opts), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if opts.mode != "DROPMALFORMED":
                    raise DataFileError(f"{f} line {n} is not JSON ({e.msg}){_mode_hint('json', opts)}") from None
    try:
        return pa.Table.from_pylist([r if isinstance(r, dict) else {"value": r} for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataFileError(f"cannot make a table of {files[0]}: {e}") from None


def _csv_transcoded(files: list[str], opts: LoadOptions) -> pa.Table:
    """CSV in an encoding DuckDB does not read: pyarrow's reader transcodes it."""
    tables = []
    for f in files:
        try:
            tables.append(pacsv.read_csv(
                f, read_options=pacsv.ReadOptions(encoding=opts.encoding, autogenerate_column_names=not opts.header),
                parse_options=pacsv.ParseOptions(delimiter=opts.delimiter, newlines_in_values=True,
                                                 invalid_row_handler=(lambda row: "skip")
                                                 if opts.mode == "DROPMALFORMED" else None),
                convert_options=pacsv.ConvertOptions(column_types=None) if opts.infer_schema else
                pacsv.ConvertOptions(auto_dict_encode=False, strings_can_be_null=True)))
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise DataFileError(f"cannot read {f} as {opts.encoding} csv: {e}{_mode_hint('csv', opts)}") from None
    table = pa.concat_tables(tables, promote_options="default")
    if not opts.infer_schema:
        table = table.cast(pa.schema([(n, pa.string()) for n in table.column_names]))
    return table


def _model_table(path: Path) -> pa.Table:
    config = path / "config.json"
    if not config.is_file():
        raise DataFileError(f"{path} is not a model directory (no config.json)")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFileError(f"{config} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise DataFileError(f"{config} must hold a JSON object, not {type(cfg).__name__}")
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    return pa.table({
        "model_dir": [str(path)],
        "model_type": [cfg.get("model_type")],
        "architectures": [",".join(cfg.get("architectures") or [])],
        "files": [files],
    })


def _delta_table(path: Path, opts: LoadOptions) -> pa.Table:
    """`load delta.`path``: the Delta table's current version, or the one versionAsOf / timestampAsOf name.
    DataFileError for a path that is no Delta table or a version it does not have."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    if opts.version_as_of is not None and opts.timestamp_as_of is not None:
        raise ConfigError("give versionAsOf or timestampAsOf, not both")
    if not (path / DELTA_LOG).is_dir():
        what = "does not exist" if not path.exists() else f"is not a Delta table (no {DELTA_LOG}/ folder in it)"
        raise DataFileError(f"{path} {what}; load delta reads a folder written by save ... as delta (or by any "
                            "Delta Lake writer)")
    try:
        dt = DeltaTable(str(path))
        newest = dt.version()
        if opts.version_as_of is not None:
            if opts.version_as_of > newest:
                raise DataFileError(f"{path} has versions 0 to {newest}; versionAsOf={opts.version_as_of} is not one")
            dt.load_as_version(opts.version_as_of)
        elif opts.timestamp_as_of is not None:
            dt.load_as_version(_timestamp(opts.timestamp_as_of))
        return dt.to_pyarrow_table()
    except (DeltaError, TableNotFoundError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFileError(f"cannot read {path} as delta: {first}") from None


def _timestamp(text: str) -> Any:
    """timestampAsOf's ISO 8601 text as an aware datetime (UTC when it names no zone)."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"timestampAsOf {text!r} is not an ISO 8601 time; write e.g. 2026-12-01T10:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _save_delta(table: pa.Table, path: Path, mode: str, opts: SaveOptions, renamed: list) -> dict[str, Any]:
    """`save ... as delta.`path``: one Delta transaction. overwrite replaces the rows and the schema (a new
    version; the older ones stay readable with versionAsOf), append adds rows (mergeSchema: new columns too),
    errorIfExists / ignore as for every format. TableExistsError for a folder that is not a Delta table,
    ConfigError for rows that do not fit the table's schema."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError, SchemaMismatchError

    exists = path.exists()
    is_delta = (path / DELTA_LOG).is_dir()
    if exists and not is_delta and (not path.is_dir() or any(path.iterdir())):
        raise TableExistsError(f"{path} exists and is not a Delta table (no {DELTA_LOG}/ folder); remove it or "
                               "choose another path")
    if is_delta and mode == "errorIfExists":
        raise TableExistsError(f"{path} already exists; use save overwrite, append or ignore")
    if is_delta and mode == "ignore":
        return {"path": str(path), "rows": 0, "mode": mode, "written": False}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TableExistsError(f"cannot save to {path}: a file is in the way in its parent folders; "
                               "remove it or choose another path") from None
    parts = [c.strip() for c in (opts.partition_by_col or "").split(",") if c.strip()]
    missing = [c for c in parts if c not in table.column_names]
    if missing:
        raise ConfigError(f"partitionByCol names {', '.join(missing)}, not a column of the table; its columns: "
                          f"{', '.join(table.column_names)}")
    schema_mode = "overwrite" if mode == "overwrite" else "merge" if opts.merge_schema and mode == "append" else None
    try:
        write_deltalake(str(path), table, mode=_DELTA_MODES[mode], partition_by=parts or None, schema_mode=schema_mode)
    except SchemaMismatchError as e:
        raise ConfigError(f"the rows do not fit the schema of the Delta table {path}: {e}; append with "
                          'where mergeSchema="true" to add new columns, or save overwrite to replace the table') from None
    except DeltaError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFileError(f"cannot write {path} as delta: {first}") from None
    version = DeltaTable(str(path)).version()
    return {"path": str(path), "rows": table.num_rows, "mode": mode, "written": True, "version": version,
            **_renamed(renamed)}


def save_table(table: pa.Table, fmt: str, path: Path, mode: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Write `table` under the folder `path` (already resolved inside the allowed roots) in `mode` (one of
    SAVE_MODES); return what was written: {"path", "rows", "mode", "written"} (delta: and "version", the Delta
    table's version this save made). Raises ConfigError (format, mode, options), TableExistsError."""
    if fmt not in SAVE_FORMATS:
        raise ConfigError(f"unknown save format {fmt!r}; {did_you_mean(fmt, SAVE_FORMATS)}"
                          f"valid formats: {', '.join(SAVE_FORMATS)}")
    if mode not in SAVE_MODES:
        raise ConfigError(f"unknown save mode {mode!r}; {did_you_mean(mode, SAVE_MODES)}"
                          f"valid modes: {', '.join(SAVE_MODES)}")
    opts = SaveOptions.parse(options, where=f"save {fmt}")
    names, renamed = unique_names(table.column_names)
    if renamed:  # a JSON object keeps one key of a name, Parquet readers refuse repeated names: keep both, renamed
        table = table.rename_columns(names)
    if fmt == "text" and not (table.num_columns == 1 and pa.types.is_string(table.schema.types[0])):
        raise ConfigError("save as text needs a table with exactly one string column")
    if fmt == "delta":
        return _save_delta(table, path, mode, opts, renamed)
    exists = path.exists()
    if exists and mode == "errorIfExists":
        raise TableExistsError(f"{path} already exists; use save overwrite, append or ignore")
    if exists and mode == "ignore":
        return {"path": str(path), "rows": 0, "mode": mode, "written": False}
    if exists and not path.is_dir():
        raise TableExistsError(f"{path} exists and is not a folder written by save; remove it or choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TableExistsError(f"cannot save to {path}: a file is in the way in its parent folders; "
                               "remove it or choose another path") from None
    if mode == "append" and exists:
        n = len(list(path.glob("part-*")))
        target = path / f"part-{n:05d}.{_EXT[fmt]}"
        tmp = path / f".tmp-{uuid.uuid4().hex}"
        _write(table, fmt, tmp, opts)
        os.replace(tmp, target)
        return {"path": str(path), "rows": table.num_rows, "mode": mode, "written": True, **_renamed(renamed)}
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write(table, fmt, staging / f"part-00000.{_EXT[fmt]}", opts)
        (staging / "_SUCCESS").touch()
        if exists:
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(path), "rows": table.num_rows, "mode": mode, "written": True, **_renamed(renamed)}


def unique_names(names: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Column names made unique the way DuckDB reads repeated ones back (`x`, `x_1`, `x_2`; case-insensitive),
    and the (old, new) pairs renamed."""
    taken = {n.lower() for n in names}
    seen: set[str] = set()
    out, renamed = [], []
    for n in names:
        if n.lower() not in seen:
            seen.add(n.lower())
            out.append(n)
            continue
        k = 1
        while f"{n}_{k}".lower() in taken:
            k += 1
        new = f"{n}_{k}"
        taken.add(new.lower())
        seen.add(new.lower())
        out.append(new)
        renamed.append((n, new))
    return out, renamed


def _renamed(renamed: list[tuple[str, str]]) -> dict[str, str]:
    return {"renamed": ", ".join(f"{a} -> {b}" for a, b in renamed)} if renamed else {}


def _write(table: pa.Table, fmt: str, file: Path, opts: SaveOptions) -> None:
    if fmt in ("json", "jsonl"):
        with open(file, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    elif fmt == "csv":
        pacsv.write_csv(table, file, pacsv.WriteOptions(include_header=opts.header, delimiter=opts.delimiter))
    elif fmt == "parquet":
        pq.write_table(table, file)
    else:
        file.write_text("".join(f"{v}\n" for v in table.column(0).to_pylist()), encoding="utf-8")
