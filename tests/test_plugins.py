"""The plugin contract and registry, and the built-in Hugging Face plugins on real tiny models (no Ray)."""
import json
import shutil

import pytest

from byzer_like.errors import ModelDirError, PluginError, UnknownPluginError
from byzer_like.plugins import registry
from byzer_like.plugins.contract import ModelPlugin
from byzer_like.tasks import split_model_type

FAMILIES = ("llama", "qwen2", "gpt2")


def req(ins, **kw):
    base = {"ins": ins, "his": [], "max_length": None, "max_new_tokens": 12, "top_p": 0.95, "temperature": 0.0,
            "kwargs": {}}
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def loaded(tiny_models):
    out = {}
    for family in FAMILIES:
        plugin = registry.load(family)
        model, tok = plugin.init_model(str(tiny_models[family]), {}, {"max_batch_size": "8"})
        out[family] = (plugin, model, tok)
    return out


def test_builtins_are_registered_through_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"auto", "llama", "qwen2", "gpt2"} <= names
    assert set(registry.available()) >= names
    for name in names:
        assert isinstance(registry.load(name).target, ModelPlugin)


def test_unknown_type_lists_known_ones():
    with pytest.raises(UnknownPluginError) as e:
        registry.load("llama9")
    assert "llama9" in str(e.value) and "qwen2" in str(e.value) and "gpt2" in str(e.value)


@pytest.mark.parametrize(
    "value, expected",
    [("llama", (None, "llama")), ("sft/llama", ("sft", "llama")), ("sfft/qwen2", ("sfft", "qwen2")),
     ("custom/auto", (None, "custom/auto")), (" gpt2 ", (None, "gpt2"))],
)
def test_split_model_type(value, expected):
    assert split_model_type(value) == expected


def test_plugin_missing_stream_chat_is_named():
    registry.register("broken", "broken_plugin", replace=True)
    with pytest.raises(PluginError, match="does not provide stream_chat") as e:
        registry.load("broken")
    assert "broken_plugin" in str(e.value)


def test_plugin_module_that_does_not_import():
    registry.register("missing_module", "no_such_module_xyz", replace=True)
    with pytest.raises(PluginError, match="cannot be imported"):
        registry.load("missing_module")


def test_register_refuses_bad_names_and_silent_replacement():
    with pytest.raises(PluginError):
        registry.register("a/b", "x")
    with pytest.raises(PluginError, match="already registered"):
        registry.register("llama", "somewhere.else")


def test_byzer_style_plugin_works_unchanged(tiny_models):
    registry.register("byzer_style", "byzer_style_plugin", replace=True)
    plugin = registry.load("byzer_style")
    model, tok = plugin.init_model(str(tiny_models["llama"]), {}, {})
    items = list(plugin.stream(model, tok, req("hello")))
    text, meta = items[-1]
    assert text.startswith("[byzer-style]") and meta["input_tokens"] > 0
    assert "generation_s" in meta  # timing filled in by byzer-like
    batch = plugin.batch(model, tok, [req("a"), req("b")])  # no batch_chat: one stream_chat per request
    assert [b["output"].startswith("[byzer-style]") for b in batch] == [True, True]


