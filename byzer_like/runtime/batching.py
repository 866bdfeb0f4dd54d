"""How a batch of requests goes to a model: duplicates answered once, the rest sorted by prompt length.

`Runtime.generate` (the path under SQL's `select` and the client's `batch_chat`) plans its requests here
before it cuts them into chunks for the replicas:

    plan = plan_requests(requests, known=memo)   # memo: answers already given earlier in the same select
    answers = send([requests[g[0]] for g in plan.groups])     # one request per group, in plan order
    out = plan.fan_out(answers, memo)                          # one answer per request, in request order

**Duplicates.** Two requests are duplicates when they are equal in every field (instruction, history,
system message, every option) *and* their answer is determined by the request: greedy decoding
(`temperature` 0, or `do_sample` false) or a fixed `seed`. Such a request goes to the model once and its
answer is given to every row that asked it. Requests that sample without a seed (`temperature` > 0, which
is the default, 0.1) are never merged: asking the same question twice at a temperature asks for two
samples, and a user who wants that gets two.

**Order.** The requests that do go to the model are sent grouped by their decoding options (so that a
chunk holds requests a replica can run in one `generate` call; the LoRA adapter a request names is not one:
rows of different adapters share a forward pass), then by the size of their answer budget
(`max_new_tokens`, in powers of two: 8-15, 16-31, ...), and within those shortest prompt first (measured
in characters, no tokenizer needed). A static batch costs as much as its longest prompt (padding) and,
in an engine that cannot drop the rows that ended (the built-in one does: backends/hf.py), runs as many
steps as its longest answer, so chunks of alike prompts and alike budgets waste little:
on SmolLM2 with 64 mixed-length prompts and budgets of 8-128 tokens (bench/sorting.py's rows), a plain
static loop ran at 22.9 tokens/s in row order, 31.9 sorted by prompt length and 46.3 in this order.
Answers are put back in request order.

Pure Python (no Ray, no torch): unit tests run it on plain dicts.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..config import parse_bool
from ..errors import ConfigError

# request fields that make up the prompt or bound its length, and the LoRA adapter it goes through (requests
# for different adapters share batches: each row goes through its own); the rest are decoding options
PROMPT_FIELDS = ("ins", "his", "max_new_tokens", "max_length", "adapter")


def sampled(request: Mapping[str, Any]) -> bool:
    """Whether the request samples its answer (the built-in engine's rule: `do_sample` when given, else
    `temperature` > 0). A value that is not a boolean counts as sampling (never merged; the model says
    what is wrong with it)."""
    kwargs = request.get("kwargs") or {}
    try:
        if "do_sample" in kwargs:
            return parse_bool(kwargs["do_sample"])
        return float(request.get("temperature", 0.1)) > 0
    except (ConfigError, TypeError, ValueError):
        return True


def dedupe_key(request: Mapping[str, Any]) -> str | None:
    """The key under which identical requests share one answer, or None when the request must be asked
    on its own (it samples without a seed). The key is the whole request as canonical JSON."""
    if sampled(request) and (request.get("kwargs") or {}).get("seed") is None:
        return None
    return json.dumps(request, sort_keys=True, default=str, ensure_ascii=False)


def prompt_chars(request: Mapping[str, Any]) -> int:
    """The prompt's length in characters: instruction, history and system message."""
    n = len(str(request.get("ins") or ""))
    for m in request.get("his") or []:
        n += len(str(m.get("content") or "")) if isinstance(m, Mapping) else len(str(m))
    system = (request.get("kwargs") or {}).get("system_msg")
    return n + (len(str(system)) if system else 0)


def budget_class(request: Mapping[str, Any]) -> int:
    """The answer budget's size class: the bit length of `max_new_tokens` (else `max_length`; 0 when
    neither is given, so such requests go together)."""
    budget = request.get("max_new_tokens") or request.get("max_length") or 0
    try:
        return int(budget).bit_length()
    except (TypeError, ValueError):
        return 0


def options_signature(request: Mapping[str, Any]) -> str:
    """The decoding options of a request (all but the prompt and its length bounds), as canonical JSON:
    requests with equal signatures can share one batched `generate` call."""
    rest = {k: v for k, v in request.items() if k not in PROMPT_FIELDS}
    rest["kwargs"] = {k: v for k, v in (request.get("kwargs") or {}).items() if k != "system_msg"}
    return json.dumps(rest, sort_keys=True, default=str, ensure_ascii=False)


@dataclass
class Plan:
    """What to send and how the answers go back.

    `groups`: one list of request positions per request to send, in sending order; the first position
    of a group is the one sent, the others are its duplicates. `remembered`: positions answered from
    answers given earlier (`known`), by their key. `keys`: each request's dedupe key (None: asked alone)."""

    keys: list[str | None]
    groups: list[list[int]] = field(default_factory=list)
    remembered: dict[int, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """How many requests the plan covers."""
        return len(self.keys)

    @property
    def saved(self) -> int:
        """Requests that do not go to the model: duplicates of another one, or answered earlier."""
        return self.size - len(self.groups)

    def fan_out(self, answers: Sequence[dict], known: Mapping[str, dict] | None = None) -> list[dict]:
        """One answer per request, in request order, from one answer per group (in plan order) and the
        earlier answers in `known`. A duplicate gets its own copy of the answer."""
        if len(answers) != len(self.groups):
            raise ValueError(f"{len(answers)} answers for {len(self.groups)} requests sent")
        out: list[dict | None] = [None] * self.size
        for group, answer in zip(self.groups, answers):
            out[group[0]] = answer
            for i in group[1:]:
                out[i] = copy.deepcopy(answer)
        for i, key in self.remembered.items():
            out[i] = copy.deepcopy((known or {})[key])
        return out  # type: ignore[return-value]

    def remember(self, answers: Sequence[dict], known: dict[str, dict]) -> None:
        """Keep the answers of deterministic requests in `known` (failed ones are not kept)."""
        for group, answer in zip(self.groups, answers):
            key = self.keys[group[0]]
            if key is not None and "error" not in answer:
                known[key] = answer


def plan_requests(requests: Sequence[Mapping[str, Any]], *, dedupe: bool = True, sort: bool = True,
                  known: Mapping[str, dict] | None = None) -> Plan:
    """Plan `requests` (`config.ChatRequest` dicts): duplicates merged (with `dedupe`), requests whose key
    is in `known` answered from it, the rest sorted by decoding options, answer budget class and prompt
    length (with `sort`)."""
    keys = [dedupe_key(r) if dedupe else None for r in requests]
    plan = Plan(keys=keys)
    first: dict[str, int] = {}
    groups: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is not None:
            if known and key in known:
                plan.remembered[i] = key
                continue
            if key in first:
                groups[first[key]].append(i)
                continue
            first[key] = len(groups)
        groups.append([i])
    if sort:
        sort_keys = [(options_signature(requests[g[0]]), budget_class(requests[g[0]]), prompt_chars(requests[g[0]]))
                     for g in groups]
        order = sorted(range(len(groups)), key=sort_keys.__getitem__)  # stable: equal keys keep row order
        groups = [groups[g] for g in order]
    plan.groups = groups
    return plan
