"""Fuzzing the SQL dialect's parser, its Spark -> DuckDB transpile step and the parsers of option values.

Whatever text comes in, the result is statements or one of byzer-like's own typed errors (a
`ByzerError`; a syntax error carries a line, a column and the script's line under the caret):
never an IndexError, a RecursionError or an exception from sqlglot's internals. Inputs are arbitrary
text, soups of the dialect's tokens, and real scripts (the seeds in tests/sql_fixtures, the example
scripts in sql/, the README's and docs pages' examples) with characters and tokens inserted, deleted and replaced,
statements spliced, quotes and backquotes left open, huge identifiers, unicode and NUL bytes.
Examples are bounded per test (`max_examples`), so the file runs in seconds.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from byzer_like.config import REQUEST_KEYS, SetupConfig, chat_request
from byzer_like.errors import ByzerError
from byzer_like.sql import Select, parse_script, split_statements, to_duckdb
from byzer_like.sql.errors import SqlSyntaxError
from byzer_like.sql.grammar import quote

ROOT = Path(__file__).resolve().parent.parent
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "falling back to parsing as a Command" for every odd input

FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                  HealthCheck.filter_too_much])


def _seed_scripts() -> list[str]:
    scripts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests" / "sql_fixtures").glob("*.sql"))]
    scripts += [p.read_text(encoding="utf-8") for p in sorted((ROOT / "sql").glob("*.sql"))]
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        scripts += re.findall(r"```sql\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return scripts


SCRIPTS = _seed_scripts()
STATEMENTS = sorted({raw.text for script in SCRIPTS for raw in split_statements(script)})
SELECTS = [s for s in STATEMENTS if s.lstrip().lower().startswith(("select", "with"))]

# Pieces of the dialect and of hostile input, inserted whole.
TOKENS = [
    "select", "from", "where", "and", "as", "load", "save", "set", "run", "train", "with", "union", "options",
    "overwrite", "append", "command", "LLM", "json", "csv", "parquet", "text", "model", "!", "!byzerllm", "setup",
    "model", "job", "show", "desc", "tables", ";", ",", "，", ".", "(", ")", "[", "]", "{", "}", "=", "==", "<>",
    "*", "-", "+", "/", "%", "'", '"', "`", "``", "'''", '"""', "/*", "*/", "--", "\n", "\r\n", "\t", " ",
    "${", "}", "${x}", "${ model_dir }", "$", "\\", "\\'", '\\"', "\x00", "\ufeff", "\u200b", "\u202e",
    "map(", "llm_param(", "llm_result(", "llm_prompt(", "array(", "`map`(", "map(1", "map()", "llm_param(map())",
    "case when", "end", "not", "lateral", "view", "explode(", "over (", "partition by", "0", "1.5", "-1", "1e999",
    "NaN", "'a'", '"b"', "`c`", "x", "祝威廉", "ǅ", "ﬁ", "𝔰𝔢𝔩𝔢𝔠𝔱", "é", "e\u0301", "ｓｅｌｅｃｔ", "٣",
    "udfName=", 'action="infer"', 'type="shell"', 'type="defaultParam"', "`sft.int.max_seq_length`=",
    "a" * 300, "(" * 40, ")" * 40, "'" * 7, "`" * 5,
]
MUTATION = st.one_of(
    st.sampled_from(TOKENS),
    st.characters(codec=None, exclude_categories=()),  # any code point, surrogates and NUL included
    st.text(max_size=4),
)


