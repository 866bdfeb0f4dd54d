"""Fine-tuning end to end on a real Ray cluster with real tiny models: SQL and client, LoRA / QLoRA / full,
the model registry, detached jobs that outlive their client, stop and resume, and bad input."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from byzer_like.catalog import Catalog
from byzer_like.errors import ModelExistsError
from byzer_like.session import Session, UnknownTableError
from byzer_like.errors import ConfigError, UnknownOptionError

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
         "peggy", "rupert", "sybil", "trent", "victor", "walter", "xavier", "yvonne", "zoe", "nina", "omar", "paul",
         "quinn", "rosa", "sam", "tina", "ursula", "vera"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
QA = [{"instruction": f"favorite color of {n}?", "input": "", "output": COLORS[(i * 5) % 8]} for i, n in enumerate(NAMES)]
# LoRA on a 128-wide random-init model: every linear layer, a wide rank, no dropout (a real model needs far less)
LORA = {"loraTargetModules": "all-linear", "loraR": "64", "loraAlpha": "128", "loraDropout": "0",
        "learningRate": "3e-3", "epochs": "40", "batchSize": "4", "sft.int.max_seq_length": "48"}


def _where(options: dict) -> str:
    return "\n".join(f"and `{k}`=\"{v}\"" for k, v in options.items())


def _exact(rows, column="answer"):
    return sum(r[column].strip() == r["output"] for r in rows) / len(rows)


@pytest.fixture(scope="module")
def qa_file(workspace):
    f = workspace / "data" / "qa_colors.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return f


@pytest.fixture
def session(llm):
    s = Session(llm, progress=False)
    yield s
    s.close()


@pytest.mark.timeout(420)
def test_lora_through_sql_learns_the_answers_registers_merges_and_deploys(llm, session, tiny_models, qa_file, workspace):
    base = tiny_models["llama"]
    results = session.sql(f"""
        load json.`{qa_file}` as qa;
        !byzerllm setup sft;
        run command as LLM.`` where
        and pretrainedModelType="sft/llama"
        and localModelDir="{base}"
        and inputTable="qa"
        and outputTable="colors_lora"
        and detached="false"
        and predictTable="qa" and predictMaxNewTokens="8"
        {_where(LORA)};
        !byzerllm setup single;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
        and localModelDir="{base}" and udfName="colors_base";
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
        and modelTable="colors_lora" and udfName="colors_ft";
        select instruction, output,
               llm_result(colors_base(llm_param(map("instruction", instruction, "temperature", 0.0, "max_new_tokens", 8)))) as base,
               llm_result(colors_ft(llm_param(map("instruction", instruction, "temperature", 0.0, "max_new_tokens", 8)))) as answer
        from qa as answers;
    """)
    try:
        job = results[2].table.to_pylist()[0]
        assert job["state"] == "SUCCEEDED" and job["output_table"] == "colors_lora" and job["model_version"] == 1
        # no method given, no GPU: lora, and the row and the message say why
        assert job["method"] == "lora (qlora needs a CUDA GPU; none here)" and job["method"] in results[2].message
        metrics = json.loads(job["metrics"])
        assert metrics["final_loss"] < metrics["first_loss"] and metrics["tokens_per_s"] > 0
        assert Path(metrics["loss_curve"]).stat().st_size > 1000  # the PNG beside the model
        assert Path(job["artifact"], "adapter_model.safetensors").exists()
        # the Trainer's TensorBoard event files, in the job's folder, named by the job's record
        board = llm.jobs.record(job["job_id"])["tensorboard_dir"]
        assert board and any(Path(board).rglob("events.out.tfevents*")), board
        rows = session.table("answers").to_pylist()
        assert _exact(rows) >= 0.8, rows
        assert _exact(rows, "base") <= 0.1
        # predictTable: the trained model's answers, one per row in order, equal to the select's
        predicted = session.table("qa_predictions").to_pylist()
        assert [p["instruction"] for p in predicted] == [r["instruction"] for r in rows]
        assert [p["answer"] for p in predicted] == [r["answer"] for r in rows]
        assert metrics["predict_rows"] == len(rows) and "qa_predictions" in results[2].message

        # the registry: list, merge into a whole model, deploy a version by name@vN
        listed = session.sql("!byzerllm model list;")[0].table.to_pylist()
        entry = next(r for r in listed if r["name"] == "colors_lora")
        assert entry["kind"] == "adapter" and entry["base_model"] == str(base) and entry["job_id"] == job["job_id"]
        merged = session.sql('run command as LLM.`` where action="merge" and modelTable="colors_lora@v1" '
                             'and outputTable="colors_merged";')[0].table.to_pylist()[0]
        assert merged["version"] == 1 and Path(merged["path"], "model.safetensors").exists()
        session.sql('run command as LLM.`` where action="infer" and pretrainedModelType="llama" '
                    'and modelTable="colors_merged@v1" and udfName="colors_merged";')
        same = llm.batch_chat([r["instruction"] for r in QA[:8]], model="colors_merged",
                              llm_config={"temperature": 0.0, "max_new_tokens": 8})
        assert [str(a) for a in same] == [r["answer"] for r in rows[:8]]
        with pytest.raises(ModelExistsError, match="overwrite"):
            session.sql('run command as LLM.`` where action="merge" and modelTable="colors_lora" '
                        'and outputTable="colors_merged";')
    finally:
        for name in ("colors_base", "colors_ft", "colors_merged"):
            if llm.is_model_exist(name):
                llm.undeploy(name)


@pytest.mark.timeout(420)
# qlora under -m heavy (bitsandbytes' CPU back end trains it slowly here); the default run checks which method a job
# takes (tests/test_job_preflight.py) and trains LoRA through the same SQL path (test_lora_through_sql...)
@pytest.mark.parametrize("method", [pytest.param("qlora", marks=pytest.mark.heavy), "full"])
def test_qlora_and_full_through_sql(llm, session, tiny_models, qa_file, method):
    options = LORA if method == "qlora" else {"learningRate": "3e-3", "epochs": "30", "batchSize": "4",
                                              "sft.int.max_seq_length": "48"}
    udf = f"colors_{method}_chat"
    session.sql(f"""
        load json.`{qa_file}` as qa;
        run qa as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="{tiny_models['llama']}"
        and outputTable="colors_{method}" and method="{method}" {_where(options)};
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
        and modelTable="colors_{method}" and udfName="{udf}";
    """)
    try:
        model = llm.catalog.model(f"colors_{method}")
        assert model.kind == ("model" if method == "full" else "adapter") and model.method == method
        rows = session.sql(f"""select instruction, output, llm_result({udf}(llm_param(map("instruction", instruction,
            "temperature", 0.0, "max_new_tokens", 8)))) as answer from qa as answers;""")[0].table.to_pylist()
        assert _exact(rows) >= 0.8, rows
    finally:
        llm.undeploy(udf)


DETACHED_CLIENT = textwrap.dedent("""
    import json, sys
    from byzer_like import ByzerLLM
    llm = ByzerLLM()
    llm.setup_cpus_per_worker(0.5)
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(40)]
    job = llm.sft(rows, model_path=sys.argv[1], pretrained_model_type="sft/llama", output_table="detached_model",
                  detached=True, epochs=400, batch_size=8, max_seq_length=32, checkpoint_steps=10, logging_steps=2,
                  learning_rate=1e-3)
    print(json.dumps(job))
