"""byzer_like.tiny: small real Hugging Face models built locally and loaded back through the Auto classes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from byzer_like.cli import main
from byzer_like.tiny import EOT, FAMILIES, IM_END, IM_START, MARKER, make_tiny

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
MODEL_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}


@pytest.fixture(scope="module", params=FAMILIES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp(request.param) / "model"
    return out, make_tiny(request.param, out)


def test_summary_and_files(built: tuple[Path, dict]) -> None:
    out, summary = built
    assert summary["out_dir"] == str(out)
    assert summary["size"] == "tiny" and summary["vocab_size"] == 4096
    assert 1_400_000 < summary["params"] < 1_600_000  # untied input and output embeddings
    assert "steps" not in summary  # not pretrained
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))], names
    record = json.loads((out / MARKER).read_text())
    assert record["family"] == summary["family"] and record["seed"] == 0 and record["pretrain_steps"] == 0
    assert record["corpus"]["files"] > 40


def test_loads_chats_and_generates(built: tuple[Path, dict]) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = built
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert type(model).__name__ == MODEL_CLASS[summary["family"]]
    assert tok.eos_token == tok.pad_token == EOT
    assert model.config.eos_token_id == model.config.pad_token_id == tok.convert_tokens_to_ids(EOT)
    assert set(model.generation_config.eos_token_id) == {tok.convert_tokens_to_ids(t) for t in (EOT, IM_END)}

    # transformers may rebuild parts of a tokenizer per model type (it does for qwen2): what loads
    # must still tokenize exactly as the trained tokenizer.json does.
    sample = "def f(x):\n    return x + 12345  # héllo, world\n\n"
    assert tok(sample)["input_ids"] == Tokenizer.from_file(str(out / "tokenizer.json")).encode(sample).ids

    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    assert tok(prompt)["input_ids"][0] == tok.convert_tokens_to_ids(IM_START)  # no BOS prepended

    tok.padding_side = "left"
    enc = tok(["def ", prompt], return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # the short prompt is padded on the left
    generated = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert generated.shape[0] == 2
    assert enc["input_ids"].shape[1] < generated.shape[1] <= enc["input_ids"].shape[1] + 4


@pytest.mark.slow
def test_same_seed_same_bytes_across_processes(tmp_path: Path) -> None:
    make_tiny("qwen2", tmp_path / "a", seed=3)
    # A second interpreter with another hash seed catches any dependence on dict/set order.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from byzer_like.tiny import make_tiny; make_tiny('qwen2', sys.argv[1], seed=3)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True, env=env, timeout=90)
    make_tiny("qwen2", tmp_path / "c", seed=4)

    def read(name: str, file: str) -> bytes:
        return (tmp_path / name / file).read_bytes()

    for file in ("model.safetensors", "tokenizer.json", "config.json", MARKER):
        assert read("a", file) == read("b", file), file
    assert read("a", "model.safetensors") != read("c", "model.safetensors")
    assert read("a", "tokenizer.json") == read("c", "tokenizer.json")  # the tokenizer does not depend on the seed


def test_bad_family_or_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llama, qwen2, gpt2"):
        make_tiny("mistral", tmp_path / "m")
    with pytest.raises(ValueError, match="tiny, small"):
        make_tiny("llama", tmp_path / "m", size="huge")
    with pytest.raises(ValueError, match="pretrain_seconds"):
        make_tiny("llama", tmp_path / "m", pretrain_seconds=-1)
    assert not (tmp_path / "m").exists()


def test_refuses_foreign_directory_but_overwrites_own(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=MARKER):
        make_tiny("llama", tmp_path)
    with pytest.raises(FileExistsError, match="not a directory"):
        make_tiny("llama", tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"

    out = tmp_path / "model"
    make_tiny("llama", out)
    make_tiny("gpt2", out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"


def test_custom_corpus_and_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # --out is read as the shell reads it, from the current directory
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"The quick brown fox {i} jumps over the lazy dog.\n" for i in range(500)))
    assert main(["models", "make-tiny", "--family", "gpt2", "--out", "m", "--corpus", str(corpus), "--seed", "1",
                 "--workspace", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "gpt2" and summary["seed"] == 1
    assert summary["vocab_size"] < 4096  # a small text has fewer merges to learn than the budget
    record = json.loads((tmp_path / "m" / MARKER).read_text())
    assert record["corpus"]["source"] == str(corpus) and record["corpus"]["files"] == 1

    with pytest.raises(FileNotFoundError, match="corpus"):
        make_tiny("gpt2", tmp_path / "n", corpus=str(tmp_path / "missing"))


@pytest.mark.slow
def test_short_pretraining_lowers_validation_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = make_tiny("llama", tmp_path / "m", pretrain_seconds=8, progress=True)
    assert summary["steps"] > 0
    assert summary["loss_end"] < summary["loss_start"]
    record = json.loads((tmp_path / "m" / MARKER).read_text())
    assert record["pretrain_steps"] == summary["steps"] and record["pretrain_seconds"] >= 8
    assert "pretrain done" in capsys.readouterr().err
