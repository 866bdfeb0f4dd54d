"""Evaluation metrics: pure functions of a prediction and a reference (or of whole columns of them).

    exact_match("The Paris.", "paris")          -> 1.0   (normalised as SQuAD does)
    exact_match_strict("Paris.", "Paris")       -> 0.0
    token_f1("in Paris France", "Paris")        -> 0.5
    rouge_l("the cat sat", "the cat sat down")  -> rouge-score's ROUGE-L F-measure
    summarise("bleu", preds, refs)              -> sacrebleu's corpus BLEU (0-100)

`METRICS` is the table of every metric by name, with what it needs (a reference, a label set, the
model's token scores, a judge) and how its per-row values become the one summary number. BLEU, chrF
and ROUGE-L come from their reference implementations (`sacrebleu`, `rouge-score`), never re-written
here; exact match and token F1 are the SQuAD v1.1 evaluation script's definitions; accuracy and
macro-F1 the usual ones (sklearn's `f1_score(average="macro")` over the labels that occur). This module
imports neither ray nor torch (perplexity's token scores come from the model plugin, see `eval.run`).
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import UnknownMetricError
from .text import RougeTokenizer, segments, spaced

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalise(text: str | None) -> str:
    """SQuAD v1.1's `normalize_answer`: lower case, punctuation removed (ASCII and every Unicode punctuation
    character, as MLQA's evaluation script does: "巴黎。" is "巴黎"), the articles a / an / the removed,
    whitespace collapsed. None -> ""."""
    if text is None:
        return ""
    s = str(text).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _refs(reference: Any) -> list[str]:
    """A reference, or several (a list: the best match counts, as SQuAD does with its ground truths)."""
    if reference is None:
        return []
    if isinstance(reference, (list, tuple)):
        return [str(r) for r in reference if r is not None]
    return [str(reference)]


def exact_match(prediction: str | None, reference: Any) -> float:
    """1.0 when the normalised prediction equals the normalised reference (any of several), else 0.0
    (SQuAD v1.1 `exact_match_score`). A None prediction scores 0."""
    if prediction is None:
        return 0.0
    p = normalise(prediction)
    return float(any(p == normalise(r) for r in _refs(reference)))


def exact_match_strict(prediction: str | None, reference: Any) -> float:
    """1.0 when the prediction equals the reference character for character, leading and trailing
    whitespace aside; else 0.0."""
    if prediction is None:
        return 0.0
    return float(any(prediction.strip() == r.strip() for r in _refs(reference)))


def token_f1(prediction: str | None, reference: Any) -> float:
    """SQuAD v1.1 `f1_score`: the harmonic mean of token precision and recall between the normalised
    prediction and reference (tokens counted with multiplicity); the best over several references.
    Tokens are whitespace words with each CJK / Thai character its own (`eval.text.segments`, MLQA's mixed
    segmentation). Two empty texts score 1.0, one empty text 0.0."""
    if prediction is None:
        return 0.0
    best = 0.0
    pred_tokens = segments(normalise(prediction))
    for r in _refs(reference):
        ref_tokens = segments(normalise(r))
        if not pred_tokens or not ref_tokens:
            best = max(best, float(pred_tokens == ref_tokens))
            continue
        common: dict[str, int] = {}
        for t in set(pred_tokens):
            common[t] = min(pred_tokens.count(t), ref_tokens.count(t))
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(ref_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def label_of(prediction: str | None, choices: Sequence[str]) -> str | None:
    """The label a free-text answer gives among `choices`: the choice equal to it once both are
    normalised; else the choice that occurs (as whole words) earliest in it; else None (unparsed, which
    counts as wrong)."""
    if prediction is None:
        return None
    p = normalise(prediction)
    folded = [(c, normalise(c)) for c in choices]
    for c, n in folded:
        if p == n:
            return c
    found = []
    for c, n in folded:
        m = re.search(rf"(?<!\w){re.escape(n)}(?!\w)", p) if n else None
        if m:
            found.append((m.start(), -len(n), c))
    return min(found)[2] if found else None


def is_label(label: str, reference: Any) -> bool:
    """Whether `label` is the reference label (any of several), compared normalised."""
    return any(normalise(label) == normalise(r) for r in _refs(reference))


def accuracy(predictions: Sequence[str | None], references: Sequence[Any], choices: Sequence[str]) -> float:
    """The share of rows whose answer's label (`label_of`) is the reference label (compared normalised)."""
    if not predictions:
        return float("nan")
    hits = [label_of(p, choices) is not None and is_label(label_of(p, choices), r) for p, r in zip(predictions, references)]
    return sum(hits) / len(hits)


