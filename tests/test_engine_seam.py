"""The engine seam of the plugin contract, without vLLM: a fixture plugin whose engine echoes word by word
(tests/fixtures/plugins/echo_engine_plugin.py) is deployed on the session's cluster; the replica hands it
whole chunks of a select, streams its items, aborts a stream whose caller went away and shows its load.
Also how `infer_backend=vllm` picks the `vllm/<family>` plugins, checked on the driver (no vLLM needed)."""
from __future__ import annotations

import sys
import time

import pytest

from byzer_like.config import SetupConfig
from byzer_like.errors import ConfigError, EngineEnvironmentError, UnsupportedModelTypeError
from byzer_like.plugins import registry

NAME = "seam_echo"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given, backend, expected", [
    ("llama", "vllm", "vllm/llama"),
    ("qwen2", "vllm", "vllm/qwen2"),
    ("custom/auto", "vllm", "vllm/auto"),
    ("llama2", "vllm", "vllm/llama2"),
    ("vllm/gpt2", "vllm", "vllm/gpt2"),
    ("saas/openai", "vllm", "saas/openai"),
    ("llama", "transformers", "llama"),
])
def test_infer_backend_picks_the_vllm_family(given, backend, expected):
    assert registry.with_backend(given, backend) == expected
    plugin = registry.load(expected)  # imports the plugin (not vllm) and checks it
    assert plugin.name == expected


@pytest.mark.timeout(60)
def test_a_plugin_vllm_does_not_serve_is_a_typed_error():
    registry.register("echo_engine", "echo_engine_plugin", replace=True)
    with pytest.raises(UnsupportedModelTypeError, match="infer_backend=transformers"):
        registry.with_backend("echo_engine", "vllm")


@pytest.mark.timeout(60)
def test_a_vllm_deploy_runs_on_the_vllm_environment(tiny_models, workspace, monkeypatch):
    from byzer_like.catalog import Catalog
    from byzer_like.runtime.spec import DeploySpec
    from byzer_like.workspace import Workspace

    ws = Workspace.from_env(workspace)
    setup = SetupConfig().with_values({"infer_backend": "vllm"})
    options = {"pretrainedModelType": "llama", "localModelDir": str(tiny_models["llama"]), "udfName": "v"}
    monkeypatch.setenv("BYZER_LIKE_VLLM_PYTHON", sys.executable)
    spec = DeploySpec.build(options, setup=setup, workspace=ws, catalog=Catalog(ws))
    assert spec.plugin == "vllm/llama" and spec.replica_spec()["runtime_env"] == {"py_executable": sys.executable}
    with pytest.raises(ConfigError, match="bitsandbytes"):
        DeploySpec.build({**options, "load_in_4bit": "true"}, setup=setup, workspace=ws, catalog=Catalog(ws))
    monkeypatch.setenv("BYZER_LIKE_VLLM_PYTHON", str(workspace / "no-such-python"))
    with pytest.raises(EngineEnvironmentError, match="python3 dev.py setup --vllm"):
        DeploySpec.build(options, setup=setup, workspace=ws, catalog=Catalog(ws))
    spec = DeploySpec.build(options, setup=SetupConfig(), workspace=ws, catalog=Catalog(ws))
    assert spec.plugin == "llama" and spec.runtime_env == {}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("params, conf, device, expected", [
    ({}, {}, "cpu", None),  # off by default on CPU (its LoRA kernels: ~3x slower generation)
    ({}, {}, "cuda", {"max_lora_rank": 16, "max_loras": 8, "max_cpu_loras": 8}),
    ({"vllm.enable_lora": "true"}, {"max_adapters_per_replica": "20"}, "cpu",
     {"max_lora_rank": 16, "max_loras": 8, "max_cpu_loras": 20}),
    ({"vllm.enable_lora": "true", "max_adapters_per_replica": "2", "vllm.max_lora_rank": "64"}, {}, "cpu",
     {"max_lora_rank": 64, "max_loras": 2, "max_cpu_loras": 2}),
    ({"vllm.enable_lora": "false"}, {}, "cuda", None),
    ({"vllm.max_loras": "3"}, {"max_adapters_per_replica": "2"}, "cuda",
     {"max_lora_rank": 16, "max_loras": 3, "max_cpu_loras": 3}),
])
def test_vllm_lora_settings(params, conf, device, expected):
    from byzer_like.backends.vllm_setup import lora_settings

    assert lora_settings(params, conf, device) == expected


