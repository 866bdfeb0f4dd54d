"""The vLLM engine behind the same SQL (`-m vllm`): SmolLM2-135M-Instruct deployed once for this module with
`!byzerllm setup "infer_backend=vllm"`, its replica running vLLM's async engine on the vLLM environment
(.venv-vllm, Ray runtime_env py_executable). A select over 100 rows answers exactly as vLLM's offline
`LLM.generate` on the same prompts; streaming, stop strings, seeds, max_tokens, abort when the caller goes
away, the official `openai` client, a JSON-schema request and the result cache work on it.

Skipped, with the command that builds it, when the vLLM environment is missing (CI builds it:
`python3 dev.py test -m vllm`).
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from byzer_like.session import Session
from conftest import hang_up_mid_stream

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.timeout(600)]
NAME = "smol_vllm"
API_KEY = "vllm-test-key"
TOPICS = ["the sea", "a cat", "winter", "bread", "a train", "the moon", "music", "a garden", "rain", "coffee",
          "a library", "mountains", "a bicycle", "the sun", "friendship", "a river", "snow", "a clock", "books", "tea"]


def questions() -> list[str]:
    """100 distinct prompts of mixed lengths."""
    qs = [f"Write one short sentence about {t}." for t in TOPICS]
    qs += [f"What is {a} plus {b}? Answer with the number only." for a, b in zip(range(3, 23), range(40, 60))]
    qs += [f"Give a synonym of the word '{w}'." for w in ("happy", "fast", "big", "cold", "smart", "old", "quiet",
                                                           "bright", "angry", "tiny")]
    qs += [f"Translate to French: '{t}'" for t in ("good morning", "thank you", "the red house", "I like apples",
                                                   "where is the station", "see you tomorrow", "a cup of tea",
                                                   "the weather is nice", "my name is Anna", "open the door")]
    long_ctx = ("The following is a note about a town. The town has a market on Mondays, a school, two bakeries, a "
                "river with an old stone bridge, and a museum about trains. ")
    qs += [long_ctx * (1 + i % 4) + f"Question {i}: what does the town have on Mondays?" for i in range(20)]
    qs += [f"List {n} colours, separated by commas." for n in range(2, 12)]
    qs += [f"Explain in one sentence what a {x} is." for x in ("compiler", "volcano", "violin", "glacier", "satellite",
                                                                "vaccine", "bridge", "battery", "planet", "desert")]
    assert len(qs) == 100 and len(set(qs)) == 100
    return qs


@pytest.fixture(scope="module")
def vllm_python():
    from byzer_like.errors import EngineEnvironmentError
    from byzer_like.backends.vllm_setup import vllm_python as find

    try:
        return find() or "python"
    except EngineEnvironmentError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def session(llm, smollm2_dir, workspace, vllm_python):
    """One deployment for the module, made the way a Byzer script makes it."""
    s = Session(llm, progress=False)
    llm.undeploy(NAME, force=True)
    start = time.monotonic()
    s.sql(f'''
        !byzerllm setup single;
        !byzerllm setup "infer_backend=vllm";
        !byzerllm setup "num_workers=1";
        !byzerllm setup "cpus_per_worker=1";
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
            and localModelDir="{smollm2_dir}" and udfName="{NAME}";''')
    print(f"vLLM deployment ready in {time.monotonic() - start:.1f} s")
    (workspace / "vllm_questions.jsonl").write_text(
        "".join(json.dumps({"id": i, "q": q}) + "\n" for i, q in enumerate(questions())), encoding="utf-8")
    s.sql("load json.`vllm_questions.jsonl` as vllm_qs;")
    yield s
    s.close()
    llm.undeploy(NAME, force=True)
    llm.setup("infer_backend", "transformers")
    llm.setup("cpus_per_worker", 0.5)


@pytest.fixture(scope="module")
def api(llm, session):
    srv = llm.serve(port=0, api_key=API_KEY, replace=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oai(api):
    from openai import OpenAI

    return OpenAI(base_url=api.base_url, api_key=API_KEY, max_retries=0, timeout=300)


def test_the_replica_runs_vllms_engine_in_its_own_environment(session, llm, vllm_python):
    meta = llm.get_meta(NAME, refresh=True)
    assert meta["engine"] == "vllm" and meta["plugin"] == "vllm/llama" and meta["backend"] == "ray/vllm"
    assert meta["enforce_eager"] is True and meta["device"] == "cpu" and meta["vllm_version"]
    if vllm_python != "python":
        assert meta["python"] == vllm_python
    assert set(meta["engine_load"]) >= {"requests_running", "requests_waiting"}
    print(f"vLLM engine start in the replica: {meta['engine_start_s']} s (enforce_eager)")


def test_a_select_of_100_rows_answers_as_vllm_offline(session, llm, workspace, vllm_python):
    """Greedy answers through SQL (the whole chunk sent to the engine) equal vLLM's offline LLM.generate on
    the very prompts the deployment gives the model."""
    start = time.monotonic()
    out = session.sql(f'''select id, llm_result({NAME}(llm_param(map("instruction", q, "temperature", 0.0,
                                                                 "max_new_tokens", 32)))) as a
                          from vllm_qs as vllm_answered;''')
    took = time.monotonic() - start
    rows = session.table("vllm_answered").to_pylist()
    assert [r["id"] for r in rows] == list(range(100)) and all(r["a"] for r in rows), out[-1].message
    meta = llm.get_meta(NAME, refresh=True)
    texts = [llm.runtime.prompt_text(NAME, {"ins": q}) for q in questions()]
    job = {"model_dir": meta["model_dir"], "texts": texts, "max_tokens": 32, "stop_token_ids": meta["stop_token_ids"]}
    (workspace / "vllm_offline_job.json").write_text(json.dumps(job), encoding="utf-8")
    answers_file = workspace / "vllm_offline_answers.json"
    proc = subprocess.run([vllm_python, "-m", "byzer_like.backends.vllm_offline", str(workspace / "vllm_offline_job.json"),
                           str(answers_file)], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline = json.loads(answers_file.read_text(encoding="utf-8"))
    print(f"select of 100 rows: {took:.1f} s; offline: engine start {offline['engine_start_s']} s, "
          f"generate {offline['generate_s']} s")
    differ = [(i, r["a"], o) for i, (r, o) in enumerate(zip(rows, offline["texts"])) if r["a"] != o]
    assert not differ, differ[:5]


def test_streaming_stop_strings_seeds_and_max_tokens(session, llm):
    rt = llm.runtime
    ask = {"ins": "What is the capital of France?", "temperature": 0.0, "max_new_tokens": 24}
    items = list(rt.stream(NAME, ask))
    deltas = [i["delta"] for i in items if i.get("delta")]
    assert len(deltas) > 3 and items[-1]["done"] and items[-1]["metadata"]["time_to_first_token_s"] > 0
    whole = rt.generate(NAME, [ask])[0]
    assert "".join(deltas) == whole["output"] and "Paris" in whole["output"]

    stopped = rt.generate(NAME, [{**ask, "kwargs": {"stop": ["Paris"]}}])[0]
    assert "Paris" not in stopped["output"] and stopped["metadata"]["finish_reason"] == "stop"
    assert stopped["output"] == whole["output"][:whole["output"].index("Paris")]

    five = rt.generate(NAME, [{"ins": "Tell me a long story.", "temperature": 0.0, "max_new_tokens": 5}])[0]
    assert five["metadata"]["output_tokens"] == 5 and five["metadata"]["finish_reason"] == "length"

    sampled = {"ins": "Name an animal.", "temperature": 1.0, "max_new_tokens": 16}
    a, b, c = rt.generate(NAME, [{**sampled, "kwargs": {"seed": 7}}, {**sampled, "kwargs": {"seed": 7}},
                                 {**sampled, "kwargs": {"seed": 8}}])
    assert a["output"] == b["output"], (a, b)
    runs = {rt.generate(NAME, [{**sampled, "kwargs": {"seed": s}}])[0]["output"] for s in range(8, 14)}
    assert len(runs | {c["output"]}) > 1  # sampling with different seeds differs


def test_the_openai_client_and_a_json_schema_request(oai):
    assert "smol_vllm" in {m.id for m in oai.models.list().data}
    r = oai.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                    temperature=0, max_tokens=24)
    assert "Paris" in r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = oai.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                         temperature=0, max_tokens=24, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    r = oai.chat.completions.create(
        model=NAME, temperature=0, max_tokens=64,
        messages=[{"role": "system", "content": "Answer in JSON."},
                  {"role": "user", "content": "Which city is the capital of France, and in which country is it?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"city", "country"} and all(isinstance(v, str) for v in value.values())
    assert r.choices[0].finish_reason == "stop"


def test_a_caller_that_goes_away_aborts_its_request_in_the_engine(api, llm):
    before = llm.get_meta(NAME, refresh=True)
    story = [{"role": "user", "content": "Tell me a very long story."}]
    hang_up_mid_stream(api.port, {"model": NAME, "messages": story, "max_tokens": 480, "min_tokens": 480,
                                  "temperature": 0.7}, API_KEY)
    deadline = time.monotonic() + 60
    while True:
        meta = llm.get_meta(NAME, refresh=True)
        if (meta["requests_cancelled"] > before["requests_cancelled"] and meta["requests_in_flight"] == 0
                and meta["engine_load"]["requests_open"] == 0):
            break
        assert time.monotonic() < deadline, f"the request was not aborted: {meta}"
        time.sleep(0.2)
    assert meta["last_cancelled_after_pieces"] < 480


def test_the_result_cache_keeps_the_engines_answers(session):
    script = f'''set llm_cache="true";
        select id, llm_result({NAME}(llm_param(map("instruction", q, "temperature", 0.0, "max_new_tokens", 8)))) as a
        from vllm_qs where id < 10 as vllm_cached;'''
    first = next(r for r in session.sql(script) if r.kind == "select")
    rows = session.table("vllm_cached").to_pylist()
    second = next(r for r in session.sql(script) if r.kind == "select")
    assert "(10 model answers from the result cache, 0 computed)" in second.message, (first.message, second.message)
    assert session.table("vllm_cached").to_pylist() == rows
    session.sql('set llm_cache="false";')


# -- LoRA adapters per request on the vLLM engine ----------------------------------------------------------
LORA_NAME = "smol_vllm_lora"
LORA_PROMPTS = ["Write one sentence about the sea.", "Name three fruits.", "What is the capital of France?",
                "Describe a cat in one sentence.", "Give me a word that rhymes with 'light'.", "What is 7 plus 5?"]


def random_adapter(base_dir, out, seed: int, rank: int = 8):
    """A LoRA adapter over `base_dir` (every linear layer) with random weights small enough that SmolLM2 still
    answers in words, large enough that each adapter answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.4)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_deployment(llm, smollm2_dir, workspace, vllm_python):
    """SmolLM2 on vLLM with LoRA on (off by default on CPU), an LRU of 2 adapters, max rank 8; `vqa_1`, `vqa_2`
    (rank 8) and `vqa_wide` (rank 16) registered over it."""
    folder = workspace / "vllm_adapters"
    for name, seed, rank in (("vqa_1", 1, 8), ("vqa_2", 2, 8), ("vqa_wide", 3, 16)):
        llm.catalog.register_model(name, kind="adapter", path=str(random_adapter(smollm2_dir, folder / name, seed, rank)),
                                   base_model=str(smollm2_dir), model_type="llama", method="test(random lora)",
                                   params={}, metrics={}, job_id=None)
    llm.setup_num_workers(1)
    start = time.monotonic()
    llm.deploy(smollm2_dir, "vllm/llama", LORA_NAME, {"vllm.enable_lora": "true", "vllm.max_lora_rank": "8",
                                                      "max_adapters_per_replica": "2"})
    print(f"vLLM deployment with LoRA ready in {time.monotonic() - start:.1f} s")
    s = Session(llm, progress=False)
    yield {"folder": folder, "session": s}
    s.close()
    llm.undeploy(LORA_NAME, force=True)


