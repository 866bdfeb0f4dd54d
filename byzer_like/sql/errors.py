"""Errors that point into the user's script (defined with every other typed error in `byzer_like.errors`)."""
from __future__ import annotations

from ..errors import SqlError, SqlSyntaxError, _caret_indent

__all__ = ["SqlError", "SqlSyntaxError", "_caret_indent"]
