"""Evaluation metrics, judge parsing, the paired bootstrap and promotion conditions, as pure functions on
fixed inputs with known values: BLEU and chrF against sacrebleu's own README example, ROUGE-L against
rouge-score's README example, exact match and F1 against SQuAD's definitions worked by hand. No Ray."""
from __future__ import annotations

import math

import pytest

from byzer_like.errors import EvalSetError, PromotionError, UnknownMetricError
from byzer_like.eval import judge as J
from byzer_like.eval import metrics as M
from byzer_like.eval.compare import parse_conditions
from byzer_like.eval.evalset import from_table
from byzer_like.eval.stats import paired_bootstrap

pytestmark = pytest.mark.timeout(60)

# sacrebleu's README: "BLEU = 48.53 82.4/50.0/45.5/37.5 ..." and "chrF2 = 59.73"
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]


def test_bleu_and_chrf_match_sacrebleus_published_example():
    import sacrebleu

    assert round(sacrebleu.corpus_bleu(SYS, REFS).score, 2) == 48.53  # the library's own figure, as a guard
    assert round(M.corpus_bleu(SYS, [r for r in REFS[0]]), 2) == round(sacrebleu.corpus_bleu(SYS, [REFS[0]]).score, 2)
    assert round(sacrebleu.corpus_chrf(SYS, REFS).score, 2) == 59.73
    assert M.bleu("The dog bit the man.", "The dog bit the man.") == pytest.approx(100.0)
    assert M.chrf("The dog bit the man.", "The dog bit the man.") == pytest.approx(100.0)
    assert M.summarise(M.metric("bleu"), [], SYS, REFS[0]) == pytest.approx(sacrebleu.corpus_bleu(SYS, [REFS[0]]).score)


def test_rouge_l_matches_rouge_scores_readme_example():
    # rouge-score's README: scorer.score('The quick brown fox jumps over the lazy dog',
    #                                    'The quick brown dog jumps on the log.') -> rougeL p=0.625 r=0.5556
    value = M.rouge_l("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog")
    p, r = 0.625, 5 / 9
    assert value == pytest.approx(2 * p * r / (p + r))
    assert M.rouge_l("", "anything") == 0.0
    assert M.rouge_l(None, "x") == 0.0


@pytest.mark.parametrize("pred, ref, em, strict, f1", [
    ("Paris", "Paris", 1.0, 1.0, 1.0),
    ("The Paris.", "paris", 1.0, 0.0, 1.0),           # SQuAD normalisation: articles, punctuation, case
    ("  Paris ", "Paris", 1.0, 1.0, 1.0),
    ("in Paris France", "Paris", 0.0, 0.0, 0.5),      # precision 1/3, recall 1 -> F1 0.5
    ("Lyon", "Paris", 0.0, 0.0, 0.0),
    ("paris paris", "paris", 0.0, 0.0, 2 / 3),         # counted with multiplicity: p=1/2, r=1
    (None, "Paris", 0.0, 0.0, 0.0),
    ("Rome", ["Paris", "Rome"], 1.0, 1.0, 1.0),       # several references: the best counts
])
def test_exact_match_and_token_f1(pred, ref, em, strict, f1):
    assert M.exact_match(pred, ref) == em
    assert M.exact_match_strict(pred, ref) == strict
    assert M.token_f1(pred, ref) == pytest.approx(f1)


def test_labels_accuracy_and_macro_f1():
    choices = ["positive", "negative", "neutral"]
    assert M.label_of("Positive.", choices) == "positive"
    assert M.label_of("I think it is negative, not positive", choices) == "negative"  # the earliest one
    assert M.label_of("no idea", choices) is None
    preds = ["positive", "negative", "positive", "nothing"]
    refs = ["positive", "negative", "negative", "neutral"]
    assert M.accuracy(preds, refs, choices) == 0.5
    # per label F1: positive 2*1/(2+1+0)=2/3, negative 2*1/(2+0+1)=2/3, neutral 0 -> mean 4/9
    assert M.macro_f1(preds, refs, choices) == pytest.approx(4 / 9)


def test_perplexity_formula():
    assert M.perplexity([-2.0, -4.0], [2, 2]) == pytest.approx(math.exp(1.5))
    assert M.mean_token_logprob([-2.0, -4.0], [2, 2]) == -1.5
    assert M.perplexity([], []) == math.inf


