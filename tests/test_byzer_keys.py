"""Every key Byzer's statements accept (issue 23, item 3): each scenario runs the real option models, the
real deploy spec (registry, workspace, a tiny real model) and, for the statements, the SQL session."""
from __future__ import annotations

from pathlib import Path

import pytest

from byzer_like.catalog import Catalog
from byzer_like.config import ConvertOptions, DeployOptions, EvalOptions, MergeOptions, QuantizeOptions, SetupConfig
from byzer_like.errors import UnknownOptionError, WorkspacePathError, one_edit_apart, own_keys
from byzer_like.plugins import registry
from byzer_like.runtime.spec import DeploySpec
from byzer_like.workspace import Workspace


@pytest.mark.parametrize("a, b, want", [
    ("num_wrkers", "num_workers", True), ("numGpu", "num_gpus", True), ("abdc", "abcd", True),
    ("num_worker", "num_workers", True), ("OWNER", "mode", False), ("colour", "num_workers", False),
    ("mode", "mode", False), ("ab", "abcd", False),
])
def test_one_edit_apart(a, b, want):
    assert one_edit_apart(a, b) is want


def test_custom_setup_keys_reach_sys_conf_and_typos_stay_errors():
    s = SetupConfig().with_values({"OWNER": "alice"}).with_values({"num_workers": "2", "runIn": "driver"})
    conf = s.sys_conf()
    assert conf["OWNER"] == "alice" and conf["runIn"] == "driver" and conf["num_workers"] == "2"
    # the replicas read the setup back from its dump: the custom keys travel with it
    assert SetupConfig.model_validate(s.model_dump(mode="json")).sys_conf()["OWNER"] == "alice"
    with pytest.raises(UnknownOptionError, match="did you mean 'num_workers'"):
        SetupConfig().with_values({"num_wrkers": "2"})


@pytest.mark.parametrize("model, base", [
    (DeployOptions, {"pretrainedModelType": "llama", "udfName": "x"}),
    (MergeOptions, {"modelTable": "a", "outputTable": "b"}),
    (ConvertOptions, {"sourcePath": "m.gguf", "outputTable": "b"}),
    (QuantizeOptions, {"modelTable": "a", "outputTable": "b", "method": "bnb-int8"}),
    (EvalOptions, {"udfName": "x"}),
])
def test_local_path_prefix_is_accepted_on_every_action(model, base):
    opts = model.parse({**base, "localPathPrefix": "/tmp/byzerllm"}, where="action")
    assert opts.local_path_prefix == "/tmp/byzerllm"


@pytest.fixture()
def deploy_env(workspace, tiny_models):
    ws = Workspace(workspace)
    return dict(setup=SetupConfig(), workspace=ws, catalog=Catalog(ws)), str(tiny_models["llama"])


def test_infer_with_local_path_prefix_builds_and_names_ignored_keys(deploy_env, workspace):
    env, model_dir = deploy_env
    spec = DeploySpec.build({"action": "infer", "pretrainedModelType": "llama", "localModelDir": model_dir,
                             "udfName": "p", "localPathPrefix": str(workspace / "infer" / "jobs"),
                             "colour": "red"}, **env)
    assert spec.infer_params["colour"] == "red" and spec.ignored == ("colour",)
    assert "local_path_prefix" in spec.infer_params and "localPathPrefix" not in spec.requested
    with pytest.raises(WorkspacePathError):
        DeploySpec.build({"pretrainedModelType": "llama", "localModelDir": model_dir, "udfName": "p",
                          "localPathPrefix": "/etc/elsewhere"}, **env)
    with pytest.raises(UnknownOptionError, match="did you mean 'udfName'"):
        DeploySpec.build({"pretrainedModelType": "llama", "localModelDir": model_dir, "udfNam": "p"}, **env)


