"""Training runs evaluate: sft with evalTable / evalMetrics (or evalMetrics on its evalSplit rows) answers the
eval rows after every epoch and at the end, reports `eval_<metric>` in its progress and final metrics, and the
loss curve plots them on a second axis; `train.evaluation.TrainingEval` (sft's and sfft's evaluator) measures
perplexity and generation metrics, split across ranks. In-process on a real tiny llama (no Ray), plus the
options' checks. sfft's evaluation in a real run: tests/test_sfft.py."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like.errors import ConfigError, UnknownMetricError
from byzer_like.train.options import SftOptions

pytestmark = pytest.mark.timeout(300)
QA = [{"instruction": f"color {i}?", "output": ["red", "blue", "green"][i % 3]} for i in range(12)]


def test_sft_reports_eval_metrics_per_epoch_and_at_the_end(tiny_models, tmp_path, capsys):
    from byzer_like.train.plot import loss_curve
    from byzer_like.train.sft import sft_train

    data = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(QA), data)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pq.write_table(pa.Table.from_pylist(QA[:6]), run_dir / "eval.parquet")
    opts = SftOptions.from_params({"pretrainedModelType": "sft/llama", "localModelDir": str(tiny_models["llama"]),
                                   "evalTable": "held", "evalMetrics": "em,token_f1", "epochs": "2", "batchSize": "4",
                                   "evalMaxNewTokens": "4", "sft.int.max_seq_length": "32", "loggingSteps": "1"})
    out = sft_train(model_dir=str(tiny_models["llama"]), data_path=str(data), output_dir=str(tmp_path / "model"),
                    run_dir=str(run_dir), options=opts, target_modules=["q_proj", "v_proj"])
    m = out["metrics"]
    assert 0 <= m["eval_exact_match"] <= 1 and 0 <= m["eval_token_f1"] <= 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "eval_exact_match=" in line]
    assert len(lines) == 2  # one per epoch
    history = [{"step": 1, "loss": 3.0}, {"step": 3, "loss": 2.0, "eval_exact_match": 0.0},
               {"step": 6, "loss": 1.0, "eval_exact_match": 0.5}]
    png = loss_curve(history, tmp_path / "loss.png", title="t")
    assert png and (tmp_path / "loss.png").stat().st_size > 1000


def test_sft_measures_eval_metrics_on_the_eval_split_without_an_eval_table(tiny_models, tmp_path, capsys):
    from byzer_like.train.sft import sft_train

    data = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(QA), data)
    opts = SftOptions.from_params({"pretrainedModelType": "sft/llama", "localModelDir": str(tiny_models["llama"]),
                                   "evalSplit": "0.25", "evalMetrics": "em", "epochs": "1", "batchSize": "4",
                                   "evalMaxNewTokens": "2", "sft.int.max_seq_length": "32"})
    out = sft_train(model_dir=str(tiny_models["llama"]), data_path=str(data), output_dir=str(tmp_path / "model"),
                    run_dir=str(tmp_path), options=opts, target_modules=["q_proj", "v_proj"])
    m = out["metrics"]
    assert m["eval_rows"] == 3 and m["train_rows"] == 9
    assert 0 <= m["eval_exact_match"] <= 1 and "eval_loss" in m  # the Trainer's eval loss is kept beside it
    assert "measured on the 3 evalSplit rows" in capsys.readouterr().out


TEXT = ["the cat sat on the mat", "a dog ran in the park", "the sun is warm today", "rain falls on the town",
        "birds sing in the morning"]


def test_training_eval_perplexity_and_generation_metrics_and_the_shards_agree(tiny_models):
    """TrainingEval on a plain tiny llama: perplexity of text rows, exact_match on prompt rows; two ranks'
    shares gathered give the one-process numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from byzer_like.train.evaluation import TrainingEval, shard

    assert shard(5, 0, 2) == [(0, True), (2, True), (4, True)]
    assert shard(5, 1, 2) == [(1, True), (3, True), (0, False)]  # filled: the ranks make the same passes
    assert shard(1, 1, 2) == [(0, False)]
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tok.pad_token = tok.pad_token or tok.eos_token
    text = TrainingEval.from_table(pa.table({"text": TEXT}), metrics=None, default=("perplexity",), max_length=16)
    model.train()
    one = text(model, tok)
    assert set(one) == {"eval_perplexity", "eval_mean_token_logprob"} and one["eval_perplexity"] > 1
    assert model.training  # left as it was
    parts = {}

    def gather_as(rank):
        def gather(local):
            parts[rank] = local
            return [parts[0], parts[1]] if rank == 0 else [local]
        return gather

    text(model, tok, rank=1, world=2, gather=gather_as(1))
    both = text(model, tok, rank=0, world=2, gather=gather_as(0))
    assert both["eval_perplexity"] == pytest.approx(one["eval_perplexity"], rel=1e-4)
    qa = TrainingEval.from_table(pa.Table.from_pylist(QA[:4]), metrics="em,ppl", max_new_tokens=2)
    got = qa(model, tok, stop_ids=[tok.eos_token_id])
    assert 0 <= got["eval_exact_match"] <= 1 and got["eval_perplexity"] > 1
    with pytest.raises(Exception, match="no reference column"):
        TrainingEval.from_table(pa.table({"text": TEXT}), metrics="em")


def test_eval_options_are_checked():
    from byzer_like.train.options import SfftOptions

    base = {"pretrainedModelType": "sft/llama", "localModelDir": "m"}
    assert SftOptions.from_params({**base, "evalMetrics": "em, rougeL"}).eval_metrics == "exact_match,rouge_l"
    with pytest.raises(ConfigError, match="inside a training job"):
        SftOptions.from_params({**base, "evalMetrics": "judge"})
    with pytest.raises((UnknownMetricError, ConfigError), match="valid metrics"):
        SftOptions.from_params({**base, "evalMetrics": "exact"+"_mach"})
    assert json.dumps(SftOptions.from_params(base).eval_table) == "null"
    assert SftOptions.from_params(base).eval_metric_names() == "exact_match"
    sfft = SfftOptions.from_params({"pretrainedModelType": "sfft/llama", "localModelDir": "m", "evalTable": "held",
                                    "evalSteps": "3"})
    assert (sfft.eval_table, sfft.eval_steps, sfft.eval_metric_names()) == ("held", 3, "perplexity")
    assert SfftOptions.from_params({"pretrainedModelType": "sfft/llama", "localModelDir": "m",
                                    "evalMetrics": "ppl,em"}).eval_metrics == "perplexity,exact_match"
