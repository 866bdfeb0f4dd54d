"""Reward models (`rm/<family>`): preference tables checked before anything starts, a reward model trained
in-process on the tiny llama and scored by the reward back end, deployment with modelTable alone, SQL's
DOUBLE per row, metric reward in action="eval" (against tests/fake_runtime.py), and, under Ray, the whole
path: SQL trains, registers, deploys and scores; the client and POST /v1/score score too."""
from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from byzer_like.errors import ConfigError, ModelDirError, ModelNotDeployedError, UnknownOptionError
from fake_runtime import FakeRuntime

pytestmark = pytest.mark.timeout(300)

PAIRS = [{"prompt": f"question {i}", "chosen": "a long and helpful answer", "rejected": "no"} for i in range(8)]


@pytest.fixture
def rt(tmp_path) -> FakeRuntime:
    return FakeRuntime(str(tmp_path))


# -- the data and the options, before anything starts ------------------------------------------------
def test_a_table_without_chosen_and_rejected_is_refused_naming_the_accepted_form():
    from byzer_like.train.reward import preference_form

    assert preference_form(["Prompt", "chosen", "rejected"]) == "prompt"
    assert preference_form(["instruction", "input", "chosen", "rejected"]) == "instruction"
    with pytest.raises(ConfigError, match=r"missing chosen, rejected \(an sft table.*prompt \(or instruction"):
        preference_form(["instruction", "output"])
    with pytest.raises(ConfigError, match=r"missing prompt \(or instruction\)"):
        preference_form(["chosen", "rejected"])


def test_pairs_with_a_null_or_identical_answer_are_refused_by_row():
    from byzer_like.train.reward import preference_pairs

    (msgs, chosen, rejected), = preference_pairs([{"instruction": "q", "input": "ctx", "system": "be brief",
                                                  "chosen": "a", "rejected": "b"}], "instruction")
    assert msgs == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q\nctx"}]
    assert (chosen, rejected) == ("a", "b")
    with pytest.raises(ConfigError, match="row 2: rejected is NULL"):
        preference_pairs([{"prompt": "q", "chosen": "a", "rejected": "b"},
                          {"prompt": "q", "chosen": "a", "rejected": None}], "prompt")
    with pytest.raises(ConfigError, match="row 1: chosen and rejected are the same text"):
        preference_pairs([{"prompt": "q", "chosen": "a", "rejected": "a"}], "prompt")


def test_rm_options_build_from_byzer_keys_and_refuse_an_eval_table():
    from byzer_like import tasks

    task = tasks.get("rm")
    opts = task.parse_options({"pretrainedModelType": "rm/llama", "localModelDir": "m", "rm.int.max_seq_length": "64",
                               "method": "full", "evalSplit": "0.2"})
    assert (opts.method, opts.max_seq_length, opts.eval_split, opts.lr()) == ("full", 64, 0.2, 1e-5)
    assert tasks.require_task("llama", mode="rm").name == "rm" and tasks.split_model_type("rm/llama") == ("rm", "llama")
    with pytest.raises(ConfigError, match="evalSplit"):
        task.parse_options({"pretrainedModelType": "rm/llama", "localModelDir": "m", "evalTable": "t"})
    with pytest.raises(UnknownOptionError, match="max_seq_lenght"):
        task.parse_options({"pretrainedModelType": "rm/llama", "localModelDir": "m", "max_seq_lenght": "64"})


def test_a_bad_preference_table_fails_at_submit_before_a_job_exists(tiny_models, workspace):
    from byzer_like import tasks
    from byzer_like.train.jobs import Jobs
    from byzer_like.workspace import Workspace

    task = tasks.get("rm")
    params = {"pretrainedModelType": "rm/llama", "localModelDir": str(tiny_models["llama"]), "outputTable": "rm_bad"}
    jobs = Jobs(Workspace.from_env(str(workspace)), connect=lambda: pytest.fail("no cluster for a bad table"))
    before = len(jobs.catalog.jobs())
    with pytest.raises(ConfigError, match="Reward models train on a preference table"):
        jobs.submit(task, task.parse_options(params), params, pa.table({"instruction": ["q"], "output": ["a"]}))
    assert len(jobs.catalog.jobs()) == before


