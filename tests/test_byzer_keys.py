"""Every key Byzer's statements accept (issue 23, item 3): each scenario runs the real option models, the
real deploy spec (registry, workspace, a tiny real model) and, for the statements, the SQL session."""
from __future__ import annotations

import pytest

from byzer_like.catalog import Catalog
from byzer_like.config import ConvertOptions, DeployOptions, EvalOptions, MergeOptions, QuantizeOptions, SetupConfig
from byzer_like.errors import UnknownOptionError, WorkspacePathError, one_edit_apart
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
