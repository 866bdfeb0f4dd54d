#!/usr/bin/env python3
"""HTTP API benchmark: what the OpenAI-compatible HTTP API costs per request, beyond the Serve handle and the plugin.

    .venv/bin/python bench/http_api.py [--calls 30] [--stream-calls 30] [--stream-tokens 32] [--size tiny|small]
                                       [--cpus-per-worker 2] [--omp-wait-policy PASSIVE] [--no-openai] [--json OUT]

(No file in bench/ may be named after a standard-library module: a script's directory comes first on
`sys.path`, in the driver and in the Ray workers, which get the driver's script directory on theirs.
This file was bench/http.py, and as such it broke every benchmark: Ray's own `import http.client` found it.)

What one run does, in one process, on the same model and the same request:

1. Builds a random-init llama (`byzer_like.tiny.make_tiny`, size tiny = 1.5M or small = 5.5M
   parameters) inside a temporary workspace (`BYZER_LIKE_HOME`), starts an *embedded* Ray cluster
   (`ByzerLLM()`), deploys the model on one replica with `cpus_per_worker` CPUs (default 2), probes
   the replica's torch thread count (as bench/inference.py does) and gives this process the same, then
   starts the HTTP API with `ByzerLLM().serve(port=0, api_key=...)` (uvicorn inside a Serve ingress
   replica on this node) and loads the same model in-process (`registry.load("llama")`, `init_model`).
2. One-token latency: the same greedy request (`temperature 0`, one new token) through
     direct   `plugin.batch(model, tokenizer, [request])` in this process (no Ray, no Serve);
     handle   `ByzerLLM.chat_oai` (a Serve handle call to the replica's `chat`);
     http     `POST /v1/chat/completions` (`max_tokens: 1`) on one keep-alive `http.client`
              connection with TCP_NODELAY (the lowest client-side cost; it reaches the same `chat`);
     openai   the same request with the official `openai` package (`max_retries=0`; its own httpx
              keep-alive pool), i.e. what a typical client sees;
     health   `GET /health` on the keep-alive connection: the HTTP stack alone, no model call.
   `--calls` timed calls of each after 3 warm-ups, the paths interleaved and their order rotated every
   round, so that load from elsewhere hits all alike; medians (and p90, min..max) are reported.
3. Streamed time to first token: a `--stream-tokens` answer (default 32; `min_tokens` = max so every
   path generates exactly that many) streamed through
     direct   `plugin.stream` (first item with text);
     handle   `ByzerLLM.stream_chat_oai` (first non-empty piece);
     http     `"stream": true` on the keep-alive connection: from sending the request to the first
              `data:` line whose delta carries content (the role-only first chunk does not count);
     openai   the `openai` package's stream (first chunk with `delta.content`).
   The same alternation, `--stream-calls` timed calls after 2 warm-ups. The total time of each
   stream (to the last piece / `data: [DONE]`) is reported too, with the number of content pieces, so
   the per-piece cost of SSE over the handle's stream is visible.
4. Checks that all paths give the same answer (greedy), and counts the keep-alive connection's
   (re)connects (1 = every request reused one connection).

Reading the output: the latency table gives each path's median; `http - handle` is what the HTTP
layer (client, uvicorn, FastAPI, JSON, pydantic validation, and the ingress's own handle call)
adds to one request over a Serve handle call from this process; `handle - direct` is Serve's own
cost (inference.py's "Serve overhead per request"). `health` is the HTTP floor with no model call,
so `http - health` is the ingress's handle call plus the endpoint's work. CPU ms per call (the
replica's, the ingress's and this process's, from /proc at 10 ms resolution, averaged) show where
time is burnt rather than waited. TTFT rows: `http - handle` should be about the one-token figure's;
the total-stream rows divided by the pieces give the per-piece cost. No figure is asserted; the
machine is small and shared (see bench/inference.py's docstring on noise and OMP_WAIT_POLICY), so
run more than once and look at the spread.

`--json OUT` writes every figure to OUT (latency_ms, ttft_ms, stream_total_ms with their per-call
runs, the overheads and ratios, CPU per call, connects, answers_match, machine, timestamp).
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from _common import Setup, add_run_args, chat_requests, make_rows, parser, run_in_env
from _report import Timings, log, median_ms, print_machine, proc_cpu_s, rotated, self_cpu_s, spread, time_paths

UDF = "bench_chat"
API_KEY = "bench-http-key"
WARMUP, STREAM_WARMUP = 3, 2


# -- the keep-alive HTTP client ------------------------------------------------------------------------
class StreamClock:
    """Times one streamed answer from when it is made: when its first piece with text came, and its pieces."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.pieces: list[str] = []

    def piece(self, text: str | None) -> None:
        if text:
            if self.first is None:
                self.first = time.perf_counter() - self.start
            self.pieces.append(text)

    def done(self) -> tuple[str, float | None, float, int]:
        """(the text, seconds to its first piece, seconds until now, the number of pieces)."""
        total = time.perf_counter() - self.start
        return "".join(self.pieces), self.first, total, len(self.pieces)


