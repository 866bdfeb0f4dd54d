"""More ways to train, in-process on the tiny llama (no Ray): freeze tuning (which weights change), prefix tuning
(the saved adapter, served on its base by the transformers plugin exactly as peft's own generate answers, and
refused where it cannot be served), sharegpt rows, named templates, gradient checkpointing and NEFTune reaching
the Trainer, and the typed errors of bad input before anything trains. The SQL path (train, register, deploy
with modelTable, answer) is tests/test_train.py's heavy test_freeze_prefix_and_sfft_lora_deploy_by_model_table."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like.errors import ConfigError, NotSupportedError
from byzer_like.train import data as D
from byzer_like.train.options import SfftOptions, SftOptions
from byzer_like.train.templates import TEMPLATES

ROWS = [{"conversations": [{"from": "human", "value": f"what is {i} plus one?"}, {"from": "gpt", "value": str(i + 1)}]}
        for i in range(8)]
PROMPTS = ["def add(a, b):", "import os", "the quick brown fox", "class Point:", "for i in range(3):"]


def sft_opts(base: Path, **extra) -> SftOptions:
    return SftOptions.from_params({"pretrainedModelType": "sft/llama", "localModelDir": str(base), "maxSteps": "2",
                                   "batchSize": "4", "sft.int.max_seq_length": "48", **extra})


def train(base: Path, tmp: Path, rows=ROWS, **extra) -> dict:
    """Two optimizer steps of sft in this process; the result of sft_train (model_dir, kind, metrics)."""
    from byzer_like.train.sft import sft_train

    tmp.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp / "input.parquet")
    return sft_train(model_dir=str(base), data_path=str(tmp / "input.parquet"), output_dir=str(tmp / "model"),
                     run_dir=str(tmp), options=sft_opts(base, **extra), target_modules=("q_proj", "v_proj"))


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def prefix_run(tiny_models, tmp_path_factory):
    """A prefix-tuning adapter trained for two steps on the tiny llama, at a high learning rate so that its
    answers differ from the base's."""
    tmp = tmp_path_factory.mktemp("prefix")
    out = train(tiny_models["llama"], tmp, method="prefix", numVirtualTokens="6", learningRate="0.5")
    return Path(out["model_dir"]), out


def test_freeze_trains_only_the_last_layers_and_saves_a_whole_model(tiny_models, tmp_path):
    base = tiny_models["llama"]  # 2 decoder layers
    out = train(base, tmp_path / "all", method="freeze", numLayerTrainable="1", learningRate="0.01")
    assert out["kind"] == "model" and out["metrics"]["steps"] == 2
    before, after = weights(base), weights(Path(out["model_dir"]))
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.startswith("model.layers.1.") for k in changed), changed
    assert any(".mlp." in k for k in changed) and any(".self_attn." in k for k in changed)

    # only the mlp of the last layer, plus the final norm outside the layers
    out = train(base, tmp_path / "mlp", method="freeze", numLayerTrainable="1", freezeTrainableModules="mlp",
                freezeExtraModules="norm", learningRate="0.01")
    after = weights(Path(out["model_dir"]))
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.startswith("model.layers.1.mlp.") or k == "model.norm.weight" for k in changed), changed
    assert "model.norm.weight" in changed


def test_freeze_plan_names_the_parameters_and_refuses_what_the_model_lacks(tiny_models):
    from byzer_like.train.methods import check_method, freeze_plan, meta_model

    model = meta_model(str(tiny_models["gpt2"]))  # gpt2's layers are transformer.h
    plan = freeze_plan(model, 1)
    assert plan and all(n.startswith("transformer.h.1.") for n in plan)
    assert freeze_plan(model, 2, ["mlp"]) == [n for n, _ in model.named_parameters() if ".mlp." in n]
    base = tiny_models["llama"]
    with pytest.raises(ConfigError, match=r"numLayerTrainable=3 is more than the 2 decoder layers.*at most 2"):
        check_method(sft_opts(base, method="freeze", numLayerTrainable="3"), str(base))
    with pytest.raises(ConfigError, match=r"freezeTrainableModules: no module 'mlpp'.*did you mean 'mlp'"):
        check_method(sft_opts(base, method="freeze", freezeTrainableModules="mlpp"), str(base))
    with pytest.raises(ConfigError, match=r"freezeExtraModules: no module 'lm_haed'.*did you mean 'lm_head'"):
        check_method(sft_opts(base, method="freeze", freezeExtraModules="lm_haed"), str(base))


def test_prefix_tuning_saves_a_peft_prefix_adapter(prefix_run, tiny_models):
    adapter, out = prefix_run
    assert out["kind"] == "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == 6
    assert Path(config["base_model_name_or_path"]) == tiny_models["llama"]
    from safetensors.torch import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert list(tensors) == ["prompt_embeddings"]  # the virtual tokens' keys and values, nothing of the base
    assert tensors["prompt_embeddings"].shape[0] == 6


