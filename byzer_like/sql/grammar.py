"""Pieces shared by the Byzer statements: the token cursor, `where` options, values,
`<name>.`<path>`` targets, choices checked against a list, and printing back to SQL."""
from __future__ import annotations

import re
from typing import Callable, Collection, Iterable

from ..errors import did_you_mean
from .errors import SqlSyntaxError
from .source import Origin, Position
from .tokens import BACKQUOTED, COMMENT, NUMBER, STRING, WORD, Token, tokenize

FILE_FORMATS = ("csv", "json", "jsonl", "parquet", "text", "delta")
_NOT_VALUES = ("and", "as")  # words that end an option list, never a bare value
_PLAIN_KEY = re.compile(r"[^\W\d]\w*(?:\.\w+)*")


class Cursor:
    """The code tokens of one statement (comments dropped) and a read position.
    Errors it builds point into the original script."""

    def __init__(self, text: str, origin: Origin, statement_starts: Collection[str]):
        self.text = text
        self.origin = origin
        self.tokens = [t for t in tokenize(text, origin) if t.kind != COMMENT]
        self.index = 0
        self.statement_starts = statement_starts

    @property
    def pos(self) -> Position:
        return self.origin.raw.pos

    @property
    def source(self) -> str:
        return self.origin.raw.text

    def peek(self, ahead: int = 0) -> Token | None:
        i = self.index + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self) -> Token | None:
        token = self.peek()
        if token is not None:
            self.index += 1
        return token

    def take(self) -> Token:
        """The next token, which the caller knows is there."""
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept(self, *words: str) -> Token | None:
        """The next token if it is one of `words` (lower case; matched case-insensitively)."""
        token = self.peek()
        return self.next() if token is not None and token.is_word(*words) else None

    def expect(self, ok: Callable[[Token], bool], expected: str, after: str) -> Token:
        token = self.peek()
        if token is None or not ok(token):
            raise self.unexpected(expected, after)
        self.index += 1
        return token

    def keyword(self, word: str, expected: str, after: str) -> Token:
        return self.expect(lambda t: t.is_word(word), expected, after)

    def name(self, expected: str, after: str) -> Token:
        return self.expect(lambda t: t.kind == WORD, expected, after)

    def unexpected(self, expected: str, after: str) -> SqlSyntaxError:
        token = self.peek()
        if token is None:
            return self.error_at_end(f"expected {expected} after {after}")
        return self.error(token, f"expected {expected} after {after}, found `{shorten(token.text)}`")

    def error(self, token: Token, message: str) -> SqlSyntaxError:
        return self.origin.error(token.start, message)

    def error_at_end(self, message: str) -> SqlSyntaxError:
        return self.origin.error(self.tokens[-1].end if self.tokens else 0, message)

    def starts_statement(self, token: Token) -> bool:
        keyword = "!" if token.is_punct("!") else token.text.lower() if token.kind == WORD else None
        return keyword in self.statement_starts

    def at_line_start(self, token: Token) -> bool:
        return not self.text[self.text.rfind("\n", 0, token.start) + 1 : token.start].strip()

    def expect_end(self, statement: str) -> None:
        """The statement is complete: anything left is an error (a missing `;` if it starts a statement)."""
        token = self.peek()
        if token is None:
            return
        if self.starts_statement(token):
            raise self.error(token, f"missing `;` before `{token.text}`: end the {statement} statement with `;`")
        message = f"unexpected `{shorten(token.text)}` after a complete {statement} statement; expected `;`"
        raise self.error(token, message)


def parse_options(cur: Cursor) -> tuple[dict[str, str], dict[str, Token]]:
    """`where [and] k=v and k2=v2 ...` (Byzer also spells `where` as `options`), if present.
    Returns the options in order, values as raw strings, and the token of each key."""
    where = cur.accept("where", "options")
    if where is None:
        return {}, {}
    after = f"`{where.text}`"
    if and_ := cur.accept("and"):
        after = f"`{and_.text}`"
    options: dict[str, str] = {}
    keys: dict[str, Token] = {}
    while True:
        key_token, key = _parse_key(cur, after)
        cur.expect(lambda t: t.is_punct("="), "`=`", f"the option name `{key}`")
        value = parse_value(cur, f"`{key}=`")
        if key in keys:
            first = cur.origin.position(keys[key].start)
            raise cur.error(key_token, f"duplicate option `{key}` (first given at {first})")
        options[key] = value
        keys[key] = key_token
        and_ = cur.accept("and")
        if and_ is None:
            return options, keys
        after = f"`{and_.text}`"


