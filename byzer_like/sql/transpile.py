"""The Spark SQL of `select` statements: checked with sqlglot (Spark dialect), then rewritten for DuckDB.

Byzer's LLM helper functions become DuckDB built-ins:
- `llm_param(map(k1, v1, ...))` -> `json_object(k1, v1, ...)`, a JSON string whose values keep their types;
- `llm_result(x)`, `llm_response_predict(x)` -> `json_extract_string(x, '$.output')`.
Every other function sqlglot does not know (a model such as `tiny_chat(...)`, `llm_prompt`,
`llm_stack`) stays a plain call of the same name, for the session to register as a Python UDF;
Spark's `array(...)` becomes a DuckDB list `[...]`.

A model call through one of its LoRA adapters, `m@qa_model(llm_param(...))` (also `m@qa_model@v2(...)`),
becomes `m(llm_with_adapter(llm_param(...), 'qa_model'))`: the adapter travels in the request, as
llm_param's `"adapter"` key does, so rows of different adapters still go to the model together.

A select reads only tables: DuckDB's table functions (`read_text('/etc/passwd')`, `read_csv`, `glob`,
...) would read files past the workspace's allowed roots, so a function call where a table goes is an
error (but `explode` / `unnest` of the query's own values). Brackets nested deeper than MAX_NESTING
and other input sqlglot cannot take (it recurses, or crashes) are SqlSyntaxErrors too.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from .source import Origin, RawStatement
from .tokens import BACKQUOTED, COMMENT, NUMBER, WORD, Token, tokenize

_LLM_PARAM = "llm_param"
WITH_ADAPTER = "llm_with_adapter"  # the session's helper that adds "adapter" to a request's JSON
_LLM_OUTPUT = ("llm_result", "llm_response_predict")
_COMMAS = ",，"  # a full-width comma (pasted with Chinese text) counts as a comma
_CLASS = re.compile(r"<class '(?:\w+\.)*(\w+)'>")
# Brackets nested deeper than this are refused before sqlglot sees them: its parser and generator
# recurse about 20 Python frames per level and would hit the recursion limit near 45 levels.
MAX_NESTING = 32
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_TOO_DEEP = "the select is nested too deeply for the SQL parser; split it into several selects (`select ... as <table>;`)"
# Table-valued functions that DuckDB runs as UNNEST over values in the query itself (no file, no catalog).
_UNNESTS = (exp.Unnest, exp.Explode, exp.Posexplode, exp.Inline)


@dataclass(frozen=True)
class Transpiled:
    sql: str  # DuckDB SQL
    functions: frozenset[str]  # lower-cased names of the functions sqlglot does not know (models, UDFs)
    tables: frozenset[str]  # tables the query reads (CTE names excluded), as written
    # each column reference: (its name, the tables it may come from: the one its qualifier names, or every
    # table read in its scope when it has none); CTEs and subqueries are not tables here
    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # each `llm_param(map(...))` of the query, with the model call it is an argument of
    requests: tuple["ModelRequest", ...] = ()


@dataclass(frozen=True)
class ModelRequest:
    """One `llm_param(map(...))` of a select, as written: `model`, the lower-cased name of the function it is the
    argument of (a model, or None when it is no function's argument); `adapter`, the adapter asked for by
    `m@qa_model(...)` or by a literal `"adapter", 'qa_model'` in the map (None: none, or one read from a
    column); `keys`, the map's literal string keys, in order (a key computed from a column is left out)."""

    model: str | None
    adapter: str | None
    keys: tuple[str, ...]


def to_duckdb(select_sql: str) -> Transpiled:
    """Transpile one select (Spark SQL, as in Byzer notebooks) to DuckDB SQL.
    Errors are `SqlSyntaxError`s with lines and columns counted in `select_sql`."""
    origin = Origin(RawStatement(select_sql))
    _, tree = check_spark(select_sql, origin)
    functions = {name.split("@", 1)[0] for call in tree.find_all(exp.Anonymous)
                 if (name := call.name.lower()) not in _REWRITES}
    try:
        duck = tree.transform(_rewrite).sql("duckdb", normalize_functions="lower", comments=False)
    except RecursionError:  # long chains (a.b.c..., x[0][0]...) that sqlglot parses but cannot print back
        raise origin.error(0, _TOO_DEEP) from None
    except Exception as e:  # noqa: BLE001 - a sqlglot bug must still reach the user as a typed error
        raise origin.error(0, f"this select cannot be translated to DuckDB ({type(e).__name__}: {e})") from None
    return Transpiled(duck, frozenset(functions), _tables(tree), _column_sources(tree), _requests(tree))


def _requests(tree: exp.Query) -> tuple[ModelRequest, ...]:
    """Every `llm_param(map(...))` of the tree as a ModelRequest (see there)."""
    out = []
    for call in tree.find_all(exp.Anonymous):
        if call.name.lower() != _LLM_PARAM or not call.expressions or not isinstance(call.expressions[0], exp.VarMap):
            continue
        params = call.expressions[0]
        pairs = list(zip(params.args["keys"].expressions, params.args["values"].expressions))
        keys = tuple(k.this for k, _ in pairs if isinstance(k, exp.Literal) and k.is_string)
        adapter = next((v.this for k, v in pairs if isinstance(k, exp.Literal) and k.is_string and k.this == "adapter"
                        and isinstance(v, exp.Literal) and v.is_string and v.this.strip()), None)
        parent = call.parent
        model = None
        if isinstance(parent, exp.Anonymous) and parent.name.lower() not in _REWRITES:
            model, _, through = parent.name.partition("@")
            model, adapter = model.lower(), through or adapter
        out.append(ModelRequest(model, adapter, keys))
    return tuple(out)


def _column_sources(tree: exp.Query) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each column reference with the tables it may be read from (see Transpiled.columns), scope by scope;
    empty when sqlglot cannot resolve the scopes (the session's ambiguity check is then DuckDB's alone)."""
    from sqlglot.optimizer.scope import traverse_scope

    out = []
    try:
        for scope in traverse_scope(tree):
            tables = {alias: ".".join(p.name for p in source.parts) for alias, source in scope.sources.items()
                      if isinstance(source, exp.Table) and not isinstance(source.this, exp.Func)}
            for column in scope.columns:
                if column.table:
                    found = (tables[column.table],) if column.table in tables else ()
                else:
                    found = tuple(tables.values())
                if found:
                    out.append((column.name, found))
    except Exception:  # noqa: BLE001 - sqlglot's scope analysis is an extra check, not a gate
        return ()
    return tuple(out)


def check_spark(sql: str, origin: Origin) -> tuple[str, exp.Query]:
    """Parse one query as Spark SQL; `sql` starts at offset 0 of `origin`'s text.
    Returns the SQL with full-width commas made ASCII (same length) and its tree (where a model called
    through an adapter, `m@qa_model(...)`, is a function named `m@qa_model`)."""
    tokens = [t for t in tokenize(sql, origin) if t.kind != COMMENT]
    chars = list(sql)
    for t in tokens:
        if t.is_punct("，"):
            chars[t.start] = ","
    sql = "".join(chars)
    _check_brackets(tokens, origin)
    _check_lists(tokens, origin)
    parsed, origin = _quote_adapter_calls(sql, tokens, origin)
    try:
        tree = sqlglot.parse_one(parsed, read="spark", error_message_context=len(parsed))
    except ParseError as e:
        info = e.errors[0] if e.errors else {}
        description = _CLASS.sub(r"\1", str(info.get("description") or e))
        offset = len(info.get("start_context") or "")  # the whole text before the error: see error_message_context
        raise origin.error(offset, f"invalid select near `{info.get('highlight', '')}`: {description}") from None
    except TokenError as e:
        raise origin.error(e.start or 0, f"invalid select: {e}") from None
    except RecursionError:  # deep chains of operators (not not not ..., case when ... case when ...)
        raise origin.error(0, _TOO_DEEP) from None
    except Exception as e:  # noqa: BLE001 - a sqlglot bug must still reach the user as a typed error
        raise origin.error(0, f"invalid select: the SQL parser failed on it ({type(e).__name__}: {e})") from None
    if not isinstance(tree, exp.Query):
        raise origin.error(0, "expected a query: select ... or with ... select ...")
    if isinstance(tree, exp.Select) and not tree.expressions:
        raise origin.error(0, "a select needs at least one column")
    _check_llm_calls(tree, origin)
    _check_table_functions(tree, tokens, origin)
    return sql, tree


class _Quoted:
    """`origin` for a text with backquotes added around adapter calls: offsets map back past them."""

    def __init__(self, origin: Origin, added: list[int]):
        self.origin, self.added = origin, added  # positions of the added characters, in the new text

    def _old(self, offset: int) -> int:
        return offset - bisect.bisect_left(self.added, offset)

    def position(self, offset: int) -> Any:
        return self.origin.position(self._old(offset))

    def error(self, offset: int, message: str) -> Any:
        return self.origin.error(self._old(offset), message)


def _quote_adapter_calls(sql: str, tokens: list[Token], origin: Origin) -> tuple[str, Any]:
    """`m@qa_model(` (a word, `@`, an adapter reference, `(`, nothing between them) backquoted as one function
    name, `` `m@qa_model`( ``, which sqlglot parses; the origin maps error offsets back to `sql`."""
    spans = []
    i = 0
    while i + 2 < len(tokens):
        t = tokens[i]
        j = i + 1
        if t.kind == WORD and tokens[j].is_punct("@") and tokens[j].start == t.end:
            while j + 1 < len(tokens) and tokens[j + 1].start == tokens[j].end and \
                    (tokens[j + 1].kind in (WORD, NUMBER) or tokens[j + 1].is_punct("@.-")):
                j += 1
            if j > i + 1 and j + 1 < len(tokens) and tokens[j + 1].is_punct("(") and tokens[j].kind in (WORD, NUMBER):
                spans.append((t.start, tokens[j].end))
                i = j + 1
                continue
        i += 1
    if not spans:
        return sql, origin
    out, added, last = [], [], 0
    for start, end in spans:
        out.append(sql[last:start])
        pos = sum(len(p) for p in out)
        added += [pos, pos + 1 + (end - start)]
        out.append(f"`{sql[start:end]}`")
        last = end
    out.append(sql[last:])
    return "".join(out), _Quoted(origin, added)


def _tables(tree: exp.Query) -> frozenset[str]:
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    names = (".".join(part.name for part in table.parts) for table in tree.find_all(exp.Table)
             if not isinstance(table.this, exp.Func))  # table functions: refused by check_spark
    return frozenset(name for name in names if name and name.lower() not in ctes)


def _table_functions(tree: exp.Expr) -> list[exp.Func]:
    """Function calls where a table goes (`from read_text(...)`, `lateral read_csv(...)`), but UNNEST and its kin."""
    calls = [node.this for node in tree.find_all(exp.Table, exp.Lateral) if isinstance(node.this, exp.Func)]
    return [call for call in calls if not isinstance(call, _UNNESTS)]


def _check_table_functions(tree: exp.Expr, tokens: list[Token], origin: Origin) -> None:
    """DuckDB's table functions read any file or URL (read_text, read_csv, glob, ...), past the workspace's
    allowed roots: a select reads only the session's tables (and UNNEST / explode of its own values)."""
    for call in _table_functions(tree):
        name = _function_name(call)
        start = call.meta.get("start")
        if start is None:  # sqlglot's own function nodes keep no position: the first word of that name
            start = next((t.start for t in tokens if t.text.lower() == name.lower()), 0)
        raise origin.error(start, f"`{name}(...)` is a table function, which selects cannot call: a select reads the "
                                  "session's tables; read a file into one with load <format>.`<path>` as <table>")


def _function_name(call: exp.Func) -> str:
    return call.name if isinstance(call, exp.Anonymous) else call.sql_name().lower()


def _check_brackets(tokens: list[Token], origin: Origin) -> None:
    """Brackets are balanced and nested at most MAX_NESTING deep (sqlglot would crash or recurse without end)."""
    stack: list[Token] = []
    for t in tokens:
        if t.is_punct("([{"):
            stack.append(t)
            if len(stack) > MAX_NESTING:
                raise origin.error(t.start, f"brackets nested more than {MAX_NESTING} deep; "
                                            "split the select into several (`select ... as <table>;`)")
        elif t.is_punct(")]}"):
            if not stack:
                raise origin.error(t.start, f"unmatched `{t.text}`: no `{_CLOSERS[t.text]}` opens it")
            opener = stack.pop()
            if opener.text != _CLOSERS[t.text]:
                raise origin.error(t.start, f"`{t.text}` closes the `{opener.text}` at "
                                            f"{origin.position(opener.start)}")
    if stack:
        raise origin.error(stack[-1].start, f"`{stack[-1].text}` is never closed")


def _check_lists(tokens: list[Token], origin: Origin) -> None:
    """What sqlglot silently drops: empty items (`f(a,,b)`, `f(,a)`), and `map(...)` with an odd
    number of arguments (sqlglot 30.30 crashes on it). A trailing comma (`f(a, b,)`) is tolerated."""
    for i, t in enumerate(tokens):
        if t.is_punct(_COMMAS) and i and tokens[i - 1].is_punct(_COMMAS + "("):
            raise origin.error(t.start, "missing expression before this comma")
        is_map = t.is_word("map") or (t.kind == BACKQUOTED and t.value.lower() == "map")
        if is_map and i + 1 < len(tokens) and tokens[i + 1].is_punct("("):
            count = _argument_count(tokens, i + 1)
            if count is not None and count % 2:
                plural = "s" * (count != 1)
                raise origin.error(t.start, f"map(...) takes key, value pairs; this one has {count} argument{plural}")


def _argument_count(tokens: list[Token], open_paren: int) -> int | None:
    """Arguments of the call whose `(` is at `open_paren` (a trailing comma adds none); None if unclosed."""
    depth = commas = 0
    for j in range(open_paren, len(tokens)):
        t = tokens[j]
        if t.is_punct("([{"):
            depth += 1
        elif t.is_punct(")]}"):
            depth -= 1
            if depth == 0:
                if j == open_paren + 1:
                    return 0
                return commas + (not tokens[j - 1].is_punct(_COMMAS))
        elif depth == 1 and t.is_punct(_COMMAS):
            commas += 1
    return None


def _check_llm_calls(tree: exp.Expr, origin: Origin) -> None:
    for call in tree.find_all(exp.Anonymous):
        name = call.name.lower()
        start = call.meta.get("start", 0)
        if name == _LLM_PARAM and not (len(call.expressions) == 1 and isinstance(call.expressions[0], exp.VarMap)):
            example = 'llm_param(map("instruction", q, "temperature", 0.1))'
            raise origin.error(start, f"llm_param takes one map(...) of options, e.g. {example}")
        if name in _LLM_OUTPUT and len(call.expressions) != 1:
            raise origin.error(start, f"{name} takes one argument: a model's answer")


# A replaced node's children are not visited by `transform`, so each rewrite transforms its own
# arguments (a model call inside llm_result, an llm_result inside another llm_param...).
def _json_object(call: exp.Anonymous) -> exp.Expr:
    params = call.expressions[0]
    keys, values = params.args["keys"].expressions, params.args["values"].expressions
    pairs = [x.transform(_rewrite) for pair in zip(keys, values) for x in pair]
    return exp.Anonymous(this="json_object", expressions=pairs)


def _json_output(call: exp.Anonymous) -> exp.Expr:
    answer = call.expressions[0].transform(_rewrite)
    return exp.Anonymous(this="json_extract_string", expressions=[answer, exp.Literal.string("$.output")])


def _through_adapter(call: exp.Anonymous) -> exp.Expr:
    """`m@qa_model(x)` -> `m(llm_with_adapter(x, 'qa_model'))`."""
    model, _, adapter = call.name.partition("@")
    args = [a.transform(_rewrite) for a in call.expressions]
    if len(args) == 1:
        args = [exp.Anonymous(this=WITH_ADAPTER, expressions=[args[0], exp.Literal.string(adapter)])]
    return exp.Anonymous(this=model, expressions=args)


_REWRITES = {_LLM_PARAM: _json_object, **{name: _json_output for name in _LLM_OUTPUT}}


def _rewrite(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Anonymous) and (rewrite := _REWRITES.get(node.name.lower())):
        return rewrite(node)
    if isinstance(node, exp.Anonymous) and "@" in node.name:
        return _through_adapter(node)
    return node
