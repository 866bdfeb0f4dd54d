"""predictTable (train/predict.py): the table the trained model answers before its job ends. What a job
checks at submit, the requests it sends (a select's, greedy), and the answers in row order on a real tiny
model; tests/test_train.py compares them with a select of the deployed model."""
import pyarrow as pa
import pytest

from byzer_like.errors import ConfigError
from byzer_like.train import predict as P
from byzer_like.train.options import SftOptions


def _opts(**kw) -> SftOptions:
    return SftOptions.from_params({"pretrained_model_type": "sft/llama", "model_dir": "m", **kw})


@pytest.mark.parametrize("table, given, match", [
    (pa.table({"q": ["a"]}), None, "none of the prompt columns instruction, prompt"),
    (pa.table({"q": ["a"]}), "question", "predictColumn 'question' is not a column"),
    (pa.table({"instruction": [1]}), None, "not text"),
    (pa.table({"instruction": pa.array([], pa.string())}), None, "is empty"),
])
def test_a_predict_table_the_model_cannot_answer_is_refused_at_submit(table, given, match):
    opts = _opts(predict_table="t", **({"predict_column": given} if given else {}))
    with pytest.raises(ConfigError, match=match):
        P.check(table, opts)


def test_requests_are_the_selects_greedy_and_null_stays_null():
    table = pa.table({"prompt": ["hi", None], "instruction": ["ignored", "also"]})
    assert P.prompt_column(table, None) == "instruction"
    reqs = P.requests(table, "prompt", 8)
    assert reqs[1] is None and reqs[0]["ins"] == "hi" and reqs[0]["temperature"] == 0.0
    assert reqs[0]["max_new_tokens"] == 8
    assert P.model_to_load("adapter", "/a", "/base") == ("/base", {"adapter_dir": "/a"})
    assert P.model_to_load("model", "/m", "/base") == ("/m", {})


@pytest.mark.timeout(120)
def test_answers_come_back_in_row_order_from_the_plugins_batch(tiny_models):
    from byzer_like.plugins import registry

    plugin = registry.load("llama")
    table = pa.table({"instruction": ["one", None, "two", "one"], "id": [1, 2, 3, 4]})
    out = P.predict(plugin, str(tiny_models["llama"]), {}, {"max_batch_size": "2"}, table, column=None,
                    max_new_tokens=4)
    rows = out.to_pylist()
    assert [r["id"] for r in rows] == [1, 2, 3, 4] and rows[1]["answer"] is None
    assert rows[0]["answer"] == rows[3]["answer"]  # greedy: the same prompt, the same answer, across batches
    assert all(isinstance(r["answer"], str) for r in rows if r["instruction"] is not None)
