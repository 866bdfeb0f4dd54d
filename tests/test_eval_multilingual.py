"""Metrics on non-English text (issue 23, item 7) and several references per row at the metric level
(item 8): identical Chinese, Japanese, Thai, Korean and Russian answers score full marks on every metric
(rouge-score's default tokeniser dropped them to 0), partial overlaps score between, English is unchanged."""
import pytest

from byzer_like.eval import metrics as M
from byzer_like.eval.text import segments, tokens

TEXTS = {"zh": "北京是中国的首都。", "ja": "東京は日本の首都です。", "th": "กรุงเทพเป็นเมืองหลวงของประเทศไทย",
         "ko": "서울은 한국의 수도입니다.", "ru": "Москва — столица России.", "ar": "القاهرة عاصمة مصر"}
ROW_METRICS = ("exact_match", "exact_match_strict", "token_f1", "rouge_l", "bleu", "chrf")
FULL = {"exact_match": 1.0, "exact_match_strict": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "bleu": 100.0, "chrf": 100.0}


@pytest.mark.parametrize("lang", TEXTS)
@pytest.mark.parametrize("name", ROW_METRICS)
def test_identical_answers_score_full_marks_in_every_script(lang, name):
    assert M.row_value(name, TEXTS[lang], TEXTS[lang]) == pytest.approx(FULL[name])


@pytest.mark.parametrize("name", ("token_f1", "rouge_l", "bleu", "chrf"))
def test_a_partly_right_chinese_answer_scores_between(name):
    value = M.row_value(name, "北京是首都", "北京是中国的首都")
    assert 0 < value < FULL[name]
    assert M.row_value(name, "上海", "北京是中国的首都") < value


def test_the_tokenisation_rule():
    assert tokens("北京是首都") == ["北", "京", "是", "首", "都"]
    assert tokens("Привет, МИР!") == ["привет", "мир"]
    assert tokens("The cats were running") == ["the", "cat", "were", "run"]  # rouge-score's stemmed English
    assert segments("巴黎。in France") == ["巴", "黎", "。in", "France"]
    assert M.normalise("巴黎。") == "巴黎"  # Unicode punctuation goes, as in MLQA's evaluation


def test_english_scores_are_rouge_scores_own():
    from rouge_score import rouge_scorer

    ours = M.rouge_l("the cats sat on the mats", "a cat sat on a mat today")
    theirs = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("a cat sat on a mat today",
                                                                          "the cats sat on the mats")
    assert ours == pytest.approx(theirs["rougeL"].fmeasure)


@pytest.mark.parametrize("name", ROW_METRICS)
def test_a_row_with_several_references_scores_its_best(name):
    refs = ["the capital is Berlin", "Paris", "巴黎"]
    assert M.row_value(name, "Paris", refs) == pytest.approx(FULL[name])
    assert M.row_value(name, "巴黎", refs) == pytest.approx(FULL[name])
    assert M.row_value(name, "Paris", refs) > M.row_value(name, "Paris", refs[0])


def test_corpus_bleu_and_chrf_use_every_reference():
    preds = ["Paris", "the capital of Germany is Berlin"]
    one = M.corpus_bleu(preds, ["the capital is Paris", "the capital of Germany is Berlin"])
    many = M.corpus_bleu(preds, [["the capital is Paris", "Paris"], "the capital of Germany is Berlin"])
    assert many > one and many == pytest.approx(100.0)
    assert M.corpus_chrf(preds, [["x", "Paris"], ["Berlin"]]) > M.corpus_chrf(preds, ["x", "Berlin"])


def test_evaluation_during_training_scores_chinese_and_several_references():
    """train.evaluation's summary (what evalMetrics logs at each evaluation) over the model's answers."""
    from byzer_like.train.evaluation import TrainingEval

    rows = [{"instruction": "中国的首都是哪里？", "output": "北京是中国的首都。"},
            {"instruction": "日本の首都は？", "output": ["東京です。", "東京"]}]
    ev = TrainingEval.from_table(rows, metrics="exact_match,token_f1,rouge_l,bleu")
    same = ev._summary(["北京是中国的首都。", "東京"], [(0.0, 0)] * 2)
    assert same == {"eval_exact_match": 1.0, "eval_token_f1": 1.0, "eval_rouge_l": 1.0,
                    "eval_bleu": pytest.approx(100.0)}
    partly = ev._summary(["北京是首都", "大阪"], [(0.0, 0)] * 2)
    assert 0 < partly["eval_rouge_l"] < 1 and partly["eval_exact_match"] == 0.0
