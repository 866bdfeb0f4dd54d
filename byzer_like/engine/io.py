"""Reading and writing tables: `load <format>.`path`` and `save ... as <format>.`path``.

Tables are pyarrow Tables. DuckDB reads json / csv / parquet (a file, a folder of files, or a
glob); `text` is one row per line in a `value` column; `model` describes a model directory as a
one-row table. Saving writes a folder, Spark style (`part-00000.<ext>` files and `_SUCCESS`), into a
temporary sibling first and renames it into place, so a failed save leaves nothing half-written.
"""
from __future__ import annotations

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
from pydantic import Field

from ..config import _Options
from ..errors import (ConfigError, DataFileError, TableExistsError, WorkspacePathError,  # noqa: F401 - re-exported
                      did_you_mean)

LOAD_FORMATS = ("json", "jsonl", "csv", "parquet", "text", "model")
SAVE_FORMATS = ("json", "jsonl", "csv", "parquet", "text")
SAVE_MODES = ("overwrite", "append", "errorIfExists", "ignore")
_EXT = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "text": "txt"}
_GLOBS = {"json": ("*.json", "*.jsonl"), "jsonl": ("*.json", "*.jsonl"), "csv": ("*.csv",), "parquet": ("*.parquet",),
          "text": ("*.txt", "*.text")}






class LoadOptions(_Options):
    """`where` keys of `load`."""

    header: bool = Field(True, description="csv: the first line names the columns")
    delimiter: str = Field(",", min_length=1, max_length=1, description="csv: the field separator")


class SaveOptions(_Options):
    """`where` keys of `save`."""

    header: bool = Field(True, description="csv: write a header line")
    delimiter: str = Field(",", min_length=1, max_length=1, description="csv: the field separator")


GLOB_CHARS = set("*?[]{}")


def _files(path: Path, fmt: str) -> list[str]:
    """The files to read: `path`, or the files of the format in the folder `path`. A file in the
    folder that is a link to somewhere outside it is refused (the folder was checked, not its
    links), and so is a name with glob characters, which DuckDB's readers would expand."""
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


def load_table(con: duckdb.DuckDBPyConnection, fmt: str, path: Path, options: Mapping[str, Any]) -> pa.Table:
    """Read `path` (already resolved inside the allowed roots) as a table, with DuckDB's readers on `con`."""
    if fmt not in LOAD_FORMATS:
        raise ConfigError(f"unknown load format {fmt!r}; {did_you_mean(fmt, LOAD_FORMATS)}"
                          f"valid formats: {', '.join(LOAD_FORMATS)}")
    opts = LoadOptions.parse(options, where=f"load {fmt}")
    if fmt == "model":
        return _model_table(path)
    files = _files(path, fmt)
    if fmt == "text":
        lines: list[str] = []
        for f in files:
            lines.extend(Path(f).read_text(encoding="utf-8").splitlines())
        return pa.table({"value": pa.array(lines, type=pa.string())})
    try:
        if fmt in ("json", "jsonl"):
            rel = con.read_json(files)
        elif fmt == "csv":
            rel = con.read_csv(files, header=opts.header, sep=opts.delimiter)
        else:
            rel = con.read_parquet(files)
        return rel.to_arrow_table()
    except duckdb.Error as e:
        raise DataFileError(f"cannot read {path} as {fmt}: {str(e).splitlines()[0]}") from None


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


def save_table(table: pa.Table, fmt: str, path: Path, mode: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Write `table` under the folder `path`; return what was written."""
    if fmt not in SAVE_FORMATS:
        raise ConfigError(f"unknown save format {fmt!r}; {did_you_mean(fmt, SAVE_FORMATS)}"
                          f"valid formats: {', '.join(SAVE_FORMATS)}")
    if mode not in SAVE_MODES:
        raise ConfigError(f"unknown save mode {mode!r}; {did_you_mean(mode, SAVE_MODES)}"
                          f"valid modes: {', '.join(SAVE_MODES)}")
    opts = SaveOptions.parse(options, where=f"save {fmt}")
    if fmt == "text" and not (table.num_columns == 1 and pa.types.is_string(table.schema.types[0])):
        raise ConfigError("save as text needs a table with exactly one string column")
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
        return {"path": str(path), "rows": table.num_rows, "mode": mode, "written": True}
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
    return {"path": str(path), "rows": table.num_rows, "mode": mode, "written": True}


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
