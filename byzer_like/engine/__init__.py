"""Running statements: a session's tables, DuckDB selects, models as SQL functions, load and save."""
from .session import ExecutionError, Result, Session, UnknownFunctionError, UnknownTableError

__all__ = ["ExecutionError", "Result", "Session", "UnknownFunctionError", "UnknownTableError"]
