"""Byzer's "use a plugin as a Python package" recipe (issue 23, item 5b), as the seed writes it, on a tiny
real model: the built-in package's module-level `init_model`, then `model.stream_chat(tokenizer, query, [], ...)`.
The packages are loaded from this tree's models/ (the installed `byzer_like_models` may be another checkout's)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parent.parent / "models"


def _package(family: str):
    name = f"byzer_like_models_tree.{family}"
    spec = importlib.util.spec_from_file_location(name, MODELS / family / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_the_seeds_python_recipe_runs_as_written(family, tiny_models):
    pkg = _package(family)
    init_model = pkg.init_model
    model, tokenizer = init_model(str(tiny_models[family]), {"quantization": "false"})
    query = "You are a helpful assistant.\n<|Human|>: hello<eoh>\n<|MOSS|>:"
    response = model.stream_chat(tokenizer, query, [], temperature=0.7, top_p=0.8, max_length=1024)
    assert isinstance(response, list) and len(response) == 1
    text, meta = response[0]
    assert isinstance(text, str) and meta["output_tokens"] >= 1 and meta["input_tokens"] > 1
    # the module-level function, Byzer's too; max_length counts prompt and answer tokens, as in Byzer
    again = pkg.stream_chat(model, tokenizer, query, [], max_length=meta["input_tokens"] + 4, temperature=0.0)
    assert 1 <= again[0][1]["output_tokens"] <= 4
