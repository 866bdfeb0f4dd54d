"""Training runs evaluate: sft with evalTable / evalMetrics answers the eval rows after every epoch and at the
end, reports `eval_<metric>` in its progress and final metrics, and the loss curve plots them on a second
axis. In-process on a real tiny llama (no Ray), plus the options' checks."""
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


def test_eval_options_are_checked():
    base = {"pretrainedModelType": "sft/llama", "localModelDir": "m"}
    assert SftOptions.from_params({**base, "evalMetrics": "em, rougeL"}).eval_metrics == "exact_match,rouge_l"
    with pytest.raises(ConfigError, match="inside a training job"):
        SftOptions.from_params({**base, "evalMetrics": "judge"})
    with pytest.raises((UnknownMetricError, ConfigError), match="valid metrics"):
        SftOptions.from_params({**base, "evalMetrics": "exact"+"_mach"})
    assert json.dumps(SftOptions.from_params(base).eval_table) == "null"