@st.composite
def mutated(draw, seeds: list[str], max_edits: int = 6) -> str:
    """A seed with up to `max_edits` insertions, deletions and replacements at random places."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_edits))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if kind == "insert":
            text = text[:pos] + draw(MUTATION) + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 12)):]
        elif kind == "replace":
            text = text[:pos] + draw(MUTATION) + text[pos + draw(st.integers(1, 6)):]
        else:
            end = min(len(text), pos + draw(st.integers(1, 40)))
            text = text[:end] + text[pos:end] + text[end:]
    return text


@st.composite
def spliced(draw) -> str:
    """The head of one script joined to the tail of another (statements cut anywhere)."""
    a, b = draw(st.sampled_from(SCRIPTS)), draw(st.sampled_from(SCRIPTS))
    return a[: draw(st.integers(0, len(a)))] + draw(st.sampled_from(["", ";", "\n", " "])) + b[draw(st.integers(0, len(b))):]


def parse_or_typed_error(script: str, variables: dict | None = None):
    """parse_script(script): its statements, or the typed error it raised (checked)."""
    try:
        return parse_script(script, variables or {})
    except SqlSyntaxError as e:
        check_position(e, script)
        return e
    except ByzerError as e:
        assert str(e)
        return e


def check_position(e: SqlSyntaxError, script: str) -> None:
    """A syntax error points into the script: a real line, a column on it (or just past its end),
    that line as the snippet, and a message that renders."""
    lines = script.split("\n")
    assert 1 <= e.line <= len(lines), (e.line, len(lines))
    assert e.column >= 1
    assert e.snippet == lines[e.line - 1].rstrip("\r")
    assert e.column <= len(e.snippet) + 2, (e.column, e.snippet)
    assert e.message and str(e).startswith(f"line {e.line}, column {e.column}: ")


def transpile_or_typed_error(sql: str):
    try:
        return to_duckdb(sql)
    except SqlSyntaxError as e:
        check_position(e, sql)
        return e


# -- the script parser -------------------------------------------------------------------------------
@settings(max_examples=300, **FUZZ)
@given(st.text(max_size=200))
@example("select map(1 as t")  # sqlglot raised IndexError for an unclosed map( with an odd argument count
@example("select `map`(1) as t")  # ... and for a backquoted `map`
@example("select " + "(" * 100 + "1" + ")" * 100)  # RecursionError at ~48 nested brackets
@example("select " + "not " * 300 + "1 as t")  # RecursionError without brackets
@example("\x00select\x00 1 as t")
@example("select '\ud800' as t")  # a lone surrogate
def test_arbitrary_text(text):
    parse_or_typed_error(text)


@settings(max_examples=200, **FUZZ)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join))
def test_token_soup(text):
    parse_or_typed_error(text)


@settings(max_examples=200, **FUZZ)
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_token_soup_without_spaces(text):
    parse_or_typed_error(text)


@settings(max_examples=250, **FUZZ)
@given(mutated(SCRIPTS))
def test_mutated_scripts(script):
    parse_or_typed_error(script, {"model_dir": "m", "data_dir": "d"})


@settings(max_examples=200, **FUZZ)
@given(mutated(STATEMENTS, max_edits=3))
def test_mutated_statements(statement):
    parse_or_typed_error(statement)


@settings(max_examples=150, **FUZZ)
@given(spliced())
def test_spliced_scripts(script):
    parse_or_typed_error(script)


@settings(max_examples=150, **FUZZ)
@given(st.sampled_from(STATEMENTS), st.sampled_from(["'", '"', "`", "'''", '"""', "/*", "(", ")", "${"]),
       st.data())
def test_unbalanced_quotes_and_brackets(statement, opener, data):
    pos = data.draw(st.integers(0, len(statement)))
    result = parse_or_typed_error(statement[:pos] + opener + statement[pos:])
    if opener in ("'", '"', "`", "/*") and isinstance(result, SqlSyntaxError):
        assert result.message  # e.g. "unterminated string: it starts here and has no closing '"


@settings(max_examples=25, **FUZZ)
@given(st.sampled_from(STATEMENTS), st.integers(0, 10_000), st.sampled_from(["a", "é", "祝", "`", "'", "(", "\x00"]),
       st.sampled_from([5_000, 50_000]))
def test_huge_pieces(statement, where, char, size):
    pos = where % (len(statement) + 1)
    parse_or_typed_error(statement[:pos] + char * size + statement[pos:])


@settings(max_examples=150, **FUZZ)
@given(st.dictionaries(st.sampled_from(["x", "p", "model_dir", "data_dir", "a.b", "_", "ds_config", "名"]),
                       st.one_of(st.text(max_size=30), st.sampled_from(TOKENS)), min_size=1, max_size=4),
       st.sampled_from(STATEMENTS), st.data())
def test_variables_substituted_anywhere(variables, statement, data):
    """`${name}` values are pasted textually (quotes, backquotes, `;` and newlines in them included);
    errors inside a pasted value point at its `${`."""
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(statement)))
        name = data.draw(st.sampled_from(sorted(variables) + ["unknown_variable"]))
        statement = statement[:pos] + "${" + name + "}" + statement[pos:]
    parse_or_typed_error(statement, variables)


