"""Several references per row (issue 23, item 8) and non-English text (item 7) through the SQL engine:
`llm_eval(prediction, array(...), metric)` and `action="eval"` over a list reference column score the best
over a row's references for every metric; Chinese answers score as their characters say. Against the fake
runtime of tests/test_eval_session.py (real catalog, metrics and reports; fake model answers)."""
from __future__ import annotations

import json

import pytest

from test_eval_session import EvalRuntime

pytestmark = pytest.mark.timeout(60)
SQUAD = [{"question": "Where is the Eiffel Tower?", "answers": ["Paris", "in Paris, France"]},
         {"question": "Which river flows through Cairo?", "answers": ["the Nile", "Nile River"]},
         {"question": "中国的首都是哪里？", "answers": ["北京", "北京市"]},
         {"question": "Who wrote Hamlet?", "answers": ["Shakespeare", "William Shakespeare"]}]
ANSWERS = {"Where is the Eiffel Tower?": "in Paris, France", "Which river flows through Cairo?": "Nile River",
           "中国的首都是哪里？": "北京市", "Who wrote Hamlet?": "Marlowe"}


@pytest.fixture
def rt(tmp_path) -> EvalRuntime:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "squad.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in SQUAD))
    out = EvalRuntime(str(tmp_path))
    out.deployed["qa"] = {}
    out.answers["qa"] = ANSWERS
    return out


@pytest.mark.parametrize("metric, best", [("exact_match", 1.0), ("exact_match_strict", 1.0), ("token_f1", 1.0),
                                          ("rouge_l", 1.0), ("bleu", 100.0), ("chrf", 100.0)])
def test_llm_eval_takes_an_array_of_references_and_scores_the_best(s, metric, best):
    t = s.sql(f"select llm_eval('Nile River', array('the Nile', 'Nile River'), '{metric}') as many, "
              f"llm_eval('Nile River', 'the Nile', '{metric}') as one, "
              f"llm_eval('北京市', array('北京', '北京市'), '{metric}') as zh as t;")[-1].table.to_pylist()[0]
    assert t["many"] == pytest.approx(best) and t["zh"] == pytest.approx(best) and t["one"] < best


def test_llm_eval_over_a_list_column_and_chinese_text(s):
    s.sql("load json.`data/squad.jsonl` as squad;")  # answers[1]: Spark's arrays count from 0, the second answer
    rows = s.sql("select question, llm_eval(case when question like 'Who%' then 'Marlowe' else answers[1] end, "
                 "answers, 'exact_match') as em, llm_eval('北京是首都', '北京是中国的首都', 'rouge_l') as zh "
                 "from squad as t;")[-1].table.to_pylist()
    assert [r["em"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
    assert 0.5 < rows[0]["zh"] < 1.0  # 5 of 8 characters in common, in order (rouge-score's default: 0)


def test_eval_action_scores_each_row_against_all_its_references(s, rt):
    s.sql("load json.`data/squad.jsonl` as squad;")
    s.sql('run command as LLM.`` where action="eval" and udfName="qa" and inputTable="squad" '
          'and referenceColumn="answers" and metrics="exact_match,token_f1,rouge_l,bleu,chrf" '
          'and outputTable="per_row" as summary;')
    summary = s.table("summary").to_pylist()[0]
    assert summary["exact_match"] == 0.75 and summary["token_f1"] == 0.75 and summary["rouge_l"] == 0.75
    rows = s.table("per_row").to_pylist()
    assert rows[2]["reference"] == "北京 | 北京市" and rows[2]["exact_match"] == 1.0 and rows[2]["bleu"] == pytest.approx(100.0)
    assert [r["exact_match"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