def test_a_prefix_adapter_deploys_on_its_base_and_answers_as_peft_does(prefix_run, tiny_models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from byzer_like.plugins import registry

    adapter, _ = prefix_run
    base = str(tiny_models["llama"])
    plugin = registry.load("llama").target
    requests = [{"ins": p, "temperature": 0.0, "max_new_tokens": 8} for p in PROMPTS]
    model, tok = plugin.init_model(base, {"adapter_dir": str(adapter)}, {})
    batched = [a for a, _ in plugin.batch_chat(model, tok, requests)]
    streamed = [list(plugin.stream_chat(model, tok, p, [], None, 0.9, 0.0, max_new_tokens=8))[-1][0] for p in PROMPTS]
    assert batched == streamed

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter)).eval()
    want = []
    for p in PROMPTS:
        ids = tok(plugin.build_prompt(tok, p, [], {}), return_tensors="pt", add_special_tokens=False)
        g = ref.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=model.byzer_like.stop_ids,
                         pad_token_id=tok.pad_token_id)
        want.append(tok.decode(g[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    assert [a.strip() for a in batched] == [w.strip() for w in want]

    plain, ptok = plugin.init_model(base, {}, {})
    assert [a for a, _ in plugin.batch_chat(plain, ptok, requests)] != batched  # the prefix changes the answers
    score = plugin.score_text(model, tok, [{"text": "def add(a, b): return a + b"}])[0]["logprob"]
    assert score != plugin.score_text(plain, ptok, [{"text": "def add(a, b): return a + b"}])[0]["logprob"]
    assert plugin.get_meta(model, tok)["adapters"] is False  # no adapters per request over it

    with pytest.raises(NotSupportedError, match="prefix-tuning adapter.*modelTable"):
        plugin.load_adapter(plain, str(adapter), "p1")


def test_prefix_adapters_are_refused_where_they_cannot_be_served(prefix_run, tiny_models, tmp_path):
    from byzer_like.catalog import Catalog
    from byzer_like.runtime.adapters import resolve
    from byzer_like.train.sft import merge_adapter
    from byzer_like_models.vllm import families

    adapter, _ = prefix_run
    base = str(tiny_models["llama"])
    catalog = Catalog(tmp_path)
    catalog.register_model("pfx", kind="adapter", path=str(adapter), base_model=base, model_type="llama",
                           method="prefix", params={}, metrics={}, job_id=None)
    with pytest.raises(NotSupportedError, match=r"pfx@v1 is a prefix-tuning adapter.*transformers back end.*"
                                                r"modelTable=\"pfx@v1\""):
        resolve(catalog, "pfx", udf_name="m", meta={"model_dir": base, "adapters": True})
    with pytest.raises(NotSupportedError, match="vLLM serves LoRA adapters only"):
        resolve(catalog, "pfx", udf_name="m", meta={"model_dir": base, "adapters": True, "engine": "vllm"})
    with pytest.raises(NotSupportedError, match="vLLM cannot serve.*infer_backend=transformers"):
        families.llama.check_model_dir(base, {"adapter_dir": str(adapter)})
    with pytest.raises(NotSupportedError, match="not weights that merge"):
        merge_adapter(base, str(adapter), str(tmp_path / "merged"))


def test_prefix_on_a_family_peft_cannot_prefix_is_refused_before_training(tmp_path):
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    from byzer_like.train.methods import check_method

    torch.manual_seed(0)
    MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4)).save_pretrained(
        tmp_path / "mamba")
    with pytest.raises(ConfigError, match=r"peft cannot prefix-tune a 'mamba' model.*use method=\"lora\""):
        check_method(sft_opts(tmp_path / "mamba", method="prefix"), str(tmp_path / "mamba"))


def test_method_options_are_checked_with_what_to_do(tiny_models):
    base = tiny_models["llama"]
    o = sft_opts(base, method="freeze", numLayerTrainable="3", freezeTrainableModules="mlp,self_attn")
    assert (o.num_layer_trainable, o.freeze_trainable_modules, o.trains_adapter()) == (3, ["mlp", "self_attn"], False)
    assert sft_opts(base, method="prefix").num_virtual_tokens == 20 and sft_opts(base, method="prefix").trains_adapter()
    assert sft_opts(base, method="freeze", freezeTrainableModules="all").freeze_trainable_modules is None
    with pytest.raises(ConfigError, match=r"num_layer_trainable is an option of method=\"freeze\""):
        sft_opts(base, numLayerTrainable="4")
    with pytest.raises(ConfigError, match=r"num_virtual_tokens is an option of method=\"prefix\""):
        sft_opts(base, method="freeze", numVirtualTokens="8")
    with pytest.raises(ConfigError, match="gradientCheckpointing cannot go with method=\"prefix\""):
        sft_opts(base, method="prefix", gradientCheckpointing="true")
    with pytest.raises(ConfigError, match=r"unknown template 'chatlm'; did you mean 'chatml'\?"):
        sft_opts(base, template="chatlm")
    # a job's options, stored whole and read back, pass the same checks
    stored = sft_opts(base, method="prefix", numVirtualTokens="8").model_dump(mode="json")
    assert SftOptions.model_validate(stored).num_virtual_tokens == 8
    s = SfftOptions.from_params({"pretrainedModelType": "sfft/llama", "localModelDir": str(base), "method": "lora",
                                 "loraR": "4", "gradientCheckpointing": "true"})
    assert (s.trains_adapter(), s.lora_r, s.gradient_checkpointing, s.registered_method()) == (True, 4, True,
                                                                                            "pretrain-lora")
    assert SfftOptions.from_params({"pretrainedModelType": "sfft/llama", "localModelDir": str(base)}
                                   ).registered_method() == "pretrain"


def test_gradient_checkpointing_and_neftune_reach_the_trainer(tiny_models, tmp_path):
    from byzer_like.train.sft import _training_args

    opts = sft_opts(tiny_models["llama"], gradientCheckpointing="true", neftuneNoiseAlpha="5")
    args = _training_args(opts, tmp_path, train_rows=8, has_eval=False, on_gpu=False)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.neftune_noise_alpha == 5.0
    plain = _training_args(sft_opts(tiny_models["llama"]), tmp_path, train_rows=8, has_eval=False, on_gpu=False)
    assert not plain.activation_checkpointing and plain.neftune_noise_alpha is None


def test_sharegpt_rows_become_chat_messages():
    assert D.sft_form(["conversations"]) == "sharegpt" and D.sft_form(["conversations", "system"]) == "sharegpt"
    rows = [{"conversations": json.dumps([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                          {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]),
             "system": "be brief"},
            {"conversations": [{"from": "system", "value": "own"}, {"from": "user", "value": "q"},
                               {"from": "assistant", "value": "a"}], "system": "ignored: the turns hold one"}]
    assert D.conversations(rows, "sharegpt") == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}],
        [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    ]
    # the conversion on its own (for preference data: a prompt need not end with an answer)
    assert D.sharegpt_messages([{"from": "human", "value": "x"}]) == [{"role": "user", "content": "x"}]
    # sharegpt turns inside a messages column are read too
    assert D.conversations([{"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}], "chat") == [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    with pytest.raises(ConfigError, match=r"row 1: sharegpt turn from 'function_call' is not one of.*drop tool turns"):
        D.conversations([{"conversations": [{"from": "function_call", "value": "{}"}]}], "sharegpt")
    with pytest.raises(ConfigError, match="row 2: each sharegpt turn needs from and value"):
        D.conversations([ROWS[0], {"conversations": [{"role": "user", "content": "q"}]}], "sharegpt")
    with pytest.raises(ConfigError, match="row 1: the conversation must end with an assistant message"):
        D.conversations([{"conversations": [{"from": "human", "value": "q"}]}], "sharegpt")
    with pytest.raises(ConfigError, match="sharegpt form"):
        D.sft_form(["question", "answer"])


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_renders_turn_by_turn_and_only_answers_are_learnt(tiny_models, name):
    from byzer_like.train.sft import prepare_tokenizer

    tok = prepare_tokenizer(str(tiny_models["llama"]), template=name)
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"},
            {"role": "assistant", "content": "bye"}]
    texts = [tok.apply_chat_template(conv[:i], tokenize=False, add_generation_prompt=gen)
             for i, gen in ((2, True), (3, False), (4, True), (5, False))]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts  # each turn extends the last
    assert "be brief" in texts[0] and "hi" in texts[0] and "hello" not in texts[0]
    ids, labels = D.encode(tok, conv, 512)
    learnt = tok.decode([t for t, lab in zip(ids, labels) if lab != D.IGNORE])
    assert "hello" in learnt and "bye" in learnt and "hi" not in learnt.replace("hello", "") and "again" not in learnt


def test_a_named_template_is_trained_with_and_saved_with_the_adapter(tiny_models, tmp_path):
    from byzer_like.plugins import registry

    out = train(tiny_models["llama"], tmp_path, template="alpaca")
    adapter = Path(out["model_dir"])
    plugin = registry.load("llama").target
    model, tok = plugin.init_model(str(tiny_models["llama"]), {"adapter_dir": str(adapter)}, {})
    assert tok.chat_template == TEMPLATES["alpaca"]
    assert plugin.build_prompt(tok, "what?", [], {}).endswith("### Instruction:\nwhat?\n\n### Response:\n")
