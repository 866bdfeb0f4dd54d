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
import sys
from typing import Sequence

from .. import logs
from ..cluster import disconnect
from ..errors import ByzerError
from ..version import __version__
from . import cluster as cluster_commands
from . import evaluation, models, scripts, serving, training
from .common import (
    ADDRESS_FLAGS, ADDRESS_HELP, FAILED, INTERRUPTED, JOB_EXIT, NOTHING_TO_DO, OK, STOPPED, USAGE, VERBOSE_HELP,
    WORKSPACE_HELP, _Parser, error_line, parents,
)
from .scripts import _quickstart_model

# the commands in the order `byzer-like --help` lists them: each adds its parser (one module per group)
COMMANDS = (
    scripts.add_quickstart, models.add_commands, training.add_train, evaluation.add_commands, training.add_jobs,
    cluster_commands.add_commands, serving.add_deploy, serving.add_undeploy, serving.add_query, serving.add_list,
    serving.add_meta, scripts.add_run, scripts.add_sql, serving.add_serve, serving.add_chat,
)


def build_parser() -> argparse.ArgumentParser:
    """The `byzer-like` argument parser: every command, its options and the epilog's exit statuses."""
    p = _Parser(prog="byzer-like", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--version", action="version", version=f"byzer-like {__version__}")
    p.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    # --workspace / --address before the command (`byzer-like --address H:P list`) or after it (see parents())
    p.add_argument("--workspace", help=WORKSPACE_HELP)
    p.add_argument(*ADDRESS_FLAGS, help=ADDRESS_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = parents()
    for add in COMMANDS:
        add(sub, shared)
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
    finally:
        disconnect()


__all__ = ["FAILED", "INTERRUPTED", "JOB_EXIT", "NOTHING_TO_DO", "OK", "STOPPED", "USAGE", "build_parser",
           "error_line", "main", "_quickstart_model"]
