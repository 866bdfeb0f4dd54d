"""Preference training (dpo, orpo, kto through TRL 1.16): the options and their errors, the data forms and
their checks, a short in-process DPO run on a real tiny llama (metrics, adapter, checkpoint and resume), and
bad SQL input refused before any job starts."""
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like import tasks
from byzer_like.errors import ConfigError, UnknownOptionError
from byzer_like.train import preference_data as P
from byzer_like.train.preference_options import DPO_LOSS_TYPES, KTO_LOSS_TYPES, DpoOptions, KtoOptions, OrpoOptions

BASE = {"pretrainedModelType": "dpo/llama", "localModelDir": "m"}
PAIRS = [{"prompt": f"is {n} a colour?", "chosen": "yes" if n in ("red", "blue") else "no",
          "rejected": "no" if n in ("red", "blue") else "yes"}
         for n in ("red", "blue", "cat", "dog", "sun", "car", "pen", "cup")]


# -- options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, keys, match", [
    (DpoOptions, {"beta": "0"}, r"beta.*must be above 0.*beta=\"0.1\""),
    (DpoOptions, {"beta": "-1"}, r"beta must be above 0"),
    (DpoOptions, {"lossType": "sigmod"}, r"unknown loss type 'sigmod'; did you mean 'sigmoid'\? valid ones: sigmoid, hinge"),
    (DpoOptions, {"lossType": "ipo,hinj"}, r"unknown loss type 'hinj'; did you mean 'hinge'"),
    (KtoOptions, {"lossType": "sigmoid"}, r"unknown loss type 'sigmoid'.*valid ones: kto, apo_zero_unpaired"),
    (KtoOptions, {"lossType": "kto,apo_zero_unpaired"}, r"give one loss type"),
    (KtoOptions, {"batchSize": "1"}, r"at least 2 rows per batch"),
    (DpoOptions, {"maxLength": "64", "maxPromptLength": "64"}, r"maxPromptLength=64 leaves no room.*maxLength=64"),
    (OrpoOptions, {"method": "dora"}, r"method.*'lora', 'qlora' or 'full'"),
])
def test_bad_options_say_what_to_do(model, keys, match):
    with pytest.raises(ConfigError, match=match):
        model.from_params({**BASE, **keys})


def test_options_read_byzer_spellings_and_orpo_has_no_loss_type():
    o = DpoOptions.from_params({**BASE, "dpo.float.beta": "0.25", "lossType": "sigmoid, sft", "loraR": "4",
                                "maxPromptLength": "16"})
    assert (o.beta, o.loss_type_names(), o.lora_r, o.max_prompt_length) == (0.25, ["sigmoid", "sft"], 4, 16)
    assert o.lr() == 5e-6 and DpoOptions.from_params({**BASE, "method": "full"}).lr() == 1e-6
    assert KtoOptions.from_params(BASE).batch_size(10) == 2  # sft's rule gives 1; KTO's KL term needs 2
    with pytest.raises(UnknownOptionError, match=r"'lossType'.*valid options:.*beta"):
        OrpoOptions.from_params({**BASE, "lossType": "sigmoid"})


def test_loss_types_are_trls():
    """The names the options accept are TRL 1.16's own (its config's help text lists them)."""
    from trl import DPOConfig, KTOConfig

    dpo_help = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert set(re.findall(r"`'(\w+)'`", dpo_help)) == set(DPO_LOSS_TYPES)
    assert tuple(KTOConfig.__dataclass_fields__["loss_type"].metadata["choices"]) == KTO_LOSS_TYPES


def test_the_task_table_has_the_preference_methods():
    assert {"dpo", "orpo", "kto"} <= set(tasks.SETUP_MODES)
    assert tasks.task_of("llama", "dpo") == ("dpo", "llama")
    assert tasks.split_model_type("kto/qwen2") == ("kto", "qwen2")
    for name in ("dpo", "orpo", "kto"):
        t = tasks.get(name)
        assert t.options_model().kind == name and t.entry_point == f"{name}_train" and callable(t.check_function())
    from byzer_like_models.llama import plugin

    assert all(callable(getattr(plugin, f"{n}_train")) for n in ("dpo", "orpo", "kto"))


