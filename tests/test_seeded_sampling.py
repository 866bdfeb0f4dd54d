"""Seeded sampling (issue 23, item 9): a request with a `seed` gets the same answer alone, in a batch of any
size, beside other seeded and unseeded rows, twice in one batch (dedupe off) and streamed, on the transformers
engine with a real tiny model; vLLM's path is checked through the SamplingParams keywords it builds (the vLLM
venv is not built on every machine; tests/test_vllm.py runs the engine where it is)."""
import pytest

from byzer_like.backends.sampling import RowSampler, row_generators
from byzer_like.plugins import registry


def req(ins, seed=None, **kw):
    return {"ins": ins, "his": [], "max_length": None, "max_new_tokens": 16, "top_p": 0.9, "temperature": 1.0,
            "kwargs": {} if seed is None else {"seed": seed}, **kw}


@pytest.fixture(scope="module", params=[1, 3, 8])
def llama(request, tiny_models):
    plugin = registry.load("llama").target
    model, tok = plugin.init_model(str(tiny_models["llama"]), {}, {"max_batch_size": str(request.param)})
    return plugin, model, tok


def answers(loaded, requests):
    plugin, model, tok = loaded
    return [text for text, _ in plugin.batch_chat(model, tok, requests)]


def test_a_seeded_row_answers_the_same_alone_and_in_any_batch(llama):
    alone = answers(llama, [req("def main", seed=7)])[0]
    assert alone  # sampled text, not an empty answer
    crowd = [req("import os", seed=1), req("def main", seed=7), req("class A", seed=None),
             req("def main", seed=7), req("for i in range(3):", seed=7), req("x = 1", seed=2)]
    got = answers(llama, crowd)
    assert got[1] == alone and got[3] == alone  # twice in one batch (dedupe off): each its own generator
    again = answers(llama, [req("x = 1", seed=2), req("def main", seed=7)])
    assert again == [got[5], alone]


def test_seeds_change_the_answer_and_unseeded_rows_still_sample(llama):
    by_seed = {answers(llama, [req("def main", seed=s)])[0] for s in range(6)}
    assert len(by_seed) > 1
    unseeded = {answers(llama, [req("def main")])[0] for _ in range(4)}
    assert len(unseeded) > 1


def test_a_streamed_seeded_request_gets_the_batched_answer(llama):
    plugin, model, tok = llama
    batched = answers(llama, [req("import sys", seed=11), req("while True:", seed=3)])[0]
    r = req("import sys", seed=11)
    streamed = list(plugin.stream_chat(model, tok, r["ins"], r["his"], r["max_length"], r["top_p"],
                                       r["temperature"], **r["kwargs"], max_new_tokens=16))
    assert streamed[-1][0] == batched


def test_greedy_rows_ignore_the_seed():
    assert row_generators([1, None], {"do_sample": False}) is None
    assert row_generators([None, None], {"do_sample": True}) is None
    assert len(row_generators([1, None], {"do_sample": True})) == 2


def test_row_sampler_keeps_only_the_drawn_token_and_respects_top_k():
    import torch

    scores = torch.tensor([[0.0, 5.0, 4.9, -3.0], [1.0, 1.0, 1.0, 1.0]])
    sampler = RowSampler(row_generators([5, 6], {"do_sample": True}), temperature=1.0, top_k=2)
    for _ in range(20):
        out = sampler(torch.zeros((2, 1), dtype=torch.long), scores)
        assert (out == 0).sum(dim=1).tolist() == [1, 1]
        assert int(out[0].argmax()) in (1, 2)  # top-k 2 of row 0
    with pytest.raises(RuntimeError, match="3 rows was given 2 generators"):
        sampler(torch.zeros((3, 1), dtype=torch.long), torch.zeros((3, 4)))


def test_vllm_sends_each_requests_seed_in_its_sampling_params(tiny_models):
    from transformers import AutoTokenizer

    from byzer_like.backends.vllm_engine import VLLMEngine, VLLMPlugin

    engine = object.__new__(VLLMEngine)
    engine.plugin = VLLMPlugin(registry.load("llama").target)
    engine.tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    engine.context_length, engine.stop_ids = 256, [engine.tokenizer.eos_token_id]
    seeded = engine._prepare(req("def main", seed=7))
    assert seeded.params["seed"] == 7 and seeded.params["temperature"] == 1.0
    assert "seed" not in engine._prepare(req("def main")).params
