"""Seeded sampling for the transformers engine: one random generator per row, so that a request with a
`seed` gets the same answer alone, in a batch of any size, beside any other rows, streamed or not.

`model.generate(do_sample=True)` draws every row's token from torch's one global generator: a row's draws
depend on which rows share its batch, and `torch.manual_seed` is not safe while other threads generate.
Here sampling is a logits processor instead (`RowSampler`): it applies the request's temperature, top-k and
top-p (transformers' own warpers), draws each row's next token with that row's `torch.Generator` (one uniform
number per token, inverse CDF), and leaves only that token open, so `generate` runs greedy over it. A row
without a seed gets a generator seeded at random. The rule is written for users in docs/sampling.md.

torch and transformers are imported inside the functions."""
from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

SAMPLING_KEYS = ("temperature", "top_p", "top_k")


def row_generators(seeds: Sequence[int | None], gen: Mapping[str, Any]) -> list[Any] | None:
    """One CPU `torch.Generator` per row for a sampled batch (`gen["do_sample"]`) with at least one seed:
    row i's is seeded with `seeds[i]`, or at random where that is None. None when the batch does not sample
    or no row has a seed (then `generate` samples as usual)."""
    if not gen.get("do_sample") or all(s is None for s in seeds):
        return None
    import torch

    return [torch.Generator().manual_seed(int(s) if s is not None else random.getrandbits(63)) for s in seeds]


def seeded(gen: Mapping[str, Any], generators: Sequence[Any] | None, processors: list) -> dict[str, Any]:
    """`generate` keywords for a batch whose rows draw from `generators` (row order; None: `generate`
    samples as usual): the sampling keys move into a `RowSampler` after `processors` (logits processors of
    the batch, e.g. a grammar's), and `do_sample` turns off; `logits_processor` holds the processors."""
    gen = dict(gen)
    gen.pop("seed", None)
    processors = list(processors)
    if generators is not None:
        options = {k: gen.pop(k) for k in SAMPLING_KEYS if k in gen}
        gen["do_sample"] = False
        processors.append(RowSampler(generators, **options))
    if processors:
        from transformers import LogitsProcessorList

        gen["logits_processor"] = LogitsProcessorList(processors)
    return gen


class RowSampler:
    """A logits processor (transformers' `LogitsProcessor` protocol: `(input_ids, scores) -> scores`, both
    batch rows first) that samples row i's next token with `generators[i]` after temperature, top-k and top-p,
    and returns scores that are -inf except at that token (0)."""

    def __init__(self, generators: Sequence[Any], temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int | None = None):
        from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

        self.generators = list(generators)
        self.warpers = [TemperatureLogitsWarper(float(temperature))]
        if top_k:
            self.warpers.append(TopKLogitsWarper(int(top_k)))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(float(top_p)))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if int(scores.shape[0]) != len(self.generators):
            raise RuntimeError(f"a batch of {int(scores.shape[0])} rows was given {len(self.generators)} generators")
        warped = scores.float()
        for w in self.warpers:
            warped = w(input_ids, warped)
        cdf = torch.softmax(warped, dim=-1).cpu().cumsum(dim=-1)
        out = torch.full_like(scores, float("-inf"))
        for r, g in enumerate(self.generators):
            u = torch.rand((), generator=g) * cdf[r, -1]
            token = min(int(torch.searchsorted(cdf[r], u, right=True)), int(cdf.shape[1]) - 1)
            out[r, token] = 0.0
        return out


__all__ = ["RowSampler", "SAMPLING_KEYS", "row_generators", "seeded"]
