"""The commands on deployments (running models, by name): `deploy`, `undeploy`, `list`, `meta`, `query`,
`chat`, and `serve` (the OpenAI-compatible HTTP API over them). Byzer-LLM's spellings work too: `deploy
--model_path DIR --pretrained_model_type T --num_workers N --gpus_per_worker G --cpus_per_worker C
--infer_params k=v k=v --model NAME`, `query --model NAME --query TEXT`, `undeploy --model NAME`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..api.settings import ApiSettings
from ..config import ChatRequest, DeployOptions, SetupConfig, chat_request
from ..errors import ConfigError
from .common import NOTHING_TO_DO, OK, Parents, kv, path_arg, print_table, prompt_loop, runtime, stream_answer
from .flags import WORKER_FIELDS, ModelFlags, add_model_flags, given, unflagged

# the option models each command fills, and which of their fields it takes as flags (with Byzer's spellings)
DEPLOY_NAMES = ModelFlags(DeployOptions, ("pretrained_model_type", "udf_name"), flags={
    "pretrained_model_type": ("--type", "--pretrained_model_type", "--pretrained-model-type"),
    "udf_name": ("--name", "--model", "--udf_name", "--udf-name")})
DEPLOY_WORKERS = ModelFlags(SetupConfig, WORKER_FIELDS, flags={
    "num_workers": ("--num-workers", "--num_workers"), "cpus_per_worker": ("--cpus-per-worker", "--cpus_per_worker"),
    "gpus_per_worker": ("--gpus-per-worker", "--gpus_per_worker", "--gpu_gpus_per_worker")})
DEPLOY_LOAD = ModelFlags(DeployOptions, ("reconnect", "replace", "model_table", "max_adapters_per_replica", "dtype",
                                         "device", "load_in_4bit", "load_in_8bit", "trust_remote_code",
                                         "allow_pickle_weights"), switches=("reconnect", "replace"))
# a chat request's sampling options; `chat` has its own defaults for two of them
REQUEST = ("temperature", "max_new_tokens", "max_length", "top_p")
QUERY = ModelFlags(ChatRequest, REQUEST, flags={"max_new_tokens": ("--max-new-tokens", "--max_new_tokens"),
                                                "max_length": ("--max-length", "--max_length")})
CHAT = ModelFlags(ChatRequest, REQUEST, defaults={"temperature": 0.7, "max_new_tokens": 256})


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.model_dir and args.model_path and args.model_dir != args.model_path:
        raise ConfigError(f"two model directories given ({args.model_dir!r} and --model_path {args.model_path!r}); give one")
    rt = runtime(args)
    rt.setup(given(args, DEPLOY_WORKERS))
    for key, value in kv(args.set, "--set").items():
        rt.setup({key: value})
    flags = given(args, DEPLOY_NAMES, DEPLOY_LOAD)
    options = {**unflagged(kv(args.param, "--param"), DeployOptions, flags), **flags}
    model_dir = args.model_dir or args.model_path
    if model_dir:
        options["model_dir"] = str(path_arg(rt.workspace, model_dir, "model_dir"))
    out = rt.deploy(rt.deploy_spec(options))
    print(f"{out['udf_name']}: {out['status']}" + (f" on {out['num_workers']} worker(s)" if "num_workers" in out else ""))
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.model) and args.name != args.model:
        raise ConfigError("name the model to undeploy once: `undeploy NAME` or `undeploy --model NAME`")
    name = args.name or args.model
    rt = runtime(args)
    if args.force and not rt.deployment_exists(name):
        print(f"{name}: not deployed")
        return OK
    rt.undeploy(name)
    print(f"{name}: undeployed")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Byzer's `query --model NAME --query TEXT`: one answer, printed whole. `--adapter A` (or `--model
    NAME:A`, the HTTP API's spelling) answers through registered LoRA adapter A over NAME's base; an unknown
    adapter, one of another base, or both spellings naming different adapters are typed errors."""
    from ..runtime.adapters import split_model

    model, named = split_model(args.model)
    if named and args.adapter and named != args.adapter:
        raise ConfigError(f"--model {args.model!r} and --adapter {args.adapter!r} name different adapters; give one")
    adapter = args.adapter or named

    config = _request_config(args, QUERY)
    if args.response_format:
        fmt = args.response_format.strip()
        config["response_format"] = fmt if fmt.startswith("{") else {"type": fmt}  # a type name, or OpenAI's JSON
    system = [{"role": "system", "content": args.system}] if args.system else []
    if adapter:
        config["adapter"] = adapter
    request = chat_request([*system, {"role": "user", "content": args.query}], config).model_dump()
    print(runtime(args).chat(model, request)["output"])
    return OK


def _request_config(args: argparse.Namespace, spec: ModelFlags) -> dict[str, Any]:
    """The request options the flags gave (`chat_request` checks them); 0 tokens means none given, as these
    flags have always read it."""
    return {k: v for k, v in given(args, spec).items() if v or k not in ("max_new_tokens", "max_length")}


def cmd_list(args: argparse.Namespace) -> int:
    print_table(("name", "status"), sorted(runtime(args).deployments().items()))
    return 0


