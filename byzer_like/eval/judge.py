"""LLM-as-judge: a deployed model grades each answer, with a prompt that is shown and can be replaced.

Two modes (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"):

- `score`: single-answer grading, a 1-10 score per row; the summary is the mean score;
- `pairwise`: the answer (A) against the reference (B); the judge says A, B or tie; the summary is
  A's win rate, a tie counting one half.

A judge reply that gives no grade is a parse failure: its row's value is None, and the summary counts
the failures (`judge_parse_failures`) beside the mean of the rows that parsed, so nothing is hidden.
This module only builds prompts and reads replies; the calls go through the runtime (`eval.run`).
"""
from __future__ import annotations

import re
from typing import Sequence

from ..errors import ConfigError

SCORE_PROMPT = (
    "You are a strict grader. Grade the answer to the question on a scale of 1 to 10, where 10 means fully "
    "correct and complete and 1 means wrong or irrelevant. Use the reference answer as the truth.\n\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Answer to grade: {prediction}\n\n"
    "Reply with one line: Score: <1-10>"
)
PAIRWISE_PROMPT = (
    "You compare two answers to the same question and say which is better (more correct, more complete).\n\n"
    "Question: {question}\n"
    "Answer A: {prediction}\n"
    "Answer B: {reference}\n\n"
    "Reply with one line: Winner: A, Winner: B, or Winner: tie"
)
MODES = {"score": SCORE_PROMPT, "pairwise": PAIRWISE_PROMPT}
FIELDS = ("question", "prediction", "reference")

_SCORE = re.compile(r"score\**\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\**\s*\.?\s*$")
_WINNER = re.compile(r"winner\**\s*[:=]?\s*\**\s*(a|b|tie)\b", re.IGNORECASE)
_BARE_WINNER = re.compile(r"^\s*\**\s*(a|b|tie)\s*\**\s*\.?\s*$", re.IGNORECASE)


def prompt_template(mode: str, template: str | None = None) -> str:
    """The judge prompt of `mode` (`score` or `pairwise`), or `template` when given; ConfigError for an
    unknown mode or a template with a placeholder other than {question}, {prediction}, {reference}."""
    if mode not in MODES:
        raise ConfigError(f"unknown judgeMode {mode!r}; valid modes: {', '.join(MODES)}")
    text = template or MODES[mode]
    used = set(re.findall(r"\{(\w+)\}", text))
    unknown = used - set(FIELDS)
    if unknown:
        raise ConfigError(f"judgePrompt uses {', '.join(sorted('{' + u + '}' for u in unknown))}; the placeholders "
                          f"are {', '.join('{' + f + '}' for f in FIELDS)}")
    if "prediction" not in used:
        raise ConfigError("judgePrompt must show the answer to grade: put {prediction} in it")
    return text


def build_prompt(template: str, question: str, prediction: str | None, reference: str | None) -> str:
    """The template filled for one row (a missing reference shows as "(none)")."""
    values = {"question": question, "prediction": prediction or "", "reference": reference if reference is not None else "(none)"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def parse_grade(mode: str, reply: str | None) -> float | None:
    """A judge reply -> the row's value: a score in [1, 10] (`score`), or 1.0 / 0.0 / 0.5 for A / B / tie
    (`pairwise`); None when the reply gives none (a parse failure, counted by `summary`)."""
    if reply is None:
        return None
    if mode == "score":
        m = _SCORE.search(reply) or _BARE_NUMBER.match(reply)
        if not m:
            return None
        value = float(m.group(1))
        return value if 1 <= value <= 10 else None
    m = _WINNER.search(reply) or _BARE_WINNER.match(reply)
    if not m:
        return None
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[m.group(1).lower()]


def summary(mode: str, values: Sequence[float | None]) -> dict[str, float | int]:
    """The judge's summary: `judge` (mean score, or A's win rate, over rows that parsed; NaN when none
    did), `judge_rows` (rows graded) and `judge_parse_failures` (rows whose reply gave no grade)."""
    parsed = [v for v in values if v is not None]
    return {"judge": sum(parsed) / len(parsed) if parsed else float("nan"),
            "judge_rows": len(parsed), "judge_parse_failures": len(values) - len(parsed)}


__all__ = ["MODES", "PAIRWISE_PROMPT", "SCORE_PROMPT", "build_prompt", "parse_grade", "prompt_template", "summary"]