class KeepAlive:
    """One `http.client` connection kept open (HTTP/1.1 keep-alive) with TCP_NODELAY, so that no
    request waits on Nagle's algorithm (http.client sends the headers and the body in two writes).
    If the server closed it while idle (uvicorn's keep-alive timeout), it reconnects and counts it."""

    def __init__(self, url: str, api_key: str):
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self.conn: http.client.HTTPConnection | None = None
        self.connects = 0

    def _open(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn, self.connects = conn, self.connects + 1

    def _response(self, method: str, path: str, body: dict | None) -> http.client.HTTPResponse:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None or self.conn.sock is None:
                self._open()
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {resp.read()[:500]!r}")
            return resp
        raise AssertionError("unreachable")

    def get(self, path: str) -> dict:
        return json.loads(self._response("GET", path, None).read())

    def post(self, path: str, body: dict) -> dict:
        return json.loads(self._response("POST", path, body).read())

    def stream(self, path: str, body: dict) -> tuple[str, float | None, float, int]:
        """(text, seconds to the first content, seconds to [DONE], content pieces) of an SSE answer."""
        clock = StreamClock()
        resp = self._response("POST", path, body)
        while True:
            line = resp.readline()
            if not line:
                raise RuntimeError("the stream ended without data: [DONE]")
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            for choice in event.get("choices") or []:
                clock.piece((choice.get("delta") or {}).get("content"))
        out = clock.done()
        resp.read()  # the closing chunk, so that the connection carries the next request
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# -- timing helpers -------------------------------------------------------------------------------------
def p90_ms(xs: list[float]) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))] * 1000, 3)


def cpu_ms_per_call(t: Timings) -> dict[str, dict[str, float]]:
    """Per path, each process's CPU milliseconds per call (its CPU seconds over the calls / their number)."""
    return {p: {r: round(1000 * sum(t.cpu[r][p]) / len(t.secs[p]), 2) for r in t.cpu if t.cpu[r][p]} for p in t.names}


def summary(xs: list[float]) -> dict[str, Any]:
    return {"median": median_ms(xs), "p90": p90_ms(xs), "min": round(min(xs) * 1000, 3),
            "max": round(max(xs) * 1000, 3), "runs": [round(x * 1000, 3) for x in xs]}


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--calls", type=int, default=30, help="timed one-token calls of each path (default 30)")
    ap.add_argument("--stream-calls", type=int, default=30, help="timed streamed answers of each path (default 30)")
    ap.add_argument("--stream-tokens", type=int, default=32, help="new tokens of the streamed answer (default 32)")
    ap.add_argument("--size", choices=("tiny", "small"), default="tiny")
    ap.add_argument("--cpus-per-worker", type=float, default=2.0, help="CPUs of the one replica (default 2)")
    ap.add_argument("--no-openai", action="store_true", help="skip the openai package's paths")
    add_run_args(ap)
    args = ap.parse_args(argv)

    return run_in_env(args, run)


