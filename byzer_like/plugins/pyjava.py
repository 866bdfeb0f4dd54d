"""Byzer-LLM's training-side names from `pyjava` (`RayContext`, `DataServer`, `streaming_tar`), so that a Byzer
plugin's own `sft_train` / `sfft_train` ports unchanged.

A Byzer plugin reads its input table and hands its trained model back like this:

    from pyjava.api.mlsql import RayContext, DataServer
    from pyjava.storage import streaming_tar

    def sft_train(data_refs, train_params, conf):
        rows = list(RayContext.collect_from(data_refs))        # the inputTable, one dict per row
        ...train, write the model to a folder...
        return streaming_tar.build_rows_from_file(model_dir)   # a generator of rows: the model's files

Here `data_refs` is the job runner's (`train.context`): a list holding the path of the input table's parquet
file. `RayContext.collect_from` reads it row by row (pyarrow batches, nothing held whole); a `DataServer` or
anything with a `path` names such a file too. The generator a plugin returns is consumed by the job runner
(`train.runner`): rows of `build_rows_from_file` (`start`, `offset`, `value` bytes: a tar stream cut into
chunks, Byzer's model-as-a-table) are unpacked into the job's model folder, which is then registered as
`outputTable`; other rows are kept as the job's output table (`output.parquet` in the job's folder).

`pyjava` itself is Byzer's Python bridge to its Java engine (a package on PyPI). It is never shadowed:
`install_fallback()` (called before a plugin is imported) adds an importer *after* every other one, so
`import pyjava.api.mlsql` / `pyjava.storage.streaming_tar` reach this module only where the real package is
not installed; where it is, a plugin imports `RayContext` from `byzer_like.plugins.pyjava` instead.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import io
import os
import sys
import tarfile
import types
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from ..errors import PluginError

CHUNK_BYTES = 1024 * 1024  # bytes of the tar stream per row of build_rows_from_file
TAR_KEYS = frozenset({"start", "offset", "value"})  # the row of a model's files as a table (Byzer's BlockRow)


@dataclass(frozen=True)
class DataServer:
    """Byzer's handle of one shard of a table (there: a host and port of its Java engine). Here a shard is a
    parquet file: `path`. `host`, `port` and `timezone` are kept for code that reads them."""

    path: str
    host: str = "localhost"
    port: int = 0
    timezone: str = "UTC"


class RayContext:
    """Byzer's `pyjava.api.mlsql.RayContext`, as far as a plugin's training uses it: `collect_from`."""

    @staticmethod
    def collect_from(data_refs: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """Yield the rows of every shard in `data_refs`, in order, each a dict of column -> value.

        A shard is a path (str or os.PathLike) of a parquet file or folder (what the job runner passes), a
        `DataServer`, or an object with a `path`. PluginError for anything else or a path that is not there."""
        for ref in data_refs or ():
            yield from RayContext.fetch_once_as_rows(ref)

    @staticmethod
    def fetch_once_as_rows(data_ref: Any) -> Iterator[dict[str, Any]]:
        """The rows of one shard (see `collect_from`), read in pyarrow batches."""
        import pyarrow.dataset as pads

        path = _path_of(data_ref)
        if not os.path.exists(path):
            raise PluginError(f"RayContext.collect_from: the table {path} does not exist")
        for batch in pads.dataset(path, format="parquet").to_batches():
            yield from batch.to_pylist()


def _path_of(ref: Any) -> str:
    if isinstance(ref, (str, os.PathLike)):
        return os.fspath(ref)
    path = getattr(ref, "path", None)
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    raise PluginError(f"RayContext.collect_from: {type(ref).__name__} is no table reference here; data_refs holds "
                      "the input table's parquet path (the job runner's), or DataServer(path=...)")


# -- streaming_tar: a folder as rows of a tar stream, and back ---------------------------------------------------
def build_rows_from_file(target_dir: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> Iterator[dict[str, Any]]:
    """The files under `target_dir` as a tar stream cut into rows `{"start": <offset of the chunk>, "offset":
    <its length>, "value": <bytes>}`, in order (pyjava.storage.streaming_tar's rows: Byzer stores a model
    this way as a table). Names in the stream are relative to `target_dir`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for root, dirs, files in os.walk(target_dir):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                tar.add(full, arcname=os.path.relpath(full, target_dir), recursive=False)
    data = buf.getvalue()
    for start in range(0, len(data), chunk_bytes):
        chunk = data[start:start + chunk_bytes]
        yield {"start": start, "offset": len(chunk), "value": chunk}


def is_tar_row(row: Any) -> bool:
    """Whether `row` is one of `build_rows_from_file`'s (a chunk of a model's files)."""
    return isinstance(row, Mapping) and TAR_KEYS <= set(row) and isinstance(row.get("value"), (bytes, bytearray))


def save_rows_to_file(rows: Iterable[Mapping[str, Any]], target_dir: str | os.PathLike) -> list[str]:
    """Unpack the rows of `build_rows_from_file` into `target_dir` (created); returns the files written.
    Chunks are joined in `start` order. PluginError for a stream that is no tar, a gap between chunks, or a
    member that would land outside `target_dir`."""
    chunks = sorted(rows, key=lambda r: int(r["start"]))
    data, at = bytearray(), 0
    for r in chunks:
        if int(r["start"]) != at:
            raise PluginError(f"the model's rows leave a gap at byte {at} (next chunk starts at {r['start']})")
        data += bytes(r["value"])
        at += len(r["value"])
    os.makedirs(target_dir, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            tar.extractall(target_dir, filter="data")  # refuses absolute names, `..` and links leaving the folder
            return sorted(m.name for m in tar.getmembers() if m.isfile())
    except (tarfile.TarError, OSError) as e:
        raise PluginError(f"the rows the plugin returned are no tar stream of a model's files: {e}") from None


# -- `import pyjava...` where the real package is missing -------------------------------------------------------
_MODULES = {"pyjava": None, "pyjava.api": None, "pyjava.api.mlsql": ("RayContext", "DataServer"),
            "pyjava.storage": None, "pyjava.storage.streaming_tar": ("build_rows_from_file", "save_rows_to_file")}


class _Fallback(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `pyjava`, `pyjava.api.mlsql` and `pyjava.storage.streaming_tar` with this module's names; last
    on sys.meta_path, so it is asked only when no installed package is found."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=_MODULES[fullname] is None)

    def create_module(self, spec: Any) -> types.ModuleType:
        return types.ModuleType(spec.name, f"byzer-like's stand-in for {spec.name} (byzer_like.plugins.pyjava)")

    def exec_module(self, module: types.ModuleType) -> None:
        names = _MODULES[module.__name__]
        if names is None:
            module.__path__ = []  # a package: its submodules come through this finder too
        for name in names or ():
            setattr(module, name, globals()[name])


_FALLBACK = _Fallback()


def install_fallback() -> None:
    """Make `from pyjava.api.mlsql import RayContext` (and `pyjava.storage.streaming_tar`) work where the
    real `pyjava` is not installed (appended to sys.meta_path once; the real package, when present, wins)."""
    if not any(isinstance(f, _Fallback) for f in sys.meta_path):
        sys.meta_path.append(_FALLBACK)


__all__ = ["DataServer", "RayContext", "build_rows_from_file", "install_fallback", "is_tar_row", "save_rows_to_file"]