# -- SQL, against the fake runtime -------------------------------------------------------------------
def test_a_reward_deployment_is_a_double_per_row_in_order(s, rt):
    rt.deployed["rm_fn"] = {"options": {"pretrainedModelType": "reward"}, "model_dir": "/rm"}
    s.sql("select * from (values ('q', 'four'), ('qq', 'a'), (null, 'x'), ('q', null), ('qqq', 'longer one')) "
          "as v(q, a) as t;")
    out = s.sql('select q, rm_fn(llm_param(map("instruction", q, "response", a))) as score from t as scored;')[-1]
    assert out.table.schema.field("score").type == pa.float64()
    assert out.table.column("score").to_pylist() == [3.0, -1.0, None, None, 7.0]
    (name, pairs), = rt.rewarded  # NULL rows are never sent
    assert name == "rm_fn" and [p["instruction"] for p in pairs] == ["q", "qq", "qqq"]
    with pytest.raises(ConfigError, match='a reward model scores an answer.*"response", answer'):
        s.sql('select rm_fn(llm_param(map("instruction", q))) as score from t as bad;')


def test_metric_reward_is_the_mean_reward_of_the_answers(s, rt):
    rt.deployed["chat"] = {"options": {}, "model_dir": "/m"}
    rt.deployed["rm_fn"] = {"options": {"pretrainedModelType": "reward"}, "model_dir": "/rm"}
    s.sql("select * from (values ('hi'), ('hello')) as v(instruction) as qs;")
    s.sql('run command as LLM.`` where action="eval" and udfName="chat" and inputTable="qs" and metrics="reward" '
          'and rewardModel="rm_fn" and report="false" as summary;')
    summary = s.table("summary").to_pylist()[0]
    # the fake chat answers "echo:<q>", the fake reward is len(answer) - len(question): 5 for every row
    assert summary["reward"] == 5.0 and summary["rows"] == 2
    (_, pairs), = rt.rewarded
    assert pairs == [{"instruction": "hi", "response": "echo:hi"}, {"instruction": "hello", "response": "echo:hello"}]
    assert s.table("eval_rows").column("reward").to_pylist() == [5.0, 5.0]
    with pytest.raises(ConfigError, match='rewardModel="<udfName>"'):
        s.sql('run command as LLM.`` where action="eval" and udfName="chat" and inputTable="qs" and metrics="reward";')
    with pytest.raises(ModelNotDeployedError, match="rm_gone"):
        s.sql('run command as LLM.`` where action="eval" and udfName="chat" and inputTable="qs" and '
              'metrics="reward" and rewardModel="rm_gone";')
    assert len(rt.generated) == 1  # neither bad evaluation asked the chat model


def test_a_pair_is_checked_before_it_is_sent():
    from byzer_like.runtime import check_pair

    assert check_pair({"prompt": "q", "answer": 1}) == {"instruction": "q", "response": "1"}
    with pytest.raises(ConfigError, match="pair 2: unknown key 'respons'; did you mean 'response'"):
        check_pair({"instruction": "q", "respons": "a"}, 2)
    with pytest.raises(ConfigError, match="pair 1: no response"):
        check_pair({"instruction": "q"})


# -- training in-process and the reward back end -----------------------------------------------------
@pytest.fixture(scope="module")
def trained_rm(tiny_models, workspace):
    """A LoRA reward model trained for 3 steps on the tiny llama (in-process, the plugin's entry point)."""
    import pyarrow.parquet as pq

    from byzer_like.train.context import INTERNAL
    from byzer_like_models.llama import plugin

    d = workspace / "rm-in-process"
    d.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(PAIRS), d / "input.parquet")
    params = {"pretrainedModelType": "rm/llama", "localModelDir": str(tiny_models["llama"]), "maxSteps": "3",
              "evalSplit": "0.25", f"{INTERNAL}model_dir": str(tiny_models["llama"]),
              f"{INTERNAL}output_dir": str(d / "model"), f"{INTERNAL}run_dir": str(d)}
    return plugin.rm_train([str(d / "input.parquet")], params, {})


