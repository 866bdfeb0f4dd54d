"""The OpenAI-compatible HTTP API, spoken to by the official `openai` package and by raw HTTP,
against a real Serve deployment of a tiny model; and `saas/openai` deployments that forward to it."""
import http.client
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import API_KEY, hang_up_mid_stream

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def oai(api_server):
    from openai import OpenAI

    return OpenAI(base_url=api_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def post(server, path, body, token=API_KEY, raw=None, headers=None):
    """POST and return (status, parsed JSON or text)."""
    data = raw if raw is not None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(server.url + path, data=data, headers=h, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def served(llm, name):
    return llm.get_meta(name, refresh=True)["requests_served"]


def assert_openai_error(status, body, expected_status, code=None, param=None):
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert err["message"] and err["type"] and "Traceback" not in err["message"]
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err


# -- the official client ------------------------------------------------------------------------------
def test_openai_client_models_chat_stream_embeddings(oai, api_model, llm):
    models = oai.models.list()
    card = next(m for m in models.data if m.id == api_model)
    assert card.owned_by == "byzer-like" and card.model_extra["metadata"]["family"] == "llama"

    out = oai.chat.completions.create(model=api_model, messages=HI, max_tokens=8, temperature=0)
    assert out.object == "chat.completion" and out.model == api_model
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # the same answer as the Python client's, greedy
    direct = llm.chat_oai(HI, model=api_model, llm_config={"temperature": 0, "max_new_tokens": 8})[0].output
    assert out.choices[0].message.content == direct

    chunks = list(oai.chat.completions.create(model=api_model, messages=HI, max_tokens=12, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 3, chunks
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 12
    streamed = "".join(texts)
    assert streamed == oai.chat.completions.create(model=api_model, messages=HI, max_tokens=12,
                                                   temperature=0).choices[0].message.content

    emb = oai.embeddings.create(model=api_model, input=["red", "green", "blue"])  # the package asks for base64
    assert [d.index for d in emb.data] == [0, 1, 2]
    vec = np.array(emb.data[1].embedding)
    assert vec.shape == (128,) and abs(np.linalg.norm(vec) - 1) < 1e-4
    np.testing.assert_allclose(vec, llm.emb(api_model, ["green"])[0], atol=1e-5)
    floats = oai.embeddings.create(model=api_model, input="green", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vec, atol=1e-6)
    # usage counts the inputs' tokens with the model's tokenizer (it was always 0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm.get_meta(api_model)["model_dir"])
    want = sum(len(tok.encode(t, add_special_tokens=False)) for t in ("red", "green", "blue"))
    assert emb.usage.prompt_tokens == emb.usage.total_tokens == want > 0


def test_completions_continue_the_prompt_as_is(oai, api_model):
    out = oai.completions.create(model=api_model, prompt="def add(a, b):", max_tokens=6, temperature=0)
    assert out.object == "text_completion" and out.choices[0].text and out.usage.completion_tokens <= 6
    parts = list(oai.completions.create(model=api_model, prompt="def add(a, b):", max_tokens=6, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == out.choices[0].text


def test_many_embeddings_in_batches(oai, api_model):
    texts = [f"text number {i}" for i in range(40)]  # three batches on the server
    emb = oai.embeddings.create(model=api_model, input=texts, encoding_format="float")
    assert [d.index for d in emb.data] == list(range(40))
    one = oai.embeddings.create(model=api_model, input=texts[33], encoding_format="float").data[0].embedding
    np.testing.assert_allclose(emb.data[33].embedding, one, atol=1e-6)


def test_health_and_one_model(api_server, api_model):
    status, body = _get(api_server, "/health")
    assert status == 200 and body["status"] == "ok" and body["models"] >= 1
    status, body = _get(api_server, f"/v1/models/{api_model}")
    assert status == 200 and body["id"] == api_model and body["metadata"]["requests_in_flight"] >= 0
    assert_openai_error(*_get(api_server, "/v1/models/nope"), 404, code="model_not_found")


def _get(server, path, token=API_KEY):
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# -- refusals ---------------------------------------------------------------------------------------
def test_requests_without_the_key_are_refused_before_anything_runs(api_server, api_model, llm):
    before = served(llm, api_model)
    body = {"model": api_model, "messages": HI, "max_tokens": 4}
    for token in (None, "wrong-key"):
        status, err = post(api_server, "/v1/chat/completions", body, token=token)
        assert_openai_error(status, err, 401, code="invalid_api_key")
        assert_openai_error(*post(api_server, "/v1/embeddings", {"model": api_model, "input": "x"}, token=token), 401)
        assert_openai_error(*_get(api_server, "/v1/models", token=token), 401)
    assert served(llm, api_model) == before  # nothing was generated
    # the chat page itself is public (it holds no data; it asks for the key)
    with urllib.request.urlopen(api_server.url + "/", timeout=30) as r:
        assert r.status == 200 and "html" in r.headers["content-type"]
        assert "default-src 'self'" in r.headers["content-security-policy"]
    with urllib.request.urlopen(api_server.url + "/static/chat.js", timeout=30) as r:
        assert r.status == 200 and r.headers["cache-control"] == "no-cache"


def test_bad_requests_get_4xx_in_openai_format(api_server, api_model, llm):
    chat = "/v1/chat/completions"
    before = served(llm, api_model)
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": HI, "max_tokens": 100_000}), 400,
                        code="invalid_value", param="max_tokens")
    assert_openai_error(*post(api_server, chat, {"model": "no_such_model", "messages": HI}), 404, code="model_not_found")
    assert_openai_error(*post(api_server, chat, None, raw=b'{"model": "x", "messages": ['), 400, code="invalid_json")
    assert_openai_error(*post(api_server, chat, None, raw=b"[1, 2]"), 400, code="invalid_json")
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": HI, "temperature": 3}), 400,
                        param="temperature")
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": []}), 400, param="messages")
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": HI, "n": 2}), 400,
                        code="unsupported_parameter", param="n")
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": HI,
                                                 "tools": [{"type": "function", "function": {"name": "f"}}]}), 400,
                        param="tools")
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": [{"role": "robot", "content": "x"}]}), 400)
    assert_openai_error(*post(api_server, "/v1/embeddings", {"model": api_model, "input": [1, 2, 3]}), 400)
    assert_openai_error(*post(api_server, "/v1/embeddings", {"model": api_model, "input": ["ok", ""]}), 400, param="input")
    assert_openai_error(*post(api_server, "/v1/completions", {"model": api_model, "prompt": ["a", "b"]}), 400, param="prompt")
    assert_openai_error(*post(api_server, "/v1/nothing/here", {}), 404)
    # a body that announces more than the cap is refused (413) before it is read
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=60)
    try:
        conn.putrequest("POST", chat)
        conn.putheader("Authorization", f"Bearer {API_KEY}")
        conn.putheader("Content-Length", str(3 << 20))
        conn.endheaders()
        r = conn.getresponse()
        assert_openai_error(r.status, json.loads(r.read()), 413, code="request_too_large")
    finally:
        conn.close()
    assert served(llm, api_model) == before  # none of these reached the model
    # a prompt longer than the model's context: refused by the model, still a 400 (plain and streamed)
    long = [{"role": "user", "content": "word " * 2000}]
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": long}), 400, code="context_length_exceeded")
    assert_openai_error(*post(api_server, chat, {"model": api_model, "messages": long, "stream": True}), 400,
                        code="context_length_exceeded")


