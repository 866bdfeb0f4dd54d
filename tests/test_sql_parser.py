"""The Byzer-LLM SQL layer: splitting, every statement form, errors with exact positions,
`${name}` substitution, the guide's own statements, and selects transpiled and run in DuckDB.
No Ray, no torch; DuckDB only to check the transpiled SQL really runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from byzer_like.errors import ByzerError
from byzer_like.sql import (
    Command, Load, Position, RawStatement, Run, Save, Select, Set, SqlSyntaxError, parse_script,
    parse_statement, split_statements, substitute, to_duckdb,
)

FIXTURES = Path(__file__).parent / "sql_fixtures"


def one(script: str, variables: dict[str, str] | None = None):
    [statement] = parse_script(script, variables or {})
    return statement


def error(script: str, variables: dict[str, str] | None = None) -> SqlSyntaxError:
    with pytest.raises(SqlSyntaxError) as e:
        parse_script(script, variables or {})
    return e.value


# --- splitting -------------------------------------------------------------------------------


def test_split_ignores_semicolons_in_strings_backquotes_and_comments():
    script = (
        "load json.`a;b` as t; -- c;\n"
        "select ';' as x /* ; */ from t as y;;\n"
        "\n"
        "  set z = '''a;\nb''' ; select 1"
    )
    assert [(s.text, s.pos) for s in split_statements(script)] == [
        ("load json.`a;b` as t", Position(1, 1)),
        ("select ';' as x /* ; */ from t as y", Position(2, 1)),
        ("set z = '''a;\nb'''", Position(4, 3)),
        ("select 1", Position(5, 8)),
    ]


def test_split_drops_leading_and_trailing_comments():
    [s] = split_statements("-- a comment; with a semicolon\n/* block; */ !show tables -- trailing\n;")
    assert (s.text, s.pos) == ("!show tables", Position(2, 14))


# --- every statement form ------------------------------------------------------------------------

FORMS = [
    ("load json.`data/q.jsonl` as questions", Load("json", "data/q.jsonl", {}, "questions")),
    ("LOAD CSV.`a b.csv` where header=\"true\" and delimiter=',' as T1", Load("csv", "a b.csv", {"header": "true", "delimiter": ","}, "T1")),
    ("load jsonl.`x` options `a.b`=1 and c.int.d=-2 and e=true as t", Load("jsonl", "x", {"a.b": "1", "c.int.d": "-2", "e": "true"}, "t")),
    ("load model.`list` as models", Load("model", "list", {}, "models")),
    ("load text.`a``b` as t", Load("text", "a`b", {}, "t")),
    ("save overwrite out as parquet.`out/answers`", Save("overwrite", "out", "parquet", "out/answers", {})),
    ("save out as json.`o`", Save("errorIfExists", "out", "json", "o", {})),
    ("save APPEND out as csv.`o` where header=\"true\"", Save("append", "out", "csv", "o", {"header": "true"})),
    ("save errorifexists out as json.`o`", Save("errorIfExists", "out", "json", "o", {})),
    ("save Ignore out as text.`o`", Save("ignore", "out", "text", "o", {})),
    ("select 1 as one", Select("select 1", "one")),
    ("select * from t", Select("select * from t", None)),
    ("SELECT a AS b FROM t AS c", Select("SELECT a AS b FROM t", "c")),
    ("with a as (select 1 as x) select x from a as out", Select("with a as (select 1 as x) select x from a", "out")),
    ("select a from t -- a comment; with a semicolon\n as out", Select("select a from t", "out")),
    ("select 'a;b' as x, \"c--d\" as y from t as out", Select("select 'a;b' as x, \"c--d\" as y from t", "out")),
    ("select f(a，b) from t as out", Select("select f(a,b) from t", "out")),  # full-width comma
    ('set a = "x"', Set("a", "x", {})),
    ("set a = 'x'", Set("a", "x", {})),
    ("set a = '''{\"k\": [1, 2]}\n'''", Set("a", '{"k": [1, 2]}\n', {})),
    ('set a = "say \\"hi\\" \\\\ \\n"', Set("a", 'say "hi" \\ \\n', {})),
    ("set a = 12", Set("a", "12", {})),
    ("set a = -1.5", Set("a", "-1.5", {})),
    ("set a = true", Set("a", "true", {})),
    ('set a = "x" where type="defaultParam"', Set("a", "x", {"type": "defaultParam"})),
    ('run command as LLM.`` where action="infer" and udfName="m"', Run("run", None, "LLM", "", {"action": "infer", "udfName": "m"})),
    ('run t as LLM.`` where a="1" as out', Run("run", "t", "LLM", "", {"a": "1"}, "out")),
    ("train sft_data as LLM.`/tmp/model` where a=1", Run("train", "sft_data", "LLM", "/tmp/model", {"a": "1"})),
    ("RUN Command as llm.`` where\nand a=1", Run("run", None, "LLM", "", {"a": "1"})),
    ("run command as LLM.``", Run("run", None, "LLM", "", {})),
    ("!byzerllm setup single", Command("byzerllm", ("setup", "single"))),
    ('!byzerllm setup "num_gpus=2"', Command("byzerllm", ("setup", "num_gpus=2"))),
    ("!byzerllm setup 'num_gpus=2' \"max_batch_size=8\"", Command("byzerllm", ("setup", "num_gpus=2", "max_batch_size=8"))),
    ("!byzerllm setup num_gpus=2 max_batch_size='8'", Command("byzerllm", ("setup", "num_gpus=2", "max_batch_size=8"))),
    ("!ByzerLLM SETUP SFFT", Command("byzerllm", ("setup", "sfft"))),
    ("!byzerllm model list", Command("byzerllm", ("model", "list"))),
    ("!byzerllm model exists tiny_chat", Command("byzerllm", ("model", "exists", "tiny_chat"))),
    ("!byzerllm model remove tiny_chat", Command("byzerllm", ("model", "remove", "tiny_chat"))),
    ("!byzerllm job list", Command("byzerllm", ("job", "list"))),
    ("!byzerllm job status", Command("byzerllm", ("job", "status"))),
    ("!byzerllm job logs raysubmit_AbC-123", Command("byzerllm", ("job", "logs", "raysubmit_AbC-123"))),
    ("!byzerllm job stop j1", Command("byzerllm", ("job", "stop", "j1"))),
    ("!byzerllm job resume j1", Command("byzerllm", ("job", "resume", "j1"))),
    ("!show tables", Command("show", ("tables",))),
    ("!desc questions", Command("desc", ("questions",))),
]


@pytest.mark.parametrize("sql, expected", FORMS, ids=[sql.split("\n")[0][:40] for sql, _ in FORMS])
def test_statement_forms(sql, expected):
    statement = one(sql + ";")
    assert statement == expected
    assert (statement.pos, statement.text) == (Position(1, 1), sql)


@pytest.mark.parametrize("sql", [sql for sql, _ in FORMS], ids=[sql.split("\n")[0][:40] for sql, _ in FORMS])
def test_round_trip(sql):
    statement = one(sql)
    printed = statement.to_sql()
    assert one(printed) == statement
    assert one(printed).to_sql() == printed


def test_nodes_are_frozen():
    with pytest.raises(AttributeError):
        one("select 1 as x").table = "y"


# --- errors: exact positions ---------------------------------------------------------------------

ERRORS = [
    # (script, line, column, part of the message)
    ("load json.`data/q.jsonl` questions;", 1, 26, "expected `as <table>` after the load path, found `questions`"),
    ("set a = 1;\n\nload json.`x`\n  questions;", 4, 3, "expected `as <table>`"),
    ("load json as t;", 1, 11, "expected `.` and a backquoted path after `json` (as in json.`data/q.jsonl`), found `as`"),
    ("load json.`x` as;", 1, 17, "expected a table name after `as`"),
    ("load json.`x` where a=1 t;", 1, 25, "expected `as <table>` after the options"),
    ("load xml.`a` as t;", 1, 6, "unknown load format `xml`; valid: csv, delta, json, jsonl, model, parquet, text"),
    ("save t as model.`x`;", 1, 11, "unknown save format `model`; valid: csv, delta, json, jsonl, parquet, text"),
    ("save overwrit t as json.`x`;", 1, 6, "unknown save mode `overwrit`; valid: append, errorIfExists, ignore, overwrite"),
    ("save t json.`x`;", 1, 8, "expected `as <format>.`<path>`` after the table name `t`, found `json`"),
    ("save;", 1, 5, "expected `[<mode>] <table>` after `save` (modes: overwrite, append, errorIfExists, ignore)"),
    ("run command LLM.``;", 1, 13, "expected `as` and a target such as LLM.`` after `run command`, found `LLM`"),
    ("run command as Spark.`` where a=1;", 1, 16, "unknown run target (ET) `Spark`; valid: LLM, TableRepartition"),
    ("run command as LLM.`` where;", 1, 28, "expected an option `key=value` after `where`"),
    ("run command as LLM.`` where\nand a=\"1\"\nand a=\"2\";", 3, 5, "duplicate option `a` (first given at line 2, column 5)"),
    ("run command as LLM.`` where a= and b=1;", 1, 32, "missing value after `a=`"),
    ("load csv.`x` where header= as t;", 1, 28, "missing value after `header=`"),
    ("load csv.`x` where header \"true\" as t;", 1, 27, "expected `=` after the option name `header`"),
    ("load csv.`x` where header=`true` as t;", 1, 27, "expected a value after `header=`"),
    ("run command as LLM.`` where a=\n;", 1, 31, "missing value after `a=`"),
    ('set a = "x" y;', 1, 13, "unexpected `y` after a complete set statement"),
    ("set a;", 1, 6, "expected `=` after `set a`"),
    ('set a = `rm -rf /` where type="shell";', 1, 26, "never executes shell commands"),
    ('set a = "x" where type="sql";', 1, 19, "unknown set type `sql`; valid: defaultParam, text"),
    # unterminated things: at their first character
    ("select 'abc;\nselect 1 as t;", 1, 8, "unterminated string"),
    ("set x = 1;\nset y = '''abc;", 2, 9, "unterminated triple-quoted string"),
    ("load json.`abc as t;", 1, 11, "unterminated backquoted name"),
    ("select 1 as t; /* never closed", 1, 16, "unterminated block comment"),
    # a missing `;` between statements
    ("load json.`a` as t\nselect * from t as u;", 2, 1, "missing `;` before `select`: end the load statement"),
    ("select * from t as u\nsave overwrite u as json.`o`;", 2, 1, "missing `;` before `save`: end the select statement"),
    ("!byzerllm setup single\n!byzerllm setup \"num_gpus=2\";", 2, 1, "missing `;` before `!`"),
    ('run command as LLM.`` where a="1"\nload json.`x` as t;', 2, 1, "missing `;` before `load`"),
    # unknown statements and commands
    ("drop table t;", 1, 1, "unknown statement `drop`; a statement starts with one of: load, save, select, with, set, run, train, !"),
    ("set a=1;\n\n  insert into t values (1);", 3, 3, "unknown statement `insert`"),
    ("!xyz;", 1, 2, "unknown command `!xyz`; known commands: !byzerllm, !desc, !show"),
    ("!byzerllm frob;", 1, 11, "unexpected `frob` in `!byzerllm`; valid forms: `!byzerllm setup single|sft|sfft|dpo|orpo|kto|rm|ppo`"),
    ("!byzerllm setup;", 1, 16, "incomplete `!byzerllm setup`; valid forms: `!byzerllm setup single|sft|sfft|dpo|orpo|kto|rm|ppo`, `!byzerllm setup \"key=value\" ...`"),
    ("!byzerllm setup single extra;", 1, 24, "unexpected `extra`"),
    ('!byzerllm setup "num_gpus";', 1, 17, "unexpected `num_gpus`"),
    ("!byzerllm model exists;", 1, 23, "valid forms: `!byzerllm model exists|remove <udf>`"),
    ("!byzerllm job foo 1;", 1, 15, "valid forms: `!byzerllm job list`, `!byzerllm job status|logs|stop|resume [<id>]`"),
    ("!byzerllm job list 1;", 1, 20, "unexpected `1`"),
    ("!show tabls;", 1, 7, "valid forms: `!show tables`"),
    ("!desc;", 1, 6, "incomplete `!desc`"),
    # selects: sqlglot's errors, and what sqlglot would silently accept
    ("select a from t where as x;", 1, 17, "invalid select near `where`"),
    ("set a=1;\nselect a,\n  b +\n  from t as x;", 4, 3, "invalid select near `from`"),
    ("select '祝威廉' as x, y + from t as z;", 1, 24, "invalid select near `from`"),
    ("select f(a,,b) from t as x;", 1, 12, "missing expression before this comma"),
    ("select f(,a) as x;", 1, 10, "missing expression before this comma"),
    ("select m(llm_param(map('a', 1, 'b'))) from t as x;", 1, 20, "map(...) takes key, value pairs; this one has 3 arguments"),
    ("select m(llm_param('x')) from t as y;", 1, 10, "llm_param takes one map(...)"),
    ("select llm_result(a, b) from t as y;", 1, 8, "llm_result takes one argument"),
    ("select as t;", 1, 1, "a select needs at least one column"),
    # variables
    ("set a = 1;\nload json.`${dir}/q.jsonl` as t;", 2, 12, "unknown variable `${dir}`: set it earlier in the script with `set dir = \"...\";` or pass it with `--set dir=...`; variables set so far: a"),
    ('set f = "jsn";\nload ${f}.`x` as t;', 2, 6, "unknown load format `jsn`"),
    ('set d = "a/b/c/d/e";\nload json.`${d}` questions;', 2, 18, "expected `as <table>`"),
    ('set c = "x +";\nselect ${c} from t as u;', 2, 13, "invalid select near `from`"),
]


@pytest.mark.parametrize("script, line, column, message", ERRORS, ids=[s[:40] for s, *_ in ERRORS])
def test_error_positions(script, line, column, message):
    e = error(script)
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.message
    assert e.snippet == script.split("\n")[line - 1]


def test_error_shows_the_line_and_a_caret():
    e = error("set a = 1;\nload json.`data/q.jsonl` questions;")
    assert str(e) == (
        "line 2, column 26: expected `as <table>` after the load path, found `questions`\n"
        "  load json.`data/q.jsonl` questions;\n"
        "                           ^"
    )
    assert isinstance(e, ByzerError) and isinstance(e, ValueError)


def test_caret_counts_wide_characters_twice():
    e = error("select '祝威廉' as x, y + from t as z;")
    assert str(e).splitlines()[2] == "  " + " " * 26 + "^"


def test_errors_pickle():
    import pickle

    e = error("drop table t;")
    again = pickle.loads(pickle.dumps(e))
    assert (again.line, again.column, again.message, str(again)) == (e.line, e.column, e.message, str(e))


def test_parse_statement_alone_points_into_its_script():
    raw = RawStatement("load json.`x`\n  questions", Position(7, 5))
    with pytest.raises(SqlSyntaxError) as e:
        parse_statement(raw)
    assert (e.value.line, e.value.column, e.value.snippet) == (8, 3, "  questions")


# --- `${name}` substitution ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a ${x} b", "a 1 b"),
        ("'${x}' `${y}/q`", "'1' `two/q`"),
        ("${ x }${y}", "1two"),
        ("select 1 -- ${unknown} is only a comment\n, ${x} /* ${other} */", "select 1 -- ${unknown} is only a comment\n, 1 /* ${other} */"),
        ("no variables", "no variables"),
    ],
)
def test_substitute(text, expected):
    assert substitute(text, {"x": "1", "y": "two"}, Position(1, 1)) == expected


def test_unknown_variable_in_substitute_points_at_it():
    with pytest.raises(SqlSyntaxError) as e:
        substitute("a\n  ${nope}", {}, Position(3, 4))
    assert (e.value.line, e.value.column) == (4, 3)


def test_set_defines_variables_for_later_statements():
    statements = parse_script('set dir = "data";\nload json.`${dir}/q.jsonl` as q;\nset dir = "other";\nload json.`${dir}` as r;')
    assert [s.path for s in statements if isinstance(s, Load)] == ["data/q.jsonl", "other"]
    assert statements[1].text == "load json.`${dir}/q.jsonl` as q"  # the source, as written


@pytest.mark.parametrize(
    "script, given, path",
    [
        ("load json.`${dir}` as q;", {"dir": "given"}, "given"),
        ('set dir = "x" where type="defaultParam"; load json.`${dir}` as q;', {"dir": "given"}, "given"),
        ('set dir = "x" where type="defaultParam"; load json.`${dir}` as q;', {}, "x"),
        ('set dir = "x"; load json.`${dir}` as q;', {"dir": "given"}, "x"),
    ],
)
def test_variables_from_outside(script, given, path):
    assert parse_script(script, given)[-1].path == path


# --- the Byzer-LLM guide's statements, verbatim ----------------------------------------------------


def test_seed_deploy():
    setup, gpus, deploy = parse_script((FIXTURES / "seed_deploy.sql").read_text())
    assert setup == Command("byzerllm", ("setup", "single"))
    assert gpus == Command("byzerllm", ("setup", "num_gpus=2"))
    assert deploy == Run("run", None, "LLM", "", {
        "action": "infer",
        "pretrainedModelType": "llama",
        "localModelDir": "/home/byzerllm/models/openbuddy-llama-13b-v5-fp16",
        "reconnect": "true",
        "udfName": "llama_13b_chat",
        "modelTable": "command",
    })
    assert deploy.pos == Position(5, 1)


def test_seed_sft():
    statements = parse_script((FIXTURES / "seed_sft.sql").read_text())
    assert [s.pos.line for s in statements] == [7, 8, 10]
    assert statements[0] == Command("byzerllm", ("setup", "sft"))
    assert statements[2].options == {
        "localPathPrefix": "/home/byzerllm/models/sft/jobs",
        "pretrainedModelType": "sft/llama2",
        "localModelDir": "/home/byzerllm/models/Llama-2-7b-chat-hf",
        "model": "command",
        "inputTable": "sft_data",
        "outputTable": "llama2_300",
        "detached": "true",
        "sft.int.max_seq_length": "512",
    }


def test_seed_sfft_with_deepspeed_config_variable():
    ds, mode, gpus, train = parse_script((FIXTURES / "seed_sfft.sql").read_text())
    assert isinstance(ds, Set) and json.loads(ds.value)["zero_optimization"]["stage"] == 3
    assert (mode.args, gpus.args) == (("setup", "sfft"), ("setup", "num_gpus=12"))
    assert train.options["deepspeedConfig"] == ds.value
    assert list(train.options) == [
        "localPathPrefix", "pretrainedModelType", "localModelDir", "detached", "keepPartitionNum", "deepspeedConfig",
        "inputTable", "outputTable", "model", "sfft.int.max_length", "sfft.bool.setup_nccl_socket_ifname_by_ip",
    ]
    assert "localDataDir" not in train.options  # commented out in the guide


def test_seed_chat_select_with_full_width_and_trailing_commas():
    [chat] = parse_script((FIXTURES / "seed_chat.sql").read_text())
    assert chat.table == "q1" and chat.sql.endswith(")))\n\n as q")
    assert '你好，请记住' in chat.sql  # inside a string: kept
    assert 'array("祝威廉")),' in chat.sql  # between arguments: made an ASCII comma
    out = to_duckdb(chat.sql)
    assert out.functions == {"llama_13b_chat", "llm_prompt"} and out.tables == frozenset()
    assert "json_object('user_role', 'User', 'assistant_role', 'Assistant'" in out.sql
    assert "'temperature', 0.3" in out.sql and "['祝威廉']" in out.sql


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.sql")), ids=lambda p: p.name)
def test_fixtures_round_trip(path):
    statements = parse_script(path.read_text())
    assert parse_script(";\n".join(s.to_sql() for s in statements)) == statements


# --- transpiling to DuckDB --------------------------------------------------------------------------

TRANSPILED = [
    # (Spark SQL, DuckDB SQL, functions, tables)
    (
        "select q, llm_result(r) as a from t where id > 3 order by id limit 5",
        "SELECT q, json_extract_string(r, '$.output') AS a FROM t WHERE id > 3 ORDER BY id NULLS FIRST LIMIT 5",
        set(), {"t"},
    ),
    (
        "select tiny_chat(llm_param(map('instruction', q, \"temperature\", 0.1, 'max_length', 64))) as r from questions",
        "SELECT tiny_chat(json_object('instruction', q, 'temperature', 0.1, 'max_length', 64)) AS r FROM questions",
        {"tiny_chat"}, {"questions"},
    ),
    ("select llm_response_predict(r) from answers", "SELECT json_extract_string(r, '$.output') FROM answers", set(), {"answers"}),
    (
        "select a.q, b.r from qs a join rs b on a.id = b.id left join cs c on c.id = a.id",
        "SELECT a.q, b.r FROM qs AS a JOIN rs AS b ON a.id = b.id LEFT JOIN cs AS c ON c.id = a.id",
        set(), {"qs", "rs", "cs"},
    ),
    (
        "select id, count(*) as n from t group by id having count(*) > 1",
        "SELECT id, count(*) AS n FROM t GROUP BY id HAVING count(*) > 1",
        set(), {"t"},
    ),
    (
        "with x as (select * from t1) select * from x join t2 using (id)",
        "WITH x AS (SELECT * FROM t1) SELECT * FROM x JOIN t2 USING (id)",
        set(), {"t1", "t2"},
    ),
    (
        "select concat_ws('-', a, b), size(array(1, 2)), upper(q), substring(q, 1, 2) from t",
        "SELECT concat_ws('-', a, b), array_length([1, 2]), upper(q), substring(q, 1, 2) FROM t",
        set(), {"t"},
    ),
    ("select llm_prompt('hello {0}', array(name)) from t", "SELECT llm_prompt('hello {0}', [name]) FROM t", {"llm_prompt"}, {"t"}),
    (
        "select llm_stack(prev, llm_param(map('instruction', q))) from t",
        "SELECT llm_stack(prev, json_object('instruction', q)) FROM t",
        {"llm_stack"}, {"t"},
    ),
    ("select Tiny_Chat(x) -- ask\nfrom db.t", "SELECT tiny_chat(x) FROM db.t", {"tiny_chat"}, {"db.t"}),
    ("select f(a，b,) from t", "SELECT f(a, b) FROM t", {"f"}, {"t"}),
]


@pytest.mark.parametrize("spark, duck, functions, tables", TRANSPILED, ids=[t[0][:40] for t in TRANSPILED])
def test_to_duckdb(spark, duck, functions, tables):
    out = to_duckdb(spark)
    assert (out.sql, out.functions, out.tables) == (duck, functions, tables)


def test_to_duckdb_errors_count_lines_in_the_select():
    with pytest.raises(SqlSyntaxError) as e:
        to_duckdb("select a,\n  llm_param(q)\nfrom t")
    assert (e.value.line, e.value.column) == (2, 3)


@pytest.fixture(scope="module")
def duck():
    """DuckDB with Byzer-like tables and Python UDFs standing in for models (echo their input)."""
    duckdb = pytest.importorskip("duckdb")
    pa = pytest.importorskip("pyarrow")
    con = duckdb.connect()
    con.register("questions", pa.table({"q": ["alpha", "beta"], "id": [1, 2]}))
    con.register("t", pa.table({
        "q": [f"q{i}" for i in range(10)],
        "id": list(range(10)),
        "r": [json.dumps({"output": f"answer {i}"}) for i in range(10)],
    }))
    con.register("tags", pa.table({"id": [1, 1, 2], "tag": ["x", "y", "z"]}))
    con.create_function("m", lambda s: s, ["VARCHAR"], "VARCHAR")
    con.create_function("llama_13b_chat", lambda s: s, ["VARCHAR"], "VARCHAR")
    con.create_function("llm_prompt", lambda template, args: template.format(*args), ["VARCHAR", "VARCHAR[]"], "VARCHAR")
    yield con
    con.close()


def run(con, statement: str) -> list[tuple]:
    select = one(statement)
    return con.sql(to_duckdb(select.sql).sql).fetchall()


def test_duckdb_runs_the_model_call_with_llm_param(duck):
    rows = run(duck, (
        'select m(llm_param(map("user_role","User","assistant_role","Assistant","system_msg",\'You are ...\','
        '"temperature",0.3,"instruction",llm_prompt(\'hello {0}\',array("name")),"generation.image","x.png"))) '
        "as q from questions as q1;"
    ))
    assert len(rows) == 2
    params = json.loads(rows[0][0])
    assert params == {
        "user_role": "User", "assistant_role": "Assistant", "system_msg": "You are ...",
        "temperature": 0.3, "instruction": "hello name", "generation.image": "x.png",
    }
    assert isinstance(params["temperature"], float)


def test_duckdb_runs_the_guide_select(duck):
    [chat] = parse_script((FIXTURES / "seed_chat.sql").read_text())
    [(answer,)] = duck.sql(to_duckdb(chat.sql).sql).fetchall()
    params = json.loads(answer)
    assert params["instruction"].strip() == "你好，请记住我的名字：祝威廉"
    assert params["temperature"] == 0.3 and params["generation.image"].endswith("result.png")


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("select q, llm_result(r) as a from t where id > 3 order by id limit 5 as out;",
         [(f"q{i}", f"answer {i}") for i in range(4, 9)]),
        ("select t.q, tags.tag from t join tags on t.id = tags.id order by tag as j;", [("q1", "x"), ("q1", "y"), ("q2", "z")]),
        ("select id, count(*) as n from tags group by id having count(*) > 1 as g;", [(1, 2)]),
        ("with few as (select * from t where id < 2) select concat_ws('-', q, upper(q)) from few order by id as c;",
         [("q0-Q0",), ("q1-Q1",)]),
        ("select size(array(1, 2, 3)), substring('hello', 2, 3), length('abc') as s;", [(3, "ell", 3)]),
        ("select llm_response_predict(r) from t where id = 0 as p;", [("answer 0",)]),
    ],
)
def test_duckdb_runs_transpiled_selects(duck, statement, expected):
    assert run(duck, statement) == expected


# --- the package stays light -------------------------------------------------------------------------


def test_importing_the_parser_loads_no_heavy_module():
    code = "import sys, byzer_like.sql; print([m for m in ('ray', 'torch', 'duckdb', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nested_llm_helpers_are_all_rewritten():
    from byzer_like.sql import to_duckdb

    sql = to_duckdb('select llm_result(m(llm_param(map("instruction", llm_result(n(llm_param(map("instruction", "x")))))))) as a').sql
    assert "llm_param" not in sql and "llm_result" not in sql and sql.count("json_object") == 2