def macro_f1(predictions: Sequence[str | None], references: Sequence[Any], choices: Sequence[str]) -> float:
    """The unweighted mean over labels of each label's F1 (precision and recall of that label), over the
    labels that occur among the references or the predicted labels: sklearn's
    `f1_score(y_true, y_pred, average="macro")`. An unparsed answer predicts no label (a miss for its
    reference's label)."""
    if not predictions:
        return float("nan")
    gold = [normalise((_refs(r) or [""])[0]) for r in references]  # several references: the first is the label
    pred = [normalise(label_of(p, choices)) if label_of(p, choices) is not None else None for p in predictions]
    labels = sorted({g for g in gold} | {p for p in pred if p is not None})
    scores = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


_ROUGE = None


def rouge_l(prediction: str | None, reference: Any) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens) from `rouge-score`
    (`RougeScorer(["rougeL"], tokenizer=...).score(target=reference, prediction=prediction)`), in [0, 1];
    the best over several references. Tokens: `eval.text.tokens` (rouge-score's stemmed English words, each
    CJK / Thai character, other scripts' Unicode words), not rouge-score's default, which drops them."""
    global _ROUGE
    if prediction is None:
        return 0.0
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeTokenizer())
    return max((_ROUGE.score(r, prediction)["rougeL"].fmeasure for r in _refs(reference)), default=0.0)


def bleu(prediction: str | None, reference: Any) -> float:
    """Sentence BLEU of one row from `sacrebleu.sentence_bleu` (0-100; exponential smoothing and
    effective n-gram order, sacrebleu's defaults for one sentence), the texts given with each CJK / Thai
    character spaced out (`eval.text.spaced`; for Han this is sacrebleu's `zh` tokeniser). Several
    references count as sacrebleu counts them. The summary over rows is corpus BLEU (`corpus_bleu`), not the
    mean of these."""
    import sacrebleu

    if prediction is None:
        return 0.0
    return float(sacrebleu.sentence_bleu(spaced(prediction), [spaced(r) for r in _refs(reference)]).score)


def chrf(prediction: str | None, reference: Any) -> float:
    """Sentence chrF (character n-gram F-score, beta 2) from `sacrebleu.sentence_chrf`, 0-100; the
    summary over rows is `corpus_chrf`."""
    import sacrebleu

    if prediction is None:
        return 0.0
    return float(sacrebleu.sentence_chrf(prediction, _refs(reference)).score)


def corpus_bleu(predictions: Sequence[str | None], references: Sequence[Any]) -> float:
    """sacrebleu's corpus BLEU (0-100) over the rows (13a tokenisation after `eval.text.spaced`); rows with
    several references give sacrebleu several reference streams."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu([spaced(p) for p in predictions],
                                       _streams(references, spaced)).score)


def corpus_chrf(predictions: Sequence[str | None], references: Sequence[Any]) -> float:
    """sacrebleu's corpus chrF (0-100) over the rows (characters: every script as it is), with all their
    references."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf([p or "" for p in predictions], _streams(references, str)).score)


def _streams(references: Sequence[Any], form: Callable[[str], str]) -> list[list[str]]:
    """sacrebleu's reference streams: stream k holds each row's k-th reference (its first where it has fewer,
    which changes neither clipped n-gram counts nor the closest reference length)."""
    rows = [_refs(r) or [""] for r in references]
    return [[form(refs[k] if k < len(refs) else refs[0]) for refs in rows] for k in range(max(map(len, rows), default=1))]


def perplexity(logprob_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Corpus perplexity of reference texts: exp(-(sum of token log-probabilities) / (number of tokens)),
    the exponentiated mean negative log-likelihood per token (Jurafsky & Martin, ch. 3). inf when no token
    was scored."""
    total = sum(token_counts)
    if total == 0:
        return float("inf")
    return math.exp(-sum(logprob_sums) / total)


def mean_token_logprob(logprob_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """The mean log-likelihood per reference token (natural log): sum of log-probabilities / tokens."""
    total = sum(token_counts)
    return sum(logprob_sums) / total if total else float("nan")


def mean(values: Sequence[float | None]) -> float:
    """The mean of the values that are not None (NaN when there are none)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


@dataclass(frozen=True)
class Metric:
    """One metric of the table below.

    `needs`: "reference" (a reference column), "choices" (a reference column and `choices`), "scores"
    (the model's token log-probabilities of the references: the plugin's `score_text`), "judge" (a
    deployed judge model), "reward" (a deployed reward model's score of each answer). `row(prediction, reference)` is the per-row value (None for metrics that exist
    only over a corpus); `summary(values, predictions, references, choices)` the one number over rows
    (default: the mean of the row values). `higher_is_better` orders versions; `source` names the
    definition or library."""

    name: str
    needs: str
    row: Callable[[str | None, Any], float] | None
    summary: Callable[..., float] | None
    higher_is_better: bool
    source: str
    description: str


def _mean_summary(values: Sequence[float | None], predictions: Sequence[Any], references: Sequence[Any],
                  choices: Sequence[str] | None) -> float:
    return mean(values)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("exact_match", "reference", exact_match, None, True, "SQuAD v1.1 exact_match_score (normalised)",
           "share of answers equal to the reference after SQuAD's normalisation"),
    Metric("exact_match_strict", "reference", exact_match_strict, None, True, "string equality",
           "share of answers equal to the reference character for character"),
    Metric("token_f1", "reference", token_f1, None, True, "SQuAD v1.1 f1_score",
           "mean token-overlap F1 between answer and reference"),
    Metric("accuracy", "choices", None, lambda v, p, r, c: accuracy(p, r, c), True, "label accuracy",
           "share of answers whose label (among choices) is the reference label"),
    Metric("macro_f1", "choices", None, lambda v, p, r, c: macro_f1(p, r, c), True,
           "macro-averaged F1 (sklearn average='macro')", "unweighted mean of per-label F1"),
    Metric("rouge_l", "reference", rouge_l, None, True, "rouge-score rougeL F-measure (stemmed)",
           "mean ROUGE-L F-measure (longest common subsequence), 0-1"),
    Metric("bleu", "reference", bleu, lambda v, p, r, c: corpus_bleu(p, r), True, "sacrebleu corpus_bleu",
           "corpus BLEU, 0-100 (rows: sentence BLEU)"),
    Metric("chrf", "reference", chrf, lambda v, p, r, c: corpus_chrf(p, r), True, "sacrebleu corpus_chrf",
           "corpus chrF, 0-100 (rows: sentence chrF)"),
    Metric("perplexity", "scores", None, None, False, "exp(-sum log p / tokens) of the references",
           "perplexity of the references given their prompts (a text table: of its text)"),
    Metric("judge", "judge", None, None, True, "LLM-as-judge (eval.judge)",
           "a judge model's grade per row: mean 1-10 score, or win rate against the reference (pairwise)"),
    Metric("reward", "reward", None, None, True, "a deployed reward model's score (rm/<family>, rewardModel=)",
           "the mean score a reward model gives the answers (higher: answers it prefers); needs no reference"),
)}
ALIASES = {"em": "exact_match", "exact": "exact_match", "strict_exact_match": "exact_match_strict",
           "f1": "token_f1", "rougel": "rouge_l", "rouge-l": "rouge_l", "rouge": "rouge_l", "sacrebleu": "bleu",
           "ppl": "perplexity", "llm_judge": "judge", "acc": "accuracy", "rm": "reward"}


def metric(name: str) -> Metric:
    """The metric called `name` (or an alias: em, f1, rougeL, ppl...); UnknownMetricError listing the
    valid ones otherwise."""
    key = str(name).strip()
    key = ALIASES.get(key.lower(), key.lower())
    if key not in METRICS:
        raise UnknownMetricError(str(name), METRICS)
    return METRICS[key]


def parse_metrics(value: str | Sequence[str] | None, default: Sequence[str] = ("exact_match",)) -> list[Metric]:
    """`"exact_match, rouge_l"` or a list -> the metrics, in order, without repeats."""
    names = ([p for p in value.split(",")] if isinstance(value, str) else list(value)) if value else list(default)
    out: list[Metric] = []
    for n in names:
        if not str(n).strip():
            continue
        m = metric(n)
        if m not in out:
            out.append(m)
    if not out:
        raise UnknownMetricError("", METRICS)
    return out


def row_value(name: str, prediction: str | None, reference: Any) -> float | None:
    """One row's value of a per-row metric (the SQL function `llm_eval(prediction, reference, name)`);
    None for a None reference. UnknownMetricError for a name that has no per-row value (it lists those
    that have)."""
    m = metric(name)
    if m.row is None:
        raise UnknownMetricError(name, [k for k, v in METRICS.items() if v.row is not None])
    if reference is None:
        return None
    return m.row(prediction, reference)


def summarise(m: Metric, values: Sequence[float | None], predictions: Sequence[Any], references: Sequence[Any],
              choices: Sequence[str] | None = None) -> float:
    """The one number of metric `m` over rows (its own corpus formula, else the mean of `values`)."""
    if m.summary is None:
        return mean(values)
    return m.summary(values, predictions, references, choices)


__all__ = ["ALIASES", "METRICS", "Metric", "accuracy", "bleu", "chrf", "corpus_bleu", "corpus_chrf", "exact_match",
           "exact_match_strict", "is_label", "label_of", "macro_f1", "mean", "mean_token_logprob", "metric", "normalise",
           "parse_metrics", "perplexity", "rouge_l", "row_value", "summarise", "token_f1"]
