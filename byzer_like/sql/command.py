"""Commands starting with `!`: `!byzerllm setup ...`, `!byzerllm model ...`, `!byzerllm job ...`,
`!byzerllm cache ...`,
`!byzerllm model promote <ref> [if <conditions>] [on <eval set>]`, `!byzerllm eval list|compare ...`,
`!show tables`, `!desc <table>`.

They parse generically into a name and argument words (tokens written without spaces between
them form one word, quotes removed: `"num_gpus=2"`, `'num_gpus=2'` and `num_gpus=2` are the same), then are
checked against the usage table below, which is also what errors show.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..tasks import SETUP_MODES
from .grammar import Cursor, quote
from .source import Node
from .tokens import Token

# name -> its valid forms. In a form: `a|b` is one of these words, `<x>` any one argument,
# `[<x>]` an optional one, `"key=value"` an argument with a `=`, and `...` repeats what precedes.
COMMANDS: dict[str, tuple[str, ...]] = {
    "byzerllm": (
        "setup " + "|".join(SETUP_MODES),
        'setup "key=value" ...',
        "model list|deployed",
        "model exists|remove <udf>",
        "job list",
        "job status|logs|stop|resume [<id>]",
        "cache status|clear [<udf>]",
        "model promote <ref> ...",
        "eval list [<model>]",
        "eval compare <ref> <ref> ...",
        "adapter list <udf>",
    ),
    "show": ("tables",),
    "desc": ("<table>",),
}
_KEY_VALUE = re.compile(r"[^=\s]+=.*", re.DOTALL)
_PLAIN_ARG = re.compile(r"[\w.\-/:]+")


@dataclass(frozen=True)
class Command(Node):
    name: str  # "byzerllm", "show" or "desc"
    args: tuple[str, ...]  # sub-command words in lower case, other arguments as written (unquoted)

    def to_sql(self) -> str:
        return " ".join([f"!{self.name}", *(a if _PLAIN_ARG.fullmatch(a) else quote(a) for a in self.args)])


def parse_command(cur: Cursor) -> Command:
    cur.take()  # !
    name_token = cur.name(f"a command name ({_known()})", "`!`")
    name = name_token.text.lower()
    if name not in COMMANDS:
        raise cur.error(name_token, f"unknown command `!{name_token.text}`; known commands: {_known()}")
    words = _words(cur)
    args = _match(cur, name, words)
    return Command(name, args, pos=cur.pos, text=cur.source)


def _words(cur: Cursor) -> list[tuple[Token, str]]:
    """The remaining tokens grouped into arguments: (first token, argument)."""
    words: list[tuple[Token, str]] = []
    while (first := cur.next()) is not None:
        if cur.starts_statement(first) and cur.at_line_start(first):
            raise cur.error(first, f"missing `;` before `{first.text}`: end the previous command with `;`")
        chunk = [first]
        while (more := cur.peek()) is not None and more.start == chunk[-1].end:
            chunk.append(cur.take())
        words.append((first, "".join(t.value for t in chunk)))
    return words


def _match(cur: Cursor, name: str, words: list[tuple[Token, str]]) -> tuple[str, ...]:
    """The arguments (sub-command words in canonical case) of the first form they fit,
    or an error listing the forms that come closest."""
    args = [w for _, w in words]
    tried = [(form, *_fit(form.split(), args)) for form in COMMANDS[name]]
    for form, used, canonical in tried:
        if canonical is not None:
            return canonical
    best = max(used for _, used, _ in tried)
    forms = ", ".join(f"`!{name} {form}`" for form, used, _ in tried if used == best)
    if best < len(words):
        raise cur.error(words[best][0], f"unexpected `{words[best][1]}` in `!{name}`; valid forms: {forms}")
    raise cur.error_at_end(f"incomplete `!{' '.join([name, *args])}`; valid forms: {forms}")


def _fit(form: list[str], args: list[str]) -> tuple[int, tuple[str, ...] | None]:
    """How many of `args` the form accepts, and the canonical arguments if it accepts them all."""
    out: list[str] = []
    for k, element in enumerate(form):
        optional = element.startswith("[")
        element = element.strip("[]")
        if element == "...":
            element = form[k - 1]
            while len(out) < len(args) and _fits(element, args[len(out)]):
                out.append(args[len(out)])
            continue
        if len(out) < len(args) and _fits(element, args[len(out)]):
            arg = args[len(out)]
            out.append(arg.lower() if "<" not in element and "=" not in element else arg)
        elif not optional:
            return len(out), None
    return len(out), tuple(out) if len(out) == len(args) else None


def _fits(element: str, arg: str) -> bool:
    if element.startswith("<"):
        return True
    if element == '"key=value"':
        return bool(_KEY_VALUE.fullmatch(arg))
    return arg.lower() in element.split("|")


def _known() -> str:
    return ", ".join(f"!{n}" for n in sorted(COMMANDS))
