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
import time
from pathlib import Path

import pytest

from conftest import API_KEY
from byzer_like.errors import ConfigError

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
        listed = _get(srv, "/v1/models")["data"]
        ids = [m["id"] for m in listed]
        assert {f"{BASE}:qa_1", f"{BASE}:qa_2", f"{BASE}:qa_3"} <= set(ids)  # the base's adapters, after it
        assert ids.index(f"{BASE}:qa_1") > ids.index(BASE) and not any(i.startswith("alone_1:") for i in ids)
        card = next(m for m in listed if m["id"] == f"{BASE}:qa_1")
        assert card["object"] == "model" and card["parent"] == BASE and card["root"] == "qa_1@v1"
        assert _get(srv, f"/v1/models/{BASE}:qa_2")["root"] == "qa_2@v1"
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


def _get(srv, path):
    import urllib.request

    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read().decode())


def test_the_cli_queries_through_an_adapter(llm, served, workspace):
    import os
    import subprocess
    import sys

    cli = str(Path(sys.executable).with_name("byzer-like"))
    env = {**os.environ, "BYZER_LIKE_HOME": str(workspace)}

    def query(*args):
        return subprocess.run([cli, "query", "--query", PROMPTS[0], "--temperature", "0", "--max_new_tokens", "12",
                               *args], capture_output=True, text=True, timeout=120, env=env)

    want = alone(llm, "alone_1")[0]
    for args in (("--model", f"{BASE}:qa_1"), ("--model", BASE, "--adapter", "qa_1")):
        out = query(*args)
        assert out.returncode == 0 and out.stdout.rstrip("\n") == want, (args, out.stderr[-2000:])
    bad = query("--model", BASE, "--adapter", "qa_11")
    assert bad.returncode == 1 and "did you mean 'qa_1'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


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


# -- adapters trained by sft (not random ones) on the tiny llama ---------------------------------------------
# four small, different tasks; 40 steps each at a high learning rate, so that each adapter learns its own answers
# (a random-init 128-wide model needs that much; a real one far less) and the four answer differently
SFT_TASKS = {
    "sft_colors": [{"instruction": f"favorite color of {n}?", "output": c} for n, c in
                   zip(("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"),
                       ("red", "blue", "green", "red", "blue", "green", "red", "blue"))],
    "sft_animals": [{"instruction": f"which animal says {s}?", "output": a} for s, a in
                    (("woof", "dog"), ("meow", "cat"), ("moo", "cow"), ("oink", "pig"), ("baa", "sheep"),
                     ("quack", "duck"), ("hiss", "snake"), ("neigh", "horse"))],
    "sft_numbers": [{"instruction": f"{a} plus {b}?", "output": str(a + b)} for a, b in
                    ((1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9))],
    "sft_late": [{"instruction": f"capital of {c}?", "output": k} for c, k in
                 (("france", "paris"), ("italy", "rome"), ("spain", "madrid"), ("japan", "tokyo"),
                  ("peru", "lima"), ("egypt", "cairo"), ("chile", "santiago"), ("kenya", "nairobi"))],
}
SFT_OPTIONS = {"loraTargetModules": "all-linear", "loraR": "16", "loraAlpha": "32", "loraDropout": "0",
               "learningRate": "3e-3", "epochs": "20", "batchSize": "4", "sft.int.max_seq_length": "32"}
ASK = [r["instruction"] for rows in SFT_TASKS.values() for r in rows[:2]] + PROMPTS[:2]


def sft_sql(name: str, base_dir: Path) -> str:
    """The statements that train adapter `name` on table `name` over `base_dir` and wait for the job."""
    where = "\n".join(f'and `{k}`="{v}"' for k, v in SFT_OPTIONS.items())
    return f'''run command as LLM.`` where pretrainedModelType="sft/llama" and localModelDir="{base_dir}"
        and inputTable="{name}" and outputTable="{name}" and detached="false"
        {where};'''


