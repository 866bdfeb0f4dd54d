"""What every command group of the CLI shares: the exit statuses, the one-line error habit, the parents that
give each command --workspace / --address / --verbose, table printing, the runtime of a command, path
arguments, key=value lists and data files (flags made from option models are `cli.flags`'). Imports nothing
heavy, not even pydantic: `byzer-like --help` imports only this module and the parser; the runtime, the
session and the option models are imported by the commands that use them."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..display import format_table, terminal_width
from ..errors import ByzerError, ClusterError, ConfigError
from ..workspace import DEFAULT_DIRNAME, HOME_ENV, Workspace

# exit statuses (see the epilog)
OK, FAILED, USAGE, NOTHING_TO_DO, STOPPED, INTERRUPTED = 0, 1, 2, 3, 4, 130
# a job's state -> the exit status of a command that ran or waited for it
JOB_EXIT = {"SUCCEEDED": OK, "PENDING": OK, "RUNNING": OK, "FAILED": FAILED, "STOPPED": STOPPED}
# how the CLI spells the options an error suggests (errors name them the Python / SQL way; see ByzerError.spelled)
FLAGS = {"reconnect": "--reconnect", "replace": "--replace", "stop_serving": "`byzer-like serve --stop`",
         "output_table": "--output-table", "overwrite": "--option overwrite=true",
         "calibration": "--calibration FILE, a data file of text", "group_size": "--group-size"}


def error_line(e: ByzerError) -> str:
    """A user-facing error as the CLI prints it: `error: <message>`, options spelled as CLI flags."""
    return f"error: {e.spelled(FLAGS)}"


class _Parser(argparse.ArgumentParser):
    """argparse, with the CLI's error habit: a wrong command line is one line on stderr saying what is wrong
    and where the help is (exit status 2), not argparse's usage block followed by the error."""

    def error(self, message: str):  # type: ignore[override]
        """Print `error: <message> (see `<prog> --help`)` and exit with status 2."""
        self.exit(USAGE, f"error: {message} (see `{self.prog} --help`)\n")


@dataclass(frozen=True)
class Parents:
    """The parent parsers a command is built on: `flags` gives it --verbose, `common` also --workspace and
    --address (each also accepted before the command)."""

    flags: argparse.ArgumentParser
    common: argparse.ArgumentParser


VERBOSE_HELP = "also show the libraries' log lines (Ray, Serve, DeepSpeed); same as BYZER_LIKE_LOG=debug"
WORKSPACE_HELP = "workspace folder (default: $BYZER_LIKE_HOME or ./byzer_workspace)"
ADDRESS_HELP = "Ray cluster address (default: $RAY_ADDRESS or the workspace's cluster)"
ADDRESS_FLAGS = ("--address", "--ray_address", "--ray-address")  # Byzer's: --ray_address


def parents() -> Parents:
    """--verbose, --workspace and --address after the command too (`byzer-like list -v`); SUPPRESS: unless
    given there, the value given before the command (or its default) stays."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    common = argparse.ArgumentParser(add_help=False, parents=[flags])
    common.add_argument("--workspace", default=argparse.SUPPRESS, help=WORKSPACE_HELP)
    common.add_argument(*ADDRESS_FLAGS, default=argparse.SUPPRESS, help=ADDRESS_HELP)
    return Parents(flags, common)


# The columns `catalog.main_metrics` gives, in its order, as the CLI's lists head them.
METRIC_HEADERS = {"loss": "loss", "tokens_per_s": "tokens/s", "reward_margin": "margin"}


def metric_cells(metrics: dict) -> tuple:
    """A job's or model's `metrics` as the cells under METRIC_HEADERS (None where a record has none)."""
    from ..catalog import main_metrics

    shown = main_metrics(metrics)
    return tuple(shown[k] for k in METRIC_HEADERS)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A list on stdout: aligned and cut to the terminal's width there, tab-separated into a pipe."""
    print(format_table(header, rows, aligned=sys.stdout.isatty(), width=terminal_width()))


def print_row(row: dict) -> None:
    """A registered model (or a result row): `name@vN: path`, then its other facts as JSON."""
    shown = f"{row['name']}@v{row['version']}" if row.get("name") else "(not registered)"
    print(f"{shown}: {row['path']}")
    print(json.dumps({k: v for k, v in row.items() if k not in ("name", "version", "path")}, indent=2, default=str))


def job_line(row: dict) -> str:
    return f"{row['job_id']}: {row['state']}" + (f" ({row['error']})" if row.get("error") else "")