NESTINGS = {
    "parens": lambda n: "select " + "(" * n + "1" + ")" * n + " as t",
    "calls": lambda n: "select " + "f(" * n + "1" + ")" * n + " as t",
    "maps": lambda n: "select " + "map(1, " * n + "1" + ")" * n + " as t",
    "arrays": lambda n: "select " + "array(" * n + ")" * n + " as t",
    "case": lambda n: "select " + "case when a then " * n + "1" + " end" * n + " as t",
    "not": lambda n: "select " + "not " * n + "1 as t",
    "minus": lambda n: "select " + "- " * n + "1 as t",
    "subqueries": lambda n: "select x from " + "(select x from " * n + "t" + ")" * n + " as t",
    "dots": lambda n: "select " + ".".join(["a"] * n) + " from t as t",
    "index": lambda n: "select a" + "[0]" * n + " from t as t",
    "llm_result": lambda n: "select " + "llm_result(" * n + "r" + ")" * n + " as t",
    "unclosed": lambda n: "select " + "(" * n + " as t",
    "unopened": lambda n: "select 1 " + ")" * n + " as t",
}


@pytest.mark.parametrize("n", [10, 33, 60, 200, 2000])
@pytest.mark.parametrize("kind", sorted(NESTINGS))
def test_deep_nesting_is_a_typed_error(kind, n):
    """Deep nesting is parsed, or refused with a SqlSyntaxError: never a RecursionError."""
    result = parse_or_typed_error(NESTINGS[kind](n))
    if n == 10 and kind not in ("unclosed", "unopened"):
        assert isinstance(result, list), result
    if isinstance(result, list):
        for statement in result:
            assert isinstance(statement, Select)
            transpile_or_typed_error(statement.sql)


def test_nesting_limit_points_at_the_bracket():
    e = parse_or_typed_error("select\n  " + "(" * 40 + "1" + ")" * 40 + " as t")
    assert isinstance(e, SqlSyntaxError) and (e.line, e.column) == (2, 3 + 32) and "nested more than 32" in e.message
    e = parse_or_typed_error("select map(1,\n 2 as t")
    assert isinstance(e, SqlSyntaxError) and (e.line, e.column) == (1, 11) and "never closed" in e.message


# -- statements print back to SQL that parses to the same statement ----------------------------------
@settings(max_examples=300, **FUZZ)
@given(mutated(STATEMENTS, max_edits=3))
def test_parsed_statements_round_trip(statement):
    result = parse_or_typed_error(statement, {"model_dir": "m", "data_dir": "d", "ds_config": "{}"})
    if isinstance(result, Exception):
        return
    for s in result:
        sql = s.to_sql()
        if "${" in sql:  # a value that holds `${...}` after substitution is substituted again
            continue
        again = parse_or_typed_error(sql)
        assert not isinstance(again, Exception), (sql, again)
        assert again == [s], sql


# -- the transpile step (Spark SQL -> DuckDB), called on its own ---------------------------------------
@settings(max_examples=200, **FUZZ)
@given(st.one_of(mutated(SELECTS, max_edits=4), st.text(max_size=120),
                 st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join)))
@example("select map(1")
@example("select `map`(1) from t")
@example("select " + ".".join(["a"] * 400) + " from t")  # parses, but RecursionError when printed as DuckDB SQL
@example("select a" + "[0]" * 300 + " from t")
def test_transpile(sql):
    result = transpile_or_typed_error(sql)
    if not isinstance(result, Exception):
        assert isinstance(result.sql, str) and all(isinstance(f, str) for f in result.functions)


@pytest.mark.parametrize("sql, name, position", [
    ("select * from read_text('/etc/passwd')", "read_text", (1, 15)),
    ("select * from lateral read_text('/etc/passwd')", "read_text", (1, 23)),
    ("select * from t,\n  lateral read_csv('/etc/passwd')", "read_csv", (2, 11)),
    ("select * from t lateral view read_text('/etc/passwd') x as y", "read_text", (1, 30)),
    ("with read_text as (select 1) select * from read_text('/etc/passwd')", "read_text", (1, 44)),  # a CTE does not hide it
    ("select (select content from read_blob('/etc/passwd')) as c", "read_blob", (1, 29)),
    ("select * from t join glob_files('/etc/*') on true", "glob_files", (1, 22)),
    ("select * from range(3)", "range", (1, 15)),
])
def test_table_functions_are_refused(sql, name, position):
    """DuckDB's table functions read any file (and a session table named `read_text` would not stop
    `read_text('/etc/passwd')` from being called): a select may not call one."""
    with pytest.raises(SqlSyntaxError, match=rf"`{name}\(\.\.\.\)` is a table function") as e:
        to_duckdb(sql)
    assert (e.value.line, e.value.column) == position, str(e.value)