@pytest.fixture(scope="module")
def trained(llm, served, workspace):
    """sft_colors, sft_animals and sft_numbers trained by sft jobs from SQL on the tiny llama (the base
    `lora_base` serves), each also deployed merged on its own (`sft_alone_<name>`)."""
    from byzer_like.session import Session

    base_dir = served["base_dir"]
    (workspace / "data").mkdir(exist_ok=True)
    for name, rows in SFT_TASKS.items():
        (workspace / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = Session(llm, progress=False)
    s.sql("".join(f"load json.`data/{n}.jsonl` as {n};\n" for n in SFT_TASKS))
    start = time.monotonic()
    results = s.sql("\n".join(sft_sql(n, base_dir) for n in ("sft_colors", "sft_animals", "sft_numbers")))
    print(f"three sft jobs on the tiny llama: {time.monotonic() - start:.1f} s")
    for r in results:
        assert r.table.to_pylist()[0]["state"] == "SUCCEEDED", r.table.to_pylist()
    deployed = []
    for name in ("sft_colors", "sft_animals", "sft_numbers"):
        llm.deploy(None, "llama", f"sft_alone_{name}", {"model_table": name})
        deployed.append(f"sft_alone_{name}")
    yield {"session": s, "base_dir": base_dir}
    s.close()
    for n in deployed + ["sft_alone_sft_late"]:
        if llm.is_model_exist(n):
            llm.undeploy(n)


def answers_alone(llm, model: str) -> list[str]:
    return [r.output for r in llm.batch_chat(ASK, model=model, llm_config=OPTS)]


@pytest.mark.heavy  # four sft jobs: the select over adapters is covered in the default run by the random ones
def test_three_sft_trained_adapters_in_one_select_equal_each_merged_alone_and_a_fourth_trained_meanwhile(
        llm, served, trained, workspace):
    s, base_dir = trained["session"], trained["base_dir"]
    names = ("sft_colors", "sft_animals", "sft_numbers")
    want = {None: answers_alone(llm, "base_alone"),
            **{n: answers_alone(llm, f"sft_alone_{n}") for n in names}}
    assert len({tuple(v) for v in want.values()}) == 4, want  # training changed each adapter's answers
    rows = [{"id": k, "q": q, "a": a} for k, (q, a) in enumerate((q, a) for q in ASK for a in (None, *names))]
    (workspace / "data" / "sft_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s.sql(f"""load json.`data/sft_rows.jsonl` as sft_rows;
        select id, a, {BASE}(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", 12,
                                           "adapter", a))) as r
        from sft_rows as sft_answered;""")
    got = [json.loads(r["r"]) for r in s.table("sft_answered").to_pylist()]
    for row, answer in zip(rows, got):
        assert answer["output"] == want[row["a"]][ASK.index(row["q"])], (row, answer)
        assert answer["metadata"].get("adapter") == (f"{row['a']}@v1" if row["a"] else None)

    # a fourth adapter, trained by an sft job (the client's spelling) while lora_base keeps serving: usable at once
    meta = llm.get_meta(BASE, refresh=True)
    job = llm.sft(SFT_TASKS["sft_late"], model_path=str(base_dir), pretrained_model_type="sft/llama",
                  output_table="sft_late", **{k: v for k, v in SFT_OPTIONS.items() if k != "sft.int.max_seq_length"},
                  max_seq_length=32)
    assert job["state"] == "SUCCEEDED", job
    late = [r.output for r in llm.batch_chat(ASK, model=BASE, llm_config=OPTS, adapter="sft_late")]
    assert llm.get_meta(BASE, refresh=True)["deployed_at"] == meta["deployed_at"]  # no redeploy
    llm.deploy(None, "llama", "sft_alone_sft_late", {"model_table": "sft_late"})
    assert late == answers_alone(llm, "sft_alone_sft_late") and late != want[None]


def test_model_handles_answer_a_question_and_a_batch_through_an_adapter(llm, served):
    """`llm.model("m")` / `llm.model("m:adapter")`: called with a string, the answer's text; with a list, the
    batch's answers in order; the same answers as batch_chat's (a stage of a flow needs nothing else)."""
    base, adapter = llm.model(BASE), llm.model(f"{BASE}:qa_1")
    assert repr(adapter) == f"<model {BASE}:qa_1>"
    assert base(PROMPTS[0], **OPTS) == alone(llm, "base_alone")[0]
    assert adapter(list(PROMPTS), **OPTS) == alone(llm, "alone_1")
    with pytest.raises(ConfigError, match="takes a question .* not dict"):
        adapter({"instruction": PROMPTS[0]})