def test_a_plugins_own_keys_reach_its_infer_params_undeclared(deploy_env):
    env, model_dir = deploy_env
    registry.register("byzer_style_keys", "byzer_style_plugin", replace=True)
    spec = DeploySpec.build({"pretrainedModelType": "byzer_style_keys", "localModelDir": model_dir, "udfName": "q",
                             "quantization": "false", "myPluginKnob": "7"}, **env)
    assert spec.infer_params["quantization"] == "false" and spec.infer_params["myPluginKnob"] == "7"
    assert spec.ignored == ()  # a plugin of the user's own may read any key


# -- the key table (docs/byzer_keys.md), generated from the option models -------------------------------------
def test_the_committed_key_table_is_what_the_option_models_generate():
    from byzer_like.session import keys

    page = Path(__file__).resolve().parent.parent / keys.PAGE
    assert page.read_text(encoding="utf-8") == keys.markdown(), (
        "docs/byzer_keys.md is stale: run `python3 dev.py docs-keys` and commit it")


def test_every_field_of_every_model_has_a_row_that_says_what_it_does():
    from byzer_like.session import keys

    for _title, _how, entry in keys.SECTIONS:
        model = keys.model_of(entry)
        rows = keys.rows(model)
        shown = {r["key"] for r in rows}
        fields = [n for n in model.model_fields if n not in model.HIDDEN and n != "action"]
        assert len(rows) == len(fields) and all(r["what"] for r in rows), model.__name__
        for r in rows:  # the key shown and every "also" name set the field
            assert r["key"] in model.option_names() and all(a in model.option_names() for a in r["also"])
        assert len(shown) == len(rows)


# the keys the Byzer-LLM guide (shared seed) writes, by the statement they belong to
SEED_KEYS = [
    ("!byzerllm setup", "num_gpus"), ('action="infer"', "pretrainedModelType"), ('action="infer"', "localModelDir"),
    ('action="infer"', "reconnect"), ('action="infer"', "udfName"), ('action="infer"', "modelTable"),
    ("sft", "localPathPrefix"), ("sft", "pretrainedModelType"), ("sft", "localModelDir"), ("sft", "model"),
    ("sft", "inputTable"), ("sft", "outputTable"), ("sft", "detached"), ("sft", "max_seq_length"),
    ("sfft", "localPathPrefix"), ("sfft", "localDataDir"), ("sfft", "detached"), ("sfft", "keepPartitionNum"),
    ("sfft", "deepspeedConfig"), ("sfft", "inputTable"), ("sfft", "outputTable"), ("sfft", "model"),
    ("sfft", "max_length"), ("sfft", "setup_nccl_socket_ifname_by_ip"),
]


@pytest.mark.parametrize("section, key", SEED_KEYS)
def test_every_key_of_byzers_guide_is_a_key_of_its_statement(section, key):
    from byzer_like.session import keys

    model = keys.model_of(next(e for t, _, e in keys.SECTIONS if t == section))
    assert key in model.option_names()


def test_byzers_keys_with_no_effect_are_accepted_and_handed_on():
    from byzer_like.session import keys

    for key, where, _why in keys.BYZER_ONLY:
        given = key.replace("<name>", "gpu_a100")
        if where == "!byzerllm setup":
            assert SetupConfig().with_values({given: "x"}).sys_conf()[given] == "x"
        else:  # a deploy key no option names reaches the plugin's infer_params (runtime/spec.py)
            assert own_keys({given: "x"}, DeployOptions.option_names()) == [given], key
        assert f"`{key}`" in keys.markdown()


def test_setups_valid_options_hide_its_internal_custom_field():
    with pytest.raises(UnknownOptionError) as e:
        SetupConfig().with_values({"num_wrkers": "2"})
    names = [v.split(" (or ")[0] for v in e.value.valid]  # `num_workers (or max_concurrency)`
    assert "custom" not in names and "num_workers" in names
    assert "custom" not in SetupConfig.option_names()
    assert SetupConfig().with_values({"custom": "mine"}).sys_conf()["custom"] == "mine"  # a user's own key
