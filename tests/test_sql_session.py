"""SQL scripts run end to end: tables in DuckDB, deployed models as SQL functions, typed errors with positions."""
import json
import shutil
from pathlib import Path

import pytest

from byzer_like import ByzerLLM
from byzer_like.session import Session, UnknownFunctionError, UnknownTableError
from byzer_like.errors import DataFileError, RowError, TableExistsError
from byzer_like.errors import ConfigError, UnknownOptionError, WorkspacePathError
from byzer_like.sql.errors import SqlError, SqlSyntaxError

ROOT = Path(__file__).resolve().parent.parent
SQL = ROOT / "sql"


@pytest.fixture
def local(tmp_path):
    """A session in a fresh workspace holding the example data (no cluster needed)."""
    shutil.copytree(SQL / "data", tmp_path / "data")
    s = Session(ByzerLLM(workspace=tmp_path), progress=False)
    yield s
    s.close()


# -- tables only -----------------------------------------------------------------------------------
def test_tables_example_runs(local):
    results = local.sql((SQL / "tables.sql").read_text())
    counts = local.table("counts").to_pylist()[0]
    assert counts == {"parquet_rows": 40, "text_rows": 20, "csv_rows": 20}
    assert [r.kind for r in results][-2:] == ["show", "desc"]
    assert local.table("tasks").column("verb").to_pylist()[:2] == ["adds", "reverses"]  # Spark's 0-based index


def test_relational_select_joins_filters_aggregates(local):
    local.sql("""
        load json.`data/questions.jsonl` as q;
        select id, id % 3 as bucket from q as b;
        select b.bucket, count(*) as n, min(q.task) as first from q join b on q.id = b.id
        where q.id < 12 group by b.bucket order by b.bucket limit 2 as agg;
    """)
    assert local.table("agg").to_pylist() == [
        {"bucket": 0, "n": 4, "first": "adds two numbers"},
        {"bucket": 1, "n": 4, "first": "checks whether a number is prime"},
    ]


def test_variables_and_set_default_param(local):
    local.variables["limit"] = "3"
    local.sql("""
        set limit = "10" where type="defaultParam";
        set name = '''triple "quoted"''';
        load json.`data/questions.jsonl` as q;
        select id, '${name}' as name from q order by id limit ${limit} as out;
    """)
    out = local.table("out").to_pylist()
    assert len(out) == 3 and out[0]["name"] == 'triple "quoted"'


def test_save_modes_and_nothing_half_written(local, tmp_path):
    local.sql("load json.`data/questions.jsonl` as q; save q as json.`out/q`;")
    before = sorted(p.name for p in (tmp_path / "out" / "q").iterdir())
    with pytest.raises(TableExistsError, match="already exists"):
        local.sql("save errorIfExists q as json.`out/q`;")
    local.sql("save ignore q as csv.`out/q`;")
    assert sorted(p.name for p in (tmp_path / "out" / "q").iterdir()) == before
    local.sql("save append q as json.`out/q`;")
    local.sql("load json.`out/q` as again;")
    assert local.table("again").num_rows == 40
    local.sql("save overwrite q as json.`out/q`; load json.`out/q` as again;")
    assert local.table("again").num_rows == 20
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize(
    "script, error, text, line, column",
    [
        ("load json.`data/questions.jsonl` as q;\nselect * from nope as t;", UnknownTableError, "tables in this session: q", 2, 15),
        ("select x from\n  missing_table as t;", UnknownTableError, "unknown table 'missing_table'", 2, 3),
        ("load json.`data/questions.jsonl` as q;\nselect no_such_fn(task) as r from q as t;", UnknownFunctionError,
         "deployed models: (none)", 2, 8),
        ("load json.`data/questions.jsonl` as q;\nselect nope_col from q as t;", SqlError, "nope_col", 2, 8),
        ("load json.`data/questions.jsonl` as q;\nsave q;", SqlSyntaxError, "", 2, 7),
        ("drop table q;", SqlSyntaxError, "unknown statement", 1, 1),
        ("load json.`data/questions.jsonl` as q;\n!desc missing;", UnknownTableError, "unknown table 'missing'", 2, 7),
    ],
)
def test_errors_point_at_the_statement(local, script, error, text, line, column):
    with pytest.raises(error, match=None) as e:
        local.sql(script)
    assert text in str(e.value)
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    assert f"line {line}, column {column}" in str(e.value)


