"""Training options and data preparation, without Ray: typed keys, forms, prompts, label masks, packing."""
import pyarrow as pa
import pytest

from byzer_like.catalog import Catalog
from byzer_like.errors import ModelExistsError, ModelNotFoundError
from byzer_like.errors import ConfigError, UnknownOptionError
from byzer_like.train import data as D
from byzer_like.train.options import SfftOptions, SftOptions, normalise


def test_typed_and_camel_keys_normalise_to_one_option_set():
    assert normalise({"sft.int.max_seq_length": "64", "learningRate": "1e-4", "sfft.bool.packing": "true"}) == {
        "max_seq_length": 64, "learning_rate": "1e-4", "packing": True}
    o = SftOptions.from_params({"pretrainedModelType": "sft/llama", "localModelDir": "m", "sft.int.max_seq_length": "64",
                                "method": "qlora", "loraTargetModules": "q_proj, v_proj", "epochs": "2"})
    assert (o.max_seq_length, o.method, o.lora_target_modules, o.num_train_epochs) == (64, "qlora", ["q_proj", "v_proj"], 2.0)
    assert o.lr() == 2e-4 and SftOptions.from_params({"pretrainedModelType": "sft/x", "localModelDir": "m",
                                                      "method": "full"}).lr() == 2e-5


def test_bad_options_are_named_with_what_to_do():
    base = {"pretrainedModelType": "sft/llama", "localModelDir": "m"}
    with pytest.raises(UnknownOptionError, match=r"unknown sft option 'sft.int.max_seq_lenght'.*maxSeqLength"):
        SftOptions.from_params({**base, "sft.int.max_seq_lenght": "64"})
    with pytest.raises(ConfigError, match="'sft.int.max_seq_length': 'sixty' is not a valid int"):
        SftOptions.from_params({**base, "sft.int.max_seq_length": "sixty"})
    with pytest.raises(ConfigError, match="maxSeqLength / max_seq_length.*greater than or equal to 8"):
        SftOptions.from_params({**base, "maxSeqLength": "4"})
    with pytest.raises(ConfigError, match="give the base model"):
        SftOptions.from_params({"pretrainedModelType": "sft/llama"})
    with pytest.raises(ConfigError, match="deepspeedConfig is not valid JSON.*line 1 column"):
        SfftOptions.from_params({**base, "deepspeedConfig": "{nope"})
    with pytest.raises(ConfigError, match='only model="command"'):
        SftOptions.from_params({**base, "model": "other"})


def test_forms_and_conversations():
    assert D.sft_form(["instruction", "input", "output"]) == "alpaca"
    assert D.sft_form(["messages"]) == "chat"
    with pytest.raises(ConfigError, match="missing output.*alpaca form.*chat form"):
        D.sft_form(["instruction", "answer"])
    rows = [{"instruction": "add", "input": "1 2", "output": "3", "system": "be brief",
             "history": '[["hi", "hello"]]'}]
    assert D.conversations(rows, "alpaca") == [[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "add\n1 2"},
        {"role": "assistant", "content": "3"}]]
    with pytest.raises(ConfigError, match="row 1: the conversation must end with an assistant message"):
        D.conversations([{"messages": [{"role": "user", "content": "q"}]}], "chat")
    with pytest.raises(ConfigError, match="row 1: messages is not JSON"):
        D.conversations([{"messages": "[oops"}], "chat")


def test_text_column():
    assert D.text_column(pa.schema([("text", pa.string()), ("n", pa.int64())])) == "text"
    assert D.text_column(pa.schema([("body", pa.string()), ("n", pa.int64())])) == "body"
    with pytest.raises(ConfigError, match=r"2 string columns.*columns found: a \(string\), b \(string\)"):
        D.text_column(pa.schema([("a", pa.string()), ("b", pa.string())]))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from byzer_like.tiny import make_tiny
    from byzer_like.train.sft import prepare_tokenizer, stop_token_ids

    d = tmp_path_factory.mktemp("m") / "llama"
    make_tiny("llama", d)
    tok = prepare_tokenizer(str(d))
    return tok, stop_token_ids(str(d), tok)


def test_only_answers_are_learnt_and_encoding_matches_generation(tokenizer):
    tok, stops = tokenizer
    conv = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    ids, labels = D.encode(tok, conv, 512, stops)
    learnt = tok.decode([t for t, lab in zip(ids, labels) if lab != D.IGNORE])
    assert learnt == "a1<|im_end|>\na2<|im_end|>\n"  # both answers and their end-of-turn, no prompt
    # the prompt side is tokenised exactly as generation sees the prompt
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ids[:n] == tok(prompt, add_special_tokens=False)["input_ids"] and all(x == D.IGNORE for x in labels[:n])
    assert D.encode(tok, conv, 4, stops) is None  # no answer token fits
    with pytest.raises(ConfigError, match="max_seq_length=4 is too small.*shortest prompt alone has"):
        D.encode_all(tok, [conv], 4, stops)


def test_packing_and_split():
    examples = [([1, 2, 3], [D.IGNORE, 2, 3]), ([4, 5], [D.IGNORE, 5]), ([6, 7, 8, 9], [D.IGNORE] * 4)]
    assert D.pack(examples, 4) == [([1, 2, 3, 4], [D.IGNORE, 2, 3, D.IGNORE]), ([5, 6, 7, 8], [5, D.IGNORE, D.IGNORE, D.IGNORE])]
    train, held = D.split(list(range(20)), 0.1, seed=1)
    assert len(held) == 2 and sorted(train + held) == list(range(20))
    assert D.split(list(range(20)), 0.1, seed=1) == (train, held)
    assert D.split([1], 0.3, seed=0) == ([1], [])


def test_registry_versions_and_refs(tmp_path):
    cat = Catalog(tmp_path)
    kw = dict(kind="adapter", base_model="/b", model_type="llama", method="lora", params={}, metrics={}, job_id=None)
    assert cat.register_model("m", path="/p1", **kw).ref == "m@v1"
    with pytest.raises(ModelExistsError, match="m@v1"):
        cat.register_model("m", path="/p2", **kw)
    assert cat.register_model("m", path="/p2", overwrite=True, **kw).version == 2
    assert cat.model("m").path == "/p2" and cat.model("m@v1").path == "/p1"
    with pytest.raises(ModelNotFoundError, match=r"'m@v3'.*m@v2"):
        cat.model("m@v3")
    with pytest.raises(ConfigError, match="not a valid model name"):
        cat.register_model("../escape", path="/p", **kw)


def test_the_job_log_tee_has_the_console_descriptor(tmp_path):
    """A detached sfft job calls ray.init inside the runner, whose stdout is the tee into the job's log: it
    must answer fileno() and encoding as the console does (else the job fails before it trains)."""
    import sys

    from byzer_like.train.runner import _Tee

    with open(tmp_path / "log.txt", "w") as log:
        tee = _Tee(sys.__stderr__, log)
        assert tee.fileno() == sys.__stderr__.fileno()
        assert tee.encoding
        tee.write("line\n")
    assert (tmp_path / "log.txt").read_text() == "line\n"
