"""Byzer-LLM habits on the SQL side (issue 14), statement by statement, without Ray: setup keys, model
type names, Spark reader options, TableRepartition, saas/* adapters against a local fake server, and the
field reports (repeated columns, NULL instructions, JSON answers in training rows, `as <t>` on training).
The same constructs run end to end on tiny models in test_byzer_scripts.py."""
from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from byzer_like.config import SetupConfig, as_text, chat_request
from byzer_like.session.functions import build_requests, llm_prompt
from byzer_like.errors import (ConfigError, DataFileError, ExecutionError, ModelDirError, SqlSyntaxError,
                               UnknownOptionError, UnknownPluginError, UnsupportedModelTypeError)
from byzer_like.errors import WorkspacePathError
from byzer_like.plugins import registry
from byzer_like.train.data import conversations
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(60)
DATA = Path(__file__).resolve().parent / "byzer_scripts" / "data"


@pytest.fixture
def rt(tmp_path) -> FakeRuntime:
    import shutil

    shutil.copytree(DATA, tmp_path / "data")
    return FakeRuntime(str(tmp_path))


# -- setup keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, field, expected", [
    ("maxConcurrency", "3", "num_workers", 3),
    ("workerMaxConcurrency", "4", "max_ongoing_requests", 4),
    ("infer_backend", "transformers", "infer_backend", "transformers"),
    ("infer_backend", "Transformers", "infer_backend", "transformers"),
    ("infer_backend", "vllm", "infer_backend", "vllm"),
    ("infer_backend", "ray/vllm", "infer_backend", "vllm"),
    ("pythonMode", "ray", "python_mode", "ray"),
    ("standalone", "true", "standalone", True),
    ("masterMaxConcurrency", "1000", "master_max_concurrency", 1000),
])
def test_byzer_setup_keys(key, value, field, expected):
    assert getattr(SetupConfig().with_values({key: value}), field) == expected


@pytest.mark.parametrize("backend", ["llama_cpp", "deepspeed"])
def test_later_backends_are_a_typed_error_naming_the_valid_ones(backend):
    with pytest.raises(ConfigError, match=f"'{backend}' is not available yet.*valid backends: transformers, vllm"):
        SetupConfig().with_values({"infer_backend": backend})


def test_setup_statement_says_what_has_no_effect(s, rt):
    out = s.sql('!byzerllm setup "pythonMode=ray"; !byzerllm setup "standalone=true"; '
                '!byzerllm setup "workerMaxConcurrency=2"; !byzerllm setup "maxConcurrency=1";')
    assert "no effect here" in out[0].message and "no effect here" in out[1].message
    assert "sets max_ongoing_requests" in out[2].message and "sets num_workers" in out[3].message
    assert rt.setup_config.max_ongoing_requests == 2
    assert "None" not in rt.setup_config.sys_conf().values()  # unset Byzer keys are absent, never "None"
    with pytest.raises(UnknownOptionError, match="did you mean 'workerMaxConcurrency'"):
        s.sql('!byzerllm setup "workerMaxConcurency=2";')


# -- model types ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, plugin", [
    ("custom/llama2", "llama2"), ("custom/auto", "auto"), ("custom/my_family", "auto"), ("custom/llama", "llama"),
    ("llama2", "llama2"), ("qwen", "qwen"), ("chatglm2", "chatglm2"), ("baichuan", "baichuan"), ("falcon", "falcon"),
    ("zephyr", "zephyr"), ("saas/deepseek", "saas/deepseek"), ("saas/azure_openai", "saas/azure_openai"),
    ("saas/qianwen", "saas/qianwen"), ("saas/openai", "saas/openai"),
])
def test_byzer_model_type_names_resolve(name, plugin):
    assert registry.load(name).name == plugin


@pytest.mark.parametrize("name", ["visualglm", "qwen_vl_chat", "whisper", "stable_diffusion", "sd", "bark", "bge_rerank",
                                  "custom/visualglm", "saas/sparkdesk", "saas/minimax"])
def test_types_that_cannot_run_here_name_the_supported_kinds(name):
    with pytest.raises(UnsupportedModelTypeError) as e:
        registry.load(name)
    assert "causal language models" in str(e.value) and "saas/openai" in str(e.value)


def test_an_unknown_type_is_still_a_did_you_mean():
    with pytest.raises(UnknownPluginError, match="did you mean 'llama2'"):
        registry.load("lama2")


def test_every_builtin_name_imports():
    for name in registry.BUILTIN:
        registry.load(name)