# -- data forms ---------------------------------------------------------------------------------------------
USER = [{"role": "user", "content": "hi?"}]


@pytest.mark.parametrize("row, prompt", [
    ({"prompt": "hi?", "chosen": "a", "rejected": "b"}, USER),
    ({"prompt": "hi?", "system": "be brief", "chosen": "a", "rejected": "b"},
     [{"role": "system", "content": "be brief"}, *USER]),
    ({"prompt": json.dumps(USER), "chosen": "a", "rejected": "b"}, USER),
    ({"instruction": "hi?", "input": "", "chosen": "a", "rejected": "b"}, USER),
    ({"instruction": "translate", "input": "chat", "history": [["q", "r"]], "chosen": "a", "rejected": "b"},
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"},
      {"role": "user", "content": "translate\nchat"}]),
    ({"messages": json.dumps(USER), "chosen": json.dumps([{"role": "assistant", "content": "a"}]),
      "rejected": "b"}, USER),
])
def test_pair_forms_become_trl_conversations(row, prompt):
    (ex,) = P.examples("dpo", pa.Table.from_pylist([row]))
    assert ex == {"prompt": prompt, "chosen": [{"role": "assistant", "content": "a"}],
                  "rejected": [{"role": "assistant", "content": "b"}]}


@pytest.mark.parametrize("task, rows, match", [
    ("dpo", [{"instruction": "q", "output": "a"}],
     r"missing chosen, rejected \(an sft table.*Accepted forms: prompt, chosen, rejected.*instruction.*messages"),
    ("orpo", [{"question": "q", "chosen": "a", "rejected": "b"}], r"missing prompt\. Accepted forms"),
    ("dpo", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "same", "rejected": "same "},
             {"prompt": "q3", "chosen": "x", "rejected": "x"}],
     r"2 of 3 rows have the chosen answer equal to the rejected one \(rows 2, 3\).*chosen != rejected"),
    ("dpo", [{"prompt": "q", "chosen": None, "rejected": "b"}], r"row 1: chosen is NULL"),
    ("dpo", [{"messages": json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
              "chosen": "a", "rejected": "b"}], r"row 1: the prompt must end with a user message"),
    ("kto", [{"prompt": "q", "chosen": "a", "rejected": "b"}], r"missing completion, label \(a pair table"),
    ("kto", [{"prompt": "q", "completion": "a", "label": "maybe"}], r"row 1: label must be a boolean"),
])
def test_bad_tables_name_the_accepted_forms(task, rows, match):
    with pytest.raises(ConfigError, match=match):
        P.examples(task, pa.Table.from_pylist(rows))


@pytest.mark.parametrize("labels, expected", [
    ([True, False], [True, False]), ([1, 0], [True, False]), (["yes", "False", "t", "0"], [True, False, True, False]),
])
def test_kto_labels_are_booleans(labels, expected):
    rows = [{"prompt": "q", "completion": "a", "label": v} for v in labels]
    assert [e["label"] for e in P.examples("kto", pa.Table.from_pylist(rows))] == expected


def test_check_renders_prompts_with_the_models_template(tiny_models):
    from byzer_like.plugins import registry

    plugin, base = registry.load("llama"), str(tiny_models["llama"])
    table = pa.Table.from_pylist(PAIRS)
    P.check_dpo(DpoOptions.from_params(BASE), table, base, plugin, None)
    with pytest.raises(ConfigError, match=r"maxLength=8 is too small.*raise maxLength above \d+ or set maxPromptLength"):
        P.check_dpo(DpoOptions.from_params({**BASE, "maxLength": "8"}), table, base, plugin, None)
    P.check_dpo(DpoOptions.from_params({**BASE, "maxLength": "8", "maxPromptLength": "4"}), table, base, plugin, None)
    kto = pa.Table.from_pylist([{"prompt": "q", "completion": "a", "label": True}])
    with pytest.raises(ConfigError, match="at least 2 rows"):
        P.check_kto(KtoOptions.from_params({**BASE, "pretrainedModelType": "kto/llama"}), kto, base, plugin, None)