def test_a_syntax_error_stops_the_script_before_anything_runs(local, tmp_path):
    with pytest.raises(SqlSyntaxError) as e:
        local.sql("load json.`data/questions.jsonl` as q;\nsave overwrite q as json.`out/x`;\nselect from where as;")
    assert e.value.line == 3
    assert "q" not in local.tables and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script, error, text",
    [
        ("load json.`../outside.json` as t;", WorkspacePathError, "outside the allowed roots"),
        ("load json.`/etc/passwd` as t;", WorkspacePathError, "outside the allowed roots"),
        ("load json.`data/questions.jsonl` as q; save overwrite q as json.`/tmp/elsewhere`;", WorkspacePathError, "allowed roots"),
        ("load csv.`data/questions.jsonl` where colour=\"red\" as t;", UnknownOptionError, "delimiter (or sep), encoding (or charset), header"),
        ("load csv.`data/questions.jsonl` where header=\"maybe\" as t;", ConfigError, "header"),
        ("load json.`data/missing.json` as t;", DataFileError, "does not exist"),
        ('!byzerllm setup "num_workers=two";', ConfigError, "num_workers"),
        ('!byzerllm setup "num_wrkers=2";', UnknownOptionError, "num_workers"),
        ('set llm_on_error = "ignore";', ConfigError, "raise, null"),
        ('run command as LLM.`` where action="infer" and pretrainedModelType="sft/llama" and udfName="x";',
         ConfigError, "names a training task"),
        ('run command as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="m";', ConfigError, "inputTable"),
        ('run command as LLM.`` where action="evaluate" and pretrainedModelType="llama";', ConfigError,
         'action="infer"'),
        ('run command as LLM.`` where pretrainedModelType="llama" and localModelDir="m";', ConfigError, "udfName"),
    ],
)
def test_bad_input_is_a_typed_error(local, script, error, text):
    with pytest.raises(error) as e:
        local.sql(script)
    assert text in str(e.value)


def test_client_sql_returns_a_dataframe(tmp_path):
    shutil.copytree(SQL / "data", tmp_path / "data")
    llm = ByzerLLM(workspace=tmp_path)
    df = llm.sql("load json.`data/questions.jsonl` as q; select count(*) as n from q where id > ${min} as c;", min=4)
    assert df.to_dict("records") == [{"n": 15}]
    assert "q" in llm.session.tables  # the session persists between calls
    assert llm.sql("select n * 2 as twice from c as d;")["twice"].tolist() == [30]
    llm.session.close()