def run(args: argparse.Namespace, work: Path) -> int:
    from ray import serve

    from byzer_like.api import server as api_server
    from byzer_like.api.schemas import ChatCompletionRequest

    K = args.stream_tokens
    question = make_rows(2)[1]
    messages = [{"role": "user", "content": question}]
    cfg1 = {"temperature": 0, "max_new_tokens": 1}
    cfgK = {"temperature": 0, "max_new_tokens": K, "generation.min_new_tokens": K}
    body1 = {"model": UDF, "messages": messages, "temperature": 0, "max_tokens": 1}
    bodyK = {"model": UDF, "messages": messages, "temperature": 0, "max_tokens": K, "min_tokens": K, "stream": True}
    req1, reqK = chat_requests([messages, messages], [cfg1, cfgK])
    # the HTTP bodies must become the very requests the other paths send
    for body, req in ((body1, req1), (bodyK, reqK)):
        via_http = chat_requests([messages], ChatCompletionRequest.model_validate(body).options())[0]
        assert via_http == req, (via_http, req)

    b = Setup.tiny(work, args.size)
    llm = b.llm
    C = args.cpus_per_worker
    results: dict[str, Any] = {}
    srv = None
    client = None
    try:
        meta = b.deploy(UDF, C)
        replica_pid = int(meta["replica_pid"])
        threads, n_threads = b.match_threads(C)

        t0 = time.perf_counter()
        srv = llm.serve(port=0, api_key=API_KEY)
        ingress = serve.get_app_handle(api_server.APP_NAME).address.remote().result(timeout_s=60)
        log(f"HTTP API at {srv.url} (ingress pid {ingress['pid']}) in {time.perf_counter() - t0:.1f} s")

        plugin, d_model, d_tok = b.in_process(n_threads)  # as many torch threads as the replica
        client = KeepAlive(srv.url, API_KEY)
        oai = None
        if not args.no_openai:
            import openai

            oai = openai.OpenAI(base_url=srv.base_url, api_key=API_KEY, max_retries=0, timeout=120)
        ingress_pid = int(ingress["pid"])
        cpu = {"replica": lambda: proc_cpu_s(replica_pid), "ingress": lambda: proc_cpu_s(ingress_pid), "driver": self_cpu_s}

        # ---- 1. one-token latency ----------------------------------------------------------------
        def direct1() -> str:
            return plugin.batch(d_model, d_tok, [req1])[0]["output"]

        def handle1() -> str:
            return llm.chat_oai(messages, model=UDF, llm_config=cfg1)[0].output

        def http1() -> str:
            return client.post("/v1/chat/completions", body1)["choices"][0]["message"]["content"]

        def openai1() -> str:
            out = oai.chat.completions.create(model=UDF, messages=messages, temperature=0, max_tokens=1)
            return out.choices[0].message.content

        def health() -> str:
            return client.get("/health")["status"]

        paths1: dict[str, Callable[[], Any]] = {"direct": direct1, "handle": handle1, "http": http1}
        if oai is not None:
            paths1["openai"] = openai1
        paths1["health"] = health
        log(f"one-token latency: {args.calls} calls x {len(paths1)} paths")
        one = time_paths(paths1, args.calls, rotated, warmup=WARMUP, cpu=cpu, label="one-token ", log_every=10)
        lat = one.secs

        # ---- 2./3. streamed time to first token, and the whole stream ---------------------------------
        def direct_s() -> tuple[str, float | None, float, int]:
            start, first, pieces, sent, text = time.perf_counter(), None, 0, "", ""
            for text, _meta in plugin.stream(d_model, d_tok, reqK):
                if text != sent:
                    if first is None:
                        first = time.perf_counter() - start
                    if text.startswith(sent):  # the plugin's last item repeats the whole text
                        pieces += 1
                    sent = text
            return text, first, time.perf_counter() - start, pieces

        def handle_s() -> tuple[str, float | None, float, int]:
            clock = StreamClock()
            for piece, _meta in llm.stream_chat_oai(messages, model=UDF, llm_config=cfgK):
                clock.piece(piece)
            return clock.done()

        def http_s() -> tuple[str, float | None, float, int]:
            return client.stream("/v1/chat/completions", bodyK)

        def openai_s() -> tuple[str, float | None, float, int]:
            clock = StreamClock()
            stream = oai.chat.completions.create(model=UDF, messages=messages, temperature=0, max_tokens=K,
                                                 stream=True, extra_body={"min_tokens": K})
            with stream:
                for chunk in stream:
                    clock.piece(chunk.choices[0].delta.content if chunk.choices else None)
            return clock.done()

        paths_s: dict[str, Callable[[], Any]] = {"direct": direct_s, "handle": handle_s, "http": http_s}
        if oai is not None:
            paths_s["openai"] = openai_s
        log(f"streamed {K}-token answers: {args.stream_calls} calls x {len(paths_s)} paths")
        streams = time_paths(paths_s, args.stream_calls, rotated, warmup=STREAM_WARMUP, cpu=cpu, label="stream ",
                             log_every=10)
        runs_s = streams.outputs
        if any(out[1] is None for v in runs_s.values() for out in v):
            raise RuntimeError("a streamed answer had no text: no time to first token")
        ttft = {k: [out[1] for out in v] for k, v in runs_s.items()}
        total = {k: [out[2] for out in v] for k, v in runs_s.items()}
        pieces = {k: statistics.median([out[3] for out in v]) for k, v in runs_s.items()}
        final_meta: dict = {}
        for _text, final_meta in plugin.stream(d_model, d_tok, reqK):
            pass

        answers1 = {k: v for k, v in one.answers.items() if k != "health"}
        answersK = {k: v[0] for k, v in streams.answers.items()}
        med = {k: median_ms(v) for k, v in lat.items()}
        med_t = {k: median_ms(v) for k, v in ttft.items()}
        med_T = {k: median_ms(v) for k, v in total.items()}

        def diff(a: float, b: float) -> float:
            return round(a - b, 3)

        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 3) if b else None

        results.update(
            calls=args.calls,
            stream_calls=args.stream_calls,
            stream_tokens=K,
            stream_output_tokens=final_meta.get("output_tokens"),
            question=question,
            api_url=srv.url,
            latency_ms={k: summary(v) for k, v in lat.items()},
            overhead_ms_http_handle=diff(med["http"], med["handle"]),
            overhead_ms_handle_direct=diff(med["handle"], med["direct"]),
            overhead_ms_http_direct=diff(med["http"], med["direct"]),
            overhead_ms_openai_http=diff(med["openai"], med["http"]) if "openai" in med else None,
            overhead_ms_openai_handle=diff(med["openai"], med["handle"]) if "openai" in med else None,
            overhead_ms_http_health=diff(med["http"], med["health"]),
            ratio_http_handle=ratio(med["http"], med["handle"]),
            ratio_handle_direct=ratio(med["handle"], med["direct"]),
            ratio_http_direct=ratio(med["http"], med["direct"]),
            ratio_openai_handle=ratio(med["openai"], med["handle"]) if "openai" in med else None,
            cpu_ms_per_call=cpu_ms_per_call(one),
            ttft_ms={k: summary(v) for k, v in ttft.items()},
            ttft_overhead_ms_http_handle=diff(med_t["http"], med_t["handle"]),
            ttft_overhead_ms_handle_direct=diff(med_t["handle"], med_t["direct"]),
            stream_total_ms={k: summary(v) for k, v in total.items()},
            stream_pieces=pieces,
            stream_overhead_ms_http_handle=diff(med_T["http"], med_T["handle"]),
            stream_overhead_ms_handle_direct=diff(med_T["handle"], med_T["direct"]),
            stream_ms_per_piece_http_handle=(round((med_T["http"] - med_T["handle"]) / pieces["http"], 3)
                                             if pieces["http"] else None),
            stream_cpu_ms_per_call=cpu_ms_per_call(streams),
            connects=client.connects,
            answers_one_token=answers1,
            answers_match=len(set(answers1.values())) == 1 and len(set(answersK.values())) == 1,
            answers_stream_match=len(set(answersK.values())) == 1,
            threads=threads,
            ingress_pid=ingress["pid"],
        )
    finally:
        if client is not None:
            client.close()
        try:
            if srv is not None:
                srv.stop()
        except Exception as e:  # noqa: BLE001 - shutting down anyway
            log(f"stopping the HTTP API failed: {e}")
        b.undeploy(UDF)

    return b.publish(results, report, args.json,
                     rows=1, max_new_tokens=K, replicas=1, cpus_per_worker=C,
                     max_batch_size=int(meta.get("max_batch_size") or 0), torch_threads=n_threads, repeats=args.calls)


