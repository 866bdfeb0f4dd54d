"""Field report 5: every error a user can cause is one line that names what is wrong and says what to do, on
every surface it can reach: SQL (the session's error), the Python client (the exception), the CLI (stderr,
exit status, no traceback), and the HTTP API, plain (OpenAI's error JSON) and streamed (a 4xx before the
stream starts, or an `error` event then [DONE] once it has).

One table of user-caused errors, each with the surfaces it applies to; every (error, surface) pair is a test.
The faces are the real ones over a cluster that is not there: Ray's calls are replaced at the serving
manager by fake deployments (`m` answers, `emb` is an embedding model, `flaky` dies mid-stream), so every
check, parse and message on the way is the real code. (A SQL error also shows its source line and a caret
under the column: the two lines after the message, and only those, are allowed.)
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from byzer_like.errors import (
    ByzerError, InferenceError, ModelNotDeployedError, NotAChatModelError, PromptTooLongError,
)

FAKE_MODELS = ("m", "emb", "flaky")
REPR_LEAK = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>|Traceback \(most recent call last\)")


# -- fake deployments at the serving manager ---------------------------------------------------------
def _answer(name: str, request: dict) -> dict:
    if name == "emb":
        raise NotAChatModelError("bge")
    if request["ins"].startswith("LONG"):
        return {"error": PromptTooLongError("the prompt has 9000 tokens, which leaves no room for an answer within "
                                            "max_length=2048 (model context 2048); shorten it or raise max_length")
                .args[0], "error_code": "prompt_too_long"}
    return {"output": f"echo:{request['ins']}", "metadata": {"input_tokens": 1, "output_tokens": 1}}


def _died(name: str) -> BaseException:
    """What a replica that died mid-answer becomes, through the manager's real translation."""
    from byzer_like.serving import manager

    crash = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: ServeReplica\n"
                         "\tpid=1234\nTraceback (most recent call last):\n  File \"x.py\", line 1")
    return manager.translate(crash, name, 60)


class FakeHandle:
    def __init__(self, name: str):
        self.name = name

    def call(self, method: str, *args: Any) -> Any:
        if method == "meta":
            return {"num_workers": 1, "max_batch_size": 8, "model_dir": "/x", "plugin": "llama", "infer_params": {},
                    "pretrained_model_type": "llama", "udf_name": self.name}
        if method == "chat":
            return _answer(self.name, args[0])
        if method == "embed":
            vectors = [[1.0, 0.0] for _ in args[0]]
            return {"vectors": vectors, "prompt_tokens": len(args[0])} if len(args) > 1 and args[1] else vectors
        raise AssertionError(method)

    def stream(self, request: dict):
        res = _answer(self.name, request)
        if "error" in res:
            from byzer_like.errors import InvalidRequestError

            raise InvalidRequestError(res["error"], code=res["error_code"])
        yield {"delta": "echo:"}
        if self.name == "flaky":
            raise _died(self.name)
        yield {"delta": request["ins"]}
        yield {"delta": "", "metadata": {"input_tokens": 1, "output_tokens": 2, "finish_reason": "stop"}, "done": True}


def _handle(name: str) -> FakeHandle:
    if name not in FAKE_MODELS:
        raise ModelNotDeployedError(name, FAKE_MODELS)
    return FakeHandle(name)