@pytest.mark.timeout(60)
def test_vllm_lora_options_and_an_adapter_rank_too_large_are_typed_errors(tiny_models, workspace, monkeypatch):
    from byzer_like.catalog import Catalog
    from byzer_like.errors import AdapterRankError
    from byzer_like.runtime import adapters
    from byzer_like.runtime.spec import DeploySpec
    from byzer_like.workspace import Workspace

    ws = Workspace.from_env(workspace)
    monkeypatch.setenv("BYZER_LIKE_VLLM_PYTHON", sys.executable)
    options = {"pretrainedModelType": "vllm/llama", "localModelDir": str(tiny_models["llama"]), "udfName": "v"}
    with pytest.raises(ConfigError, match=r"vllm.max_lora_rank=12 is not one of vLLM's ranks: 1, 8, 16"):
        DeploySpec.build({**options, "vllm.max_lora_rank": "12"}, setup=SetupConfig(), workspace=ws, catalog=Catalog(ws))
    folder = workspace / "rank_adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "rank_pattern": {"q_proj": 32}}')
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="name the adapter per request"):
        DeploySpec.build({**options, "adapter_dir": str(folder)}, setup=SetupConfig(), workspace=ws,
                         catalog=Catalog(ws))
    adapters.check_rank("wide@v1", str(folder), 32)
    with pytest.raises(AdapterRankError, match=r"'wide@v1' has LoRA rank 32, above .* 16: redeploy the base with "
                                               r"`vllm.max_lora_rank`=\"32\""):
        adapters.check_rank("wide@v1", str(folder), 16)


@pytest.fixture(scope="module")
def echo(llm):
    registry.register("echo_engine", "echo_engine_plugin", replace=True)
    llm.undeploy(NAME, force=True)
    llm.setup_num_workers(1)
    llm.deploy(None, "echo_engine", NAME, {"echo.delay_s": "0.02"})
    yield NAME
    llm.undeploy(NAME, force=True)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_replica_hands_the_engine_whole_chunks(echo, llm, workspace):
    from byzer_like.session import Session

    (workspace / "seam_rows.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(40)), encoding="utf-8")
    s = Session(llm, progress=False)
    try:
        s.sql(f'''load json.`seam_rows.jsonl` as seam_rows;
                  select id, llm_result({NAME}(llm_param(map("instruction", concat("row ", id))))) as a
                  from seam_rows as echoed;''')
        rows = s.table("echoed").to_pylist()
    finally:
        s.close()
    assert [r["a"] for r in rows] == [f"echo: row {r['id']}" for r in rows] and len(rows) == 40
    load = llm.get_meta(NAME, refresh=True)["engine_load"]
    # whole chunks (two here: 40 rows, one replica), not one request at a time
    assert sum(load["generate_calls"]) == 40 and len(load["generate_calls"]) <= 4 and min(load["generate_calls"]) > 1
    assert load["finished"] == 40 and load["requests_running"] == 0


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_engine_streams_and_a_closed_stream_aborts_its_request(echo, llm):
    items = list(llm.runtime.stream(NAME, {"ins": "one two three four"}))
    assert [i["delta"] for i in items[:-1]] == ["echo:", " one", " two", " three", " four"]
    assert items[-1]["done"] and items[-1]["metadata"]["finish_reason"] == "stop"

    before = llm.get_meta(NAME, refresh=True)
    stream = llm.runtime.stream(NAME, {"ins": " ".join(["word"] * 2000)})
    for _ in range(3):
        next(stream)
    stream.close()
    deadline = time.monotonic() + 60
    while True:
        meta = llm.get_meta(NAME, refresh=True)
        if meta["engine_load"]["aborted"] > before["engine_load"]["aborted"] and meta["engine_load"]["requests_running"] == 0:
            break
        assert time.monotonic() < deadline, f"the engine's request was not aborted: {meta['engine_load']}"
        time.sleep(0.1)
    assert meta["requests_cancelled"] > before["requests_cancelled"] and meta["requests_in_flight"] == 0
