"""Byzer's "use a plugin as a Python package" recipe (issue 23, item 5b), as the seed writes it, on a tiny
real model: `from byzer_like_models.<family> import init_model`, then `model.stream_chat(tokenizer, query, [], ...)`."""
from __future__ import annotations

import importlib

import pytest


@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_the_seeds_python_recipe_runs_as_written(family, tiny_models):
    pkg = importlib.import_module(f"byzer_like_models.{family}")  # the seed: from byzer_like_models.llama import init_model
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