def test_unknown_metric_lists_the_valid_ones_and_aliases_work():
    with pytest.raises(UnknownMetricError) as e:
        M.parse_metrics("exact_match,rouge_x")
    assert "rouge_x" in str(e.value) and "did you mean 'rouge_l'" in str(e.value) and "token_f1" in str(e.value)
    assert [m.name for m in M.parse_metrics("em, f1, rougeL, ppl, em")] == ["exact_match", "token_f1", "rouge_l", "perplexity"]
    assert M.row_value("rouge_l", "a b", None) is None
    with pytest.raises(UnknownMetricError):
        M.row_value("macro_f1", "a", "a")  # a corpus-only metric has no per-row value


def test_judge_parsing_counts_failures():
    assert J.parse_grade("score", "Score: 7") == 7.0
    assert J.parse_grade("score", "**Score**: 9/10") == 9.0
    assert J.parse_grade("score", "8") == 8.0
    assert J.parse_grade("score", "Score: 42") is None       # out of range
    assert J.parse_grade("score", "I like it") is None
    assert J.parse_grade("pairwise", "Winner: A") == 1.0
    assert J.parse_grade("pairwise", "winner: tie") == 0.5
    assert J.parse_grade("pairwise", "B") == 0.0
    assert J.summary("score", [7.0, None, 9.0]) == {"judge": 8.0, "judge_rows": 2, "judge_parse_failures": 1}
    text = J.build_prompt(J.prompt_template("score"), "Q?", "ans", "ref")
    assert "Q?" in text and "ans" in text and "ref" in text
    with pytest.raises(Exception, match="placeholders"):
        J.prompt_template("score", "grade {answer}")


def test_paired_bootstrap_interval():
    a = [0.0] * 20 + [1.0] * 10
    b = [1.0] * 29 + [0.0]
    ci = paired_bootstrap(a, b, n=500)
    assert ci["delta"] == pytest.approx(29 / 30 - 1 / 3)
    assert 0 < ci["ci_low"] <= ci["delta"] <= ci["ci_high"]
    same = paired_bootstrap([1.0, 0.0] * 10, [0.0, 1.0] * 10, n=500)
    assert same["delta"] == 0 and same["ci_low"] < 0 < same["ci_high"]


def test_promotion_conditions_parse():
    (c,) = parse_conditions("exact_match >= m@v2.exact_match + 0.02")
    assert (c.metric, c.op, c.ref, c.ref_metric, c.offset) == ("exact_match", ">=", "m@v2", "exact_match", 0.02)
    c1, c2 = parse_conditions("em > 0.5 and rouge_l >= smol.x@production.rouge_l - 0.1")
    assert (c1.metric, c1.offset, c1.ref) == ("exact_match", 0.5, None)
    assert (c2.ref, c2.offset) == ("smol.x@production", -0.1)
    with pytest.raises(UnknownMetricError):
        parse_conditions("exact_matchh >= 0.5")
    with pytest.raises(PromotionError):
        parse_conditions("exact_match is big")


def test_eval_sets_forms_and_bad_input():
    es = from_table([{"instruction": "What is the capital of France?", "output": "Paris", "id": 1}], name="qa")
    assert es.form == "alpaca" and es.references == ["Paris"] and es.extra == {"id": [1]}
    assert es.prompts[0][-1] == {"role": "user", "content": "What is the capital of France?"}
    chat = from_table([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    assert chat.references == ["hello"] and chat.prompts[0] == [{"role": "user", "content": "hi"}]
    q = from_table([{"question": "2+2?", "answer": "4"}])
    assert q.references == ["4"]
    assert from_table([{"question": "2+2?", "answer": "4"}]).fingerprint == q.fingerprint
    with pytest.raises(EvalSetError, match="no reference column"):
        from_table([{"prompt": "hi"}], need_reference=True)
    with pytest.raises(EvalSetError, match="no prompt column"):
        from_table([{"foo": "x", "bar": "y"}])
    with pytest.raises(EvalSetError, match="referenceColumn"):
        from_table([{"prompt": "hi"}], reference_column="gold")