def test_rm_train_saves_a_whole_model_with_its_score_head(trained_rm):
    from pathlib import Path

    from safetensors import safe_open

    assert trained_rm["kind"] == "reward"
    out = Path(trained_rm["model_dir"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg.get("num_labels", 1) == 1
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "score.weight" in keys and not [k for k in keys if "lora" in k]  # LoRA merged, the head kept
    m = trained_rm["metrics"]
    assert m["steps"] == 3 and m["train_rows"] == 6 and m["eval_rows"] == 2
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and math.isfinite(m["margin"]) and math.isfinite(m["train_loss"])


def test_full_rm_training_trains_every_weight_and_saves_the_head(tiny_models, workspace):
    import pyarrow.parquet as pq
    from safetensors import safe_open

    from byzer_like.train.reward import RmOptions, rm_train
    from byzer_like_models.llama import plugin

    d = workspace / "rm-full"
    d.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(PAIRS), d / "input.parquet")
    opts = RmOptions.from_params({"pretrainedModelType": "rm/llama", "localModelDir": str(tiny_models["llama"]),
                                  "method": "full", "maxSteps": "2"})
    out = rm_train(model_dir=str(tiny_models["llama"]), data_path=str(d / "input.parquet"), output_dir=str(d / "model"),
                   run_dir=str(d), options=opts, fallback_template=plugin.fallback_chat_template)
    assert out["kind"] == "reward" and out["metrics"]["steps"] == 2 and out["metrics"]["eval_rows"] == 0
    with safe_open(str(d / "model" / "model.safetensors"), "pt") as f:
        base = safe_open(str(tiny_models["llama"] / "model.safetensors"), "pt")
        name = "model.layers.0.self_attn.q_proj.weight"
        assert "score.weight" in f.keys() and not (f.get_tensor(name) == base.get_tensor(name)).all()


def test_the_reward_back_end_scores_pairs_in_order_and_refuses_chat(trained_rm, tiny_models):
    from byzer_like.backends.reward import plugin
    from byzer_like.errors import RewardModelCallError

    plugin.check_model_dir(trained_rm["model_dir"], {})
    with pytest.raises(ModelDirError, match="not a reward model"):
        plugin.check_model_dir(str(tiny_models["llama"]), {})
    model, tok = plugin.init_model(trained_rm["model_dir"], {}, {"max_batch_size": "2"})
    pairs = [{"instruction": "question 1", "response": "a long and helpful answer"},
             {"instruction": "question 1", "response": "no"},
             {"instruction": "q", "response": "x " * 40, "system": "be brief"}]
    scores = plugin.score(model, tok, pairs)
    assert len(scores) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in scores)
    # batched (two per batch, shortest first) or one by one: the same number per pair
    assert [plugin.score(model, tok, [p])[0] for p in pairs] == pytest.approx(scores, abs=1e-4)
    assert plugin.get_meta(model, tok)["kind"] == "reward"
    with pytest.raises(RewardModelCallError, match="POST /v1/score"):
        plugin.stream_chat(model, tok, "hi", [])


def test_a_registered_reward_model_deploys_with_model_table_alone(trained_rm, workspace):
    from byzer_like.catalog import Catalog
    from byzer_like.config import SetupConfig
    from byzer_like.runtime.spec import DeploySpec
    from byzer_like.workspace import Workspace

    ws = Workspace.from_env(str(workspace))
    cat = Catalog(ws)
    m = cat.register_model("spec_rm", kind="reward", path=trained_rm["model_dir"], base_model="/base",
                           model_type="llama", method="lora", params={}, metrics={}, job_id=None, overwrite=True)
    spec = DeploySpec.build({"udfName": "rm_fn", "modelTable": "spec_rm"}, setup=SetupConfig(), workspace=ws, catalog=cat)
    assert (spec.pretrained_model_type, spec.import_path) == ("reward", "byzer_like.backends.reward:plugin")
    assert spec.model_dir == trained_rm["model_dir"] and spec.infer_params["model_table"] == m.ref
    with pytest.raises(ModelDirError, match='a reward model: deploy it as pretrainedModelType="reward"'):
        DeploySpec.build({"udfName": "x", "modelTable": "spec_rm", "pretrainedModelType": "llama"},
                         setup=SetupConfig(), workspace=ws, catalog=cat)
    with pytest.raises(ConfigError, match='modelTable="<a registered model>"'):
        DeploySpec.build({"udfName": "x", "localModelDir": trained_rm["model_dir"]}, setup=SetupConfig(),
                         workspace=ws, catalog=cat)


