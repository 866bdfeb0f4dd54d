"""Byzer-LLM's embedding model types (bge, bge_m3, m3e, custom/bge, custom/m3e) served by the encoder plugin:
picked from Byzer's names, checked against config.json, pooled as sentence-transformers would, normalised,
batched, and refusing chat with a typed error; then deployed from SQL as Byzer's scripts deploy them and used
from SQL (`embedding_query`), the Python client (`emb_query`, `emb(model, LLMRequest(...))`) and the HTTP API."""
from __future__ import annotations

import json
import math

import pytest

from byzer_like.errors import ConfigError, ModelDirError, NotAChatModelError
from byzer_like.plugins import registry

TEXTS = ["hello world", "a much longer text about python modules and their threads", "x", "hello world"]


@pytest.fixture(scope="module")
def encoders(workspace):
    """Tiny random encoders: BERT with sentence-transformers CLS pooling (bge-like), XLM-RoBERTa with mean
    pooling (bge-m3-shaped files, m3e's pooling), and a bare BERT without sentence-transformers files."""
    from byzer_like.tiny import make_tiny_encoder

    out = {}
    for key, kwargs in {"bge": {"pooling": "cls"}, "xlmr_mean": {"model_type": "xlm-roberta", "pooling": "mean"},
                        "bare": {"pooling": None}}.items():
        d = workspace / "models" / f"tiny-encoder-{key}"
        make_tiny_encoder(d, seed=1, **kwargs)
        out[key] = d
    return out


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def _same(a, b, tol=1e-5):
    """The same vector up to float rounding (a text padded in another batch sums in another order)."""
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < tol


@pytest.mark.parametrize("name, plugin", [("bge", "bge"), ("custom/bge", "bge"), ("BGE", "bge"), ("m3e", "m3e"),
                                          ("custom/m3e", "m3e"), ("bge_m3", "bge_m3"), ("custom/bge_m3", "bge_m3"),
                                          ("encoder", "encoder")])
def test_byzer_embedding_names_resolve_to_the_encoder_plugin(name, plugin):
    p = registry.load(name)
    assert p.name == plugin and p.import_path.startswith("byzer_like_models.encoder")
    assert p.has("embed_documents") and p.has("embed_query")


def test_encoders_stay_on_their_plugin_under_the_vllm_backend():
    assert registry.with_backend("custom/bge", "vllm") == "custom/bge"


def test_a_reranker_is_still_refused_with_what_to_use_instead():
    from byzer_like.errors import UnsupportedModelTypeError

    with pytest.raises(UnsupportedModelTypeError, match="embedding_query") as e:
        registry.load("bge_rerank")
    assert "\n" not in str(e.value)


def test_config_json_is_checked(encoders, tiny_models):
    with pytest.raises(ModelDirError, match="causal language model.*auto"):
        registry.load("bge").check_model_dir(str(tiny_models["llama"]), {})
    with pytest.raises(ModelDirError, match="'bert' model, not a bge_m3"):
        registry.load("bge_m3").check_model_dir(str(encoders["bge"]), {})
    registry.load("bge_m3").check_model_dir(str(encoders["xlmr_mean"]), {})
    with pytest.raises(ModelDirError, match='custom/bge'):  # an encoder deployed as a chat model says what it is
        registry.load("auto").check_model_dir(str(encoders["bge"]), {})
    with pytest.raises(ConfigError, match="valid: cls, mean"):
        registry.load("bge").check_model_dir(str(encoders["bge"]), {"pooling": "avg"})


@pytest.fixture(scope="module")
def loaded(encoders):
    """(plugin, model, tokenizer) per case, loaded in this process (no cluster), batches of 2."""
    cases = {"bge": ("custom/bge", encoders["bge"], {}), "m3e_on_xlmr": ("encoder", encoders["xlmr_mean"], {}),
             "bare_bge": ("bge", encoders["bare"], {}), "bare_m3e": ("m3e", encoders["bare"], {}),
             "bare_forced_max": ("bge", encoders["bare"], {"pooling": "max"})}
    out = {}
    for key, (name, d, ip) in cases.items():
        p = registry.load(name)
        out[key] = (p, *p.init_model(str(d), ip, {"max_batch_size": "2"}))
    return out


@pytest.mark.parametrize("case, pooling, source", [
    ("bge", "cls", "1_Pooling"), ("m3e_on_xlmr", "mean", "1_Pooling"), ("bare_bge", "cls", "family default"),
    ("bare_m3e", "mean", "family default"), ("bare_forced_max", "max", "infer_params")])
def test_pooling_is_picked_as_sentence_transformers_would(loaded, case, pooling, source):
    p, model, tok = loaded[case]
    meta = p.meta(model, tok)
    assert meta["pooling"] == pooling and source in meta["pooling_source"]
    assert meta["embedding"] and meta["chat"] is False and meta["embedding_dimensions"] == 64


