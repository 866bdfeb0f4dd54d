"""PPO (`ppo/<family>`, TRL's RLOO against a reward model): the options and their errors, prompt tables, the
reward model resolved at submit (a registered reward model or a deployment of one) and refused when it is
neither, bad input refused before a job exists, and a 2-step run through the job runner in-process on the
tiny llama against a reward model trained in-process (KL and reward per step in the job's record, its log
and its curve; an adapter registered)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like import cluster, tasks
from byzer_like.errors import ConfigError, UnknownOptionError
from byzer_like.train import ppo
from byzer_like.train.ppo import PpoOptions

pytestmark = pytest.mark.timeout(300)

BASE = {"pretrainedModelType": "ppo/llama", "localModelDir": "m", "rewardModel": "rm_fn"}
PROMPTS = [{"prompt": f"question {i}"} for i in range(4)]
PAIRS = [{"prompt": f"question {i}", "chosen": "a long and helpful answer", "rejected": "no"} for i in range(8)]


# -- options --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, match", [
    ({"rewardModel": None}, r'PPO needs a reward model.*rewardModel="<udfName'),
    ({"rewardModel": " "}, r"PPO needs a reward model"),
    ({"numGenerations": "4", "batchSize": "6"}, r'batchSize=6 is not a multiple of numGenerations=4.*"4" or "8"'),
    ({"numGenerations": "1"}, r"numGenerations"),
    ({"beta": "-0.1"}, r"beta"),
    ({"evalTable": "t"}, r'PPO is measured by its reward.*metrics="reward"'),
    ({"method": "prefix"}, r"method.*'lora', 'qlora' or 'full'"),
])
def test_bad_options_say_what_to_do(keys, match):
    params = {k: v for k, v in {**BASE, **keys}.items() if v is not None}
    with pytest.raises(ConfigError, match=match):
        PpoOptions.from_params(params)


def test_options_read_byzer_and_llm_module_spellings():
    o = PpoOptions.from_params({**BASE, "ppo.float.kl_coef": "0.2", "maxNewTokens": "16", "numGenerations": "2",
                                "learningRate": "3e-5", "maxSteps": "10"})
    assert (o.beta, o.max_new_tokens, o.num_generations, o.lr(), o.max_steps) == (0.2, 16, 2, 3e-5, 10)
    assert o.method == "lora" and o.batch() == 4  # two prompts' worth of answers per step
    full = PpoOptions.from_params({**BASE, "method": "full", "init_kl_coef": "0", "max_completion_length": "8"})
    assert (full.lr(), full.beta, full.max_new_tokens) == (1e-6, 0.0, 8)
    # the resolved folder is set at submit, never by a user's key
    with pytest.raises(UnknownOptionError, match="rewardModelDir"):
        PpoOptions.from_params({**BASE, "rewardModelDir": "/x"})


def test_rloo_gets_the_options():
    o = PpoOptions.from_params({**BASE, "numGenerations": "2", "beta": "0.1", "maxNewTokens": "8",
                                "temperature": "0.7"})
    args = ppo.rloo_args(o, Path("/tmp/ck"), on_gpu=False)
    assert (args["num_generations"], args["beta"], args["max_completion_length"], args["temperature"],
            args["per_device_train_batch_size"], args["learning_rate"]) == (2, 0.1, 8, 0.7, 4, 1e-5)


def test_the_task_table_has_ppo():
    task = tasks.get("ppo")
    assert "ppo" in tasks.SETUP_MODES and tasks.require_task("llama", mode="ppo").name == "ppo"
    assert tasks.split_model_type("ppo/llama") == ("ppo", "llama")
    assert task.options_model() is PpoOptions and task.entry_point == "ppo_train"
    from byzer_like_models.llama import plugin

    assert callable(plugin.ppo_train)


# -- prompt tables ----------------------------------------------------------------------------------------------
def test_prompt_tables_become_trl_conversations():
    assert ppo.prompts([{"Prompt": "hi?", "system": "be brief"}], ppo.prompt_form(["Prompt", "system"])) == \
        [{"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi?"}]}]
    assert ppo.prompts([{"instruction": "translate", "input": "chat"}], ppo.prompt_form(["instruction", "input"])) == \
        [{"prompt": [{"role": "user", "content": "translate\nchat"}]}]
    with pytest.raises(ConfigError, match=r"columns question, answer; missing prompt\. PPO samples answers to the "
                                          r"prompts of a prompt table: a column prompt \(or instruction"):
        ppo.prompt_form(["question", "answer"])
    with pytest.raises(ConfigError, match="row 2: prompt is NULL"):
        ppo.prompts([{"prompt": "q"}, {"prompt": None}], "prompt")


# -- the reward model, resolved at submit ------------------------------------------------------------------------
def _folder(path: Path, arch: str) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama"}))
    return str(path)


class Deployed:
    """What runs on the cluster, as the runtime answers it: `deployments(start=False)` and `meta(name)`."""

    def __init__(self, metas: dict[str, dict]):
        self.metas, self.asked = metas, []

    def deployments(self, *, start: bool = True) -> dict[str, str]:
        assert start is False  # a submit never starts a cluster to look
        return {n: "RUNNING" for n in self.metas}

    def meta(self, name: str) -> dict:
        self.asked.append(name)
        return self.metas[name]


@pytest.fixture
def catalog(tmp_path):
    from byzer_like.catalog import Catalog
    from byzer_like.workspace import Workspace

    cat = Catalog(Workspace.from_env(str(tmp_path)))
    rm = _folder(tmp_path / "rm", "LlamaForSequenceClassification")
    cat.register_model("my_rm", kind="reward", path=rm, base_model="/b", model_type="llama", method="lora",
                       params={}, metrics={}, job_id=None)
    cat.register_model("my_chat", kind="adapter", path=str(tmp_path / "a"), base_model="/b", model_type="llama",
                       method="lora", params={}, metrics={}, job_id=None)
    return cat


def test_a_registered_reward_model_resolves_to_its_folder_without_the_cluster(catalog, tmp_path):
    deployed = Deployed({})
    out = ppo.prepare_ppo(PpoOptions.from_params({**BASE, "rewardModel": "my_rm@v1"}), catalog, deployed)
    assert out.reward_model_dir == str(tmp_path / "rm") and deployed.asked == []
    assert out.model_dump(mode="json")["reward_model_dir"] == str(tmp_path / "rm")  # stored whole with the job


def test_a_deployed_reward_model_resolves_to_the_folder_it_serves(catalog, tmp_path):
    served = _folder(tmp_path / "served", "Qwen2ForSequenceClassification")
    deployed = Deployed({"rm_fn": {"kind": "reward", "model_dir": served}, "chat": {"kind": None, "model_dir": "/m"}})
    out = ppo.prepare_ppo(PpoOptions.from_params(BASE), catalog, deployed)
    assert out.reward_model_dir == served and deployed.asked == ["rm_fn"]
    with pytest.raises(ConfigError, match=r"rewardModel='chat' is a deployment of a chat model, not of a reward model"):
        ppo.prepare_ppo(PpoOptions.from_params({**BASE, "rewardModel": "chat"}), catalog, deployed)


@pytest.mark.parametrize("name, match", [
    ("my_rn", r"rewardModel='my_rn' is neither a deployment nor a registered reward model; did you mean 'my_rm'\? "
              r"registered reward models: my_rm; deployments: chat"),
    ("my_chat", r"rewardModel='my_chat' is a registered adapter \(my_chat@v1\), not a reward model"),
])
def test_a_reward_model_that_is_none_is_refused_by_name(catalog, name, match):
    with pytest.raises(ConfigError, match=match):
        ppo.prepare_ppo(PpoOptions.from_params({**BASE, "rewardModel": name}), catalog,
                        Deployed({"chat": {"kind": None, "model_dir": "/m"}}))


def test_a_folder_that_holds_no_reward_model_is_refused(catalog, tmp_path):
    chat = _folder(tmp_path / "chat", "LlamaForCausalLM")
    with pytest.raises(ConfigError, match=r"holds a 'LlamaForCausalLM', not a reward model"):
        ppo.prepare_ppo(PpoOptions.from_params(BASE), catalog, Deployed({"rm_fn": {"kind": "reward", "model_dir": chat}}))


# -- bad input before a job exists --------------------------------------------------------------------------------
def test_bad_ppo_input_fails_at_submit_before_a_job_exists(tiny_models, tmp_path, monkeypatch):
    from byzer_like.train.jobs import Jobs
    from byzer_like.workspace import Workspace

    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    task = tasks.get("ppo")
    ws = Workspace.from_env(str(tmp_path))
    jobs = Jobs(ws, connect=lambda: pytest.fail("no cluster for bad input"), deployed=Deployed({}))
    rm = _folder(tmp_path / "rm", "LlamaForSequenceClassification")
    jobs.catalog.register_model("good_rm", kind="reward", path=rm, base_model="/b", model_type="llama",
                                method="lora", params={}, metrics={}, job_id=None)
    base = {"pretrainedModelType": "ppo/llama", "localModelDir": str(tiny_models["llama"])}
    prompts = pa.Table.from_pylist(PROMPTS)
    for params, table, match in (
        ({**base, "rewardModel": "nope"}, prompts, "neither a deployment nor a registered reward model"),
        ({**base, "rewardModel": "good_rm"}, pa.table({"question": ["q"]}), "missing prompt"),
    ):
        with pytest.raises(ConfigError, match=match):
            jobs.submit(task, task.parse_options(params), params, table)
    assert jobs.catalog.jobs() == []


def test_sql_refuses_ppo_without_a_reward_model_before_any_job(tmp_path, monkeypatch, tiny_models):
    from byzer_like import ByzerLLM
    from byzer_like.session import Session

    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    client = ByzerLLM(workspace=tmp_path)
    s = Session(client, progress=False)
    s.put("qs", pa.Table.from_pylist(PROMPTS))
    base = f'localModelDir="{tiny_models["llama"]}" and inputTable="qs"'
    s.sql("!byzerllm setup ppo;")
    with pytest.raises(ConfigError, match=r'PPO needs a reward model.*rewardModel='):
        s.sql(f'run command as LLM.`` where pretrainedModelType="llama" and {base};')
    with pytest.raises(ConfigError, match=r"rewardModel='rm_gone' is neither a deployment nor a registered reward"):
        s.sql(f'run command as LLM.`` where pretrainedModelType="ppo/llama" and {base} and rewardModel="rm_gone";')
    with pytest.raises(ConfigError, match=r"rewardModel"):
        client.ppo(PROMPTS, model_path=tiny_models["llama"], pretrained_model_type="llama")
    # no job recorded, and no cluster started for this workspace (another test's cluster may be joined already)
    assert client.catalog.jobs() == [] and cluster.head_info(client.runtime.workspace) is None
    s.close()


# -- a run through the job's runner, in-process ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_rm(tiny_models, tmp_path_factory) -> str:
    """A LoRA reward model trained for 3 steps on the tiny llama (in-process), that likes long answers."""
    from byzer_like_models.llama import plugin

    d = tmp_path_factory.mktemp("ppo-rm")
    pq.write_table(pa.Table.from_pylist(PAIRS), d / "input.parquet")
    base = str(tiny_models["llama"])
    out = plugin.rm_train([str(d / "input.parquet")], {
        "pretrainedModelType": "rm/llama", "localModelDir": base, "maxSteps": "3",
        "byzer.model_dir": base, "byzer.output_dir": str(d / "model"), "byzer.run_dir": str(d)}, {})
    return out["model_dir"]


def test_a_ppo_job_logs_kl_and_reward_per_step_and_registers_an_adapter(tiny_models, tiny_rm, tmp_path, monkeypatch):
    from byzer_like.catalog import Catalog
    from byzer_like.train.jobs import Jobs
    from byzer_like.train.runner import LOG_FILE, run_job
    from byzer_like.workspace import Workspace

    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    ws = Workspace.from_env(str(tmp_path))
    Catalog(ws).register_model("tiny_rm", kind="reward", path=tiny_rm, base_model=str(tiny_models["llama"]),
                               model_type="llama", method="lora", params={}, metrics={}, job_id=None)
    # a detached job, its runner run here in-process instead of on Ray Jobs
    jobs = Jobs(ws, connect=lambda: pytest.fail("a detached submit joins no cluster"), deployed=Deployed({}))
    monkeypatch.setattr(jobs, "_launch", lambda job_id, **kw: run_job(str(ws.root), job_id))
    params = {"pretrainedModelType": "ppo/llama", "localModelDir": str(tiny_models["llama"]), "rewardModel": "tiny_rm",
              "outputTable": "tiny_ppo", "maxSteps": "2", "numGenerations": "2", "maxNewTokens": "8",
              "loggingSteps": "1", "learningRate": "1e-3", "detached": "true"}
    task = tasks.get("ppo")
    job = jobs.submit(task, task.parse_options(params), params, pa.Table.from_pylist(PROMPTS))
    assert job["state"] == "SUCCEEDED", job
    assert job["options"]["reward_model_dir"] == tiny_rm  # resolved at submit, stored with the job

    m = job["metrics"]
    assert m["steps"] == 2 and m["train_rows"] == 4 and m["rollouts_scored"] == 8  # 2 steps x 2 prompts x 2 answers
    assert math.isfinite(m["first_reward"]) and math.isfinite(m["final_reward"]) and math.isfinite(m["kl"])
    history = jobs.catalog.metric_history(job["id"])
    assert [h["step"] for h in history if "kl" in h and "reward" in h] == [1, 2]
    log = (Path(job["run_dir"]) / LOG_FILE).read_text()
    assert "step 2/2" in log and " reward=" in log and " kl=" in log
    assert Path(m["loss_curve"]).is_file()

    entry = jobs.catalog.model("tiny_ppo")
    assert entry.kind == "adapter" and entry.base_model == str(tiny_models["llama"])
    assert Path(entry.path, "adapter_model.safetensors").is_file()


# -- the real small model (-m real_model) ------------------------------------------------------------------------
SAMPLES = 4  # answers sampled per held-out question


def _sampled_answers(model_dir: str, questions: list[str], adapter: str | None = None) -> list[tuple[str, str]]:
    """(question, answer) for SAMPLES answers (32 tokens at most, temperature 1 as in the rollouts, seed 0) to each
    question by the model in `model_dir`, with the LoRA `adapter` over it when given: what the policy says, whose
    mean reward is what RL raises (the greedy answer alone can be at the reward's top before training)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    torch.manual_seed(0)
    out = []
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.inference_mode():
            gen = model.generate(**ids, max_new_tokens=32, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=SAMPLES, pad_token_id=tok.eos_token_id)
        out += [(q, tok.decode(g[ids["input_ids"].shape[1]:], skip_special_tokens=True)) for g in gen]
    return out


@pytest.mark.real_model
@pytest.mark.real_train
@pytest.mark.timeout(2400)
def test_ppo_raises_smollm2s_mean_reward_on_held_out_prompts(smollm2_dir, tmp_path):
    """A reward model of SmolLM2 trained on capital-question pairs (the right answer in a sentence over a
    refusal, an off-topic reply and a wrong capital); PPO against it on 20 questions raises the reward the
    reward back end's `score` gives the policy's answers (4 sampled per question) to 10 others."""
    from test_reward import _capital_pairs

    from byzer_like.backends.reward import plugin as reward_backend
    from byzer_like_models.llama import plugin

    rows = [json.loads(x) for x in (Path(__file__).parent / "fixtures" / "capitals_qa.jsonl").read_text().splitlines()
            if x.strip()]
    train, held = rows[:20], rows[20:]
    base = str(smollm2_dir)

    def call(entry: str, folder: Path, table: list[dict], keys: dict, options: Any = None) -> dict:
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(table), folder / "input.parquet")
        params = {"localModelDir": base, **keys, "byzer.model_dir": base, "byzer.output_dir": str(folder / "model"),
                  "byzer.run_dir": str(folder)}
        if options is not None:
            params["byzer.options"] = json.dumps(options.model_dump(mode="json"))
        return getattr(plugin, entry)([str(folder / "input.parquet")], params, {})

    rm = call("rm_train", tmp_path / "rm", _capital_pairs(train, train),
              {"pretrainedModelType": "rm/llama", "learningRate": "3e-4", "epochs": "2", "batchSize": "4"})
    keys = {"pretrainedModelType": "ppo/llama", "localModelDir": base, "rewardModel": "smol_rm", "maxSteps": "30",
            "numGenerations": "4", "batchSize": "8", "maxNewTokens": "24", "learningRate": "5e-5", "beta": "0.02",
            "loggingSteps": "5", "loraR": "16", "loraAlpha": "32"}
    opts = PpoOptions.from_params(keys).model_copy(update={"reward_model_dir": rm["model_dir"]})
    out = call("ppo_train", tmp_path / "ppo", [{"prompt": r["instruction"]} for r in train], keys, opts)
    assert out["kind"] == "adapter" and out["metrics"]["steps"] == 30, out

    questions = [r["instruction"] for r in held]
    model, tok = reward_backend.init_model(rm["model_dir"], {}, {})

    def mean_reward(answers: list[tuple[str, str]]) -> float:
        scores = reward_backend.score(model, tok, [{"instruction": q, "response": a} for q, a in answers])
        return sum(scores) / len(scores)

    before = mean_reward(_sampled_answers(base, questions))
    after = mean_reward(_sampled_answers(base, questions, adapter=out["model_dir"]))
    print(f"ppo: mean reward of the held-out answers {before:.3f} -> {after:.3f}; {out['metrics']}")
    assert after > before, (before, after, out["metrics"])