def test_rows_of_two_adapters_and_the_base_in_one_select_answer_as_vllm_offline(lora_deployment, llm, workspace,
                                                                               vllm_python):
    """Greedy rows of vqa_1, vqa_2 and the base, interleaved in one select (one chunk: the engine mixes them in
    its steps), equal vLLM's offline LLM.generate with the same LoRARequests, each adapter's prompts alone."""
    rows = [{"id": i, "q": q, "a": a} for i, (q, a) in
            enumerate((q, a) for q in LORA_PROMPTS for a in (None, "vqa_1", "vqa_2"))]
    (workspace / "vllm_lora_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    session = lora_deployment["session"]
    start = time.monotonic()
    session.sql(f'''load json.`vllm_lora_rows.jsonl` as vllm_lora_rows;
        select id, a, {LORA_NAME}(llm_param(map("instruction", q, "adapter", a, "temperature", 0.0,
                                                "max_new_tokens", 24))) as r
        from vllm_lora_rows as vllm_lora_answered;''')
    took = time.monotonic() - start
    got = [json.loads(r["r"]) for r in session.table("vllm_lora_answered").to_pylist()]
    assert [g["metadata"].get("adapter") for g in got] == [f"{r['a']}@v1" if r["a"] else None for r in rows]
    meta = llm.get_meta(LORA_NAME, refresh=True)
    assert meta["adapters"] is True and meta["max_lora_rank"] == 8 and meta["max_adapters_per_replica"] == 2
    paths = {a: str(lora_deployment["folder"] / a) for a in ("vqa_1", "vqa_2")}
    job = {"model_dir": meta["model_dir"], "texts": [llm.runtime.prompt_text(LORA_NAME, {"ins": r["q"]}) for r in rows],
           "max_tokens": 24, "stop_token_ids": meta["stop_token_ids"], "max_lora_rank": 8,
           "adapters": [paths[r["a"]] if r["a"] else None for r in rows]}
    (workspace / "vllm_lora_job.json").write_text(json.dumps(job), encoding="utf-8")
    answers_file = workspace / "vllm_lora_answers.json"
    proc = subprocess.run([vllm_python, "-m", "byzer_like.backends.vllm_offline", str(workspace / "vllm_lora_job.json"),
                           str(answers_file)], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline = json.loads(answers_file.read_text(encoding="utf-8"))["texts"]
    print(f"select of {len(rows)} rows over 2 adapters + base on vLLM: {took:.1f} s")
    differ = [(r, g["output"], o) for r, g, o in zip(rows, got, offline) if g["output"] != o]
    assert not differ, differ[:5]
    by_adapter = {a: [o for r, o in zip(rows, offline) if r["a"] == a] for a in (None, "vqa_1", "vqa_2")}
    assert len({tuple(v) for v in by_adapter.values()}) == 3  # the adapters do change the answers


def test_single_and_streamed_chats_through_an_adapter_and_a_rank_too_large(lora_deployment, llm):
    from byzer_like.errors import AdapterRankError

    ask = {"temperature": 0.0, "max_new_tokens": 24}
    whole = llm.chat_oai(LORA_PROMPTS[0], model=LORA_NAME, llm_config=ask, adapter="vqa_2")[0].output
    streamed = "".join(piece for piece, _meta in llm.stream_chat_oai(LORA_PROMPTS[0], model=LORA_NAME,
                                                                    llm_config=ask, adapter="vqa_2"))
    assert streamed == whole and whole != llm.chat_oai(LORA_PROMPTS[0], model=LORA_NAME, llm_config=ask)[0].output
    with pytest.raises(AdapterRankError, match=r"rank 16, above .*vllm.max_lora_rank.*=\"16\""):
        llm.chat_oai("hi", model=LORA_NAME, adapter="vqa_wide")
    rows = llm.loaded_adapters(LORA_NAME)
    assert {"vqa_1", "vqa_2"} <= {r["adapter"] for r in rows}


def test_an_adapter_on_a_vllm_deployment_without_lora_says_how_to_enable_it(session, llm):
    from byzer_like.errors import NotSupportedError

    with pytest.raises(NotSupportedError, match=r"vllm.enable_lora"):
        llm.chat_oai("hi", model=NAME, adapter="vqa_1")
