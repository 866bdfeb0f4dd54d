"""Remote providers as they are (issue 23, item 10): a provider that refuses an optional request field
(`stream_options`, as some OpenAI-compatible ones do with a 400) still streams: the request goes again once
without the field and the deployment stops sending it; `saas.omit_fields` leaves fields out from the start.
Against a small local HTTP server that speaks the chat-completions protocol (JSON and server-sent events)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from byzer_like.errors import ConfigError


class _Picky(BaseHTTPRequestHandler):
    """Refuses `stream_options` (and `seed`) with a 400 as such providers do; answers "echo: <text>"."""

    refuses = ("stream_options", "seed")
    seen: list = []

    def log_message(self, *args):
        pass

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._json(200, {"object": "list", "data": [{"id": "up", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        bad = [f for f in type(self).refuses if f in body]
        if bad:
            self._json(400, {"error": {"message": f"Unrecognized request argument supplied: {bad[0]}",
                                       "type": "invalid_request_error", "param": None, "code": None}})
            return
        text = "echo: " + body["messages"][-1]["content"]
        if not body.get("stream"):
            self._json(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "up",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece, finish in ((text[:4], None), (text[4:], "stop")):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "up",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def upstream():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Picky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Picky.seen, _Picky.refuses = [], ("stream_options", "seed")
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _plugin():
    from byzer_like_models.saas_openai import plugin

    return plugin


def test_streaming_retries_once_without_a_refused_field_and_remembers_it(upstream):
    plugin = _plugin()
    client, cfg = plugin.init_model("", {"saas.base_url": upstream, "saas.model": "up", "saas.max_retries": "0"}, {})
    *_, (text, meta) = plugin.stream_chat(client, cfg, "ping", [], temperature=0.5, max_new_tokens=5)
    assert text == "echo: ping" and meta["finish_reason"] == "stop"
    assert ["stream_options" in b for b in _Picky.seen] == [True, False]  # refused once, then sent without it
    assert cfg.omitted == {"stream_options"}
    _Picky.seen = []
    *_, (again, _) = plugin.stream_chat(client, cfg, "pong", [], temperature=0.5)
    assert again == "echo: pong" and len(_Picky.seen) == 1 and "stream_options" not in _Picky.seen[0]


def test_a_batch_drops_a_refused_seed_and_other_errors_stay_errors(upstream):
    plugin = _plugin()
    client, cfg = plugin.init_model("", {"saas.base_url": upstream, "saas.model": "up", "saas.max_retries": "0"}, {})
    rows = [{"ins": f"q{i}", "his": [], "temperature": 0.7, "top_p": 1.0, "kwargs": {"seed": 7}} for i in range(3)]
    answers = plugin.batch_chat(client, cfg, rows)
    assert [a for a, _ in answers] == ["echo: q0", "echo: q1", "echo: q2"] and cfg.omitted == {"seed"}
    _Picky.refuses = ("max_tokens",)  # a field the answer needs is not dropped: the row gets the provider's error
    [(text, meta)] = plugin.batch_chat(client, cfg, [{"ins": "q", "his": [], "kwargs": {"max_new_tokens": 3}}])
    assert text is None and "Unrecognized request argument supplied: max_tokens" in meta["error"]


def test_saas_omit_fields_leaves_fields_out_from_the_start(upstream):
    plugin = _plugin()
    params = {"saas.base_url": upstream, "saas.model": "up", "saas.omit_fields": "stream_options, seed"}
    client, cfg = plugin.init_model("", params, {})
    *_, (text, _) = plugin.stream_chat(client, cfg, "ping", [], temperature=0.5, seed=3)
    assert text == "echo: ping" and len(_Picky.seen) == 1
    assert "stream_options" not in _Picky.seen[0] and "seed" not in _Picky.seen[0]


def test_an_unknown_field_to_omit_is_refused_with_the_valid_ones():
    plugin = _plugin()
    with pytest.raises(ConfigError, match=r"'stream_option'.*did you mean 'stream_options'.*seed, top_p"):
        plugin.check_model_dir("", {"saas.base_url": "http://127.0.0.1:1/v1", "saas.model": "up",
                                    "saas.omit_fields": "stream_option"})