# -- with models -----------------------------------------------------------------------------------
@pytest.fixture
def models_session(llm, tiny_models, workspace):
    shutil.copytree(SQL / "data", workspace / "data", dirs_exist_ok=True)
    s = Session(llm, variables={"model_dir": str(tiny_models["llama"]), "data_dir": str(workspace / "data")},
                progress=False)
    deployed = set(llm.list_models())
    yield s
    s.close()
    llm.setup_num_workers(1)
    for name in set(llm.list_models()) - deployed:
        llm.undeploy(name)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_thousand_rows_two_replicas_in_order_equal_to_direct_calls(models_session, llm, workspace):
    rows = [{"id": i, "q": f"question {i} " + "x " * (i % 9)} for i in range(1000)]
    (workspace / "data" / "thousand.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    models_session.sql("""
        !byzerllm setup "num_workers=2";
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
            and localModelDir="${model_dir}" and udfName="sql_thousand";
        load json.`${data_dir}/thousand.jsonl` as questions;
        select id, sql_thousand(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", 6))) as r
        from questions as answered;
    """)
    answered = models_session.table("answered").to_pylist()
    assert [r["id"] for r in answered] == list(range(1000))
    results = [json.loads(r["r"]) for r in answered]
    assert all(r["output"] is not None and r["input"] == rows[i]["q"] for i, r in enumerate(results))
    assert len({r["metadata"]["replica"] for r in results}) == 2
    config = {"temperature": 0.0, "max_new_tokens": 6}
    batch = llm.batch_chat([r["q"] for r in rows], model="sql_thousand", llm_config=config)
    assert [r["output"] for r in results] == [b.output for b in batch]  # the client's batch path agrees row by row
    for i in range(0, 1000, 37):  # and so does a single call, for a sample of rows
        single = llm.chat_oai(rows[i]["q"], model="sql_thousand", llm_config=config)
        assert results[i]["output"] == single[0].output, i


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_seed_guide_statements_run(models_session):
    results = models_session.sql((SQL / "seed_guide.sql").read_text())
    row = models_session.table("q2").to_pylist()[0]
    assert row["answer"] is not None and json.loads(row["ignored"]) == ["image"]
    q = json.loads(models_session.table("q1").column("q")[0].as_py())
    assert "祝威廉" in q["input"] and q["metadata"]["output_tokens"] > 0
    assert [r.kind for r in results[:4]] == ["set", "setup", "setup", "run"]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_conversation_example(models_session):
    models_session.sql((SQL / "conversation.sql").read_text())
    dialogue = models_session.table("dialogue").to_pylist()
    assert len(dialogue) == 6 and all(d["history_messages"] == 2 for d in dialogue)
    assert models_session.table("totals").to_pylist()[0]["answered"] == 6
    risky = models_session.table("risky_answers").to_pylist()
    assert [r["error"] is not None for r in risky] == [False, False, True, False]
    assert "prompt has" in risky[2]["error"] and risky[2]["answer"] is None


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_quickstart_script_runs(models_session, llm):
    models_session.sql((SQL / "quickstart.sql").read_text())
    answers = models_session.table("answers").to_pylist()
    assert [a["id"] for a in answers] == list(range(20)) and all(a["answer"] is not None for a in answers)
    assert llm.get_meta("quickstart_chat")["num_workers"] == 2


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_model_errors_and_commands(models_session, llm):
    s = models_session
    s.sql("""
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
            and localModelDir="${model_dir}" and udfName="sql_cmds";
        load json.`${data_dir}/questions.jsonl` as q;
    """)
    with pytest.raises(RowError, match=r"failed on row 3 .*llm_on_error") as e:
        s.sql("""select sql_cmds(llm_param(map("instruction", case when id = 2 then repeat('word ', 3000) else task end,
                 "max_new_tokens", 2))) as r from q where id < 5 as t;""")
    assert e.value.row == 3 and "t" not in s.tables
    with pytest.raises(UnknownFunctionError, match="deployed models: .*sql_cmds") as e:
        s.sql("select sql_cmdz(llm_param(map('instruction', task))) as r from q as t;")
    with pytest.raises(ConfigError, match="temprature"):
        s.sql("select sql_cmds(llm_param(map('instruction', task, 'temprature', 0.1))) as r from q as t;")
    # reconnect binds the running deployment; without it, a duplicate name is refused
    out = s.sql('run command as LLM.`` where action="infer" and pretrainedModelType="llama" '
                'and localModelDir="${model_dir}" and udfName="sql_cmds" and reconnect="true";')
    assert out[-1].table.to_pylist()[0]["status"] == "reconnected"
    with pytest.raises(Exception, match="already deployed"):
        s.sql('run command as LLM.`` where action="infer" and pretrainedModelType="llama" '
              'and localModelDir="${model_dir}" and udfName="sql_cmds";')
    # embeddings
    s.sql("select sql_cmds(llm_param(map('instruction', task, 'embedding', 'true'))) as e from q where id < 3 as emb;")
    vec = json.loads(s.table("emb").column("e")[0].as_py())["output"]
    assert len(vec) == llm.get_meta("sql_cmds")["embedding_dimensions"]
    # model commands
    assert s.sql("!byzerllm model exists sql_cmds;")[0].table.to_pylist() == [{"udf_name": "sql_cmds", "exists": True}]
    deployed = s.sql("!byzerllm model deployed;")[0].table.to_pylist()
    row = next(r for r in deployed if r["udf_name"] == "sql_cmds")  # with its engine and load, as the docs say
    assert row["engine"] == "threads" and row["num_workers"] >= 1 and row["requests_waiting"] == 0
    assert row["requests_running"] == 0 and json.loads(row["engine_load"])["requests_running"] == 0
    s.sql("!byzerllm model remove sql_cmds;")
    assert s.sql("!byzerllm model exists sql_cmds;")[0].table.to_pylist()[0]["exists"] is False


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_load_model_table_deploys_by_model_table(models_session, llm):
    s = models_session
    s.sql("""
        load model.`${model_dir}` as tiny;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
            and modelTable="tiny" and udfName="sql_from_table";
        select llm_result(sql_from_table(llm_param(map("instruction", "hi", "max_new_tokens", 3)))) as a as one;
    """)
    assert s.table("tiny").to_pylist()[0]["model_type"] == "llama"
    assert s.table("one").to_pylist()[0]["a"] is not None
