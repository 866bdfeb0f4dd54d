"""The text table of continued pretraining (sfft): the driver's look at it, keepPartitionNum's placement of whole
partitions on workers, and a worker's pass over its rows as packed micro batches.

On the driver, `inspect_table` reads only parquet metadata (schema, row count, the text column's size) and
`_placement` assigns TableRepartition's partitions to workers (`assign_partitions`: partition i to worker
i % num_workers); without keepPartitionNum `_read_parquet` hands the table to Ray Data, which splits it.
On a worker, `_ShardPass` turns its rows (a Ray Data shard, or its whole partitions read from the parquet
file by `_PartitionShard`) into packed int64 micro batches [micro, max_length], the first one prefetched in
a background thread (`_Prefetched`). The underscored names are this package's own (`sfft`, `sfft_worker`).

pyarrow, torch and ray are imported inside the functions.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Sequence

from ..errors import ConfigError
from .data import text_column as text_column_of
from .options import SfftOptions

READ_CPUS = 0.25  # per Ray Data read task, so reads still run when the workers hold every CPU


def inspect_table(data_path: str, text_column: str | None = None) -> dict:
    """Schema, row count and the text column's size from parquet metadata only (no data is read).

    Returns {text_column, num_rows, text_bytes (the column's uncompressed size), columns}. ConfigError when
    the table is missing, not readable parquet, empty, or has no text column (`data.text_column`)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not os.path.exists(data_path):
        raise ConfigError(f"the input table {data_path} does not exist")
    try:
        dataset = pads.dataset(data_path, format="parquet")
        schema = dataset.schema
        fragments = list(dataset.get_fragments())
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"the input table {data_path} is not readable parquet: {e}") from None
    column = text_column_of(schema, text_column)
    num_rows, text_bytes = 0, 0
    for fragment in fragments:
        meta = fragment.metadata
        num_rows += meta.num_rows
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema == column:
                    text_bytes += chunk.total_uncompressed_size
    if num_rows == 0:
        raise ConfigError(f"the input table {data_path} is empty: continued pretraining needs rows of text")
    return {"text_column": column, "num_rows": num_rows, "text_bytes": text_bytes, "columns": schema.names}


def assign_partitions(sizes: Sequence[int], num_workers: int) -> list[list[tuple[int, int, int]]]:
    """Whole partitions per worker: partition i (the `sizes[i]` rows after those of partitions 0..i-1)
    goes to worker i % num_workers. Returns, per worker, its (partition, first row, rows) in order;
    empty partitions are left out."""
    placement: list[list[tuple[int, int, int]]] = [[] for _ in range(num_workers)]
    start = 0
    for i, n in enumerate(sizes):
        if n:
            placement[i % num_workers].append((i, start, int(n)))
        start += int(n)
    return placement


def _placement(options: SfftOptions, sizes: Sequence[int] | None, num_rows: int,
               num_workers: int) -> list[list[tuple[int, int, int]]] | None:
    """keepPartitionNum's assignment of whole partitions to workers (`assign_partitions`), logged; None
    (Ray Data splits the rows) without keepPartitionNum or without a recorded partitioning. ConfigError
    when the sizes do not match the table or a worker would get no rows."""
    if not options.keep_partition_num:
        return None
    if sizes is None:
        print("[byzer-like] keepPartitionNum: the input table has no recorded partitioning (make it with "
              "`run <t> as TableRepartition.`` where partitionNum=\"N\" as <t2>;`); its rows are split across the "
              "workers as usual", flush=True)
        return None
    if sum(sizes) != num_rows:
        raise ConfigError(f"keepPartitionNum: the partitions hold {sum(sizes)} rows, the input table {num_rows}")
    placement = assign_partitions(sizes, num_workers)
    idle = [w for w, parts in enumerate(placement) if not parts]
    if idle:
        raise ConfigError(f"keepPartitionNum: {len(sizes)} partitions ({sum(1 for n in sizes if n)} not empty) leave "
                          f"worker(s) {', '.join(map(str, idle))} of {num_workers} without rows; repartition into at "
                          "least as many non-empty partitions as workers, or use fewer workers")
    rows = [sum(n for _, _, n in parts) for parts in placement]
    shown = "; ".join(f"worker {w}: partitions {', '.join(str(p) for p, _, _ in parts)} ({rows[w]} rows)"
                      for w, parts in enumerate(placement))
    print(f"[byzer-like] keepPartitionNum: {len(sizes)} partitions kept whole, partition i -> worker i % "
          f"{num_workers}: {shown}", flush=True)
    if max(rows) > 2 * min(rows):
        print(f"[byzer-like] note: the workers' rows are uneven ({min(rows)} to {max(rows)}): an epoch ends when the "
              "worker with the least text runs out", flush=True)
    return placement


def _read_parquet(data_path: str, column: str):
    """The table as a Ray Dataset of its text column, read by Ray tasks (never through this process).

    Ray 2.60's default parquet reader (datasource V2) first starts a pool of 32 footer-reader actors,
    ~15-20 s per epoch on a small machine; the V1 reader takes well under a second, so it is used."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = getattr(ctx, "use_datasource_v2", None)
    if before is not None:
        ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(data_path, columns=[column], num_cpus=READ_CPUS)
    finally:
        if before is not None:
            ctx.use_datasource_v2 = before


class _ShardPass:
    """One epoch: a pass over this worker's shard of the table, as micro batches of packed token blocks.

    Iterating yields int64 tensors of shape [micro, max_len]: each non-empty row's token ids followed by
    EOS, joined into one stream and cut into max_len-token blocks, `micro` blocks a batch; the tail that
    fills no micro batch is dropped. Counters, updated as it goes: `rows` (rows whose last token has been
    handed out: the epoch's progress), `rows_read` and `tokens_read` (rows and tokens, EOS included,
    tokenized so far). With `prefetch` the first micro batch is computed at once in a background thread.
    `close()` ends the pass early.
    """

    def __init__(self, shard: Any, tokenizer: Any, text_column: str, *, max_len: int, micro: int,
                 prefetch: bool = False):
        self.rows = self.rows_read = self.tokens_read = 0
        self._shard, self._tokenizer, self._column = shard, tokenizer, text_column
        self._max_len, self._micro = max_len, micro
        batches = self._batches()
        self._it = _Prefetched(batches) if prefetch else batches

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self) -> None:
        """End the pass (waits for a prefetch in flight)."""
        self._it.close()

    def _batches(self):
        import torch

        max_len, micro, eos = self._max_len, self._micro, self._tokenizer.eos_token_id
        buf: list[int] = []
        chunk: list[list[int]] = []
        row_ends: collections.deque[int] = collections.deque()  # cumulative token offset where each row ends
        tokens_in = tokens_out = 0
        for batch in self._shard.iter_batches(batch_size=256, batch_format="pyarrow"):
            texts = batch.column(self._column).to_pylist()
            non_empty = [t for t in texts if t]
            encoded = self._tokenizer(non_empty, add_special_tokens=False)["input_ids"] if non_empty else []
            it = iter(encoded)
            for t in texts:
                if t:
                    ids = next(it)
                    buf.extend(ids)
                    buf.append(eos)
                    tokens_in += len(ids) + 1
                row_ends.append(tokens_in)
            self.rows_read += len(texts)
            self.tokens_read = tokens_in
            while len(buf) >= max_len:
                chunk.append(buf[:max_len])
                buf = buf[max_len:]
                tokens_out += max_len
                if len(chunk) == micro:
                    while row_ends and row_ends[0] <= tokens_out:
                        row_ends.popleft()
                        self.rows += 1
                    yield torch.tensor(chunk, dtype=torch.long)
                    chunk = []


class _PartitionShard:
    """A worker's whole partitions (keepPartitionNum), iterated like a Ray Data shard (`iter_batches`).

    `ranges`: (partition, first row, rows) in the table's row order (`assign_partitions`). The text
    column is read from the parquet table once, with pyarrow; batches never mix two partitions, and the
    rows of each come in their order."""

    def __init__(self, data_path: str, column: str, ranges: Sequence[tuple[int, int, int]]):
        self.data_path, self.column, self.ranges = data_path, column, list(ranges)
        self._table: Any = None

    def iter_batches(self, *, batch_size: int = 256, batch_format: str = "pyarrow", **_: Any):
        """pyarrow tables of at most `batch_size` rows, partition after partition."""
        if batch_format != "pyarrow":
            raise ValueError("only pyarrow batches are produced")
        if self._table is None:
            import pyarrow.dataset as pads

            self._table = pads.dataset(self.data_path, format="parquet").to_table(columns=[self.column])
        for _, start, rows in self.ranges:
            for k in range(0, rows, batch_size):
                yield self._table.slice(start + k, min(batch_size, rows - k))


class _Prefetched:
    """A generator whose first item is computed in a background thread, started at once."""

    _END = object()

    def __init__(self, gen):
        import threading

        self._gen = gen
        self._first: Any = self._END
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch, name="byzer-sfft-prefetch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = next(self._gen, self._END)
        except BaseException as e:  # noqa: BLE001 - raised again in the training thread
            self._error = e

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise self._error
            if self._first is not self._END:
                first, self._first = self._first, self._END
                return first
            raise StopIteration
        return next(self._gen)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._gen.close()


__all__ = ["assign_partitions", "inspect_table"]