# -- a real run -----------------------------------------------------------------------------------------------
def _call(plugin, task, run: Path, base: Path, resume: bool = False, **keys) -> dict:
    params = {"pretrainedModelType": f"{task}/llama", "localModelDir": str(base), **keys,
              "byzer.model_dir": str(base), "byzer.output_dir": str(run / "model"), "byzer.run_dir": str(run),
              "byzer.resume": "true" if resume else "false"}
    return getattr(plugin, f"{task}_train")([str(run / "input.parquet")], params, {})


@pytest.mark.timeout(180)
def test_dpo_run_logs_rewards_saves_an_adapter_and_resumes(tiny_models, tmp_path, capsys):
    from byzer_like_models.llama import plugin

    base = tiny_models["llama"]
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "input.parquet")
    keys = {"batchSize": "4", "loggingSteps": "1", "learningRate": "1e-3", "checkpointSteps": "2",
            "maxPromptLength": "6", "loraTargetModules": "all-linear"}
    first = _call(plugin, "dpo", tmp_path, base, maxSteps="2", **keys)
    m = first["metrics"]
    assert first["kind"] == "adapter" and Path(first["model_dir"], "adapter_model.safetensors").is_file()
    assert m["steps"] == 2 and m["train_rows"] == 8 and m["resumed_from_step"] == 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert isinstance(m[key], float), key
    assert m["rewards/margins"] > 0  # a step at lr 1e-3 moves the chosen answers' reward above the rejected ones'
    # the tokens trained on are TRL's own count (what its logs call num_tokens), and their rate over the runtime
    assert m["tokens"] > 0 and m["tokens_per_s"] == pytest.approx(m["tokens"] / m["train_runtime_s"], rel=0.01)
    log = capsys.readouterr().out
    assert re.search(r"\[byzer-like\] step 2/2 .*loss=[\d.]+ .*rewards/margins=[-\d.e]+ rewards/accuracies=", log)
    assert (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()

    resumed = _call(plugin, "dpo", tmp_path, base, resume=True, maxSteps="3", **keys)["metrics"]
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3


@pytest.mark.timeout(120)
def test_orpo_run_counts_the_tokens_it_trains_on(tiny_models, tmp_path, capsys):
    """TRL's ORPO counts no tokens: ours does (prompt + chosen and prompt + rejected, no padding), so an ORPO job's
    metrics and progress say tokens and tokens/s as DPO's do."""
    from byzer_like_models.llama import plugin

    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "input.parquet")
    m = _call(plugin, "orpo", tmp_path, tiny_models["llama"], maxSteps="2", batchSize="4", loggingSteps="1")["metrics"]
    per_pair = 2 * 3  # at least a prompt token and an answer token in each of a pair's two sequences, and more
    assert m["steps"] == 2 and m["tokens"] > 8 * per_pair and m["tokens_per_s"] > 0, m
    rates = [float(x) for x in re.findall(r"\[byzer-like\] step \d/2 .*tokens_per_s=([\d.]+)", capsys.readouterr().out)]
    assert len(rates) == 2 and all(r > 0 for r in rates), rates


def test_prompt_cut_keeps_the_last_tokens(monkeypatch):
    """maxPromptLength: TRL's tokenized prompts keep their last N ids (TRL 1.16 has no such option)."""
    import datasets
    from trl import DPOTrainer

    from byzer_like.train.preference import _prompt_cut_dpo

    cls = _prompt_cut_dpo(DPOTrainer)
    cls.max_prompt_length = 3
    # TRL's own tokenization is replaced by rows already tokenized: only the cut is under test here
    monkeypatch.setattr(DPOTrainer, "_prepare_dataset", lambda self, dataset, *args: dataset)
    ds = datasets.Dataset.from_list([{"prompt_ids": [1, 2, 3, 4, 5], "chosen_ids": [6], "rejected_ids": [7]},
                                     {"prompt_ids": [8, 9], "chosen_ids": [6], "rejected_ids": [7]}])
    out = cls._prepare_dataset(cls.__new__(cls), ds, None, None, "train")
    assert out["prompt_ids"] == [[3, 4, 5], [8, 9]] and out["chosen_ids"] == [[6], [6]]


