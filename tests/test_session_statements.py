"""The SQL session's statements, parse -> run, against a fake runtime (tests/fake_runtime.py): no Ray, no
model, each test well under a second. The same statements run against the real runtime in
test_sql_session.py, test_train.py and test_sql_surfaces.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from byzer_like.session import UnknownFunctionError
from byzer_like.session.protocol import SessionRuntime
from byzer_like.errors import ConfigError, RowError, UnknownOptionError, UnknownTableError
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(30)
HERE = Path(__file__).resolve().parent


@pytest.fixture
def rt(tmp_path) -> FakeRuntime:
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "q.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"id": i, "q": f"question {i}"}) + "\n")
    return FakeRuntime(str(tmp_path))


DEPLOY = 'run command as LLM.`` where action="infer" and pretrainedModelType="llama" and localModelDir="m" and udfName="echo"'


def test_the_fake_satisfies_the_engines_protocol(rt):
    assert isinstance(rt, SessionRuntime)


def test_deploy_then_select_answers_every_row_in_order(s, rt):
    out = s.sql(f"""{DEPLOY};
        load json.`data/q.jsonl` as q;
        select id, llm_result(echo(llm_param(map("instruction", q, "temperature", 0.0)))) as a from q as answers;""")
    assert out[0].message == "echo: deployed"
    assert rt.deployed["echo"]["options"]["pretrainedModelType"] == "llama"
    rows = out[-1].table.to_pylist()
    assert [r["id"] for r in rows] == list(range(5))
    assert [r["a"] for r in rows] == [f"echo:question {i}" for i in range(5)]
    (name, reqs), = rt.generated
    assert name == "echo" and [r["temperature"] for r in reqs] == [0.0] * 5


def test_model_at_adapter_sends_each_row_through_its_adapter_in_one_call(s, rt):
    """`m@a(...)` and llm_param's "adapter" key put the adapter in the request; with the adapter in a column,
    rows of different adapters (and the base: null) go to the model in one call; NULL rows stay NULL;
    `!byzerllm adapter list` shows what is held."""
    out = s.sql(f"""{DEPLOY};
        load json.`data/q.jsonl` as q;
        select id, echo(llm_param(map("instruction", q,
                   "adapter", case id % 3 when 0 then 'qa_one' when 1 then 'qa_two@v2' end))) as r,
               echo@qa_one(llm_param(map("instruction", if(id = 4, null, q)))) as n
        from q as answers;
        !byzerllm adapter list echo;""")
    rows = out[2].table.to_pylist()
    assert [json.loads(r["r"])["output"] for r in rows] == [f"echo:question {i}" for i in range(5)]
    assert rows[4]["n"] is None and json.loads(rows[0]["n"])["output"] == "echo:question 0"
    (_, mixed), (_, through) = rt.generated
    assert [r.get("adapter") for r in mixed] == ["qa_one", "qa_two@v2", None, "qa_one", "qa_two@v2"]
    assert [r.get("adapter") for r in through] == ["qa_one"] * 4
    listed = out[3].table.to_pylist()
    assert {r["adapter"] for r in listed} == {"qa_one", "qa_two@v2"} and out[3].message.startswith("echo: 2 adapter(s)")


def test_run_as_names_the_result_row_of_every_action(s, rt):
    s.sql(f"{DEPLOY} as deployed_row;")
    assert s.table("deployed_row").to_pylist()[0]["status"] == "deployed"
    s.sql('run command as LLM.`` where action="merge" and modelTable="a@v1" and outputTable="b" as merged_row;')
    assert s.table("merged_row").to_pylist()[0]["merged_from"] == "a@v1"


def test_model_table_names_a_loaded_model_directory(s, rt, tmp_path):
    (tmp_path / "models" / "m1").mkdir(parents=True)
    (tmp_path / "models" / "m1" / "config.json").write_text('{"model_type": "llama"}')
    s.sql('load model.`models/m1` as m1;\n'
          'run command as LLM.`` where action="infer" and pretrainedModelType="llama" and modelTable="m1" and udfName="x";')
    assert rt.deployed["x"]["model_dir"] == str(tmp_path / "models" / "m1")


def test_training_is_dispatched_from_the_setup_mode_with_options_parsed_once(s, rt):
    s.sql("""load json.`data/q.jsonl` as data;
        !byzerllm setup sft;
        run command as LLM.`` where pretrainedModelType="llama" and localModelDir="m" and inputTable="data"
            and `sft.int.max_seq_length`="64" and learningRate="0.001";""")
    (call,) = rt.trained
    assert call["task"] == "sft" and call["rows"] == 5
    assert call["options"].max_seq_length == 64 and call["options"].learning_rate == 0.001
    assert call["params"]["inputTable"] == "data"  # the user's keys, kept as written for the job record


def test_training_task_from_the_model_type_prefix(s, rt):
    out = s.sql("""load json.`data/q.jsonl` as data;
        run data as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="m" and `sfft.int.max_length`="32";""")
    assert rt.trained[0]["task"] == "sfft" and rt.trained[0]["options"].max_length == 32
    assert out[-1].message.startswith("job sfft-job-1")


def test_training_option_typo_lists_the_valid_options(s, rt):
    with pytest.raises(UnknownOptionError, match="learningRat"):
        s.sql('load json.`data/q.jsonl` as data;\n'
              'run command as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="m" and inputTable="data" '
              'and learningRat="0.1";')
    assert rt.trained == []


def test_training_needs_an_input_table(s, rt):
    with pytest.raises(ConfigError, match="inputTable"):
        s.sql('run command as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="m";')
    assert rt.trained == []


def test_train_verb_without_a_task_says_how_to_name_one(s, rt):
    with pytest.raises(ConfigError, match="sft/llama or sfft/llama"):
        s.sql('load json.`data/q.jsonl` as data;\ntrain data as LLM.`` where pretrainedModelType="llama" and localModelDir="m";')


def test_merge_options_are_checked(s, rt):
    with pytest.raises(ConfigError, match="outputTable"):
        s.sql('run command as LLM.`` where action="merge" and modelTable="a@v1";')
    s.sql('run command as LLM.`` where action="merge" and model_table="a@v1" and outputTable="b" and overwrite="true";')
    assert rt.merged == [("a@v1", "b", True)]


def test_convert_takes_byzers_deepspeed_keys_as_they_are(s, rt):
    out = s.sql('run command as LLM.`` where action="convert" and pretrainedModelType="deepspeed" '
                'and modelNameOrPath="models/base" and checkpointDir="ckpt" and tag="Epoch-1" '
                'and savePath="models/base-sft" as converted;')[0]
    (opts,) = rt.converted
    assert (opts.source(), opts.model_name_or_path, opts.checkpoint_dir, opts.tag, opts.save_path) == (
        "deepspeed", "models/base", "ckpt", "Epoch-1", "models/base-sft")
    assert s.table("converted").to_pylist()[0]["path"] == "models/base-sft"
    assert out.message == "deepspeed converted -> models/base-sft"


def test_convert_of_a_gguf_file_in_either_spelling(s, rt):
    s.sql('run command as LLM.`` where action="convert" and sourceFormat="gguf" and sourcePath="smollm2" '
          'and outputTable="smol";')
    s.sql('run command as LLM.`` where action="convert" and source_format="gguf" and gguf_file="m.gguf" '
          'and output_table="smol2" and overwrite="true";')
    assert [(o.source(), o.source_path, o.output_table, o.overwrite) for o in rt.converted] == [
        ("gguf", "smollm2", "smol", False), ("gguf", "m.gguf", "smol2", True)]


def test_convert_options_are_checked(s, rt):
    with pytest.raises(UnknownOptionError, match=r"unknown action=\"convert\" option 'checkpoint'; .*valid options: .*checkpointDir"):
        s.sql('run command as LLM.`` where action="convert" and checkpoint="x" and outputTable="m";')
    with pytest.raises(ConfigError, match="sourceFormat"):
        s.sql('run command as LLM.`` where action="convert" and sourceFormat="onnx" and outputTable="m";')
    assert rt.converted == []


def test_quantize_dispatches_with_its_calibration_table(s, rt):
    out = s.sql('load json.`data/q.jsonl` as cal;\n'
                'run command as LLM.`` where action="quantize" and modelTable="m@v1" and method="gptq" '
                'and outputTable="m_q" and calibrationTable="cal" and calibrationColumn="q" and groupSize="64" as q;')
    assert rt.quantized == [{"model_table": "m@v1", "output_table": "m_q", "method": "gptq-int4", "calibration_rows": 5,
                             "calibration_column": "q", "group_size": 64, "overwrite": False}]
    assert out[-1].message == "m@v1 quantized (gptq-int4) -> m_q@v1"
    assert s.table("q").to_pylist()[0]["method"] == "gptq-int4"


def test_quantize_options_are_checked(s, rt):
    with pytest.raises(ConfigError, match=r"unknown quantization method 'int3'; valid methods: bnb-int8"):
        s.sql('run command as LLM.`` where action="quantize" and modelTable="m" and method="int3" and outputTable="q";')
    with pytest.raises(ConfigError, match="method"):
        s.sql('run command as LLM.`` where action="quantize" and modelTable="m" and outputTable="q";')
    with pytest.raises(UnknownOptionError, match="calibrationTable"):
        s.sql('run command as LLM.`` where action="quantize" and modelTable="m" and method="nf4" and outputTable="q" '
              'and bits="3";')
    with pytest.raises(UnknownTableError, match="nope"):
        s.sql('run command as LLM.`` where action="quantize" and modelTable="m" and method="gptq" and outputTable="q" '
              'and calibrationTable="nope";')
    assert rt.quantized == []


def test_unknown_action_lists_the_actions(s, rt):
    with pytest.raises(ConfigError, match='"infer", "merge", "convert", "quantize"'):
        s.sql('run command as LLM.`` where action="explode" and udfName="x";')


def test_byzerllm_commands_reach_their_handlers(s, rt):
    s.sql(f"{DEPLOY};")
    deployed = s.sql("!byzerllm model deployed;")[0].table.to_pylist()
    assert [r["udf_name"] for r in deployed] == ["echo"]
    assert {k: deployed[0][k] for k in ("engine", "num_workers", "requests_running", "requests_waiting")} == {
        "engine": "threads", "num_workers": 1, "requests_running": 0, "requests_waiting": 0}
    assert s.sql("!byzerllm model exists echo;")[0].table.to_pylist()[0]["exists"] is True
    assert s.sql("!byzerllm model remove echo;")[0].message == "echo: undeployed"
    assert rt.deployed == {}
    assert s.sql("!byzerllm model list;")[0].table.num_rows == 0  # the registry, empty
    assert s.sql("!byzerllm setup \"num_workers=3\";")[0].message == "num_workers=3"
    assert rt.setup_config.num_workers == 3


def test_job_commands_use_the_named_or_the_latest_job(s, rt):
    s.sql('load json.`data/q.jsonl` as data;\n'
          'run data as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="m";')
    assert [r["job_id"] for r in s.sql("!byzerllm job list;")[0].table.to_pylist()] == ["sft-job-1"]
    assert s.sql("!byzerllm job stop sft-job-1;")[0].message == "job sft-job-1: STOPPED"
    assert s.sql("!byzerllm job resume sft-job-1;")[0].table.to_pylist()[0]["state"] == "RUNNING"
    logs = s.sql("!byzerllm job logs sft-job-1;")[0]
    assert logs.table.num_rows == 2 and "line 2 of sft-job-1" in logs.message
    assert ("status", "sft-job-1") not in rt.jobs.calls
    s.sql("!byzerllm job status sft-job-1;")
    assert ("status", "sft-job-1") in rt.jobs.calls
    with pytest.raises(ConfigError, match="no training job"):
        s.sql("!byzerllm job status;")  # the catalog (real) has no job: the fake's jobs are not in it


def test_cache_commands(s, rt):
    rt.result_cache.put_many("echo", [("k1", {"output": "a"}), ("k2", {"output": "b"})])
    assert s.sql("!byzerllm cache status;")[0].table.to_pylist() == [{"model": "echo", "rows": 2}]
    assert s.sql("!byzerllm cache clear echo;")[0].message == "result cache: 2 rows removed"


def test_an_unknown_function_starts_nothing_and_lists_the_deployments(s, rt):
    with pytest.raises(UnknownFunctionError, match=r"deployed models: \(none\)"):
        s.sql("load json.`data/q.jsonl` as q;\nselect nope(llm_param(map('instruction', q))) from q;")
    assert rt.listed_with_start == [False]


def test_row_errors_raise_with_the_row_or_become_null(s, rt):
    s.sql(f"""{DEPLOY};
        select 'ok' as q union all select 'FAIL here' as q as t;""")
    with pytest.raises(RowError, match="row 2"):
        s.sql("select echo(llm_param(map('instruction', q))) as a from t;")
    out = s.sql("set llm_on_error = 'null';\nselect llm_result(echo(llm_param(map('instruction', q)))) as a from t;")
    assert [r["a"] for r in out[-1].table.to_pylist()] == ["echo:ok", None]


def test_embeddings_go_to_embed(s, rt):
    out = s.sql(f"""{DEPLOY};
        select echo(llm_param(map('instruction', 'abc', 'embedding', 'true'))) as v as e;""")
    assert json.loads(out[-1].table.to_pylist()[0]["v"])["output"] == [3.0, 1.0]


def test_statements_run_without_ray_or_torch(tmp_path):
    """In a fresh interpreter: a whole script runs against the fake and ray / torch are never imported."""
    code = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
from fake_runtime import FakeRuntime
from byzer_like.session import Session
rt = FakeRuntime({str(tmp_path)!r})
with open({str(tmp_path / 'q.jsonl')!r}, 'w') as f:
    f.write(json.dumps({{"q": "hi"}}) + "\\n")
s = Session(rt, progress=False)
out = s.sql('''{DEPLOY};
load json.`q.jsonl` as q;
select llm_result(echo(llm_param(map("instruction", q)))) as a from q as t;''')
assert out[-1].table.to_pylist() == [{{"a": "echo:hi"}}], out[-1].table
heavy = sorted(m for m in ("ray", "torch", "transformers") if m in sys.modules)
print("HEAVY", heavy)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HEAVY []" in r.stdout