@pytest.mark.parametrize("case", ["bge", "m3e_on_xlmr", "bare_forced_max"])
def test_vectors_are_unit_length_batched_and_equal_to_one_at_a_time(loaded, case):
    p, model, tok = loaded[case]
    batch = p.embed_many(model, tok, TEXTS)  # 4 texts in batches of 2, shortest first
    assert [len(v) for v in batch] == [64] * 4
    assert all(abs(_norm(v) - 1) < 1e-5 for v in batch)
    assert _same(batch[0], batch[3])  # the same text, the same vector
    for text, v in zip(TEXTS, batch):
        assert _same(v, p.embed(model, tok, text))
    assert not _same(batch[0], batch[1], 1e-3)  # different texts differ


def test_cls_and_mean_pooling_differ_on_the_same_weights(loaded):
    (p1, m1, t1), (p2, m2, t2) = loaded["bare_bge"], loaded["bare_m3e"]
    assert not _same(p1.embed(m1, t1, "hello"), p2.embed(m2, t2, "hello"), 1e-3)


def test_chat_on_an_encoder_is_a_typed_error(loaded):
    p, model, tok = loaded["bge"]
    for call in (lambda: list(p.stream(model, tok, {"ins": "hi"})), lambda: p.batch(model, tok, [{"ins": "hi"}]),
                 lambda: p.prompt_text(model, tok, {"ins": "hi"})):
        with pytest.raises(NotAChatModelError, match="sentence-embedding model.*embedding_query") as e:
            call()
        assert "\n" not in str(e.value)


# -- deployed, as Byzer's scripts deploy and call it -----------------------------------------------
@pytest.fixture(scope="module")
def emb_deployed(llm, encoders, workspace):
    """`custom/bge` deployed from SQL as `emb` (one replica); removed after the module."""
    from byzer_like.session import Session

    llm.undeploy("emb", force=True)
    (workspace / "emb_texts.jsonl").write_text("".join(json.dumps({"id": i, "t": t}) + "\n" for i, t in enumerate(TEXTS)),
                                               encoding="utf-8")
    s = Session(llm, progress=False)
    s.sql('!byzerllm setup "num_workers=1";\n'
          f'run command as LLM.`` where action="infer" and pretrainedModelType="custom/bge"\n'
          f'  and localModelDir="{encoders["bge"]}" and udfName="emb";')
    yield s
    s.close()
    llm.undeploy("emb", force=True)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_sql_select_embeddings(emb_deployed, llm):
    s = emb_deployed
    s.sql('load json.`emb_texts.jsonl` as texts;\n'
          'select id, emb(llm_param(map("embedding_query", t))) as r from texts order by id as vectors;\n'
          'select emb(llm_param(map("instruction", "hello world", "embedding", "true"))) as r as one;')
    rows = [json.loads(r["r"]) for r in s.table("vectors").to_pylist()]
    vectors = [r["output"] for r in rows]
    assert [len(v) for v in vectors] == [64] * 4 and all(abs(_norm(v) - 1) < 1e-5 for v in vectors)
    assert _same(vectors[0], vectors[3]) and rows[0]["input"] == "hello world"
    one = json.loads(s.table("one").to_pylist()[0]["r"])["output"]
    assert _same(one, vectors[0])  # alone equals in a batch
    meta = llm.get_meta("emb", refresh=True)
    assert meta["family"] == "bge" and meta["pooling"] == "cls" and meta["pretrained_model_type"] == "custom/bge"
    from byzer_like.errors import ByzerError

    with pytest.raises(ByzerError, match="sentence-embedding model"):
        s.sql('select emb(llm_param(map("instruction", "hi"))) as r as chat_try;')


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_client_emb_query_and_byzer_llmrequest(emb_deployed, llm):
    from byzer_like.client import LLMRequest

    v = llm.emb_query("hello world", model="emb")
    assert len(v) == 64 and abs(_norm(v) - 1) < 1e-5
    answers = llm.emb("emb", LLMRequest(instruction=["hello world", "x"]))
    assert [a.input for a in answers] == ["hello world", "x"] and _same(answers[0].output, v)
    with pytest.raises(NotAChatModelError, match="emb_query"):
        llm.chat_oai([{"role": "user", "content": "hi"}], model="emb")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_http_embeddings_and_chat_refused(emb_deployed, llm):
    import urllib.error
    import urllib.request

    srv = llm.serve(port=0, api_key="k", replace=True)
    try:
        def post(path, body):
            req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": "Bearer k"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, body = post("/v1/embeddings", {"model": "emb", "input": TEXTS})
        assert status == 200 and len(body["data"]) == 4 and body["usage"]["prompt_tokens"] > 0
        vecs = [d["embedding"] for d in body["data"]]
        assert _same(vecs[0], vecs[3]) and abs(_norm(vecs[1]) - 1) < 1e-5
        for stream in (False, True):
            status, body = post("/v1/chat/completions", {"model": "emb", "stream": stream,
                                                         "messages": [{"role": "user", "content": "hi"}]})
            assert status == 400 and "sentence-embedding model" in body["error"]["message"], body
    finally:
        srv.stop()
