"""The reward back end: a sequence-classification model with one output (what `rm/<family>` trains,
`train/reward.py`) served as a scoring function, one DOUBLE per (instruction, response) pair.

    plugin.score(model, tokenizer, [{"instruction": q, "response": a}, ...]) -> [float, ...]   # in order

Each pair is rendered exactly as training rendered it (`train.reward.reward_text`: `[user: instruction,
assistant: response]` through the tokenizer's chat template, saved with the model; an optional `system`,
and alpaca's `input` after the instruction), cut at the model's context from the left (the answer's end
is what the head reads), and scored in batches of `max_batch_size`, shortest first. A reward model has no
answer text: a chat call is a RewardModelCallError saying how to call it.

`pretrainedModelType="reward"` names it; a deploy with `modelTable` of a registry model of kind "reward"
picks it without being told (`runtime/spec.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from ..config import SetupConfig, parse_bool
from ..errors import ConfigError, InvalidRequestError, ModelDirError, RewardModelCallError
from ..train.reward import PAIR_KEYS, pair_messages, reward_text, score_texts
from .hf_dirs import check_model_files, context_length, model_config, model_facts, worker_device



@dataclass
class _RewardState:
    """What a loaded reward model carries for this plugin (attached as `model.byzer_like`)."""

    model_dir: str
    context_length: int
    max_batch_size: int
    device: str


class RewardPlugin:
    """A model plugin for reward models (`AutoModelForSequenceClassification`, num_labels=1): `score`, no chat."""

    needs_model_dir = True

    def __init__(self, family: str = "reward"):
        self.family = family

    def __repr__(self) -> str:
        return f"RewardPlugin({self.family!r})"

    def check_model_dir(self, model_dir: str, infer_params: Mapping[str, Any] | None = None) -> None:
        """Refuse, before any worker starts, a directory that holds no one-output sequence classifier, and
        what every Hugging Face plugin refuses (remote code without trust_remote_code, pickle-only weights)."""
        ip = dict(infer_params or {})
        cfg = model_config(model_dir)
        architectures = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ModelDirError(
                f"{model_dir!r} holds a {architectures[0] if architectures else cfg.get('model_type')!r}, not a reward "
                "model (a ...ForSequenceClassification with one output); train one with pretrainedModelType=\"rm/<family>\", "
                "or deploy a chat model with its own family")
        labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 1
        if int(labels) != 1:
            raise ModelDirError(f"{model_dir!r} is a classifier with {labels} labels; a reward model has one output")
        if ip.get("adapter_dir"):
            raise ConfigError("a reward model is deployed whole and takes no adapter_dir; drop it")
        check_model_files(model_dir, cfg, ip)

    def init_model(self, model_dir: str, infer_params: Mapping[str, str] | None = None,
                   sys_conf: Mapping[str, str] | None = None) -> tuple[Any, Any]:
        """Load the classifier (safetensors, float32 on CPU) and its tokenizer (a pad token, right padding)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        ip = dict(infer_params or {})
        setup = SetupConfig.from_sys_conf(sys_conf or {})
        self.check_model_dir(model_dir, ip)
        trust = parse_bool(ip.get("trust_remote_code", False))
        allow_pickle = parse_bool(ip.get("allow_pickle_weights", False))
        device = worker_device(setup, str(ip.get("device", "auto")))
        dtype_name = str(ip.get("dtype", "auto"))
        dtype = getattr(torch, dtype_name) if dtype_name != "auto" else (torch.float32 if device == "cpu" else "auto")
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, trust_remote_code=trust, dtype=dtype, use_safetensors=None if allow_pickle else True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device)
        model.eval()
        model.byzer_like = _RewardState(model_dir=str(model_dir), context_length=context_length(model.config),
                                        max_batch_size=setup.max_batch_size, device=device)
        return model, tokenizer

    def score(self, model: Any, tokenizer: Any, pairs: Sequence[Mapping[str, Any]]) -> list[float]:
        """One reward per pair (`{"instruction", "response"}`, optional `system`, `input`), in order: the
        head's output for the rendered conversation. InvalidRequestError for a pair without a response."""
        state: _RewardState = model.byzer_like
        texts = []
        for n, p in enumerate(pairs, 1):
            if p.get("response") is None:
                raise InvalidRequestError(f"pair {n}: no response to score; each pair is "
                                          '{"instruction": <question>, "response": <answer>}')
            texts.append(reward_text(tokenizer, pair_messages(p.get("instruction"), p.get("system"), p.get("input")),
                                     p["response"]))
        return score_texts(model, tokenizer, texts, context_length=state.context_length,
                           batch_size=state.max_batch_size)

    # -- what a reward model cannot do -----------------------------------------------------------
    def stream_chat(self, model: Any, tokenizer: Any, ins: str, his: Sequence[Mapping[str, str]], max_length: int = 4096,
                    top_p: float = 0.95, temperature: float = 0.1, **kwargs: Any) -> Iterator[tuple[str, dict]]:
        """Always RewardModelCallError: a reward model gives scores, not answers."""
        raise RewardModelCallError(self.family)

    def embed_query(self, model: Any, tokenizer: Any, text: str, **kwargs: Any) -> list[float]:
        """Always RewardModelCallError: a reward model makes no vectors."""
        raise RewardModelCallError(self.family)

    def get_meta(self, model: Any, tokenizer: Any) -> dict:
        """Facts about the loaded reward model; `kind` "reward" is what SQL reads to return a DOUBLE per row."""
        state: _RewardState = model.byzer_like
        return {
            "family": self.family,
            "kind": "reward",
            **model_facts(model),
            "model_dir": state.model_dir,
            "context_length": state.context_length,
            "device": state.device,
            "max_batch_size": state.max_batch_size,
            "reward": True,
            "chat": False,
            "streaming": False,
            "embedding": False,
            "scoring": False,
            "adapters": False,
        }


plugin = RewardPlugin()

__all__ = ["PAIR_KEYS", "RewardPlugin", "plugin"]