def test_chunked_body_over_the_cap_is_refused(api_server, api_model):
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=60)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Authorization", f"Bearer {API_KEY}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        piece = b"x" * 65536
        try:
            for _ in range(40):  # 2.5 MiB, no Content-Length
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before we finished
        r = conn.getresponse()
        assert_openai_error(r.status, json.loads(r.read()), 413, code="request_too_large")
    finally:
        conn.close()


def test_client_disconnect_stops_the_generation(api_server, api_model, llm):
    """A client that goes away mid-stream cancels the generation on the replica."""
    import time

    before = llm.get_meta(api_model, refresh=True)
    hang_up_mid_stream(api_server.port, {"model": api_model, "messages": HI, "max_tokens": 480, "min_tokens": 480,
                                         "temperature": 0.7}, API_KEY)
    deadline = time.monotonic() + 60
    while True:
        meta = llm.get_meta(api_model, refresh=True)
        if meta["requests_cancelled"] > before["requests_cancelled"] and meta["requests_in_flight"] == 0:
            break
        assert time.monotonic() < deadline, f"the generation was not cancelled: {meta}"
        time.sleep(0.2)
    assert meta["last_cancelled_after_pieces"] < 480


def test_key_rules():
    from byzer_like.api.server import is_loopback_host, resolve_key

    assert resolve_key("127.0.0.1", None, {}) == (None, False)  # loopback: open unless a key is set
    assert resolve_key("127.0.0.1", None, {"BYZER_LIKE_API_KEY": "k"}) == ("k", False)
    assert resolve_key("0.0.0.0", "mine", {}) == ("mine", False)
    key, generated = resolve_key("0.0.0.0", None, {})  # exposed: always a key
    assert generated and len(key) >= 32 and key != resolve_key("0.0.0.0", None, {})[0]
    assert is_loopback_host("localhost") and is_loopback_host("::1") and not is_loopback_host("10.0.0.5")


def test_a_second_server_on_a_busy_port_fails_clearly(api_server, llm):
    from byzer_like.errors import ConfigError

    with pytest.raises(ConfigError, match="already running"):
        llm.serve(port=0)
    status, body = _get(api_server, "/health")  # the running one is untouched
    assert status == 200


