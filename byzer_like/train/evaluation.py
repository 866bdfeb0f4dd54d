"""Evaluation inside a training run: evalTable (or sft's evalSplit rows) measured with evalMetrics on the
model being trained, at each evaluation step.

    ev = TrainingEval.from_table(table, metrics="perplexity,exact_match", max_new_tokens=32, max_length=512)
    ev(model, tokenizer)                       # one process (sft): {"eval_perplexity": ..., ...}
    ev(engine.module, tokenizer, rank=r, world=w, gather=all_gather, synced_gpus=zero3)   # sfft's workers

Metrics are those of `byzer_like.eval.metrics`, computed the way `action="eval"` computes them:
generation metrics (exact_match, token_f1, rouge_l, bleu ...) on greedy answers to the rows' prompts
(rendered with the tokenizer's chat template, else their text joined by newlines), perplexity on the
model's token log-likelihoods (of a text row's text, every token after the first; of a prompt row's
reference after its prompt: what `score_text` scores). Perplexity adds `eval_mean_token_logprob`.
A judge cannot run inside a training job (it is refused with the options).

With several workers each rank measures every `world`-th row (the same number of rows on each rank, a
repeated row filling the short ones, so that ZeRO-3's collective forward passes line up) and the ranks
exchange their rows with `gather` (`torch.distributed.all_gather_object`); every rank returns the same
numbers. This module imports torch only inside the call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..eval import metrics as M
from ..eval.evalset import EvalSet

BATCH = 8  # rows per forward / generate call


@dataclass
class TrainingEval:
    """An eval set and its metrics, ready to measure a model; pickles into Ray Train workers.

    `metrics`: metric names (`eval.metrics.METRICS`); `evalset`: the rows (`eval.evalset.EvalSet`);
    `labels`: the choices of accuracy / macro_f1; `max_new_tokens`: answer tokens per row;
    `max_length`: tokens scored per row at most (a longer row is cut at its end)."""

    metrics: list[str]
    evalset: EvalSet
    labels: list[str] | None = None
    max_new_tokens: int = 32
    max_length: int = 512

    @classmethod
    def from_table(cls, table: Any, *, metrics: str | Sequence[str] | None, max_new_tokens: int = 32,
                   max_length: int = 512, name: str | None = None, default: Sequence[str] = ("exact_match",)
                   ) -> "TrainingEval":
        """Check `table` (an eval set: the forms of `eval.evalset`) against `metrics` (`eval.measure.plan`'s
        checks: EvalSetError, UnknownMetricError, ConfigError) and keep what measuring needs."""
        from ..eval.measure import plan

        names = [m.name for m in M.parse_metrics(metrics, default=default)]
        _, es, labels = plan(table, metrics=names, name=name)
        return cls(names, es, labels, max_new_tokens, max_length)

    @property
    def rows(self) -> int:
        """Rows of the eval set."""
        return self.evalset.rows

    def __call__(self, model: Any, tokenizer: Any, *, stop_ids: Sequence[int] = (), rank: int = 0, world: int = 1,
                 gather: Callable[[Any], list] | None = None, synced_gpus: bool = False) -> dict:
        """`{"eval_<metric>": value}` for the model as it is now (left in train mode if it was).

        `stop_ids`: the ids that end an answer (default: the tokenizer's EOS); `rank`, `world`, `gather`:
        the worker's place and the all-gather of Python objects when several workers share the rows;
        `synced_gpus`: keep generating until every rank has finished (ZeRO-3's sharded weights)."""
        mine = shard(self.rows, rank, world)
        generating = any(M.metric(n).needs != "scores" for n in self.metrics)
        scoring = "perplexity" in self.metrics
        was_training = model.training
        model.eval()
        try:
            rows = [i for i, _ in mine]
            predictions = self._answers(model, tokenizer, rows, stop_ids, synced_gpus) if generating else [None] * len(rows)
            scores = self._scores(model, tokenizer, rows) if scoring else [(0.0, 0)] * len(rows)
        finally:
            if was_training:
                model.train()
        local = [(i, p, s) for (i, real), p, s in zip(mine, predictions, scores) if real]
        everything = [x for part in gather(local) for x in part] if gather is not None and world > 1 else local
        everything.sort(key=lambda x: x[0])
        return self._summary([p for _, p, _ in everything], [s for _, _, s in everything])

    # -- measuring ---------------------------------------------------------------------------------
    def _answers(self, model: Any, tok: Any, rows: list[int], stop_ids: Sequence[int], synced: bool) -> list[str]:
        import torch

        prompts = [render_prompt(tok, self.evalset.prompts[i]) for i in rows]
        side, tok.padding_side = tok.padding_side, "left"
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out_text: list[str] = []
        try:
            for k in range(0, len(prompts), BATCH):
                enc = tok(prompts[k:k + BATCH], return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():  # not inference_mode: ZeRO-3 gathers weights in place
                    out = model.generate(**{n: v.to(model.device) for n, v in enc.items()}, do_sample=False,
                                         max_new_tokens=self.max_new_tokens, eos_token_id=list(stop_ids) or None,
                                         pad_token_id=pad, use_cache=True, synced_gpus=synced)
                out_text += [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                 skip_special_tokens=True)]
        finally:
            tok.padding_side = side
        return out_text

    def _scores(self, model: Any, tok: Any, rows: list[int]) -> list[tuple[float, int]]:
        """(sum of natural-log probabilities, tokens scored) per row, as `score_text` scores them."""
        import torch

        es = self.evalset
        items: list[tuple[list[int], int]] = []
        for i in rows:
            if es.form == "text":
                ids, start = tok(es.prompts[i][-1]["content"])["input_ids"], 1
            else:
                head = tok(render_prompt(tok, es.prompts[i]), add_special_tokens=False)["input_ids"]
                ids = head + tok(es.references[i] or "", add_special_tokens=False)["input_ids"]
                start = len(head)
            ids = ids[: self.max_length]
            items.append((ids, max(1, min(start, len(ids)))))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out: list[tuple[float, int]] = []
        for k in range(0, len(items), BATCH):
            chunk = items[k:k + BATCH]
            width = max(2, max(len(ids) for ids, _ in chunk))
            ids_t = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (ids, _) in enumerate(chunk):
                ids_t[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[r, :len(ids)] = 1
            with torch.no_grad():  # every rank runs the same number of forwards (ZeRO-3)
                logits = model(input_ids=ids_t.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids_t[:, 1:].to(logits.device).unsqueeze(-1))[..., 0]
            for r, (ids, start) in enumerate(chunk):
                scored = logp[r, start - 1:len(ids) - 1] if len(ids) >= 2 else logp[r, :0]
                out.append((float(scored.sum()), int(scored.numel())))
        return out

    def _summary(self, predictions: list[str | None], scores: list[tuple[float, int]]) -> dict:
        es = self.evalset
        result: dict[str, float] = {}
        for name in self.metrics:
            m = M.metric(name)
            if name == "perplexity":
                lps, ns = [s[0] for s in scores], [s[1] for s in scores]
                result["eval_perplexity"] = _round(M.perplexity(lps, ns))
                result["eval_mean_token_logprob"] = _round(M.mean_token_logprob(lps, ns))
                continue
            values = [m.row(p, r) if m.row and r is not None else None for p, r in zip(predictions, es.references)]
            result[f"eval_{name}"] = _round(M.summarise(m, values, predictions, es.references, self.labels))
        return result


def shard(rows: int, rank: int, world: int) -> list[tuple[int, bool]]:
    """This rank's rows of an eval set of `rows` rows: every `world`-th row from `rank` on, as (row, real)
    pairs, filled to ceil(rows / world) entries with a repeat of row 0 marked not real (its result is
    dropped), so that every rank makes the same forward passes."""
    mine = [(i, True) for i in range(rank, rows, world)]
    per_rank = math.ceil(rows / world) if rows else 0
    return mine + [(0, False)] * (per_rank - len(mine))


def render_prompt(tok: Any, messages: list[dict[str, str]]) -> str:
    """A prompt as the model is asked it: the tokenizer's chat template with its generation prompt, else
    (a base model without one, as continued pretraining often has) the messages' text, one per line."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"


def _round(v: float) -> float:
    return v if math.isnan(v) or math.isinf(v) else round(v, 6)


__all__ = ["TrainingEval", "render_prompt", "shard"]
