"""Evaluation on a real local Ray cluster with real tiny models: the HF plugin's `score_text` against a
direct computation, perplexity through `action="eval"`, LLM-as-judge with a real judge (every row graded or
counted) and with a fixed-grade judge plugin (the arithmetic exactly), and perplexity of a held-out table
lower after continued pretraining (sfft) on its domain than before."""
from __future__ import annotations

import json
import math

import pytest

from byzer_like.session import Session
from byzer_like.plugins import registry


@pytest.fixture
def session(llm):
    s = Session(llm, progress=False)
    yield s
    s.close()


@pytest.mark.timeout(120)
def test_score_text_matches_a_direct_computation(tiny_models):
    """The built-in plugin's batched scores equal an unbatched forward pass per text (no Ray)."""
    import torch

    plugin = registry.load("llama")
    model, tok = plugin.init_model(str(tiny_models["llama"]), {}, {"max_batch_size": "4"})
    texts = ["def add(a, b):", "return the sum of two numbers and more words", "x"]
    got = plugin.score(model, tok, [{"text": t} for t in texts])
    for text, s in zip(texts, got):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)
        want = float(logp.gather(-1, ids[0, 1:, None]).sum())
        assert s["tokens"] == ids.shape[1] - 1 and s["logprob"] == pytest.approx(want, rel=1e-4, abs=1e-4)
    # an answer after a chat prompt: only the answer's tokens count
    (cond,) = plugin.score(model, tok, [{"text": "Paris", "ins": "capital of France?", "his": []}])
    assert cond["tokens"] == len(tok("Paris", add_special_tokens=False)["input_ids"])


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_judges_and_perplexity_through_a_deployment(llm, session, tiny_models, workspace):
    registry.register("fixed_judge", "fixed_judge_plugin", replace=True)
    rows = [{"question": f"q{i}", "answer": f"answer {i}"} for i in range(20)]
    data = workspace / "data" / "judge_set.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    llm.setup_num_workers(1)
    deployed = []
    try:
        for name, plugin, path in (("ev_tiny", "llama", tiny_models["llama"]), ("fixed_judge", "fixed_judge", None)):
            llm.deploy(path, plugin, name, {})
            deployed.append(name)
        session.sql(f"load json.`{data}` as judged;")
        row = session.sql('run command as LLM.`` where action="eval" and udfName="ev_tiny" and inputTable="judged" '
                          'and metrics="judge,token_f1" and judge="fixed_judge" and maxNewTokens="8" as s1;'
                          )[-1].table.to_pylist()[0]
        # rows 0..19: i % 3 == 0 -> 3 (7 rows), == 1 -> 8 (7 rows), == 2 -> unparsable (6 rows)
        assert row["judge_parse_failures"] == 6 and row["judge_rows"] == 14
        assert row["judge"] == pytest.approx((7 * 3 + 7 * 8) / 14)
        # a real model as judge: every row is graded or counted as a failure, never dropped
        real = session.sql('run command as LLM.`` where action="eval" and udfName="ev_tiny" and inputTable="judged" '
                           'and metrics="judge" and judge="ev_tiny" and maxNewTokens="8" and outputTable="rj";'
                           )[-1].table.to_pylist()[0]
        assert real["judge_rows"] + real["judge_parse_failures"] == 20
        replies = session.table("rj").column("judge_reply").to_pylist()
        assert len(replies) == 20 and all(isinstance(r, str) for r in replies)
        # perplexity of the references through the deployment equals the plugin's own scores
        ppl = session.sql('run command as LLM.`` where action="eval" and udfName="ev_tiny" and inputTable="judged" '
                          'and metrics="perplexity" as p;')[-1].table.to_pylist()[0]
        plugin = registry.load("llama")
        model, tok = plugin.init_model(str(tiny_models["llama"]), {}, {})
        scores = plugin.score(model, tok, [{"text": r["answer"], "ins": r["question"], "his": []} for r in rows])
        want = math.exp(-sum(s["logprob"] for s in scores) / sum(s["tokens"] for s in scores))
        assert ppl["perplexity"] == pytest.approx(want, rel=1e-3)
    finally:
        for name in deployed:
            llm.undeploy(name)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.heavy  # an sfft job; perplexity itself is measured in the default run (test_judges_and_perplexity...)
@pytest.mark.timeout(600)
def test_perplexity_of_held_out_text_falls_after_sfft_on_its_domain(llm, session, tiny_models, workspace):
    from byzer_like.tiny import prose_lines

    lines = prose_lines(400)
    train, held = lines[:360], lines[360:]
    folder = workspace / "data" / "sfft_eval"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    (folder / "held.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in held))
    base = tiny_models["llama"]
    try:
        session.sql(f"""
            load json.`{folder / 'train.jsonl'}` as domain;
            load json.`{folder / 'held.jsonl'}` as held_out;
            load model.`{base}` as tiny_base;
            run command as LLM.`` where action="eval" and modelTable="tiny_base" and inputTable="held_out"
                and metrics="perplexity" as before_sfft;
            !byzerllm setup sfft;
            !byzerllm setup "num_workers=1";
            !byzerllm setup "cpus_per_worker=1";
            run command as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="{base}" and inputTable="domain"
                and outputTable="tiny_domain" and detached="false" and `sfft.int.max_length`="64"
                and perDeviceBatchSize="4" and learningRate="3e-3" and maxSteps="24" and loggingSteps="4"
                and checkpointSteps="24" and zeroStage="2";
        """)
    finally:
        session.sql('!byzerllm setup single; !byzerllm setup "num_workers=1"; !byzerllm setup "cpus_per_worker=0.5";')
    before = session.table("before_sfft").to_pylist()[0]["perplexity"]
    after = session.sql('run command as LLM.`` where action="eval" and modelTable="tiny_domain" and inputTable="held_out" '
                        'and metrics="perplexity" as after_sfft;')[-1].table.to_pylist()[0]["perplexity"]
    print(f"held-out perplexity: {before:.1f} before sfft, {after:.1f} after")
    assert after < before * 0.8
