"""The `byzer-like` command line.

    byzer-like quickstart [--model smollm2|tiny]  import SmolLM2 once, run sql/quickstart.sql on 2 replicas, stream an answer
    byzer-like models make-tiny --family llama --out DIR [--size tiny|small] [--pretrain-seconds N]
    byzer-like models types                      known pretrained_model_type names
    byzer-like models list                       the model registry (trained and merged models, all versions)
    byzer-like models import FILE.gguf|smollm2 --output-table N          a GGUF file as a registered Hugging Face model
    byzer-like models convert --checkpoint-dir D --model-path M --output-table N [--tag T]   a DeepSpeed ZeRO checkpoint
    byzer-like models quantize MODEL --method bnb-nf4 --output-table N    a weight-quantized copy of a registered model
    byzer-like train sft|sfft --data FILE --model-path DIR [--output-table NAME] [--option k=v ...] [--detach]
    byzer-like jobs list|status|logs|stop|resume [JOB_ID] [--follow]   training jobs
    byzer-like cluster start|stop|status         the workspace's persistent local Ray head
    byzer-like deploy DIR --type llama --name m [--num-workers 2] [--param key=value ...]
    byzer-like list | meta NAME | undeploy NAME    deployments (running models, by name)
    byzer-like chat NAME ["message"]             one-shot, or interactive without a message
    byzer-like serve [--host H] [--port N]       OpenAI-compatible HTTP API + chat page (BYZER_LIKE_API_KEY)
    byzer-like run script.sql [--set k=v]        run a SQL script, print each result
    byzer-like sql                               an interactive SQL prompt
    byzer-like pipeline run|explain FILE [--dry-run]   an llm-module pipeline file: run it, print its SQL or its stages

Path arguments (DIR, FILE, script.sql) follow the shell's rule: a relative one starts at the current
directory (paths inside SQL start at the workspace). Model and data paths must lie inside the
workspace or a folder of BYZER_LIKE_ALLOWED_ROOTS.

Errors a user can fix are printed as one line on stderr, never as a traceback. Lists print a header
row and aligned columns on a terminal (tab-separated columns when piped), "(none)" when empty, local
times. The libraries' own log lines (Ray, Serve, DeepSpeed) show with --verbose or
BYZER_LIKE_LOG=debug.

Exit status (every command):
    0    done as asked: a blocking job SUCCEEDED, a detached one was submitted, a prompt ended (Ctrl-D)
    1    an error (one line on stderr), or a job that ended FAILED
    2    the command line is wrong (unknown command, option or value)
    3    nothing to act on: no cluster or HTTP API is running (status, stop), the job had already ended (jobs stop)
    4    a job ended STOPPED (stopped from elsewhere) instead of finishing
    130  interrupted (Ctrl-C); the prompts (sql, chat) clear the line or stop the statement instead
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable, Iterator, Sequence

from .. import logs
from ..cluster import disconnect
from ..errors import ByzerError
from ..tasks import TASKS
from ..version import __version__
from .common import (
    ADDRESS_FLAGS, ADDRESS_HELP, FAILED, INTERRUPTED, JOB_EXIT, NOTHING_TO_DO, OK, STOPPED, USAGE, VERBOSE_HELP,
    WORKSPACE_HELP, Parents, _Parser, error_line, parents, workspace_note,
)

# the commands in the order `byzer-like --help` lists them: name, help, and the function of its group's module
# that adds its parser (`module:function`, imported when the command line names the command)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("quickstart", "import SmolLM2 (once), run sql/quickstart.sql on 2 replicas, stream an answer",
     "scripts:add_quickstart"),
    ("models", "build tiny models; list model types; the model registry", "models:add_commands"),
    ("train", f"submit a training job ({', '.join(TASKS)}) on a data file", "training:add_train"),
    ("eval", "evaluate models on eval sets; list, compare, promote on the results", "evaluation:add_commands"),
    ("jobs", "training jobs: list, status, logs, stop, resume", "training:add_jobs"),
    ("cluster", "the workspace's persistent local Ray head", "cluster:add_commands"),
    ("deploy", "deploy a model directory as a named model", "serving:add_deploy"),
    ("undeploy", "remove a deployed model", "serving:add_undeploy"),
    ("query", "ask a deployed model one question (Byzer's `query`)", "serving:add_query"),
    ("list", "deployed models", "serving:add_list"),
    ("meta", "a deployed model's metadata", "serving:add_meta"),
    ("run", "run a SQL script in the Byzer-LLM dialect", "scripts:add_run"),
    ("sql", "an interactive SQL prompt (multi-line, with history)", "scripts:add_sql"),
    ("pipeline", "run an llm-module-style pipeline file (INI or YAML), or print its SQL or its stage graph",
     "pipeline:add_commands"),
    ("serve", "the OpenAI-compatible HTTP API and chat page for every deployment (foreground)", "serving:add_serve"),
    ("chat", "chat with a deployed model (streams to the terminal)", "serving:add_chat"),
)


class _Later(dict):
    """A sub-command's parsers by name, each built the first time it is looked up (argparse looks up only the
    command the line names; the README's synopsis test walks the others). Iterating gives every name."""

    def __init__(self, build: Callable[[str], None], names: Sequence[str]):
        super().__init__()
        self._build, self._names, self._pending = build, list(names), set(names)

    def __contains__(self, name: object) -> bool:
        return name in self._pending or super().__contains__(name)

    def __getitem__(self, name: str) -> Any:
        if name in self._pending:
            self._pending.discard(name)  # before it is built: argparse refuses a name it already holds
            self._build(name)
        return super().__getitem__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _Commands(argparse._SubParsersAction):
    """The commands: listed (with their help) at once, each one's parser built when the line names it, so that
    `byzer-like --help` and a command's start import only what that command needs (a command's flags come from
    option models: pydantic and the models are imported with its group)."""

    def register(self, commands: Sequence[tuple[str, str, str]], shared: Parents) -> None:
        """Take `commands` (COMMANDS' rows); `shared`: the parent parsers every command is built on."""
        self._rows = {name: (help_, where) for name, help_, where in commands}
        self._shared = shared
        self._name_parser_map = self.choices = _Later(self._build, [name for name, _, _ in commands])
        for name, help_, _ in commands:
            self._choices_actions.append(self._ChoicesPseudoAction(name, (), help_))

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.pop("help", None)  # listed already (COMMANDS)
        return super().add_parser(name, **kwargs)

    def _build(self, name: str) -> None:
        module, _, function = self._rows[name][1].partition(":")
        getattr(importlib.import_module(f"{__name__}.{module}"), function)(self, self._shared)


def build_parser() -> argparse.ArgumentParser:
    """The `byzer-like` argument parser: every command, its options and the epilog's exit statuses."""
    p = _Parser(prog="byzer-like", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--version", action="version", version=f"byzer-like {__version__}")
    p.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    # --workspace / --address before the command (`byzer-like --address H:P list`) or after it (see parents())
    p.add_argument("--workspace", help=WORKSPACE_HELP)
    p.add_argument(*ADDRESS_FLAGS, help=ADDRESS_HELP)
    p.register("action", "commands", _Commands)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", action="commands")
    sub.register(COMMANDS, parents())
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)
    try:
        return args.func(args)
    except ByzerError as e:
        print(error_line(e), file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader closed the pipe (`byzer-like models list | head -1`): it took what it wanted. Python's
        # own advice (docs "signal", note on SIGPIPE): point stdout at devnull so the exit flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    finally:
        disconnect()
        note = workspace_note()  # after the command's output and its error line (which comes first)
        if note:
            print(note, file=sys.stderr, flush=True)


__all__ = ["COMMANDS", "FAILED", "INTERRUPTED", "JOB_EXIT", "NOTHING_TO_DO", "OK", "STOPPED", "USAGE", "build_parser",
           "error_line", "main"]
