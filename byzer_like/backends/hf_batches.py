"""How the transformers engine runs a batch: each row through its own LoRA adapter (or the base model) in one
forward pass, and a batch that shrinks as its rows end, instead of every row costing the longest answer.

torch and transformers are imported inside the functions."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .sampling import row_generators


class SharedLock:
    """Many holders share it (generation on many threads), or one holds it alone (an adapter loading or
    unloading changes the model's modules). One waiting to hold it alone goes first, so loads never starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._alone and not self._shared)
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


# The adapter of each row of the batch this thread is generating (peft's names; "__base__": none). peft's
# own `generate(adapter_names=...)` hooks every LoRA layer for the length of one call, which is not safe
# when several threads generate at once; one hook per layer reading this thread's rows is.
_ROWS = threading.local()
BASE_ROW = "__base__"


def rows_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A LoRA layer's forward pre-hook: the adapter of each row of this thread's batch (all base by default)."""
    x = args[0] if args else kwargs["x"]
    names = getattr(_ROWS, "names", None)
    rows = int(x.shape[0])
    if names is None:
        names = [BASE_ROW] * rows
    elif len(names) != rows:
        raise RuntimeError(f"a batch of {rows} rows was given adapters for {len(names)}")
    kwargs["adapter_names"] = names
    return args, kwargs


@contextmanager
def adapter_rows(names: Sequence[str] | None) -> Iterator[None]:
    """Generate on this thread with `names[i]` the adapter of row i (None: every row on the base model)."""
    before = getattr(_ROWS, "names", None)
    _ROWS.names = list(names) if names is not None else None
    try:
        yield
    finally:
        _ROWS.names = before


def hook_lora_layers(model: Any) -> None:
    """Give every LoRA layer of `model` that has none the hook that picks each row's adapter (`rows_hook`)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in model.modules():  # the modules peft's own generate(adapter_names=...) hooks
        if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)) and not getattr(module, "_byzer_like_rows", False):
            module.register_forward_pre_hook(rows_hook, with_kwargs=True)
            module._byzer_like_rows = True


