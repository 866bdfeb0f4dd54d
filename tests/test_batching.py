"""How a select's rows go to a model (`runtime.batching`): identical deterministic requests answered once
and fanned out in row order, the rest sent shortest prompt first; answers always come back in row order.

The planning rules run on plain dicts; the rest runs through SQL on a real tiny model and counts, on the
replica (`requests_generated` in its metadata), how many requests really reached the model."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from byzer_like.config import chat_request
from byzer_like.errors import ConfigError
from byzer_like.runtime.batching import dedupe_key, plan_requests, prompt_chars

UDF = "dedupe_chat"


def req(ins: str, **options) -> dict:
    return chat_request(ins, options).model_dump()


# -- the rules, on plain requests ------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("a, b, same", [
    (req("hi", temperature=0), req("hi", temperature=0), True),
    (req("hi", temperature=0), req("hi ", temperature=0), False),  # another prompt
    (req("hi", temperature=0), req("hi", temperature=0, max_new_tokens=5), False),  # another option
    (req("hi", temperature=0, system_msg="be brief"), req("hi", temperature=0), False),
    (req("hi", temperature=0, history=[{"role": "user", "content": "a"}]), req("hi", temperature=0), False),
    (req("hi", temperature=0.7, seed=1), req("hi", temperature=0.7, seed=1), True),  # seeded: reproducible
    (req("hi", temperature=0.7, seed=1), req("hi", temperature=0.7, seed=2), False),
    (req("hi", temperature=0.7), req("hi", temperature=0.7), False),  # two samples asked for: two samples
    (req("hi"), req("hi"), False),  # the default temperature (0.1) samples
    (req("hi", temperature=0.7, **{"generation.do_sample": "false"}), req("hi", temperature=0.7, **{"generation.do_sample": "false"}), True),
])
def test_which_requests_are_duplicates(a, b, same):
    plan = plan_requests([a, b])
    assert (len(plan.groups) == 1) is same
    assert plan.saved == (1 if same else 0)
    if not same:
        assert dedupe_key(a) is None or dedupe_key(a) != dedupe_key(b)


@pytest.mark.timeout(30)
def test_a_plan_sends_each_request_once_shortest_first_and_answers_in_row_order():
    texts = ["a long question here", "b", "mid size", "b", "a long question here", "b", "zz"]
    reqs = [req(t, temperature=0) for t in texts]
    reqs.append(req("b", temperature=0.9))  # sampled: its own request, beside the greedy "b"
    plan = plan_requests(reqs)
    sent = [reqs[g[0]] for g in plan.groups]
    assert sorted(g[0] for g in plan.groups) == [0, 1, 2, 6, 7]
    assert plan.saved == 3 and plan.size == 8
    greedy = [r for r in sent if r["temperature"] == 0]
    assert [prompt_chars(r) for r in greedy] == sorted(prompt_chars(r) for r in greedy)  # shortest first
    answers = [{"output": r["ins"].upper(), "metadata": {"t": r["temperature"]}} for r in sent]
    out = plan.fan_out(answers)
    assert [a["output"] for a in out] == [t.upper() for t in texts] + ["B"]
    assert out[1] == out[3] and out[1] is not out[3]  # a copy per row
    assert [a["metadata"]["t"] for a in out] == [0.0] * 7 + [0.9]

    # answer budgets of one size class go together (8-15 before 16-31), shortest prompt first within each
    mixed = [req("long prompt here", temperature=0, max_new_tokens=9), req("x", temperature=0, max_new_tokens=100),
             req("mid", temperature=0, max_new_tokens=12), req("y", temperature=0, max_new_tokens=20)]
    assert [g[0] for g in plan_requests(mixed).groups] == [2, 0, 3, 1]

    # no dedupe, no sort: every request, in row order
    plain = plan_requests(reqs, dedupe=False, sort=False)
    assert plain.groups == [[i] for i in range(len(reqs))] and plain.saved == 0

    # answers given earlier (an earlier vector of the same select) are not asked again; errors are not kept
    known: dict = {}
    plan.remember([*answers[:-1], {"error": "x", "error_code": "y"}], known)
    again = plan_requests([req("zz", temperature=0), req("b", temperature=0), req("new", temperature=0)], known=known)
    assert sorted(again.remembered) == [0, 1] and [g for g in again.groups] == [[2]]
    assert [a["output"] for a in again.fan_out([{"output": "NEW"}], known)] == ["ZZ", "B", "NEW"]


# -- through SQL on a real model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def dedupe_model(llm, tiny_models):
    llm.setup_num_workers(1)
    if not llm.is_model_exist(UDF):
        llm.deploy(tiny_models["llama"], "llama", UDF, {})
    yield UDF
    if llm.is_model_exist(UDF):
        llm.undeploy(UDF)


def generated(llm) -> int:
    """Requests the deployment's replica has given to its model so far."""
    return llm.get_meta(UDF, refresh=True)["requests_generated"]