# -- saas/openai: a deployment that forwards to an OpenAI-compatible endpoint -------------------------
@pytest.mark.heavy  # a second deployment chained over HTTP; the remote back end's requests are in test_remote_fields
def test_saas_openai_forwards_to_this_projects_server(api_server, api_model, llm):
    from byzer_like.errors import ConfigError, DeployError

    llm.setup_num_workers(1)
    params = {"saas.base_url": api_server.base_url, "saas.api_key": API_KEY, "saas.model": api_model}
    llm.deploy(None, "saas/openai", "remote_chat", params)
    try:
        greedy = {"temperature": 0, "max_new_tokens": 8}
        local = llm.chat_oai(HI, model=api_model, llm_config=greedy)[0]
        remote = llm.chat_oai(HI, model="remote_chat", llm_config=greedy)[0]
        assert remote.output == local.output and remote.metadata["output_tokens"] == local.metadata["output_tokens"]
        pieces = list(llm.stream_chat_oai(HI, model="remote_chat", llm_config=greedy))
        assert len(pieces) > 2 and "".join(p for p, _ in pieces) == local.output
        np.testing.assert_allclose(llm.emb("remote_chat", ["blue"])[0], llm.emb(api_model, ["blue"])[0], atol=1e-5)
        # SQL treats it like a local model
        df = llm.sql("""
            select 'hi' as q union all select 'hello' union all select 'hey' as questions;
            select llm_result(remote_chat(llm_param(map("instruction", q, "temperature", "0", "max_new_tokens", "6"))))
              as r from questions as answers;""")
        assert len(df) == 3 and all(isinstance(r, str) and r for r in df["r"])
        # its key is not shown to anyone who lists the models
        meta = llm.get_meta("remote_chat")
        assert meta["infer_params"]["saas.api_key"] == "***" and meta["remote_model"] == api_model
        assert API_KEY not in json.dumps(_get(api_server, "/v1/models")[1])
    finally:
        llm.undeploy("remote_chat")
    with pytest.raises(DeployError, match="does not serve saas.model 'nope'.*" + api_model):
        llm.deploy(None, "saas/openai", "remote_bad", {**params, "saas.model": "nope"})
    with pytest.raises(DeployError, match="refused the key"):
        llm.deploy(None, "saas/openai", "remote_bad", {**params, "saas.api_key": "wrong"})
    with pytest.raises(ConfigError, match="saas.base_url"):
        llm.deploy(None, "saas/openai", "remote_bad", {"saas.model": api_model})
    with pytest.raises(ConfigError, match="not an http"):
        llm.deploy(None, "saas/openai", "remote_bad", {**params, "saas.base_url": "file:///etc/passwd"})
    assert not llm.is_model_exist("remote_bad")


class _FlakyUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that rate-limits the first requests (429, Retry-After: 0)."""

    refusals = 2
    seen: list = []

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send(200, {"object": "list", "data": [{"id": "up", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        if type(self).refusals > 0:
            type(self).refusals -= 1
            self._send(429, {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}},
                       [("Retry-After", "0")])
            return
        text = "echo: " + body["messages"][-1]["content"]
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "up",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


def test_saas_plugin_backs_off_on_rate_limits():
    """The plugin retries 429s (openai's back-off, Retry-After honoured) and then gets its answer;
    with retries exhausted it is a BackPressureError."""
    from byzer_like.errors import BackPressureError
    from byzer_like_models.saas_openai import plugin

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyUpstream)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        client, cfg = plugin.init_model("", {"saas.base_url": url, "saas.model": "up", "saas.max_retries": "3"}, {})
        _FlakyUpstream.refusals, _FlakyUpstream.seen = 2, []
        [(text, meta)] = plugin.batch_chat(client, cfg, [{"ins": "ping", "his": [], "temperature": 0.5, "top_p": 1.0,
                                                          "kwargs": {"max_new_tokens": 5, "stop": ["\n"]}}])
        assert text == "echo: ping" and meta["output_tokens"] == 2 and len(_FlakyUpstream.seen) == 3
        assert _FlakyUpstream.seen[-1]["max_tokens"] == 5 and _FlakyUpstream.seen[-1]["stop"] == ["\n"]
        client, cfg = plugin.init_model("", {"saas.base_url": url, "saas.model": "up", "saas.max_retries": "1"}, {})
        _FlakyUpstream.refusals, _FlakyUpstream.seen = 5, []
        with pytest.raises(BackPressureError, match="rate limiting"):
            plugin.batch_chat(client, cfg, [{"ins": "ping", "his": [], "kwargs": {}}])
        assert len(_FlakyUpstream.seen) == 2  # one try and one retry
    finally:
        httpd.shutdown()