def _parse_key(cur: Cursor, after: str) -> tuple[Token, str]:
    """A key: a word, dotted words, or a backquoted name (`sft.int.max_seq_length`)."""
    token = cur.peek()
    if token is not None and token.kind == BACKQUOTED:
        return cur.take(), token.value
    if token is None or token.kind != WORD or token.is_word(*_NOT_VALUES):
        raise cur.unexpected("an option `key=value`", after)
    return token, _dotted(cur)


def _dotted(cur: Cursor) -> str:
    """A word, or words joined by dots (`sft.int.max_seq_length`)."""
    parts = [cur.take().text]
    while (dot := cur.peek()) and dot.is_punct(".") and (part := cur.peek(1)) and part.kind in (WORD, NUMBER):
        cur.index += 2
        parts.append(part.text)
    return ".".join(parts)


def parse_value(cur: Cursor, after: str) -> str:
    """A value in any string form (unquoted), a number, or a bare word such as true/false."""
    token = cur.peek()
    if token is not None and token.kind in (STRING, NUMBER):
        return cur.take().value
    if token is not None and token.kind == WORD and not token.is_word(*_NOT_VALUES):
        return _dotted(cur)
    number = cur.peek(1)
    if token is not None and token.is_punct("-") and number and number.kind == NUMBER and number.start == token.end:
        cur.index += 2
        return "-" + number.text
    kinds = "a string (\"...\", '...' or '''...'''), a number, true/false or a word"
    if token is None:
        raise cur.error_at_end(f"missing value after {after}: give {kinds}")
    if token.is_word(*_NOT_VALUES):
        raise cur.error(token, f"missing value after {after}: give {kinds}")
    raise cur.error(token, f"expected a value after {after}: {kinds}; found `{shorten(token.text)}`")


def parse_target(cur: Cursor, expected: str, after: str, example: str) -> tuple[Token, str]:
    """`<name>.`<path>``, as in json.`data/q.jsonl` or LLM.``: the name's token and the path."""
    name = cur.name(expected, f"{after} (as in {example})")
    cur.expect(lambda t: t.is_punct("."), "`.` and a backquoted path", f"`{name.text}` (as in {example})")
    path = cur.expect(lambda t: t.kind == BACKQUOTED, "a backquoted path", f"`{name.text}.` (as in {example})")
    return name, path.value


def check_choice(cur: Cursor, value: str, token: Token, valid: Iterable[str], what: str) -> str:
    """The canonical spelling of `value` among `valid` (compared case-insensitively), or an error
    at `token` listing them."""
    spelling = {v.lower(): v for v in valid}
    found = spelling.get(value.lower())
    if found is None:
        choices = ", ".join(sorted(spelling.values(), key=str.lower))
        hint = did_you_mean(value, spelling.values()).rstrip()  # after the list: the message starts as it always did
        raise cur.error(token, f"unknown {what} `{shorten(value)}`; valid: {choices}" + (f"; {hint}" if hint else ""))
    return found


def shorten(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- printing back to SQL (the nodes' to_sql) ---


def quote(value: str) -> str:
    """A string literal that parses back to `value`."""
    if "'''" not in value and not value.endswith("'") and any(c in value for c in "\"\\\n"):
        return f"'''{value}'''"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def backquote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def options_sql(options: dict[str, str]) -> str:
    """` where k="v" and ...`, or nothing."""
    if not options:
        return ""
    pairs = (f"{k if _PLAIN_KEY.fullmatch(k) else backquote(k)}={quote(v)}" for k, v in options.items())
    return " where " + " and ".join(pairs)