def test_a_quoted_path_is_a_table_name():
    assert to_duckdb("select * from `/etc/passwd`").tables == {"/etc/passwd"}  # the engine refuses unknown tables


def test_unnest_is_not_a_table():
    assert to_duckdb("select * from t lateral view explode(array(1)) x as y").tables == {"t"}
    assert to_duckdb("select * from explode(array(1, 2))").tables == set()


# -- option values: llm_param(map(...)) and !byzerllm setup ------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["nan", "inf", "-inf", "1e999", "-1", "0", "  ", "[1", "[]", "{}", "null", "true", "1.5",
                       '[{"role": "user"}]', '[{"role": 1, "content": 2}]', '[[1, 2]]', '["x"]']),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=5,
)
REQUEST_KEY = st.one_of(st.sampled_from(sorted(REQUEST_KEYS)),
                        st.sampled_from(["generation.top_k", "gen.x", "generation.int.k", "generation.float.k",
                                         "generation.bool.k", "generation.list.k", "generation.dict.k", "int.x.y", ""]),
                        st.text(max_size=12))


@settings(max_examples=150, **FUZZ)
@given(st.dictionaries(REQUEST_KEY, JSON_VALUES, max_size=6))
@example({"instruction": "q", "history": "not json"})  # JSONDecodeError
@example({"instruction": "q", "history": "[1]"})  # TypeError
@example({"instruction": "q", "history": '{"a": 1}'})  # ValueError from dict()
@example({"instruction": "q", "temperature": "abc"})  # ValueError from float()
@example({"instruction": "q", "max_length": float("inf")})  # OverflowError from int()
@example({"instruction": "q", "top_p": None})  # TypeError from float()
def test_llm_param_values(config):
    """What `llm_param(map(...))` becomes (a JSON object) -> a chat request, or a typed error."""
    try:
        request = chat_request([], config)
    except ByzerError as e:
        assert str(e)
        return
    assert isinstance(request.ins, str) and 0 <= request.temperature <= 2 and 0 < request.top_p <= 1


@settings(max_examples=150, **FUZZ)
@given(st.one_of(st.text(max_size=60), JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True))))
def test_model_function_arguments(raw):
    """A model function's argument as DuckDB hands it over: any string."""
    from byzer_like.session.functions import build_requests

    try:
        requests, embedding, inputs = build_requests([raw, None])
    except ByzerError as e:
        assert str(e)
        return
    assert requests[1] is None and len(embedding) == len(inputs) == 2


SETUP_KEYS = sorted(SetupConfig.option_names()) + ["num_gpus", "numGpus", "mode", "", "unknown", "num_workers "]
SETUP_VALUES = st.one_of(
    st.sampled_from(["1", "0", "-1", "2.5", "nan", "inf", "-inf", "Infinity", "1e999", "1" * 5000, "", " ", "true",
                     "single", "sft", "sfft", "SFT", "\x00", "$(touch x)", "1; 2", "0x10", "1_000", "٣"]),
    st.text(max_size=20),
)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from byzer_like import ByzerLLM
    from byzer_like.session import Session

    s = Session(ByzerLLM(workspace=tmp_path_factory.mktemp("fuzz_ws")), progress=False)
    yield s
    s.close()


@settings(max_examples=300, **FUZZ)
@given(key=st.sampled_from(SETUP_KEYS), value=SETUP_VALUES, quoted=st.booleans())
def test_setup_values(session, key, value, quoted):
    """`!byzerllm setup "key=value"` -> the parser, then the setup option set: applied or a typed error.
    Anything accepted is a finite, in-range setting."""
    from byzer_like.config import SetupConfig

    pair = f"{key}={value}"
    statement = f"!byzerllm setup {quote(pair) if quoted else pair};"
    session.runtime.setup_config = SetupConfig()
    try:
        session.sql(statement)
    except SqlSyntaxError as e:
        check_position(e, statement)
        return
    except ByzerError as e:
        assert str(e)
        return
    conf = session.llm.setup_config
    assert conf.num_workers >= 1 and 0 <= conf.cpus_per_worker < float("inf") and 0 <= conf.gpus_per_worker < float("inf")
    assert 0 < conf.request_timeout_s < float("inf")