# -- the whole path on Ray ---------------------------------------------------------------------------
def _post(url: str, body: dict, token: str | None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.timeout(600)
def test_sql_trains_registers_deploys_and_scores_a_reward_model(llm, tiny_models):
    from byzer_like.session import Session

    s = Session(llm, progress=False)
    s.put("prefs", pa.Table.from_pylist(PAIRS))
    s.put("t", pa.table({"q": ["question 1", "question 2", None, "question 3"],
                         "a": ["a long and helpful answer", "no", "x", "maybe"]}))
    srv = None
    try:
        job = s.sql(f"""
            !byzerllm setup rm;
            run command as LLM.`` where pretrainedModelType="llama" and localModelDir="{tiny_models['llama']}"
            and inputTable="prefs" and outputTable="tiny_rm" and overwrite="true" and maxSteps="3";
            !byzerllm setup single;
        """)[1].table.to_pylist()[0]
        assert job["state"] == "SUCCEEDED" and job["kind"] == "rm", job
        entry = llm.catalog.model(f"tiny_rm@v{job['model_version']}")
        assert entry.kind == "reward" and entry.model_type == "llama" and entry.method == "lora"
        # deployed with modelTable alone: the registry knows it is a reward model
        s.sql('run command as LLM.`` where action="infer" and modelTable="tiny_rm" and udfName="rm_fn";')
        out = s.sql('select q, rm_fn(llm_param(map("instruction", q, "response", a))) as score from t as scored;')[-1]
        assert out.table.schema.field("score").type == pa.float64()
        scores = out.table.column("score").to_pylist()
        assert scores[2] is None and all(isinstance(v, float) and math.isfinite(v) for i, v in enumerate(scores) if i != 2)
        pairs = [{"instruction": q, "response": a} for q, a in zip(["question 1", "question 2", "question 3"],
                                                                 ["a long and helpful answer", "no", "maybe"])]
        assert llm.score("rm_fn", pairs) == pytest.approx([scores[0], scores[1], scores[3]], abs=1e-4)
        assert llm.score("rm_fn", pairs[1]) == pytest.approx([scores[1]], abs=1e-4)
        # the HTTP route, behind the server's key
        srv = llm.serve(port=0, api_key="rm-key", replace=True)
        status, body = _post(srv.url + "/v1/score", {"model": "rm_fn", "pairs": pairs}, "rm-key")
        assert status == 200 and body["scores"] == pytest.approx([scores[0], scores[1], scores[3]], abs=1e-4)
        assert _post(srv.url + "/v1/score", {"model": "rm_fn", "pairs": pairs}, None)[0] == 401
        assert _post(srv.url + "/v1/score", {"model": "rm_fn", "pairs": [{"instruction": "q"}]}, "rm-key")[0] == 400
    finally:
        if srv is not None:
            srv.stop()
        if llm.is_model_exist("rm_fn"):
            llm.undeploy("rm_fn")
        s.close()


# -- the real small model (-m real_model) ------------------------------------------------------------
BAD_ANSWERS = ("I don't know.", "I like turtles.")


def _capital_pairs(rows: list[dict], wrong_from: list[dict]) -> list[dict]:
    """Per capital question: the right answer chosen over a refusal, an off-topic reply and a wrong capital."""
    out = []
    for i, r in enumerate(rows):
        country = r["instruction"].removeprefix("What is the capital of ").rstrip("?")
        right = f"The capital of {country} is {r['output']}."
        wrong = wrong_from[(i + 7) % len(wrong_from)]["output"]
        for bad in (*BAD_ANSWERS, f"The capital of {country} is {wrong}."):
            out.append({"prompt": r["instruction"], "chosen": right, "rejected": bad})
    return out


@pytest.mark.real_model
@pytest.mark.timeout(1800)
def test_a_reward_model_of_smollm2_prefers_held_out_chosen_answers_through_sql(llm, smollm2_dir):
    from pathlib import Path

    from byzer_like.session import Session

    rows = [json.loads(x) for x in (Path(__file__).parent / "fixtures" / "capitals_qa.jsonl").read_text().splitlines()
            if x.strip()]
    train, held = rows[:20], rows[20:]
    s = Session(llm, progress=False)
    s.put("prefs", pa.Table.from_pylist(_capital_pairs(train, train)))
    s.put("held", pa.Table.from_pylist(_capital_pairs(held, rows)))
    try:
        job = s.sql(f"""
            !byzerllm setup rm;
            run command as LLM.`` where pretrainedModelType="llama" and localModelDir="{smollm2_dir}"
            and inputTable="prefs" and outputTable="smol_rm" and overwrite="true" and learningRate="3e-4"
            and epochs="2" and batchSize="4";
            !byzerllm setup single;
        """)[1].table.to_pylist()[0]
        assert job["state"] == "SUCCEEDED", job
        s.sql('run command as LLM.`` where action="infer" and modelTable="smol_rm" and udfName="smol_rm_fn";')
        (acc,) = s.sql('''
            select avg(case when smol_rm_fn(llm_param(map("instruction", prompt, "response", chosen)))
                            > smol_rm_fn(llm_param(map("instruction", prompt, "response", rejected))) then 1.0 else 0.0 end)
                   as pair_accuracy from held as acc;''')[-1].table.to_pylist()
        assert acc["pair_accuracy"] >= 0.8, (acc, json.loads(job["metrics"]))
    finally:
        if llm.is_model_exist("smol_rm_fn"):
            llm.undeploy("smol_rm_fn")
        s.close()