@pytest.mark.parametrize("family", FAMILIES)
def test_stream_yields_text_so_far_token_by_token(loaded, family):
    plugin, model, tok = loaded[family]
    items = list(plugin.stream(model, tok, req("tell me a story", max_new_tokens=16)))
    texts = [t for t, _ in items]
    assert len(items) > 2
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    meta = items[-1][1]
    assert meta["output_tokens"] <= 16 and meta["input_tokens"] > 3
    assert meta["finish_reason"] in ("stop", "length") and meta["time_to_first_token_s"] is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_one_by_one_greedy(loaded, family):
    plugin, model, tok = loaded[family]
    reqs = [req("question " * (1 + i % 4) + str(i), max_new_tokens=10) for i in range(12)]
    batch = plugin.batch(model, tok, reqs)
    singles = [list(plugin.stream(model, tok, r))[-1] for r in reqs]
    assert [b["output"] for b in batch] == [s[0] for s in singles]
    for key in ("input_tokens", "output_tokens", "finish_reason"):
        assert [b["metadata"][key] for b in batch] == [s[1][key] for s in singles], key
    assert max(b["metadata"]["batch_size"] for b in batch) == 8  # max_batch_size from sys_conf


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("extra", [{}, {"min_new_tokens": 6}, {"stop": ["a"]}], ids=["greedy", "min_new", "stop"])
def test_a_batch_shrinks_as_its_rows_end_with_the_answers_of_one_generate(loaded, family, extra, monkeypatch):
    from byzer_like.backends.hf import CausalLMPlugin

    plugin, model, tok = loaded[family]
    reqs = [req("question " * (1 + i % 5) + str(i), max_new_tokens=2 + 3 * i, kwargs=dict(extra)) for i in range(8)]
    sizes = []
    generate = CausalLMPlugin._generate

    def counted(self, model, tokenizer, input_ids, *args, **kwargs):
        sizes.append(int(input_ids.shape[0]))
        return generate(self, model, tokenizer, input_ids, *args, **kwargs)

    monkeypatch.setattr(CausalLMPlugin, "_generate", counted)
    shrunk = plugin.batch(model, tok, reqs)
    shrunk_sizes, sizes[:] = list(sizes), []

    def one_generate(self, model, tokenizer, ids, mask, rows):  # every row runs to the longest budget
        out = self._generate(model, tokenizer, ids, mask, max(p.budget for p in rows), rows[0].gen, rows[0].stop,
                             rows[0].response_format, adapters=[p.adapter for p in rows])
        return [out[r, ids.shape[1]:].tolist() for r in range(len(rows))]

    monkeypatch.setattr(CausalLMPlugin, "_generate_rows", one_generate)
    whole = plugin.batch(model, tok, reqs)
    assert [r["output"] for r in shrunk] == [r["output"] for r in whole]
    for key in ("output_tokens", "finish_reason"):
        assert [r["metadata"][key] for r in shrunk] == [r["metadata"][key] for r in whole], key
    assert sizes == [8]
    if not extra.get("stop"):  # budgets 2..23 end rows at different steps: the batch shrank
        assert shrunk_sizes[0] == 8 and len(shrunk_sizes) > 2 and shrunk_sizes == sorted(shrunk_sizes, reverse=True)


def test_max_length_counts_prompt_and_answer(loaded):
    plugin, model, tok = loaded["llama"]
    first = list(plugin.stream(model, tok, req("hi", max_new_tokens=None)))[-1][1]
    n_in = first["input_tokens"]
    meta = list(plugin.stream(model, tok, req("hi", max_new_tokens=None, max_length=n_in + 5)))[-1][1]
    assert meta["output_tokens"] <= 5


def test_prompt_too_long_is_a_request_error(loaded):
    plugin, model, tok = loaded["llama"]
    out = plugin.batch(model, tok, [req("word " * 1000), req("short")])
    assert out[0]["error_code"] == "prompt_too_long" and "max_length" in out[0]["error"]
    assert "output" in out[1]  # the other request is unaffected