def cmd_meta(args: argparse.Namespace) -> int:
    print(json.dumps(runtime(args).meta(args.name), indent=2, default=str))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    llm = runtime(args)
    config = _request_config(args, CHAT)
    system: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    if args.message is not None:
        messages = [*system, {"role": "user", "content": args.message}]
        if args.no_stream:
            print(llm.chat(args.name, chat_request(messages, config).model_dump())["output"])
        else:
            stream_answer(llm, args.name, messages, config)
        return OK
    llm.meta(args.name)  # a model that is not deployed fails here (listing the deployed ones), not at each line
    print(f"chatting with {args.name}; an empty line or Ctrl-D ends, /clear forgets the history, "
          "Ctrl-C stops an answer", file=sys.stderr)
    history: list[dict] = []

    def handle(line: str) -> bool:
        if not line.strip():
            return False
        if line.strip() == "/clear":
            history.clear()
            return True
        question = {"role": "user", "content": line}
        answer = stream_answer(llm, args.name, [*system, *history, question], config)
        history.extend([question, {"role": "assistant", "content": answer}])  # only whole exchanges are kept
        return True

    return prompt_loop(lambda: "> ", handle, lambda: None)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..api import server

    if args.stop or args.status:
        return _serving_status(args, server)
    rt = runtime(args)
    srv = server.serve(rt, args.host, args.port, max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes,
                       replace=args.replace)
    key = "generated, printed above" if srv.key_generated else ("from BYZER_LIKE_API_KEY" if srv.api_key else "none (loopback)")
    print(f"HTTP API at {srv.url}  (OpenAI base_url {srv.base_url}; chat page {srv.url}/; API key: {key})", flush=True)
    if args.detach:
        print("running on the cluster; stop it with `byzer-like serve --stop`")
        return OK
    print("Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        server.wait(srv)
    except KeyboardInterrupt:  # how a foreground server is meant to end: done as asked
        srv.stop()
        print("HTTP API stopped", file=sys.stderr)
    return OK


def _serving_status(args: argparse.Namespace, server: Any) -> int:
    """`serve --status` / `serve --stop`: where the HTTP API runs, or stop it (exit status 3 if none runs)."""
    rt = runtime(args, running=False)
    srv = server.serving(rt) if rt.cluster_running() else None  # no cluster: no HTTP API either
    if srv is None:
        print("no HTTP API is running")
        return NOTHING_TO_DO
    if args.stop:
        server.stop_serving(rt)
        print(f"HTTP API at {srv.url} stopped")
    else:
        print(f"HTTP API running at {srv.url}")
    return OK


def add_deploy(sub: Any, parents: Parents) -> None:
    d = sub.add_parser("deploy", parents=[parents.common])
    d.add_argument("model_dir", nargs="?", help="the model's directory, from the current directory (e.g. "
                   "byzer_workspace/models/m; inside the workspace's allowed roots); none for a saas/* model")
    d.add_argument("--model_path", "--model-path", dest="model_path", help="the model's directory (Byzer's spelling)")
    add_model_flags(d, DEPLOY_NAMES)
    add_model_flags(d, DEPLOY_WORKERS)
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="a setup option (repeatable)")
    d.add_argument("--param", action="append", metavar="KEY=VALUE", help="an infer param for init_model (repeatable)")
    d.add_argument("--infer_params", "--infer-params", dest="param", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="infer params, several after one flag (Byzer's spelling of --param)")
    add_model_flags(d, DEPLOY_LOAD)
    d.set_defaults(func=cmd_deploy)


def add_undeploy(sub: Any, parents: Parents) -> None:
    u = sub.add_parser("undeploy", parents=[parents.common])
    u.add_argument("name", nargs="?")
    u.add_argument("--model", "--name", "--udf_name", "--udf-name", dest="model", help="the model (Byzer's spelling)")
    u.add_argument("--force", action="store_true", help="no error when no model of that name is deployed")
    u.set_defaults(func=cmd_undeploy)


def add_query(sub: Any, parents: Parents) -> None:
    qy = sub.add_parser("query", parents=[parents.common])
    qy.add_argument("--model", "--name", dest="model", required=True,
                    help="the deployed model (or MODEL:ADAPTER, as the HTTP API spells it)")
    qy.add_argument("--adapter", help="a registered LoRA adapter over the model's base (name, name@v2, name@production)")
    qy.add_argument("--query", "-q", required=True, help="the question")
    qy.add_argument("--system", help="system prompt")
    add_model_flags(qy, QUERY)
    qy.add_argument("--response-format", "--response_format", dest="response_format",
                    help='constrain the answer: json_object, or OpenAI\'s response_format as JSON')
    qy.set_defaults(func=cmd_query)


def add_list(sub: Any, parents: Parents) -> None:
    ls = sub.add_parser("list", parents=[parents.common])
    ls.set_defaults(func=cmd_list)


def add_meta(sub: Any, parents: Parents) -> None:
    me = sub.add_parser("meta", parents=[parents.common])
    me.add_argument("name")
    me.set_defaults(func=cmd_meta)


def add_serve(sub: Any, parents: Parents) -> None:
    sv = sub.add_parser("serve", parents=[parents.common])
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need an API key)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-tokens-cap", type=int, default=ApiSettings.max_tokens_cap,
                    help="largest max_tokens a request may ask for")
    sv.add_argument("--max-body-bytes", type=int, default=ApiSettings.max_body_bytes, help="largest request body")
    sv.add_argument("--detach", action="store_true", help="leave it running on the cluster and return")
    sv.add_argument("--replace", action="store_true", help="stop a running HTTP API first")
    sv.add_argument("--stop", action="store_true", help="stop the running HTTP API (exit status 3 if none runs)")
    sv.add_argument("--status", action="store_true", help="where the HTTP API runs (exit status 3 if it does not)")
    sv.set_defaults(func=cmd_serve)


def add_chat(sub: Any, parents: Parents) -> None:
    ch = sub.add_parser("chat", parents=[parents.common])
    ch.add_argument("name")
    ch.add_argument("message", nargs="?", help="one message; without it, an interactive session")
    ch.add_argument("--system", help="system prompt")
    add_model_flags(ch, CHAT)
    ch.add_argument("--no-stream", action="store_true")
    ch.set_defaults(func=cmd_chat)