# -- SQL: bad input refused before a job is recorded -----------------------------------------------------------
def test_sql_refuses_bad_preference_input_before_any_job(tmp_path, monkeypatch, tiny_models):
    from byzer_like import ByzerLLM
    from byzer_like.session import Session

    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    client = ByzerLLM(workspace=tmp_path)
    s = Session(client, progress=False)
    s.put("sfttable", pa.table({"instruction": ["q"], "output": ["a"]}))
    s.put("same", pa.table({"prompt": ["q", "r"], "chosen": ["a", "b"], "rejected": ["a", "c"]}))
    base = f'localModelDir="{tiny_models["llama"]}"'
    s.sql("!byzerllm setup dpo;")
    with pytest.raises(ConfigError, match=r"missing chosen, rejected.*Accepted forms"):
        s.sql(f'run command as LLM.`` where pretrainedModelType="llama" and {base} and inputTable="sfttable";')
    with pytest.raises(ConfigError, match=r"1 of 2 rows have the chosen answer equal to the rejected one \(rows 1\)"):
        s.sql(f'run command as LLM.`` where pretrainedModelType="dpo/llama" and {base} and inputTable="same";')
    with pytest.raises(ConfigError, match=r"did you mean 'ipo'"):
        s.sql(f'run command as LLM.`` where pretrainedModelType="dpo/llama" and {base} and inputTable="same" '
              'and lossType="ipp";')
    with pytest.raises(ConfigError, match=r"beta must be above 0"):
        s.sql(f'run command as LLM.`` where pretrainedModelType="kto/llama" and {base} and inputTable="same" '
              'and beta="0";')
    assert client.catalog.jobs() == []
    s.close()


# -- through SQL on a Ray cluster: a blocking job, registered, deployed, answering --------------------------
@pytest.mark.heavy
@pytest.mark.timeout(420)
def test_dpo_through_sql_registers_an_adapter_that_deploys_and_answers(llm, tiny_models, workspace):
    from byzer_like.session import Session

    s = Session(llm, progress=False)
    s.put("pairs", pa.Table.from_pylist(PAIRS))
    base = tiny_models["llama"]
    try:
        results = s.sql(f"""
            !byzerllm setup dpo;
            run command as LLM.`` where pretrainedModelType="llama" and localModelDir="{base}"
            and inputTable="pairs" and outputTable="pairs_dpo" and maxSteps="3" and batchSize="4"
            and loggingSteps="1" and learningRate="1e-3" and beta="0.1" and detached="false";
            !byzerllm setup single;
            run command as LLM.`` where action="infer" and pretrainedModelType="llama" and modelTable="pairs_dpo"
            and udfName="pairs_dpo_chat";
        """)
        job = results[1].table.to_pylist()[0]
        assert job["state"] == "SUCCEEDED" and job["kind"] == "dpo" and job["model_version"] == 1, job
        metrics = json.loads(job["metrics"])
        assert metrics["steps"] == 3 and "rewards/margins" in metrics and Path(metrics["loss_curve"]).is_file()
        history = llm.jobs.record(job["job_id"])["history"]
        assert [h["step"] for h in history if "rewards/margins" in h] == [1, 2, 3]
        assert "rewards/accuracies=" in llm.jobs.logs(job["job_id"])
        entry = llm.catalog.model("pairs_dpo")
        assert entry.kind == "adapter" and entry.base_model == str(base)
        answer = llm.chat_oai([{"role": "user", "content": PAIRS[0]["prompt"]}], model="pairs_dpo_chat",
                              llm_config={"temperature": 0.0, "max_new_tokens": 4})
        assert isinstance(answer[0].output, str)
    finally:
        if llm.is_model_exist("pairs_dpo_chat"):
            llm.undeploy("pairs_dpo_chat")
        s.close()
