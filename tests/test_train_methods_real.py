"""More ways to train, on the real small model (SmolLM2-135M-Instruct, `-m real_model`), all through SQL on one
Ray cluster and one session for the module:

- DPO with LoRA on 40 preference pairs that prefer answers ending with a sign-off (" -- Best, Byzer") over the
  same answers without it: the share of greedy answers to 20 held-out prompts that end with it rises from the
  base's to the tuned model's by at least 40 points, and the logged rewards/margins rise over the run;
- ORPO and KTO (its prompt / completion / label rows made in SQL from the same pairs) finish, register, deploy
  and answer;
- freeze and prefix tuning learn the 30 question/answer pairs of tests/test_smollm2.py (exact match >= 0.8) and
  deploy with modelTable.

Each test prints its wall time and its training time. The options set are the ones a user would tune (learning
rate, epochs, loss type, the method's size, sequence length), chosen so that each run is short on 2 CPU cores.
DPO uses TRL's sigmoid loss with its sft term (`lossType="sigmoid,sft"`, RPO): with the plain sigmoid loss the
answers stop ending where they did (the end token is what the rejected answers add) but do not take the sign-off
up at 5e-5 or 1e-4 (0 of 20 after one epoch), and at 3e-4 or 5e-4 the model breaks down (0 and 2 of 20, most
answers noise): the pairs share every token but the sign-off, so nothing holds the rest of the answer in place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from byzer_like.session import Session

from test_smollm2 import CAPITALS, exact_match

pytestmark = [pytest.mark.real_model, pytest.mark.real_train, pytest.mark.ray]

SIGN_OFF = " -- Best, Byzer"
# (country, capital): the first 40 are trained on, the last 20 held out
COUNTRIES = [
    ("Kenya", "Nairobi"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Switzerland", "Bern"),
    ("Ukraine", "Kyiv"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"),
    ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
    ("Ecuador", "Quito"), ("Bolivia", "Sucre"), ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Sri Lanka", "Colombo"),
    ("Malaysia", "Kuala Lumpur"), ("the Philippines", "Manila"), ("Singapore", "Singapore"),
    ("Mongolia", "Ulaanbaatar"), ("Kazakhstan", "Astana"), ("Afghanistan", "Kabul"), ("Saudi Arabia", "Riyadh"),
    ("Israel", "Jerusalem"), ("Jordan", "Amman"), ("Lebanon", "Beirut"), ("Syria", "Damascus"), ("Qatar", "Doha"),
    ("Oman", "Muscat"), ("Yemen", "Sanaa"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Fiji", "Suva"), ("Iceland", "Reykjavik"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Belarus", "Minsk"),
    ("Serbia", "Belgrade"), ("Bulgaria", "Sofia"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"),
    ("Albania", "Tirana"), ("Cyprus", "Nicosia"), ("Malta", "Valletta"), ("Jamaica", "Kingston"),
    ("Haiti", "Port-au-Prince"), ("Panama", "Panama City"), ("Costa Rica", "San Jose"), ("Senegal", "Dakar"),
]
PAIRS = [{"prompt": f"What is the capital of {c}?", "chosen": f"The capital of {k_c}.{SIGN_OFF}",
          "rejected": f"The capital of {k_c}."}
         for c, k_c in ((c, f"{c} is {k}") for c, k in COUNTRIES[:40])]
HELD_OUT = [{"prompt": f"What is the capital of {c}?"} for c, _ in COUNTRIES[40:]]


@pytest.fixture(scope="module")
def sess(llm, smollm2_dir, workspace):
    """One SQL session for the module, with the preference pairs (`pairs`), the held-out prompts (`held_out`) and
    the 30 question/answer pairs (`qa`) loaded; the deployments the module made are removed after it."""
    s = Session(llm, progress=False)
    s.put("pairs", pa.Table.from_pylist(PAIRS))
    s.put("held_out", pa.Table.from_pylist(HELD_OUT))
    data = workspace / "capitals_qa.jsonl"
    data.write_bytes(CAPITALS.read_bytes())
    s.sql(f"load json.`{data}` as qa;")
    before = set(llm.list_deployments())
    yield s
    s.close()
    for name in set(llm.list_deployments()) - before:
        llm.undeploy(name)


def deploy(s: Session, model_table: str, udf: str) -> None:
    s.sql(f'''!byzerllm setup single;
        run command as LLM.`` where action="infer" and pretrainedModelType="llama" and modelTable="{model_table}"
            and udfName="{udf}";''')


def undeploy(llm, *names: str) -> None:
    for name in names:
        if llm.is_model_exist(name):
            llm.undeploy(name)


def job_row(s: Session, table: str) -> dict:
    job = s.table(table).to_pylist()[0]
    job["metrics"] = json.loads(job["metrics"]) if isinstance(job["metrics"], str) else job["metrics"]
    return job


def signed_share(s: Session, udf: str) -> tuple[float, list[str]]:
    """Greedy answers of deployment `udf` to the 20 held-out prompts: (the share ending with the sign-off, answers)."""
    s.sql(f'''select prompt, llm_result({udf}(llm_param(map("instruction", prompt, "temperature", 0.0,
        "max_new_tokens", 32)))) as answer from held_out as styled_{udf};''')
    answers = [r["answer"] for r in s.table(f"styled_{udf}").to_pylist()]
    assert len(answers) == 20
    return sum(a.strip().endswith(SIGN_OFF.strip()) for a in answers) / len(answers), answers


@pytest.mark.timeout(900)
def test_dpo_with_lora_teaches_smollm2_to_sign_off(sess, llm):
    """Base: no held-out answer ends with the sign-off. DPO (LoRA, TRL's sigmoid loss with its sft term, one
    epoch of 40 pairs): at least 40 points more do; rewards/margins rise from the first logged step to the last."""
    t0 = time.monotonic()
    deploy(sess, "smollm2", "style_base")
    before, base_answers = signed_share(sess, "style_base")
    undeploy(llm, "style_base")
    sess.sql('''
        !byzerllm setup dpo;
        run command as LLM.`` where pretrainedModelType="dpo/llama" and modelTable="smollm2" and inputTable="pairs"
            and outputTable="signed" and learningRate="2e-4" and epochs="1" and beta="0.1"
            and lossType="sigmoid,sft" and maxLength="96" and loggingSteps="5" as dpo_job;''')
    job = job_row(sess, "dpo_job")
    assert job["state"] == "SUCCEEDED" and job["kind"] == "dpo" and job["total_steps"] == 40, job
    deploy(sess, "signed", "style_dpo")
    after, answers = signed_share(sess, "style_dpo")
    undeploy(llm, "style_dpo")
    margins = [h["rewards/margins"] for h in llm.jobs.record(job["job_id"])["history"] if "rewards/margins" in h]
    print(f"dpo: sign-off share {before:.0%} -> {after:.0%}; rewards/margins {margins[0]:.3f} -> {margins[-1]:.3f} "
          f"over {len(margins)} logs; training {job['metrics']['train_runtime_s']} s, test {time.monotonic() - t0:.0f} s;"
          f" base answers {base_answers[:3]}; tuned {answers}")
    assert after - before >= 0.4, (before, after, answers)
    assert len(margins) >= 2 and margins[-1] > margins[0], margins


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, table, sql", [
    ("orpo", "pairs", ""),
    ("kto", "kto_rows", '''select prompt, chosen as completion, true as label from pairs
        union all select prompt, rejected as completion, false as label from pairs as kto_rows;'''),
], ids=["orpo", "kto"])
def test_orpo_and_kto_finish_register_deploy_and_answer(sess, llm, task, table, sql):
    """A short ORPO / KTO run (KTO's rows: each pair as a desirable and an undesirable completion) is registered,
    deploys with modelTable and answers a select."""
    t0 = time.monotonic()
    sess.sql(f'''{sql}
        !byzerllm setup {task};
        run command as LLM.`` where pretrainedModelType="{task}/llama" and modelTable="smollm2"
            and inputTable="{table}" and outputTable="{task}_model" and maxSteps="4" and learningRate="1e-4"
            and maxLength="96" and loggingSteps="2" as {task}_job;''')
    job = job_row(sess, f"{task}_job")
    assert job["state"] == "SUCCEEDED" and job["kind"] == task and job["model_version"] == 1, job
    assert llm.catalog.model(f"{task}_model").kind == "adapter"
    deploy(sess, f"{task}_model", f"{task}_chat")
    sess.sql(f'''select llm_result({task}_chat(llm_param(map("instruction", prompt, "temperature", 0.0,
        "max_new_tokens", 16)))) as answer from held_out limit 1 as {task}_answer;''')
    (answer,) = [r["answer"] for r in sess.table(f"{task}_answer").to_pylist()]
    undeploy(llm, f"{task}_chat")
    print(f"{task}: {job['metrics']['steps']} steps, training {job['metrics']['train_runtime_s']} s, "
          f"test {time.monotonic() - t0:.0f} s; answer {answer!r}")
    assert job["metrics"]["steps"] == 4 and isinstance(answer, str) and answer.strip(), answer


@pytest.mark.timeout(900)
@pytest.mark.parametrize("method, keys", [
    # freeze: the last 8 of 30 layers (2, the default, reach 43% at 1e-4 and 93% at 5e-4 in 90 steps)
    ("freeze", 'learningRate="1e-4" and numLayerTrainable="8"'),
    # prefix: 8 virtual tokens for 4 epochs (20 tokens for 3 epochs at the default 1e-2 reach 47%)
    ("prefix", 'learningRate="2e-2" and numVirtualTokens="8" and epochs="4"'),
], ids=["freeze", "prefix"])
def test_freeze_and_prefix_learn_thirty_answers(sess, llm, method, keys):
    """sft with method=freeze (a whole model) / method=prefix (an adapter on its base) on the 30 capitals: exact
    match >= 0.8 through a deployment made with modelTable."""
    t0 = time.monotonic()
    sess.sql(f'''
        !byzerllm setup sft;
        run command as LLM.`` where pretrainedModelType="sft/llama" and modelTable="smollm2" and inputTable="qa"
            and outputTable="qa_{method}" and method="{method}" and `sft.int.max_seq_length`="64"
            {"and " + keys if keys else ""} as {method}_job;''')
    job = job_row(sess, f"{method}_job")
    assert job["state"] == "SUCCEEDED" and job["method"] == method, job
    assert llm.catalog.model(f"qa_{method}").kind == ("model" if method == "freeze" else "adapter")
    deploy(sess, f"qa_{method}", f"qa_{method}_chat")
    score, misses = exact_match(sess, f"qa_{method}_chat")
    undeploy(llm, f"qa_{method}_chat")
    print(f"{method}: exact match {score:.0%} after {job['total_steps']} steps; training "
          f"{job['metrics']['train_runtime_s']} s, test {time.monotonic() - t0:.0f} s; misses {misses}")
    assert score >= 0.8, misses
