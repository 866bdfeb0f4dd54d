"""Two kinds of stage beside plain callables: a SQL snippet run on a session (`sql`) and a function run as a
Ray task (`remote`).

    pipeline(sql("select q from questions where q <> ''"), lambda t: t.num_rows)
    parallel(remote(heavy, num_cpus=2), remote(heavy, num_cpus=2))

A SQL stage runs on the session it was given (a `byzer_like.session.Session`, or a runtime / client handle a
session is made on), else on the default one (`set_session`), else on a session made at its first call on the
default workspace's runtime. Branches of a parallel run on threads; a remote stage's thread waits on its Ray task,
so several remote branches run on the cluster at once.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

from ..errors import UnknownOptionError, UnpicklableStageError
from .binding import label

RAY_OPTIONS = ("memory", "num_cpus", "num_gpus", "resources")  # the ray.remote options a remote stage takes
INPUT_TABLE = "input"  # the session table a SQL stage's input becomes

_default: dict[str, Any] = {}  # "session": the session SQL stages without their own run on
_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()  # one DuckDB user at a time
_locks_lock = threading.Lock()
_connect_lock = threading.Lock()  # one thread joins Ray for a flow's remote stages


def set_session(session: Any) -> None:
    """Make `session` (a Session, or a runtime / client handle one is made on; None to forget it) the one SQL
    stages without a session of their own run on."""
    _default.pop("session", None)
    if session is not None:
        _default["session"] = _as_session(session)


def default_session() -> Any:
    """The session stages without one of their own run on: `set_session`'s, else one made now on the default
    workspace's runtime (and kept)."""
    if "session" not in _default:
        _default["session"] = _as_session(None)
    return _default["session"]


def _as_session(handle: Any) -> Any:
    from ..session import Session

    return handle if isinstance(handle, Session) else Session(handle, progress=False)


def _session_lock(session: Any) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(session, threading.Lock())


class sql:  # noqa: N801 - a stage users write as flows.sql("select ...")
    """A SQL stage: `sql(script, session=None, *, table="input")`.

    Called with no input, it runs `script`; called with a table (a pyarrow Table, a list of row dicts or a dict of
    columns), it first keeps it in the session as `table` (replacing one of that name), so the script can
    `select ... from input`. Returns the pyarrow Table of the script's last statement that made one (None when
    none did). `session`: a `byzer_like.session.Session`, or a runtime / client handle to make one on; default:
    the one `set_session` gave, else one made at the first call on the default workspace. Statements on one
    session run one at a time. Errors: the session's (SqlError with line and column), TypeError for an input that
    is no table; inside a flow both come out as StageError naming the stage."""

    def __init__(self, script: str, session: Any = None, *, table: str = INPUT_TABLE):
        self.script, self.table = script, table
        self.session = None if session is None else _as_session(session)

    def _session(self) -> Any:
        return self.session if self.session is not None else default_session()

    def __call__(self, *inputs: Any) -> Any:
        session = self._session()
        with _session_lock(session):
            if inputs:
                session.put(self.table, _as_table(inputs))
            results = session.sql(self.script)
        return next((r.table for r in reversed(results) if r.table is not None), None)

    def __repr__(self) -> str:
        text = " ".join(self.script.split())
        return f"<Sql {text[:60] + '...' if len(text) > 60 else text!r}>"


def _as_table(inputs: tuple) -> Any:
    import pyarrow as pa

    value = inputs[0] if len(inputs) == 1 else None
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return pa.Table.from_pylist(value)
    if isinstance(value, dict):
        return pa.table(value)
    shown = type(value).__name__ if len(inputs) == 1 else f"{len(inputs)} inputs"
    raise TypeError(f"a sql stage takes one table as its input (a pyarrow Table, a list of row dicts or a dict of "
                    f"columns), got {shown}")


class remote:  # noqa: N801 - a stage users write as flows.remote(f, num_cpus=2)
    """A stage run as a Ray task: `remote(fn, num_cpus=..., num_gpus=..., memory=..., resources={...})` (the
    options of `ray.remote`), for heavy local functions; a parallel's remote branches run on the cluster at once.

    `fn` (a class is instantiated with no arguments, as a stage is) must pickle, since it travels to a Ray worker:
    UnpicklableStageError when it does not, raised here; UnknownOptionError for an option not in RAY_OPTIONS.
    A call connects to Ray when this process has not yet (the workspace's cluster, as the runtime does) and waits
    for the task; an exception the task raised comes back as it (in a flow, as StageError's cause)."""

    def __init__(self, fn: Callable, **options: Any):
        for key in options:
            if key not in RAY_OPTIONS:
                raise UnknownOptionError("remote stage", key, RAY_OPTIONS)
        self.fn = fn() if isinstance(fn, type) else fn
        self.options = options
        from ray import cloudpickle

        try:
            cloudpickle.dumps(self.fn)
        except Exception as e:  # noqa: BLE001 - whatever the pickler refuses
            raise UnpicklableStageError(
                f"stage {label(self.fn)} asks to run on Ray ({self._shown()}) but cannot be pickled to reach a worker: "
                f"{type(e).__name__}: {e}; make it a function of its own module, or keep what cannot be pickled (a "
                "lock, a socket, an open file) out of it") from e
        self._task: Any = None

    def _shown(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "no options"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import ray

        with _connect_lock:  # the branches of a parallel arrive at once, on threads: one of them connects
            if not ray.is_initialized():
                from ..cluster import connect

                connect()
        if self._task is None:
            def run(fn: Callable, args: tuple, kwargs: dict) -> Any:  # pickled by value: workers need not import us
                return fn(*args, **kwargs)

            self._task = ray.remote(**self.options)(run) if self.options else ray.remote(run)
        return ray.get(self._task.remote(self.fn, args, kwargs))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_task": None}

    def __repr__(self) -> str:
        return f"<Remote {label(self.fn)} {self._shown()}>"