def test_stop_strings_cut_the_answer(loaded):
    plugin, model, tok = loaded["llama"]
    full = list(plugin.stream(model, tok, req("abc", max_new_tokens=24)))[-1][0]
    assert len(full) > 2
    stop = full[len(full) // 2:len(full) // 2 + 2]
    first_hit = full.find(stop)
    streamed = list(plugin.stream(model, tok, req("abc", max_new_tokens=24, kwargs={"stop": [stop]})))
    texts = [t for t, _ in streamed]
    assert texts[-1] == full[:first_hit] and streamed[-1][1]["finish_reason"] == "stop"
    assert all(stop not in t for t in texts)
    batched = plugin.batch(model, tok, [req("abc", max_new_tokens=24, kwargs={"stop": stop})])[0]
    assert batched["output"] == full[:first_hit]


def test_unknown_generation_options_are_reported_not_fatal(loaded):
    plugin, model, tok = loaded["qwen2"]
    meta = list(plugin.stream(model, tok, req("hi", kwargs={"image": "x.png"})))[-1][1]
    assert meta["ignored_options"] == ["image"]


def test_sampling_with_seed_is_repeatable(loaded):
    plugin, model, tok = loaded["gpt2"]
    r = req("once upon", temperature=0.9, max_new_tokens=12, kwargs={"seed": 3})
    assert plugin.batch(model, tok, [r])[0]["output"] == plugin.batch(model, tok, [r])[0]["output"]


def test_byzer_role_names_build_a_plain_dialogue(loaded):
    plugin, model, tok = loaded["llama"]
    prompt = plugin.target.build_prompt(tok, "q", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                        {"user_role": "User", "assistant_role": "Assistant", "system_msg": "S"})
    assert prompt == "S\nUser:a\nAssistant:b\nUser:q\nAssistant:"


def test_embedding_is_normalised(loaded):
    plugin, model, tok = loaded["llama"]
    v = plugin.embed(model, tok, "hello world")
    assert len(v) == model.config.hidden_size
    assert abs(sum(x * x for x in v) - 1.0) < 1e-4
    assert v != plugin.embed(model, tok, "something else")


def test_meta_describes_the_model(loaded):
    plugin, model, tok = loaded["gpt2"]
    meta = plugin.meta(model, tok)
    assert meta["family"] == "gpt2" and meta["context_length"] == model.config.n_positions
    assert meta["lora_target_modules"] == ["c_attn", "c_proj"] and meta["num_parameters"] > 0


def test_training_entry_points_check_their_arguments():
    from byzer_like.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sft_train expects data_refs = \[path of the input table"):
        registry.load("llama").target.sft_train([], {}, {})
    with pytest.raises(ConfigError, match=r"sfft_train needs train_params\['byzer.model_dir'\]"):
        registry.load("llama").target.sfft_train(["t.parquet"], {}, {})


# -- model directory checks, before anything is loaded -------------------------------------------------
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_model_dir_checks(tiny_models, tmp_path):
    llama = registry.load("llama")
    with pytest.raises(ModelDirError, match="does not exist"):
        llama.check_model_dir(str(tmp_path / "nope"), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no config.json"):
        llama.check_model_dir(str(tmp_path / "empty"), {})
    with pytest.raises(ModelDirError, match="'gpt2' model"):
        llama.check_model_dir(str(tiny_models["gpt2"]), {})
    registry.load("auto").check_model_dir(str(tiny_models["gpt2"]), {})  # auto takes any family


def test_pickle_weights_refused_by_default(tiny_models, tmp_path):
    d = _copy(tiny_models["llama"], tmp_path / "pickled")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelDirError, match="pickle"):
        registry.load("llama").check_model_dir(str(d), {})
    registry.load("llama").check_model_dir(str(d), {"allow_pickle_weights": "true"})


def test_remote_code_refused_by_default(tiny_models, tmp_path):
    d = _copy(tiny_models["llama"], tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="trust_remote_code"):
        registry.load("llama").init_model(str(d), {}, {})


@pytest.mark.parametrize(
    "params, field, expected",
    [({"load_in_8bit": "true"}, "quantization", "8bit"), ({"load_in_4bit": "true"}, "quantization", "4bit"),
     ({"dtype": "bfloat16"}, "dtype", "bfloat16")],
)
def test_quantized_and_half_precision_loading(tiny_models, params, field, expected):
    """bitsandbytes 8-bit / 4-bit (nf4) and bfloat16 load and generate on the CPU."""
    plugin = registry.load("llama")
    model, tok = plugin.init_model(str(tiny_models["llama"]), params, {})
    assert plugin.meta(model, tok)[field] == expected
    out = plugin.batch(model, tok, [req("hello", max_new_tokens=4)])[0]
    assert out["metadata"]["output_tokens"] > 0


def test_stream_and_batch_agree_without_length_options(loaded):
    """With neither max_length nor max_new_tokens, both paths use the same default answer budget."""
    plugin, model, tok = loaded["llama"]
    r = req("default budget", max_new_tokens=None)
    assert list(plugin.stream(model, tok, r))[-1][0] == plugin.batch(model, tok, [r])[0]["output"]