""")


@pytest.mark.timeout(420)
def test_detached_job_outlives_its_client_and_stops_and_resumes_from_its_checkpoint(llm, tiny_models, workspace):
    out = subprocess.run([sys.executable, "-c", DETACHED_CLIENT, str(tiny_models["llama"])], capture_output=True,
                         text=True, timeout=180, env={**os.environ, "BYZER_LIKE_HOME": str(workspace)})
    assert out.returncode == 0, out.stderr[-2000:]
    job_id = json.loads(out.stdout.strip().splitlines()[-1])["job_id"]  # the client process has exited

    jobs = llm.jobs
    deadline = time.monotonic() + 240
    while jobs.status(job_id)["step"] < 25:  # past the second checkpoint
        assert jobs.status(job_id)["state"] in ("PENDING", "RUNNING"), jobs.logs(job_id)
        assert time.monotonic() < deadline, jobs.logs(job_id)
        time.sleep(1)
    running = jobs.record(job_id)
    assert running["state"] == "RUNNING" and running["metrics"]["tokens_per_s"] > 0 and "eta_s" in running["metrics"]
    assert "step" in jobs.logs(job_id)
    assert any(r["job_id"] == job_id for r in jobs.list())

    stopped = jobs.stop(job_id)
    assert stopped["state"] == "STOPPED"
    pid = int(running["runner"].rsplit(":", 1)[1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the runner is gone: nothing left behind
    step_at_stop = jobs.status(job_id)["step"]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in Path(running["run_dir"], "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 20

    # resume (a blocking run this time, shortened so that the test ends soon after): from the last
    # checkpoint's step, not from 0
    epochs = (checkpoints[-1] + 20) // 5  # 40 rows in batches of 8: 5 steps an epoch
    Catalog(workspace).update_job(job_id, options={**running["options"], "num_train_epochs": epochs})
    done = jobs.resume(job_id, detached=False)
    assert done["state"] == "SUCCEEDED" and done["step"] == epochs * 5
    metrics = json.loads(done["metrics"])
    assert metrics["resumed_from_step"] == checkpoints[-1] <= step_at_stop
    assert f"training from step {checkpoints[-1]} of {epochs * 5}" in jobs.logs(job_id)
    assert llm.catalog.model("detached_model").job_id == job_id

    # the same from SQL
    sql = Session(llm, progress=False)
    status_row, logs = sql.sql(f"!byzerllm job status {job_id}; !byzerllm job logs {job_id};")
    sql.close()
    assert status_row.table.to_pylist()[0]["state"] == "SUCCEEDED"
    assert any("registered detached_model@v1" in line for line in logs.table.column("line").to_pylist())

    # the same from the command line, in another process
    cli = Path(sys.executable).with_name("byzer-like")
    env = {**os.environ, "BYZER_LIKE_HOME": str(workspace)}
    listed = subprocess.run([str(cli), "jobs", "list"], capture_output=True, text=True, timeout=60, env=env)
    assert listed.returncode == 0 and f"{job_id}" in listed.stdout and "SUCCEEDED" in listed.stdout
    status = subprocess.run([str(cli), "jobs", "status", job_id], capture_output=True, text=True, timeout=60, env=env)
    assert json.loads(status.stdout)["state"] == "SUCCEEDED"
    models = subprocess.run([str(cli), "models", "list"], capture_output=True, text=True, timeout=60, env=env)
    assert "detached_model@v1" in models.stdout


# -- bad input: each a clear error before anything starts, and no job recorded -------------------------
def _bad(session, where: str, table: str = "qa") -> None:
    session.sql(f'run command as LLM.`` where pretrainedModelType="sft/llama" and inputTable="{table}" {where};')


@pytest.mark.timeout(120)
def test_bad_training_input_fails_before_anything_starts(llm, session, tiny_models, qa_file, workspace):
    base = tiny_models["llama"]
    before = len(Catalog(workspace).jobs())
    session.sql(f"load json.`{qa_file}` as qa;")
    session.put("empty", pa.table({"instruction": pa.array([], pa.string()), "output": pa.array([], pa.string())}))
    session.put("wrong", pa.table({"question": ["q"], "answer": ["a"]}))
    session.put("texts", pa.table({"text": ["some text"] * 4}))
    ok = f'and localModelDir="{base}"'

    with pytest.raises(UnknownTableError, match="unknown table 'nope'"):
        _bad(session, ok, table="nope")
    with pytest.raises(ConfigError, match=r"question, answer; missing instruction, output.*alpaca form.*chat form"):
        _bad(session, ok, table="wrong")
    with pytest.raises(ConfigError, match="empty"):
        _bad(session, ok, table="empty")
    with pytest.raises(ConfigError, match=r"max_seq_length=8 is too small.*shortest prompt alone has \d+ tokens"):
        _bad(session, ok + ' and `sft.int.max_seq_length`="8"')
    with pytest.raises(ConfigError, match=r"method.*'lora', 'qlora', 'full', 'freeze' or 'prefix'"):
        _bad(session, ok + ' and method="dora"')
    with pytest.raises(UnknownOptionError, match=r"'learningRat'.*learningRate"):
        _bad(session, ok + ' and learningRat="1e-3"')
    with pytest.raises(ConfigError, match=r"localModelDir.*modelTable"):
        _bad(session, "")
    Catalog(workspace).register_model("taken_name", kind="model", path=str(base), base_model=None, model_type="llama",
                                      method="full", params={}, metrics={}, job_id=None)
    with pytest.raises(ModelExistsError, match=r"taken_name.*overwrite=\"true\""):
        _bad(session, ok + ' and outputTable="taken_name"')
    with pytest.raises(ConfigError, match="deepspeedConfig is not valid JSON"):
        session.sql(f'run command as LLM.`` where pretrainedModelType="sfft/llama" and inputTable="texts" {ok} '
                    "and deepspeedConfig='''{\"zero_optimization\": {\"stage\": 2,}}''';")
    with pytest.raises(ConfigError, match="stage"):
        session.sql(f'run command as LLM.`` where pretrainedModelType="sfft/llama" and inputTable="texts" {ok} '
                    "and deepspeedConfig='''{\"zero_optimization\": {\"stage\": 7}}''';")
    assert len(Catalog(workspace).jobs()) == before
    assert not any(p.name.startswith("sft-") and not (p / "input.parquet").exists()
                   for p in (workspace / "jobs").glob("*")) if (workspace / "jobs").exists() else True


def test_job_commands_name_unknown_jobs(llm, session):
    from byzer_like.errors import JobNotFoundError

    with pytest.raises(JobNotFoundError, match="no job 'nope'"):
        session.sql("!byzerllm job status nope;")


@pytest.mark.timeout(120)
def test_a_job_that_cannot_start_is_recorded_as_failed(tmp_path, monkeypatch, tiny_models):
    from byzer_like import ByzerLLM
    from byzer_like.errors import ClusterError

    monkeypatch.setenv("BYZER_LIKE_JOBS_ADDRESS", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    client = ByzerLLM(workspace=tmp_path)
    with pytest.raises(ClusterError, match="cannot reach the Ray Jobs API"):
        client.sft(QA[:4], model_path=tiny_models["llama"], pretrained_model_type="sft/llama", detached=True)
    (job,) = client.catalog.jobs()
    assert job["state"] == "FAILED" and job["error"].startswith("could not start: cannot reach the Ray Jobs API")
    assert (Path(job["run_dir"]) / "input.parquet").exists()  # kept: `jobs resume` can start it later


@pytest.mark.heavy  # three training jobs and three deployments; the methods' parts run in-process in test_train_methods
@pytest.mark.timeout(600)
def test_freeze_prefix_and_sfft_lora_deploy_by_model_table(llm, session, tiny_models, qa_file, workspace):
    import pyarrow.parquet as pq

    from byzer_like.tiny import prose_lines

    base = tiny_models["llama"]
    corpus = workspace / "data" / "methods_corpus.parquet"
    pq.write_table(pa.table({"text": prose_lines(64)}), corpus)
    common = 'and `sft.int.max_seq_length`="48" and batchSize="4" and epochs="2" and detached="false"'
    session.sql(f"""
        load json.`{qa_file}` as qa;
        load parquet.`{corpus}` as corpus;
        run qa as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="{base}"
        and outputTable="m_freeze" and method="freeze" and numLayerTrainable="1" {common};
        run qa as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="{base}"
        and outputTable="m_prefix" and method="prefix" and numVirtualTokens="8" {common};
        run corpus as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="{base}"
        and outputTable="m_sfft_lora" and method="lora" and loraR="4" and maxSteps="4"
        and `sfft.int.max_length`="32" and perDeviceBatchSize="2" and detached="false";
    """)
    kinds = {n: (llm.catalog.model(n).kind, llm.catalog.model(n).method) for n in ("m_freeze", "m_prefix", "m_sfft_lora")}
    assert kinds == {"m_freeze": ("model", "freeze"), "m_prefix": ("adapter", "prefix"),
                     "m_sfft_lora": ("adapter", "pretrain-lora")}
    assert llm.catalog.model("m_sfft_lora").base_model == str(base)
    assert json.loads(Path(llm.catalog.model("m_prefix").path, "adapter_config.json").read_text())["peft_type"] \
        == "PREFIX_TUNING"
    deployed = []
    try:
        for name in ("m_freeze", "m_prefix", "m_sfft_lora"):
            llm.deploy(None, "llama", f"{name}_chat", {"model_table": name})
            deployed.append(f"{name}_chat")
            answers = llm.batch_chat([r["instruction"] for r in QA[:4]], model=f"{name}_chat",
                                     llm_config={"temperature": 0.0, "max_new_tokens": 4})
            assert len(answers) == 4 and all(isinstance(str(a), str) for a in answers)
        with pytest.raises(Exception, match="prefix-tuning adapter"):
            llm.deploy(None, "llama", "base_for_prefix", {"model_path": str(base)})
            deployed.append("base_for_prefix")
            llm.batch_chat(["hi"], model="base_for_prefix", adapter="m_prefix")
    finally:
        for n in deployed:
            if llm.is_model_exist(n):
                llm.undeploy(n)
