"""What a statement gives back (`Result`), and how `TableRepartition` split a table (`Partitioning`)."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Partitioning:
    """How `TableRepartition` split a table: `num` partitions by `columns` (empty: round-robin); `sizes`:
    rows per partition, in the table's row order (the rows of partition 0 first)."""

    num: int
    columns: tuple[str, ...]
    sizes: tuple[int, ...]


@dataclass
class Result:
    """What one statement produced: a table (for most statements) and a short message."""

    kind: str
    table: pa.Table | None = None
    name: str | None = None
    message: str = ""

    def to_pandas(self):
        return None if self.table is None else self.table.to_pandas()


__all__ = ["Partitioning", "Result"]