def put_questions(session, workspace, name: str, questions: list[str]) -> None:
    """The table `questions` (id, q) in `session`, loaded from a parquet file as a user would."""
    (workspace / "data").mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(questions))), "q": questions}), workspace / "data" / f"{name}.parquet")
    session.sql(f"load parquet.`data/{name}.parquet` as questions;")


def select(session, dedupe: str, options: str = '"temperature", "0"', *, cache: str = "false"):
    results = session.sql(f"""
        set llm_dedupe = "{dedupe}";
        set llm_cache = "{cache}";
        select id, q, llm_result({UDF}(llm_param(map("instruction", q, {options}, "max_new_tokens", "6")))) as a
          from questions order by id as answers;""")
    return results[-1]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_duplicate_rows_are_answered_once_in_row_order(llm, dedupe_model, workspace):
    # 100 rows, 60 distinct questions of different lengths: 40 rows repeat an earlier one
    questions = [f"question {i % 60}: " + "why " * (i % 60 % 9) for i in range(100)]
    session = llm.session
    put_questions(session, workspace, "dedupe_questions", questions)

    before = generated(llm)
    without = select(session, "false")
    assert generated(llm) - before == 100
    assert "duplicate" not in without.message

    before = generated(llm)
    with_ = select(session, "true")
    assert generated(llm) - before == 60  # each distinct request reached the model once
    assert "(40 duplicate requests answered once: 60 sent to the model)" in with_.message
    assert with_.table.column("a").to_pylist() == without.table.column("a").to_pylist()  # same answers, same order
    answers = dict(zip(with_.table.column("q").to_pylist(), with_.table.column("a").to_pylist()))
    assert all(a == answers[q] for q, a in zip(questions, with_.table.column("a").to_pylist()))

    # sampling without a seed asks for a sample per row: nothing is merged
    before = generated(llm)
    sampled = select(session, "true", '"temperature", "0.8"')
    assert generated(llm) - before == 100 and "duplicate" not in sampled.message
    # with a seed a sample is reproducible: identical seeded rows are answered once
    before = generated(llm)
    select(session, "true", '"temperature", "0.8", "seed", "7"')
    assert generated(llm) - before == 60

    with pytest.raises(ConfigError, match="llm_dedupe"):
        session.sql('set llm_dedupe = "maybe";')
    session.sql('set llm_dedupe = "true";')


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_duplicates_and_the_result_cache(llm, dedupe_model, workspace):
    questions = [f"cached {i % 10}" for i in range(30)]
    session = llm.session
    put_questions(session, workspace, "dedupe_cached", questions)
    llm.result_cache.clear(UDF)

    before = generated(llm)
    first = select(session, "true", cache="true")
    assert generated(llm) - before == 10
    assert "(20 duplicate requests answered once: 10 sent to the model)" in first.message
    assert llm.result_cache.count(UDF)[UDF] == 30  # every row is kept, duplicates too

    before = generated(llm)
    again = select(session, "true", cache="true")
    assert generated(llm) - before == 0
    assert "(30 model answers from the result cache, 0 computed)" in again.message
    assert again.table.column("a").to_pylist() == first.table.column("a").to_pylist()
    llm.result_cache.clear(UDF)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_rows_sorted_by_length_come_back_in_row_order(llm, dedupe_model):
    # mixed lengths in a scrambled order, all distinct; sorted or not, each row gets its own answer
    questions = [f"{i}: " + "tell me more " * ((i * 7) % 11) for i in range(70)]
    reqs = [req(q, temperature=0, max_new_tokens=6) for q in questions]
    sorted_out = llm.runtime.generate(UDF, reqs)
    plain_out = llm.runtime.generate(UDF, reqs, sort=False, dedupe=False)
    one_by_one = [llm.runtime.generate(UDF, [r])[0] for r in reqs[:8]]
    assert [a["output"] for a in sorted_out] == [a["output"] for a in plain_out]
    assert [a["output"] for a in sorted_out[:8]] == [a["output"] for a in one_by_one]