def kv(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """`--set k=v` / `--param k=v` / `--option k=v` values as a dict; ConfigError naming `what` otherwise."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} is not key=value")
        out[key.strip()] = value
    return out


@dataclass
class _Seen:
    """The workspace a command opened: whether its folder was there when the command started, where its
    name came from (--workspace, BYZER_LIKE_HOME, the default) and what a reading command found empty."""

    ws: Workspace
    existed: bool
    source: str
    empty: list[str] = field(default_factory=list)


_seen: list[_Seen] = []  # the workspaces this command opened (one, in practice)


def workspace(args: argparse.Namespace) -> Workspace:
    """The command's workspace (--workspace, else $BYZER_LIKE_HOME, else ./byzer_workspace), remembered so
    that `workspace_note` can say at the end when it was new or empty."""
    given = getattr(args, "workspace", None)
    ws = Workspace.from_env(given)
    if not any(s.ws.root == ws.root for s in _seen):
        source = ("given by --workspace" if given else f"given by {HOME_ENV}" if os.environ.get(HOME_ENV)
                  else f"the default, ./{DEFAULT_DIRNAME} of the current directory")
        _seen.append(_Seen(ws, ws.root.is_dir(), source))
    return ws


def note_empty(ws: Workspace, what: str) -> None:
    """A reading command found nothing in `ws` (`what`: "no models registered"), for `workspace_note`."""
    for s in _seen:
        if s.ws.root == ws.root and what not in s.empty:
            s.empty.append(what)


def workspace_note() -> str | None:
    """One line naming the workspace when the command found it new or empty, else None:
    `workspace /x/byzer_workspace (new: this command created it; the default, ...; set BYZER_LIKE_HOME
    or pass --workspace to use another)`. What it was new or empty of is said once; the list is then cleared."""
    lines = []
    for s in _seen:
        if s.existed and not s.empty:
            continue
        if not s.existed:
            state = "new: this command created it" if s.ws.root.exists() else "new: it does not exist yet"
        else:
            state = "empty: " + ", ".join(s.empty)
        lines.append(f"workspace {s.ws.root} ({state}; {s.source}; set {HOME_ENV} or pass --workspace "
                     "to use another)")
    _seen.clear()
    return "\n".join(lines) or None


def runtime(args: argparse.Namespace, *, running: bool = True, announce: bool = False):
    """The runtime of the command's workspace and address. `running`: the command's effect must
    outlive it, so it needs a cluster that is already running (not a one-off embedded one).
    `announce`: a script runs (`run`, `sql`): say which deployments were left running before it."""
    from ..runtime import Runtime

    rt = Runtime(args.address, workspace=workspace(args), announce=announce)
    if running and not rt.cluster_running():
        raise ClusterError(
            f"no cluster is running for workspace {rt.workspace.root}: start one with `byzer-like cluster start` "
            "(or pass --address / set RAY_ADDRESS); a deployment in a one-off embedded cluster would end with this command"
        )
    return rt


def path_arg(ws: Workspace, value: str, what: str) -> Path:
    """A path argument, read as the shell reads it (relative to the current directory), inside the
    workspace's allowed roots; handed down absolute, since the runtime reads relative paths as SQL does."""
    return ws.resolve(value, what=what, relative_to="cwd")


def data_file(rt: Any, path: str, option: str):
    """A data file (json, jsonl, csv, parquet, txt) as a pyarrow table, read by a session's DuckDB
    (confined to the workspace's allowed roots)."""
    from ..session import Session
    from ..session.io import load_table

    fmt = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(
        Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"{option} {path!r}: use a .json, .jsonl, .csv, .parquet or .txt file")
    data = path_arg(rt.workspace, path, option)
    session = Session(rt, progress=False)
    try:
        return load_table(session.con, fmt, data, {})
    finally:
        session.close()


def prompt_loop(prompt: Callable[[], str], handle: Callable[[str], bool], reset: Callable[[], None]) -> int:
    """An interactive prompt that behaves as psql's and IPython's: Ctrl-C clears what is being typed
    (`reset`) or interrupts what runs, and the session goes on; an error is printed and the session
    goes on; Ctrl-D (end of input) ends it with status 0. `handle(line)` returns False to end it."""
    while True:
        try:
            line = input(prompt())
        except EOFError:
            print()
            return OK
        except KeyboardInterrupt:  # while typing
            print(flush=True)
            reset()
            continue
        try:
            if not handle(line):
                return OK
        except KeyboardInterrupt:  # while it ran
            print("interrupted", file=sys.stderr, flush=True)
            reset()
        except ByzerError as e:
            print(error_line(e), file=sys.stderr, flush=True)
            reset()


def stream_answer(rt: Any, name: str, messages: list[dict], config: dict) -> str:
    """Print a deployed model's answer as it streams in; returns the whole answer."""
    from ..config import chat_request

    text = ""
    for delta, text, _meta in rt.stream_deltas(name, chat_request(messages, config).model_dump()):
        print(delta, end="", flush=True)
    print()
    return text