# -- report ----------------------------------------------------------------------------------------
LABELS = {
    "direct": "plugin in-process (no Ray)",
    "handle": "Serve handle (ByzerLLM)",
    "http": "HTTP, http.client keep-alive",
    "openai": "HTTP, openai package",
    "health": "HTTP GET /health (no model)",
}


def print_ms_table(w: int, figure: str, summaries: dict[str, dict], more: str, rule: int,
                   cells: Callable[[str], str]) -> None:
    """A table of the paths' `summary` of one figure (median, p90, min..max in ms), then `more` columns
    (their heads as one string, each path's `cells(path)`), under a rule `w + rule` long."""
    print(f"{'path':<{w}} {figure:>10} {'p90':>8} {'min..max':>14}   {more}")
    print("-" * (w + rule))
    for k, s in summaries.items():
        print(f"{LABELS[k]:<{w}} {s['median']:>10.2f} {s['p90']:>8.2f} {spread(s['runs']):>14}   {cells(k)}")


def report(r: dict) -> None:
    print()
    print(f"llama {r['model']['size']} ({r['params']:,} params), 1 replica x {r['cpus_per_worker']:g} CPU, "
          f"{r['torch_threads']} torch threads, greedy; HTTP API at {r['api_url']}")
    print_machine(r)

    w = 31
    print()
    print(f"one-token request (max_tokens=1), {r['calls']} calls per path, interleaved; "
          f"CPU ms per call from /proc (10 ms ticks, averaged)")
    cpu = r["cpu_ms_per_call"]
    print_ms_table(w, "median ms", r["latency_ms"], f"{'cpu replica':>11} {'ingress':>8} {'this':>6}", 66,
                   lambda k: " ".join(f"{cpu.get(k, {}).get(p, 0):>{n}.1f}" for p, n in (("replica", 11), ("ingress", 8),
                                                                                         ("driver", 6))))
    lm = {k: s["median"] for k, s in r["latency_ms"].items()}
    print()
    print(f"  HTTP - handle:      {r['overhead_ms_http_handle']:7.2f} ms   (ratio {r['ratio_http_handle']:.2f})")
    print(f"  handle - direct:    {r['overhead_ms_handle_direct']:7.2f} ms   (ratio {r['ratio_handle_direct']:.2f})")
    print(f"  HTTP - direct:      {r['overhead_ms_http_direct']:7.2f} ms   (ratio {r['ratio_http_direct']:.2f})")
    if r.get("overhead_ms_openai_http") is not None:
        print(f"  openai - HTTP:      {r['overhead_ms_openai_http']:7.2f} ms   (the openai client's own cost)")
    print(f"  HTTP - /health:     {r['overhead_ms_http_health']:7.2f} ms   (the chat endpoint beyond the bare HTTP "
          f"round trip of {lm['health']:.2f} ms)")

    print()
    print(f"streamed answer of {r['stream_tokens']} tokens (generated: {r['stream_output_tokens']}), "
          f"{r['stream_calls']} calls per path, interleaved")
    total = r["stream_total_ms"]
    print_ms_table(w, "TTFT ms", r["ttft_ms"], f"{'total ms':>9} {'min..max':>16} {'pieces':>7}", 72,
                   lambda k: f"{total[k]['median']:>9.2f} {spread(total[k]['runs']):>16} {r['stream_pieces'][k]:>7g}")
    print()
    print(f"  TTFT  HTTP - handle: {r['ttft_overhead_ms_http_handle']:7.2f} ms;  handle - direct: "
          f"{r['ttft_overhead_ms_handle_direct']:7.2f} ms")
    per = r["stream_ms_per_piece_http_handle"]
    print(f"  total HTTP - handle: {r['stream_overhead_ms_http_handle']:7.2f} ms;  handle - direct: "
          f"{r['stream_overhead_ms_handle_direct']:7.2f} ms;  per piece (HTTP - handle): "
          f"{per if per is not None else float('nan'):.3f} ms")

    print()
    print(f"answers equal on every path (greedy): {'yes' if r['answers_match'] else 'NO'}; "
          f"keep-alive connects: {r['connects']} (1 = one connection for every request)")
    oai = (f", openai {lm['openai']:.1f}" if "openai" in lm else "")
    print(f"summary: one token direct {lm['direct']:.1f} / handle {lm['handle']:.1f} / HTTP {lm['http']:.1f}{oai} ms "
          f"(HTTP +{r['overhead_ms_http_handle']:.1f} ms over handle, handle +{r['overhead_ms_handle_direct']:.1f} ms "
          f"over direct); TTFT ({r['stream_tokens']} tok) direct {r['ttft_ms']['direct']['median']:.1f} / handle "
          f"{r['ttft_ms']['handle']['median']:.1f} / HTTP {r['ttft_ms']['http']['median']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