def test_family_is_checked_against_config_json(tiny_models):
    with pytest.raises(ModelDirError, match="holds a 'qwen2' model, not llama2"):
        registry.load("llama2").check_model_dir(str(tiny_models["qwen2"]), {})
    registry.load("qwen").check_model_dir(str(tiny_models["qwen2"]), {})
    registry.load("custom/anything").check_model_dir(str(tiny_models["gpt2"]), {})


def test_a_non_causal_architecture_is_refused(tiny_models, tmp_path):
    import shutil

    d = tmp_path / "whisper-like"
    shutil.copytree(tiny_models["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["WhisperForConditionalGeneration"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="not a causal language model"):
        registry.load("auto").check_model_dir(str(d), {})


# -- saas/* ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream():
    from test_byzer_scripts import FakeOpenAI

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", FakeOpenAI
    httpd.shutdown()


def test_openai_compatible_provider_defaults_and_overrides(upstream, monkeypatch):
    from byzer_like_models.saas_openai import PROVIDERS, providers

    url, server = upstream
    plugin = providers.deepseek
    cfg = plugin.config({"saas.api_key": "k"})
    assert cfg.base_url == PROVIDERS["deepseek"].base_url and cfg.model == "deepseek-chat"
    monkeypatch.setenv("DEEPSEEK_API_KEY", "from-env")
    client, cfg = plugin.init_model("", {"saas.base_url": url + "/v1"}, {})
    server.seen = []
    [(text, meta)] = plugin.batch_chat(client, cfg, [{"ins": "hi", "his": [], "kwargs": {}}])
    assert text == "echo: hi" and server.seen[0]["auth"] == "Bearer from-env"
    assert plugin.get_meta(client, cfg)["family"] == "saas/deepseek"


def test_azure_openai_uses_byzers_keys(upstream):
    from byzer_like_models.saas_openai import azure

    url, server = upstream
    params = {"saas.api_type": "azure", "saas.api_base": url, "saas.api_version": "2024-06-01",
              "saas.deployment_id": "gpt-4o-prod", "saas.api_key": "az"}
    client, cfg = azure.init_model("", params, {})
    server.seen = []
    [(text, _)] = azure.batch_chat(client, cfg, [{"ins": "hey", "his": [], "kwargs": {}}])
    assert text == "echo: hey"
    assert server.seen[0]["path"] == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-06-01"
    assert server.seen[0]["api_key"] == "az"
    with pytest.raises(ConfigError, match="saas.api_version"):
        azure.check_model_dir("", {k: v for k, v in params.items() if k != "saas.api_version"})
    with pytest.raises(ConfigError, match="api_type must be azure"):
        azure.check_model_dir("", {**params, "saas.api_type": "open_ai"})


# -- load options -----------------------------------------------------------------------------------
def test_spark_reader_options(s):
    out = s.sql('load csv.`data/people.csv` where header="true" and sep=";" and inferSchema="false" as p;')
    assert s.table("p").to_pylist()[0] == {"name": "Tom", "age": "31", "city": "Paris"}
    s.sql('load csv.`data/people.csv` where delimiter=";" and inferschema="true" as q;')  # keys case-insensitive
    assert s.table("q").to_pylist()[0]["age"] == 31
    out = s.sql('load json.`data/articles.json` where multiLine="true" and header="true" as a;')
    assert s.table("a").num_rows == 2 and "header has no effect on json" in out[0].message
    s.sql('load text.`data/docs` where wholetext="true" as d;')
    rows = s.table("d").to_pylist()
    assert [Path(r["file"]).name for r in rows] == ["duckdb.txt", "ray.txt"]
    assert rows[1]["value"] == "Ray schedules tasks and actors.\nIt scales Python.\n"


def test_spark_glob_paths_and_file_urls(s, rt):
    """Byzer's README loads `text.`file:///home/byzerllm/data/raw_data/*``: a file:// URL and a glob."""
    root = Path(rt.workspace.root)
    s.sql(f'load text.`file://{root}/data/docs/*` where wholetext="true" as d;')
    assert [Path(r["file"]).name for r in s.table("d").to_pylist()] == ["duckdb.txt", "ray.txt"]
    s.sql("load text.`data/docs/r*.txt` as r;")
    assert s.table("r").column("value").to_pylist()[0] == "Ray schedules tasks and actors."
    with pytest.raises(DataFileError, match="no file matches"):
        s.sql("load text.`data/docs/*.md` as m;")
    with pytest.raises(WorkspacePathError, match="hdfs:// URL"):
        s.sql("load text.`hdfs://namenode/data/raw_data` as h;")


def test_remote_replicas_reserve_a_tenth_of_a_cpu():
    """Byzer's README deploys saas models with maxConcurrency=10: ten replicas must not need ten CPUs."""
    from byzer_like.runtime.spec import REMOTE_CPUS_PER_WORKER, remote_resources

    setup = SetupConfig().with_values({"maxConcurrency": "10"})
    assert remote_resources(setup, "saas/zhipu").cpus_per_worker == REMOTE_CPUS_PER_WORKER
    assert remote_resources(setup, "llama").cpus_per_worker == 1.0
    chosen = setup.with_values({"num_cpus": "2"})
    assert remote_resources(chosen, "saas/zhipu").cpus_per_worker == 2.0  # what the user set stays


def test_encoding_and_mode(s, rt):
    root = Path(rt.workspace.root)
    (root / "data" / "gbk.jsonl").write_bytes('{"city": "北京"}\n'.encode("gbk"))
    with pytest.raises(DataFileError, match='encoding="<name>"'):
        s.sql("load json.`data/gbk.jsonl` as g;")
    s.sql('load json.`data/gbk.jsonl` where encoding="gbk" as g;')
    assert s.table("g").to_pylist() == [{"city": "北京"}]
    (root / "data" / "gbk.csv").write_bytes("city\n上海\n".encode("gbk"))
    s.sql('load csv.`data/gbk.csv` where encoding="gbk" as c;')
    assert s.table("c").to_pylist() == [{"city": "上海"}]
    (root / "data" / "bad.jsonl").write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(DataFileError, match="DROPMALFORMED"):
        s.sql("load json.`data/bad.jsonl` as b;")
    with pytest.raises(ConfigError, match="PERMISSIVE, DROPMALFORMED, FAILFAST"):
        s.sql('load json.`data/bad.jsonl` where mode="lenient" as b;')
    with pytest.raises(UnknownOptionError, match="did you mean 'multiLine'"):
        s.sql('load json.`data/articles.json` where multiLines="true" as b;')


def test_permissive_csv_pads_short_rows_with_nulls(s, rt):
    """Spark's PERMISSIVE: a row with missing trailing fields is kept, the missing ones null (one file or a
    folder of files); without a mode such a row is an error that names DROPMALFORMED, never dropped."""
    root = Path(rt.workspace.root) / "data" / "short"
    root.mkdir(parents=True)
    (root / "a.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n")
    (root / "b.csv").write_text("a,b,c\n9,9\n")
    s.sql('load csv.`data/short/a.csv` where mode="PERMISSIVE" as one;')
    assert s.table("one").to_pylist() == [{"a": 1, "b": 2, "c": 3}, {"a": 4, "b": 5, "c": None}, {"a": 6, "b": 7, "c": 8}]
    s.sql('load csv.`data/short` where mode="permissive" as both;')
    assert s.table("both").num_rows == 4 and s.table("both").to_pylist()[-1] == {"a": 9, "b": 9, "c": None}
    with pytest.raises(DataFileError, match="DROPMALFORMED"):
        s.sql("load csv.`data/short/a.csv` as strict;")
    s.sql('load csv.`data/short/a.csv` where mode="DROPMALFORMED" as dropped;')
    assert [r["a"] for r in s.table("dropped").to_pylist()] == [1, 6]


# -- TableRepartition -------------------------------------------------------------------------------
def test_table_repartition_records_the_partitioning(s):
    out = s.sql('load text.`data/docs` where wholetext="true" as t;\n'
                'run t as TableRepartition.`` where partitionNum="12" and partitionCols="file" as t2;')
    assert "12 partitions by file" in out[1].message and "spreads any table" in out[1].message and s.table("t2").num_rows == 2
    parts = s.partitioning["t2"]
    assert parts.num == 12 and parts.columns == ("file",) and sum(parts.sizes) == 2
    s.sql('run t as TableRepartition.`` where partitionNum="2" as t3;')
    assert s.partitioning["t3"].sizes == (1, 1)
    s.sql("select * from t3 as t3;")  # a new table of the name: its partitioning is gone
    assert "t3" not in s.partitioning
    with pytest.raises(ConfigError, match="partitionCols names 'nope'"):
        s.sql('run t as TableRepartition.`` where partitionNum="2" and partitionCols="nope" as t4;')
    with pytest.raises(UnknownOptionError, match="did you mean 'partitionNum'"):
        s.sql('run t as TableRepartition.`` where partitionNumber="2" as t4;')
    with pytest.raises(SqlSyntaxError, match="valid: LLM, TableRepartition"):
        s.sql('run t as JsonExpandExt.`` where inputCol="value" as t5;')


def test_keep_partition_num_is_accepted_on_sfft(s, rt):
    s.sql('load text.`data/docs` where wholetext="true" as t;\n'
          'run t as TableRepartition.`` where partitionNum="3" and partitionCols="file" as t2;')
    out = s.sql('run command as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="m" '
                'and inputTable="t2" and keepPartitionNum="true" as job;')
    assert "t2 has 3 partitions, each kept whole on one of" in out[0].message
    assert s.table("job").num_rows == 1  # field report 4: `as <t>` names the job's row
    assert rt.trained[-1]["partitions"] == list(s.partitioning["t2"].sizes)  # handed to the job (partitions.json)
    s.sql('run command as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="m" and inputTable="t2";')
    assert rt.trained[-1]["partitions"] is None  # without keepPartitionNum: Ray Data's split, as before


# -- field reports ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_repeated_column_names_are_kept_on_every_format(s, fmt):
    out = s.sql(f"select 1 as x, 2 as x as t; save overwrite t as {fmt}.`out/t_{fmt}`;\n"
                f"load {fmt}.`out/t_{fmt}` as back;")
    assert "x -> x_1" in out[1].message
    assert s.table("back").to_pylist() == [{"x": 1, "x_1": 2}]


def test_an_ambiguous_reference_is_an_error(s):
    s.sql("load json.`data/left.jsonl` as people; load json.`data/right.jsonl` as cities;\n"
          "select * from people join cities on people.id = cities.id as joined;")
    with pytest.raises(ExecutionError, match="ambiguous reference to column 'name'") as e:
        s.sql("select name from joined as names;")
    assert e.value.line == 1 and e.value.column == 8
    with pytest.raises(ExecutionError, match="ambiguous"):
        s.sql("select j.name from joined j as names;")
    assert s.sql("select id from people as ok;")[0].table.num_rows == 2  # no repeated names: no error
    s.sql("select people.name as person, cities.name as city from people join cities on people.id = cities.id as named;")
    assert s.table("named").column_names == ["person", "city"]


def test_a_null_instruction_is_a_null_answer(s, rt):
    s.sql('run command as LLM.`` where action="infer" and pretrainedModelType="llama" and localModelDir="m" '
          'and udfName="echo";\nload json.`data/tasks.jsonl` as tasks;\n'
          'select id, echo(llm_param(map("instruction", task))) as r from tasks as answers;')
    rows = s.table("answers").to_pylist()
    assert rows[1]["r"] is None
    (_, sent), = rt.generated
    assert [r["ins"] for r in sent] == ["Say hello.", "Name a colour."]  # never "None"


def test_null_values_never_become_the_text_none():
    requests, _, _ = build_requests([json.dumps({"instruction": None}), json.dumps({"instruction": "q", "system_msg": None})])
    assert requests[0] is None and "system_msg" not in requests[1]["kwargs"]
    with pytest.raises(ConfigError, match="'instruction' is null"):
        chat_request([], {"instruction": None})
    assert llm_prompt("Q: {0} {1}", ["a", None]) is None and llm_prompt("Q: {0}", [{"k": 1}]) == 'Q: {"k": 1}'
    assert as_text({"name": "Tom", "city": None}) == '{"name": "Tom", "city": null}'


def test_a_json_answer_is_learnt_as_json_text():
    rows = [{"instruction": "Extract.", "output": {"name": "Tom", "city": None}},
            {"instruction": "List.", "output": ["a", 1]}]
    convs = conversations(rows, "alpaca")
    assert convs[0][-1]["content"] == '{"name": "Tom", "city": null}' and convs[1][-1]["content"] == '["a", 1]'
    with pytest.raises(ConfigError, match="row 1: output is NULL"):
        conversations([{"instruction": "x", "output": None}], "alpaca")


def test_as_names_the_training_job_row(s, rt):
    out = s.sql('load json.`data/extract.jsonl` as extract;\n'
                'run command as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="m" '
                'and inputTable="extract" as job;\nselect state from job as st;')
    assert out[1].name == "job" and s.table("st").num_rows == 1


def test_errors_a_user_causes_are_one_line_with_what_to_do(s):
    for script in ('!byzerllm setup "infer_backend=llama_cpp";', "load csv.`data/people.csv` where sepp=\";\" as p;",
                   'load text.`data/docs` as t; run t as TableRepartition.`` where partitionNum="0" as t2;'):
        with pytest.raises(Exception) as e:
            s.sql(script)
        message = getattr(e.value, "message", str(e.value))
        assert "\n" not in message and any(w in message for w in ("valid", "did you mean", "greater than"))