class FakeAsyncBackend:
    """`runtime.aio.AsyncRuntime`'s members over the fake deployments, for the HTTP API."""

    async def models(self, *, fresh: bool = False) -> dict[str, str]:
        return dict.fromkeys(FAKE_MODELS, "RUNNING")

    async def require(self, name: str) -> FakeHandle:
        return _handle(name)

    async def call(self, name: str, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        return _handle(name).call(method, *args)

    async def chat(self, name: str, request: dict) -> dict:
        return _handle(name).call("chat", request)

    async def adapters_of(self, model_dir: str) -> list:
        return []

    async def stream(self, name: str, request: dict):
        for item in _handle(name).stream(request):
            yield item


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A workspace, a client and a SQL session over it, with Ray's calls replaced by the fake deployments;
    the HTTP API (the real application) over FakeAsyncBackend on a loopback port."""
    from byzer_like import ByzerLLM, cluster
    from byzer_like.session import Session
    from byzer_like.runtime import Runtime
    from byzer_like.serving import manager

    ws = tmp_path_factory.mktemp("errors_ws")
    (ws / "q.jsonl").write_text('{"q": "hello"}\n{"q": "LONG text"}\n', encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BYZER_LIKE_HOME", str(ws))
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setattr(Runtime, "connect", lambda self: {})
        mp.setattr(cluster, "reachable", lambda *a, **k: True)
        mp.setattr(cluster, "disconnect", lambda *a, **k: None)
        mp.setattr(manager, "list_deployments", lambda: dict.fromkeys(FAKE_MODELS, "RUNNING"))
        mp.setattr(manager, "deploy", lambda spec, setup, **kw: None)
        mp.setattr(manager, "get_handle", _handle)

        def undeploy(name):
            _handle(name)

        mp.setattr(manager, "undeploy", undeploy)
        mp.setattr(manager, "call", lambda handle, method, *args, **kw: handle.call(method, *args))
        mp.setattr(manager, "stream", lambda handle, request, **kw: handle.stream(request))
        mp.setattr(manager, "run_batched", lambda handle, requests, **kw: [handle.call("chat", r) for r in requests])
        llm = ByzerLLM(workspace=ws)
        session = Session(llm, progress=False)
        session.sql("load json.`q.jsonl` as q;")
        api = _start_api()
        yield {"ws": ws, "llm": llm, "session": session, "api": api}
        api["server"].should_exit = True
        api["thread"].join(timeout=10)
        session.close()


def _start_api() -> dict:
    import socket

    import uvicorn

    from byzer_like.api.app import build_app
    from byzer_like.api.settings import ApiSettings

    app = build_app(ApiSettings(api_key_sha256=None, max_tokens_cap=4096), FakeAsyncBackend())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test's HTTP server did not start"
        time.sleep(0.02)
    return {"server": server, "thread": thread, "url": f"http://127.0.0.1:{sock.getsockname()[1]}"}


# -- the table of errors -----------------------------------------------------------------------------
@dataclass
class Case:
    """One user-caused error: `what` (words the message must hold: what is wrong), `todo` (a pattern for what
    to do), and how to cause it on each surface it applies to (None: it cannot happen there)."""

    id: str
    what: tuple[str, ...]
    todo: str
    sql: str | None = None
    client: Callable[[Any], Any] | None = None
    cli: list[str] | None = None
    http: tuple[str, dict] | None = None  # path and body; the streamed variant adds "stream": true
    sql_position: bool = False  # a SQL error that points at a line and column
    stream_only: bool = False  # the error happens once the stream has started (an SSE error event)
    extra: dict = field(default_factory=dict)


HI = [{"role": "user", "content": "hi"}]


def _in_ws(llm: Any, rel: str) -> str:
    """An absolute path inside the client's workspace (the client reads relative paths from the current folder)."""
    return str(llm.runtime.workspace.root / rel)
DEPLOY = 'run command as LLM.`` where action="infer" and udfName="x" and '
CASES = [
    Case("model_not_deployed", ("nope",), r"deployed models: emb, flaky, m",
         sql='select nope(llm_param(map("instruction", q))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="nope"), cli=["chat", "nope", "hi"],
         http=("/v1/chat/completions", {"model": "nope", "messages": HI})),
    Case("undeploy_unknown", ("nope",), r"deployed models: emb, flaky, m", sql="!byzerllm model remove nope;",
         client=lambda llm: llm.undeploy("nope"), cli=["undeploy", "nope"]),
    Case("unknown_deploy_option", ("dtpye",), r"did you mean 'dtype'\?.*valid options:",
         sql=DEPLOY + 'pretrainedModelType="llama" and localModelDir="models/m" and dtpye="float32";',
         client=lambda llm: llm.deploy(_in_ws(llm, "models/m"), "llama", "x", {"dtpye": "float32"}),
         cli=["deploy", "models/m", "--type", "llama", "--name", "x", "--param", "dtpye=float32"]),
    Case("unknown_request_option", ("temprature",), r"did you mean 'temperature'\?.*valid options:",
         sql='select m(llm_param(map("instruction", q, "temprature", "0.1"))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="m", llm_config={"temprature": 0.1})),
    Case("unknown_setup_key", ("num_wokers",), r"did you mean 'num_workers'\?.*valid options:",
         sql='!byzerllm setup "num_wokers=2";', client=lambda llm: llm.setup("num_wokers", 2),
         cli=["deploy", "models/m", "--type", "llama", "--name", "x", "--set", "num_wokers=2"]),
    Case("unknown_model_type", ("lama2",), r"did you mean 'llama2'\?",
         sql=DEPLOY + 'pretrainedModelType="lama2" and localModelDir="models/m";',
         client=lambda llm: llm.deploy(_in_ws(llm, "models/m"), "lama2", "x", {}),
         cli=["deploy", "models/m", "--type", "lama2", "--name", "x"]),
    Case("model_dir_missing", ("does not exist",), r"give the folder that holds config\.json",
         sql=DEPLOY + 'pretrainedModelType="llama" and localModelDir="models/missing";',
         client=lambda llm: llm.deploy(_in_ws(llm, "models/missing"), "llama", "x", {}),
         cli=["deploy", "models/missing", "--type", "llama", "--name", "x"]),
    Case("adapter_dir_missing", ("adapter_dir",), r"LoRA adapter \(adapter_config\.json",
         extra={"needs_model": True},
         client=lambda llm: llm.deploy(_in_ws(llm, "models/m"), "llama", "x",
                                       {"adapter_dir": _in_ws(llm, "models/no_adapter")}),
         cli=["deploy", "models/m", "--type", "llama", "--name", "x", "--param", "adapter_dir=models/no_adapter"]),
    Case("sql_syntax", ("expected",), r".", sql="load json.`q.jsonl` q;", cli=["run", "{script}"], sql_position=True),
    Case("missing_table", ("nope",), r"tables in this session: q", sql="select * from nope as t;",
         cli=["run", "{script}"], sql_position=True),
    Case("wrong_type_request", ("temperature",), r"number|should be|invalid float value.*--help",
         sql='select m(llm_param(map("instruction", q, "temperature", "hot"))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="m", llm_config={"temperature": "hot"}),
         cli=["chat", "m", "hi", "--temperature", "hot"],
         http=("/v1/chat/completions", {"model": "m", "messages": HI, "temperature": "hot"})),
    Case("out_of_range_request", ("temperature",), r"less than or equal to 2|at most 2|between",
         sql='select m(llm_param(map("instruction", q, "temperature", "3"))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="m", llm_config={"temperature": 3}),
         http=("/v1/chat/completions", {"model": "m", "messages": HI, "temperature": 3})),
    Case("wrong_type_setup", ("num_workers",), r"whole number|integer|should be|invalid int value.*--help",
         sql='!byzerllm setup "num_workers=two";', client=lambda llm: llm.setup("num_workers", "two"),
         cli=["deploy", "models/m", "--type", "llama", "--name", "x", "--num-workers", "two"]),
    Case("bad_response_format", ("response_format",), r"json_object|json_schema",
         sql='select m(llm_param(map("instruction", q, "response_format", "{bad"))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="m", llm_config={"response_format": {"type": "xml"}}),
         cli=["query", "--model", "m", "--query", "hi", "--response-format", "xml"],
         http=("/v1/chat/completions", {"model": "m", "messages": HI, "response_format": {"type": "xml"}})),
    Case("max_tokens_over_cap", ("max_tokens=100000",), r"ask for fewer",
         http=("/v1/chat/completions", {"model": "m", "messages": HI, "max_tokens": 100000})),
    Case("max_tokens_not_positive", ("max_new_tokens",), r"greater than or equal to 1|at least 1",
         sql='select m(llm_param(map("instruction", q, "max_new_tokens", "0"))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="m", llm_config={"max_new_tokens": 0}),
         http=("/v1/chat/completions", {"model": "m", "messages": HI, "max_tokens": 0}),
         extra={"http_what": "max_tokens"}),
    Case("prompt_too_long", ("9000 tokens",), r"shorten it or raise max_length",
         sql='select m(llm_param(map("instruction", q))) as r from q where q like \'LONG%\' as t;',
         client=lambda llm: llm.chat_oai("LONG text", model="m"), cli=["chat", "m", "LONG text"],
         http=("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "LONG text"}]})),
    Case("chat_on_embedding_model", ("sentence-embedding model",), r"embedding_query",
         sql='select emb(llm_param(map("instruction", q))) as r from q as t;',
         client=lambda llm: llm.chat_oai(HI, model="emb"), cli=["chat", "emb", "hi"],
         http=("/v1/chat/completions", {"model": "emb", "messages": HI})),
    Case("unknown_job", ("nope",), r"recent jobs", sql="!byzerllm job status nope;",
         client=lambda llm: llm.jobs.status("nope"), cli=["jobs", "status", "nope"]),
    Case("replica_died_mid_stream", ("model 'flaky' failed",), r"retry",
         client=lambda llm: list(llm.stream_chat_oai(HI, model="flaky")), cli=["chat", "flaky", "hi"],
         http=("/v1/chat/completions", {"model": "flaky", "messages": HI}), stream_only=True),
]
SURFACES = ("sql", "client", "cli", "http", "http_stream")


def _pairs():
    for case in CASES:
        for surface in SURFACES:
            given = case.http if surface.startswith("http") else getattr(case, surface)
            if given is None or (case.stream_only and surface == "http"):
                continue
            yield pytest.param(case, surface, id=f"{case.id}-{surface}")


def check_message(text: str, case: Case, *, position: bool = False, what: tuple[str, ...] | None = None) -> None:
    """One line holding what is wrong and what to do; a SQL error's source line and caret may follow it."""
    assert not REPR_LEAK.search(text), text
    lines = text.rstrip("\n").split("\n")
    head = lines[0]
    if position:
        assert re.match(r"(error: )?(\S+: )?line \d+, column \d+: ", head), text
    if len(lines) > 1:  # only a SQL error's source line and caret
        assert len(lines) == 3 and lines[1].startswith("  ") and lines[2].strip() == "^", text
    for word in what or case.what:
        assert word in head, (word, text)
    assert re.search(case.todo, head), (case.todo, text)


# -- the surfaces ------------------------------------------------------------------------------------
def _sql(faces, case: Case) -> str:
    with pytest.raises(ByzerError) as e:
        faces["session"].sql(case.sql)
    return str(e.value)


def _client(faces, case: Case) -> str:
    if case.extra.get("needs_model"):
        _tiny_model_dir(faces)
    with pytest.raises(ByzerError) as e:
        case.client(faces["llm"])
    return str(e.value)


def _tiny_model_dir(faces) -> None:
    """A directory that passes the llama plugin's checks without loading (config, weights, tokenizer files)."""
    d = faces["ws"] / "models" / "m"
    if not d.exists():
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        (d / "model.safetensors").write_bytes(b"")
        (d / "tokenizer.json").write_text("{}")


def _cli(faces, case: Case, capsys, monkeypatch) -> str:
    from byzer_like import cli

    monkeypatch.chdir(faces["ws"])
    args = list(case.cli)
    if "{script}" in args:  # a SQL error through `byzer-like run script.sql`
        script = faces["ws"] / f"{case.id}.sql"
        script.write_text("load json.`q.jsonl` as q;\n" + case.sql + "\n", encoding="utf-8")
        args[args.index("{script}")] = str(script)
    capsys.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    assert rc not in (0, None), out
    assert out.err.startswith("error: "), out.err
    assert "Traceback" not in out.err and "usage:" not in out.err, out.err
    return out.err


def _post(url: str, body: dict) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


def _http(faces, case: Case, stream: bool) -> str:
    path, body = case.http
    status, kind, text = _post(faces["api"]["url"] + path, {**body, "stream": stream})
    if case.stream_only:  # the stream started: an error event, then [DONE], nothing cut
        assert status == 200 and kind.startswith("text/event-stream"), (status, text)
        events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and text.endswith("\n\n"), text
        errors = [json.loads(e) for e in events[:-1] if e.startswith("{") and "error" in json.loads(e)]
        assert len(errors) == 1 and events[-2] == json.dumps(errors[0], ensure_ascii=False), events
        err = errors[0]["error"]
    else:  # refused before anything was sent: a 4xx in OpenAI's format, also for a streamed request
        assert 400 <= status < 500 and kind.startswith("application/json"), (status, text)
        err = json.loads(text)["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"], err
    return err["message"]


@pytest.mark.parametrize("case, surface", list(_pairs()))
def test_every_error_is_one_line_that_says_what_to_do(faces, case, surface, capsys, monkeypatch):
    if surface == "sql":
        text = _sql(faces, case)
    elif surface == "client":
        text = _client(faces, case)
    elif surface == "cli":
        if case.extra.get("needs_model"):
            _tiny_model_dir(faces)
        text = _cli(faces, case, capsys, monkeypatch)
    else:
        text = _http(faces, case, surface == "http_stream")
    what = (case.extra["http_what"],) if surface.startswith("http") and "http_what" in case.extra else None
    check_message(text, case, position=case.sql_position and surface in ("sql", "cli"), what=what)


def test_the_table_covers_every_surface():
    covered = {s for c in CASES for s in SURFACES
               if (c.http if s.startswith("http") else getattr(c, s)) is not None}
    assert covered == set(SURFACES)
    assert len(CASES) >= 15


def test_a_streamed_error_mid_answer_keeps_what_was_sent(faces):
    status, _, text = _post(faces["api"]["url"] + "/v1/chat/completions",
                            {"model": "flaky", "messages": HI, "stream": True})
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert status == 200 and json.loads(events[1])["choices"][0]["delta"]["content"] == "echo:"
    assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"


def test_a_replica_that_died_is_an_inference_error_naming_the_model():
    err = _died("flaky")
    assert isinstance(err, InferenceError) and "\n" not in str(err)
