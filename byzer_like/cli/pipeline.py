"""`byzer-like pipeline ...`: llm-module-style pipeline files (INI or YAML, `byzer_like.flows.pipeline_file`).

    byzer-like pipeline run FILE              compile, check, run: train, eval, predict, export, deploy, chat
    byzer-like pipeline run FILE --dry-run    print the SQL script the file compiles to (it runs with `byzer-like run`)
    byzer-like pipeline explain FILE          print the stage graph (and the keys that mean nothing here)

A file's problems (each `file:line [Section] key: message`) are printed before anything starts; the keys with no
meaning here are printed as warnings on stderr. A Chat with `questions=` prints each answer; a Chat without them
chats interactively when stdin is a terminal.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..flows import pipeline_file as pf
from .common import OK, Parents, prompt_loop, runtime, stream_answer


def _compiled(args: argparse.Namespace) -> Any:
    compiled = pf.compile_path(os.path.abspath(args.file))
    for w in compiled.warnings:
        print(f"warning: {w}", file=sys.stderr, flush=True)
    return compiled


def cmd_run(args: argparse.Namespace) -> int:
    from ..session import Session
    from .scripts import _print_result

    compiled = _compiled(args)
    if args.dry_run:
        print(compiled.sql, end="")
        return OK
    session = Session(runtime(args, running=False, announce=True))
    try:
        done = pf.run(compiled, session, on_result=lambda i, r: _print_result(i, r, args.max_rows))
        for question, answer in done.answers:
            print(f"> {question}\n{answer}\n", flush=True)
        if done.chat_model and not done.answers and sys.stdin.isatty():
            _chat(session.runtime, done.chat_model, compiled.chat["request"])
    finally:
        session.close()
    return OK


def _chat(rt: Any, name: str, request: dict) -> int:
    """An interactive chat with the Chat stage's deployment (Ctrl-D ends it)."""
    print(f"chatting with {name} (Ctrl-D ends)", file=sys.stderr, flush=True)
    history: list[dict] = []

    def handle(line: str) -> bool:
        if not line.strip():
            return True
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": stream_answer(rt, name, list(history), request)})
        return True

    return prompt_loop(lambda: "you> ", handle, lambda: None)


def cmd_explain(args: argparse.Namespace) -> int:
    compiled = pf.compile_path(os.path.abspath(args.file))
    print(pf.explain(compiled))
    return OK


def add_commands(sub: Any, parents: Parents) -> None:
    """`pipeline` and its actions."""
    p = sub.add_parser("pipeline")
    psub = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    r = psub.add_parser("run", parents=[parents.common], help="run a pipeline file (llm-module's config file, INI or YAML)")
    r.add_argument("file", help="the pipeline file (.ini / .conf, or .yaml / .yml)")
    r.add_argument("--dry-run", action="store_true", help="print the SQL script it compiles to, run nothing")
    r.add_argument("--max-rows", type=int, default=20, help="rows printed per result table")
    r.set_defaults(func=cmd_run)
    e = psub.add_parser("explain", parents=[parents.flags], help="print a pipeline file's stage graph")
    e.add_argument("file")
    e.set_defaults(func=cmd_explain)