def generate_rows(generate: Callable[..., Any], model: Any, tokenizer: Any, ids: Any, mask: Any,
              rows: Sequence[Any]) -> list[list[int]]:
    """The new tokens of each row of a left-padded batch (`ids`, `mask`: rows x width), rows sharing
    their sampling options (`rows[0].gen`, `.stop`, `.response_format`; each row's `.budget`, `.adapter` and
    `.gen["seed"]`: a sampled batch with seeds draws each row from its own generator, backends/sampling.py);
    each list ends at the row's stop token (included) or its own budget, or runs past them (then
    `answer_tokens` cuts it). `generate(model, tokenizer, ids, mask, max_new_tokens, gen, stop,
    response_format, adapters=..., **generate_kwargs)` is one batched `model.generate`.

    A static batch costs its longest answer for every row. Here the batch shrinks instead: a
    `generate` call stops as soon as a quarter of its rows ended (a stop token or their own budget),
    the ended rows are dropped from the batch and its KV cache (`Cache.batch_select_indices`), and the
    rest go on from the cache where they were, so no row's tokens are computed again. Greedy answers
    are those of one `generate` over the whole batch (bench/sorting.py compares them). A batch under a
    JSON-schema grammar (whose processor keeps per-row state), of one row, or on a prefix-tuned model runs in
    one call: a prefix-tuning adapter's cache starts with its virtual tokens, so it is longer than the
    sequence, and `generate` cannot go on from such a cache (it counts the positions still to compute from
    the cache's length)."""
    from transformers import StoppingCriteriaList

    first = rows[0]
    budgets = [p.budget for p in rows]
    width = int(ids.shape[1])
    adapters = [p.adapter for p in rows]
    generators = row_generators([p.gen.get("seed") for p in rows], first.gen)  # each row's own draws
    each = {} if generators is None else {"generators": generators}
    prefixed = getattr(getattr(model, "byzer_like", None), "prefix", None) is not None
    if first.response_format is not None or len(rows) == 1 or prefixed:
        out = generate(model, tokenizer, ids, mask, max(budgets), first.gen, first.stop,
                       first.response_format, adapters=adapters, **each)
        return [out[r, width:].tolist() for r in range(len(rows))]
    import torch
    from transformers.cache_utils import DynamicLayer

    stop_ids = set(model.byzer_like.stop_ids)
    got: list[list[int]] = [[] for _ in rows]
    batch = list(range(len(rows)))  # the rows in the batch now, in its order
    ended: set[int] = set()
    gen, cache, steps, shrink = dict(first.gen), None, 0, True
    min_new = int(gen.get("min_new_tokens") or 0)
    while len(ended) < len(rows):
        left = [0 if r in ended else budgets[r] - len(got[r]) for r in batch]
        live = len(batch) - sum(r in ended for r in batch)
        ends = RowEnds(int(ids.shape[1]), left, stop_ids, prune_at=max(1, live // 4) if shrink else len(batch) + 1)
        if min_new:  # every row still in the batch has generated `steps` tokens so far
            gen["min_new_tokens"] = max(0, min_new - steps)
        out = generate(model, tokenizer, ids, mask, max(left), gen, first.stop, None,
                       adapters=[adapters[r] for r in batch], past_key_values=cache, use_cache=True,
                       return_dict_in_generate=True, stopping_criteria=StoppingCriteriaList([ends]),
                       **({} if generators is None else {"generators": [generators[r] for r in batch]}))
        new = out.sequences[:, ids.shape[1]:]
        steps += int(new.shape[1])
        _take(new, batch, got, ended, budgets, stop_ids, lambda r: bool(first.stop) and cut_at_stop(
            tokenizer.decode(got[r], skip_special_tokens=True), first.stop) is not None)
        if not ends.pruned:  # the call ran until every row ended: none is left
            break
        cache = out.past_key_values
        shrink = all(isinstance(layer, DynamicLayer) for layer in getattr(cache, "layers", [None]))
        if shrink:  # drop the ended rows from the batch and the cache
            index = torch.tensor([k for k, r in enumerate(batch) if r not in ended])
            cache.batch_select_indices(index)
            batch = [batch[k] for k in index.tolist()]
        else:  # a cache that cannot drop rows (static, linear attention): the whole batch goes on
            index = torch.arange(len(batch))
        ids = out.sequences[index]
        mask = torch.cat([mask[index], torch.ones((len(index), int(new.shape[1])), dtype=mask.dtype)], dim=1)
    return got


def _take(new: Any, batch: list[int], got: list[list[int]], ended: set[int], budgets: Sequence[int], stop_ids: set[int],
          stopped: Callable[[int], bool]) -> None:
    """Add one `generate` call's new tokens (`new`: batch rows x tokens, rows in `batch` order) to each row's
    answer in `got`, up to its stop token or its budget; a row that reached either, or whose text `stopped`
    (a stop string), goes into `ended`."""
    for k, r in enumerate(batch):
        if r in ended:
            continue
        for t in new[k].tolist():
            got[r].append(t)
            if t in stop_ids or len(got[r]) >= budgets[r]:
                ended.add(r)
                break
        else:
            if stopped(r):
                ended.add(r)  # a stop string ended it (the text is cut after decoding)



class RowEnds:
    """A `generate` stopping criterion (transformers' StoppingCriteria protocol: per-row booleans): a
    row is done at a stop token or after `budgets[i]` new tokens; once `prune_at` rows are done, every
    row is (the call ends so that `generate_rows` can drop the ended rows). `pruned` says it ended so."""

    def __init__(self, start: int, budgets: Sequence[int], stop_ids: set[int], prune_at: int):
        import torch

        self.start, self.prune_at, self.pruned = start, prune_at, False
        self.budgets = torch.tensor(list(budgets))
        self.stop_ids = torch.tensor(sorted(stop_ids))
        self.done = torch.zeros(len(budgets), dtype=torch.bool)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].cpu()
        self.done |= torch.isin(last, self.stop_ids) | (self.budgets <= input_ids.shape[1] - self.start)
        if int(self.done.sum()) >= self.prune_at and not bool(self.done.all()):
            self.pruned = True
            return torch.ones_like(self.done, device=input_ids.device)
        return self.done.to(input_ids.device)


def answer_tokens(ids: list[int], budget: int, stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The answer's tokens (up to, not including, the first stop token; at most `budget`) and whether
    the answer ended by itself (a stop token, or padding after it in a batch) rather than at the budget."""
    ids = ids[:budget]
    for j, t in enumerate(ids):
        if t in stop_ids:
            return ids[:j], True
    return ids, len(ids) < budget


def cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return text[: min(hits)] if hits else None


__all__ = ["BASE_ROW", "RowEnds", "SharedLock", "adapter_rows", "answer_tokens", "cut_at_stop", "generate_rows",
           "hook_lora_layers"]
