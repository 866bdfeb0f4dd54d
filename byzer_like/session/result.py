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
    """What one statement produced: a table (for most statements) and a short message. `seconds`: how long
    the statement ran (wall clock; set by `Session.sql`); `model_rows`: the rows a select's model functions
    answered (0 for a statement that called no model)."""

    kind: str
    table: pa.Table | None = None
    name: str | None = None
    message: str = ""
    seconds: float | None = None
    model_rows: int = 0

    @property
    def rows_per_s(self) -> float | None:
        """Model rows answered per second of the statement, or None when it called no model."""
        if not self.model_rows or not self.seconds:
            return None
        return self.model_rows / self.seconds

    def timing(self) -> str:
        """`0.8 s` or `23.1 s, 5.2 rows/s` (rows/s for a statement that called models); '' before it ran."""
        if self.seconds is None:
            return ""
        rate = self.rows_per_s
        return f"{self.seconds:.1f} s" + (f", {rate:.1f} rows/s" if rate is not None else "")

    def to_pandas(self):
        return None if self.table is None else self.table.to_pandas()


__all__ = ["Partitioning", "Result"]
