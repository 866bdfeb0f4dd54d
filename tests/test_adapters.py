"""Many LoRA adapters on one base deployment (issue 15, item 4), on the tiny llama: adapters made with peft
(random weights, so each one answers differently), registered like trained ones, served per request.

Each adapter's greedy answers through the shared base equal the answers of that adapter deployed alone
(merged into its own deployment); rows of three adapters and the base share one select and one forward
pass; a fourth adapter registered after the deployment started is served at once; an adapter of another
base is a typed error naming the base it needs; the replica's LRU (2 adapters here) evicts and reloads
without changing an answer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import API_KEY

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

BASE = "lora_base"
OPTS = {"temperature": 0.0, "max_new_tokens": 12}
PROMPTS = ["def add(a, b):", "import os", "the quick brown fox", "class Point:", "for i in range(3):", "hello"]


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter over `base_dir` with random (non-zero) weights, saved as sft saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def register(llm, name: str, path: Path, base_dir: Path) -> None:
    llm.catalog.register_model(name, kind="adapter", path=str(path), base_model=str(base_dir), model_type="llama",
                               method="test(random lora)", params={}, metrics={}, job_id=None)


@pytest.fixture(scope="module")
def served(llm, tiny_models, workspace):
    """`lora_base` (tiny llama, 1 replica, LRU of 2 adapters) with qa_1..qa_3 registered; `alone_<i>`: each
    adapter merged into a deployment of its own; `base_alone`: the base on its own."""
    base_dir = tiny_models["llama"]
    folder = workspace / "adapters"
    for i in (1, 2, 3):
        register(llm, f"qa_{i}", make_adapter(base_dir, folder / f"qa_{i}", seed=i), base_dir)
    llm.setup_num_workers(1)
    names = [BASE, "base_alone", "alone_1", "alone_2", "alone_3"]
    llm.deploy(base_dir, "llama", BASE, {"max_adapters_per_replica": 2})
    llm.deploy(base_dir, "llama", "base_alone", {})
    for i in (1, 2, 3):
        llm.deploy(base_dir, "llama", f"alone_{i}", {"adapter_dir": str(folder / f"qa_{i}")})
    yield {"base_dir": base_dir, "folder": folder}
    for n in names:
        if llm.is_model_exist(n):
            llm.undeploy(n)


def alone(llm, model: str) -> list[str]:
    """The greedy answers of deployment `model` to PROMPTS."""
    return [r.output for r in llm.batch_chat(PROMPTS, model=model, llm_config=OPTS)]


def test_rows_of_three_adapters_and_the_base_in_one_select_equal_each_deployed_alone(llm, served, workspace):
    want = {None: alone(llm, "base_alone"), **{f"qa_{i}": alone(llm, f"alone_{i}") for i in (1, 2, 3)}}
    assert len({tuple(v) for v in want.values()}) == 4  # the adapters do change the answers
    rows = [{"id": k, "q": p, "a": a} for k, (p, a) in
            enumerate((p, a) for p in PROMPTS for a in (None, "qa_1", "qa_2", "qa_3"))]
    (workspace / "data").mkdir(exist_ok=True)
    (workspace / "data" / "lora_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = llm.sql(f"""
        load json.`data/lora_rows.jsonl` as lora_rows;
        select id, a, {BASE}(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", 12,
                                           "adapter", a))) as r,
               {BASE}@qa_2(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", 12))) as r2
        from lora_rows as answered;""")
    got = [json.loads(r) for r in out["r"]]
    for row, answer in zip(rows, got):
        assert answer["output"] == want[row["a"]][PROMPTS.index(row["q"])], (row, answer)
        assert answer["metadata"].get("adapter") == (f"{row['a']}@v1" if row["a"] else None)
    # a forward pass held more rows than any one adapter (or the base) has: rows of several adapters
    # shared it (the LRU holds 2: a third one is loaded for the chunk and unloaded after it)
    assert max(a["metadata"]["batch_size"] for a in got) > len(PROMPTS)
    assert [json.loads(r)["output"] for r in out["r2"]] == [want["qa_2"][PROMPTS.index(r["q"])] for r in rows]


def test_http_model_colon_adapter_plain_and_streamed(llm, served):
    import http.client

    srv = llm.serve(port=0, api_key=API_KEY, replace=True)
    try:
        want = alone(llm, "alone_1")[0]
        body = {"model": f"{BASE}:qa_1", "messages": [{"role": "user", "content": PROMPTS[0]}],
                "temperature": 0, "max_tokens": 12}
        status, answer = _post(srv, body)
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"] == want and answer["model"] == f"{BASE}:qa_1"
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                     {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        text = ""
        for line in r.read().decode().splitlines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                text += json.loads(line[5:])["choices"][0]["delta"].get("content") or ""
        assert text == want
        for stream in (False, True):  # one clear error, before any event
            status, err = _post(srv, {**body, "model": f"{BASE}:qa_11", "stream": stream})
            assert status == 404 and err["error"]["code"] == "adapter_not_found", err
            assert "did you mean 'qa_1'" in err["error"]["message"] and "qa_3@v1" in err["error"]["message"]
    finally:
        srv.stop()


def test_an_adapter_registered_after_the_deploy_is_served_at_once(llm, served):
    base_dir, folder = served["base_dir"], served["folder"]
    register(llm, "qa_4", make_adapter(base_dir, folder / "qa_4", seed=4), base_dir)
    through = [llm.chat_oai(p, model=BASE, llm_config=OPTS, adapter="qa_4")[0].output for p in PROMPTS]
    assert through != alone(llm, "base_alone")
    streamed = "".join(piece for piece, _meta in llm.stream_chat_oai(PROMPTS[0], model=BASE, llm_config=OPTS,
                                                                    adapter="qa_4"))
    assert streamed == through[0]
    listed = llm.session.sql(f"!byzerllm adapter list {BASE};")[0]
    rows = listed.table.to_pylist()
    assert "qa_4" in {r["adapter"] for r in rows} and all(r["capacity"] == 2 for r in rows)
    assert len(rows) <= 2 and listed.message.startswith(f"{BASE}: ")


def test_the_lru_evicts_and_reloads_without_changing_an_answer(llm, served):
    want = {f"qa_{i}": alone(llm, f"alone_{i}")[1] for i in (1, 2, 3)}
    for _ in range(2):
        for ref in ("qa_1", "qa_2", "qa_3"):
            assert llm.chat_oai(PROMPTS[1], model=BASE, llm_config=OPTS, adapter=ref)[0].output == want[ref]
    held = llm.loaded_adapters(BASE)
    assert {r["adapter"] for r in held} == {"qa_2", "qa_3"}  # the least recently used went
    assert llm.get_meta(BASE, refresh=True)["max_adapters_per_replica"] == 2


def test_unknown_and_wrong_base_adapters_are_typed_errors_on_every_surface(llm, served, tiny_models):
    from byzer_like.errors import AdapterBaseError, AdapterNotFoundError

    other = tiny_models["qwen2"]
    llm.catalog.register_model("tiny_qwen", kind="model", path=str(other), base_model=None, model_type="qwen2",
                               method="test", params={}, metrics={}, job_id=None)
    register(llm, "qwen_qa", make_adapter(other, served["folder"] / "qwen_qa", seed=5), other)
    with pytest.raises(AdapterBaseError, match=r"trained on base model tiny_qwen@v1 .*serves") as e:
        llm.chat_oai("hi", model=BASE, adapter="qwen_qa")
    assert "\n" not in str(e.value)
    with pytest.raises(AdapterBaseError, match="tiny_qwen@v1"):
        llm.sql(f'select {BASE}@qwen_qa(llm_param(map("instruction", "hi"))) as r')
    with pytest.raises(AdapterNotFoundError, match=r"did you mean 'qa_2'\?.*qa_1@v1"):
        llm.batch_chat(["hi"], model=BASE, adapter="qa_22")
    with pytest.raises(AdapterNotFoundError, match="tiny_qwen@v1 is a whole model"):
        llm.chat_oai("hi", model=BASE, adapter="tiny_qwen")
    with pytest.raises(Exception, match="merged the adapter"):  # NotSupportedError: a merged deployment
        llm.chat_oai("hi", model="alone_1", adapter="qa_2")


def _post(srv, body):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(srv.url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())
