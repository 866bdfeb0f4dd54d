"""The encoder back end: the sentence-embedding plugins (`models/encoder`: Byzer's bge, bge_m3, m3e).

A sentence encoder is a Hugging Face `AutoModel` (BERT, XLM-RoBERTa, ...) whose token states are pooled
into one vector per text, as sentence-transformers pools them:

- the pooling comes from the `pooling` infer param (cls | mean | max | mean_sqrt_len | last), else from
  the model directory's sentence-transformers files (`modules.json` names the Pooling module's folder,
  whose `config.json` sets `pooling_mode_*`; several modes are concatenated, as sentence-transformers
  does), else from the family (bge: the [CLS] token, m3e and the generic `encoder`: the mean of the
  tokens);
- vectors are L2-normalised (`normalize="false"` keeps them raw);
- texts are cut at `max_seq_length` (infer param, else `sentence_bert_config.json`, else the model's
  positions) and embedded in batches of `max_batch_size`, shortest first, so that a batch pads little.

Weights load from safetensors and `trust_remote_code` is off unless asked for (the same directory checks as
the causal LM plugins). An encoder has no `stream_chat` answer: a chat call is a NotAChatModelError that
says to use it with `embedding_query` / `emb` / `/v1/embeddings`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..config import SetupConfig, parse_bool
from ..errors import ConfigError, ModelDirError, NotAChatModelError
from ..plugins.model_types import ENCODER_CONFIG_TYPES
from .hf_dirs import check_model_files, json_object, model_config, model_facts, worker_device

POOLINGS = ("cls", "mean", "max", "mean_sqrt_len", "last")
# sentence-transformers' Pooling config flags -> our names, in the order it concatenates them
_ST_FLAGS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
             ("pooling_mode_mean_tokens", "mean"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
             ("pooling_mode_lasttoken", "last"))
_ST_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len", "lasttoken": "last"}
INFER_PARAMS = ("pooling", "normalize", "max_seq_length")


@dataclass
class _EncoderState:
    """What a loaded encoder carries for this plugin (attached as `model.byzer_like`)."""

    model_dir: str
    pooling: tuple[str, ...]
    pooling_source: str  # "infer_params" | the sentence-transformers file it came from | "family default"
    normalize: bool
    max_seq_length: int
    max_batch_size: int
    device: str


def sentence_transformers_pooling(model_dir: str | Path) -> tuple[tuple[str, ...], str] | None:
    """The pooling modes sentence-transformers would use for `model_dir` and the file that says so, or None
    when the directory has no sentence-transformers Pooling module. ModelDirError for a mode it cannot do."""
    d = Path(model_dir)
    modules = d / "modules.json"
    pooling_dir = None
    if modules.is_file():
        try:
            listed = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{modules} is not valid JSON: {e}") from None
        for m in listed if isinstance(listed, list) else []:
            if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
                pooling_dir = d / str(m.get("path") or "")
                break
    elif (d / "1_Pooling" / "config.json").is_file():
        pooling_dir = d / "1_Pooling"
    if pooling_dir is None or not (pooling_dir / "config.json").is_file():
        return None
    file = pooling_dir / "config.json"
    cfg = json_object(file)
    if isinstance(cfg.get("pooling_mode"), str):  # the newer single-key spelling
        mode = _ST_NAMES.get(cfg["pooling_mode"])
        if mode is None:
            raise ModelDirError(f"{file} asks for pooling {cfg['pooling_mode']!r}, which byzer-like does not do; "
                                f"deploy with pooling= one of {', '.join(POOLINGS)}")
        return (mode,), str(file)
    if cfg.get("pooling_mode_weightedmean_tokens"):
        raise ModelDirError(f"{file} asks for weighted-mean pooling, which byzer-like does not do; "
                            f"deploy with pooling= one of {', '.join(POOLINGS)}")
    modes = tuple(name for flag, name in _ST_FLAGS if cfg.get(flag))
    return (modes, str(file)) if modes else None


class EncoderPlugin:
    """A model plugin for sentence encoders: `embed_query` / `embed_documents`, no chat."""

    needs_model_dir = True

    def __init__(self, family: str, *, model_types: Sequence[str] = ENCODER_CONFIG_TYPES, pooling: str = "mean"):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        self.family = family
        self.model_types = tuple(model_types)
        self.pooling = pooling

    def __repr__(self) -> str:
        return f"EncoderPlugin({self.family!r})"

    def infer_param_names(self) -> set[str]:
        """The `where` keys this plugin reads beside byzer-like's own deploy options."""
        return set(INFER_PARAMS)

    # -- loading ---------------------------------------------------------------------------------
    def check_model_dir(self, model_dir: str, infer_params: Mapping[str, Any] | None = None) -> None:
        """Refuse, before any worker starts, a directory that is not a sentence encoder of this family
        (config.json's model_type), options of the wrong value, and what every Hugging Face plugin refuses
        (remote code without trust_remote_code, pickle-only weights, no tokenizer)."""
        ip = dict(infer_params or {})
        cfg = model_config(model_dir)
        model_type = cfg.get("model_type")
        architectures = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
        if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise ModelDirError(
                f"{model_dir!r} holds a causal language model ({architectures[0]}), not a sentence encoder; deploy it "
                f"with pretrainedModelType=\"auto\" (or its family), not {self.family!r}")
        if model_type not in self.model_types:
            raise ModelDirError(
                f"{model_dir!r} holds a {model_type!r} model, not a {self.family} sentence encoder (model_type "
                f"{' / '.join(self.model_types)}); use pretrainedModelType=\"encoder\" for another encoder, or the "
                "model's own family for a causal LM")
        if ip.get("adapter_dir"):
            raise ConfigError(f"model type {self.family!r} is a sentence-embedding model and takes no LoRA adapter; "
                              "drop adapter_dir")
        _options(ip)
        check_model_files(model_dir, cfg, ip)
        sentence_transformers_pooling(model_dir)

    def init_model(self, model_dir: str, infer_params: Mapping[str, str] | None = None,
                   sys_conf: Mapping[str, str] | None = None) -> tuple[Any, Any]:
        """Load the encoder (`AutoModel`, safetensors) and its tokenizer; decide pooling and length."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        ip = dict(infer_params or {})
        setup = SetupConfig.from_sys_conf(sys_conf or {})  # the contract's sys_conf, read once
        self.check_model_dir(model_dir, ip)
        pooling, normalize, max_seq = _options(ip)
        trust = parse_bool(ip.get("trust_remote_code", False))
        allow_pickle = parse_bool(ip.get("allow_pickle_weights", False))
        device = worker_device(setup, str(ip.get("device", "auto")))
        dtype_name = str(ip.get("dtype", "auto"))
        dtype = getattr(torch, dtype_name) if dtype_name != "auto" else (torch.float32 if device == "cpu" else "auto")
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=trust, dtype=dtype,
                                          use_safetensors=None if allow_pickle else True)
        model.to(device)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
        if pooling is not None:
            modes, source = (pooling,), "infer_params"
        else:
            found = sentence_transformers_pooling(model_dir)
            modes, source = found if found else ((self.pooling,), "family default")
        model.byzer_like = _EncoderState(
            model_dir=str(model_dir), pooling=modes, pooling_source=source, normalize=normalize,
            max_seq_length=max_seq or _max_seq_length(model_dir, model.config, tokenizer),
            max_batch_size=setup.max_batch_size, device=device)
        return model, tokenizer

    # -- vectors ---------------------------------------------------------------------------------
    def embed_query(self, model: Any, tokenizer: Any, text: str, **kwargs: Any) -> list[float]:
        """One text's vector (pooled, normalised unless deployed with normalize=false)."""
        return self.embed_documents(model, tokenizer, [text])[0]

    def embed_documents(self, model: Any, tokenizer: Any, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, computed in batches of `max_batch_size` (shortest texts together)."""
        import torch

        state: _EncoderState = model.byzer_like
        texts = [str(t) for t in texts]
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=state.max_seq_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[list[float] | None] = [None] * len(texts)
        for k in range(0, len(order), state.max_batch_size):
            chunk = order[k:k + state.max_batch_size]
            enc = tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                            max_length=state.max_seq_length, return_tensors="pt")
            enc = {key: v.to(model.device) for key, v in enc.items()
                   if key in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state.float()
            vectors = pool(hidden, enc["attention_mask"], state.pooling)
            if state.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            for row, i in enumerate(chunk):
                out[i] = vectors[row].tolist()
        return out  # type: ignore[return-value]

    # -- what an encoder cannot do ---------------------------------------------------------------
    def stream_chat(self, model: Any, tokenizer: Any, ins: str, his: Sequence[Mapping[str, str]], max_length: int = 4096,
                    top_p: float = 0.95, temperature: float = 0.1, **kwargs: Any) -> Iterator[tuple[str, dict]]:
        """Always NotAChatModelError: an encoder makes vectors, not answers."""
        raise NotAChatModelError(self.family)

    def build_prompt(self, tokenizer: Any, ins: str, his: Sequence[Mapping[str, str]], kwargs: Mapping[str, Any]) -> str:
        """Always NotAChatModelError: an encoder has no chat template."""
        raise NotAChatModelError(self.family)

    def get_meta(self, model: Any, tokenizer: Any) -> dict:
        """Facts about the loaded encoder: family, pooling (and where it came from), dimensions, length."""
        state: _EncoderState = model.byzer_like
        hidden = int(getattr(model.config, "hidden_size", 0) or 0)
        return {
            "family": self.family,
            "kind": "embedding",
            **model_facts(model),
            "model_dir": state.model_dir,
            "context_length": state.max_seq_length,
            "max_seq_length": state.max_seq_length,
            "device": state.device,
            "max_batch_size": state.max_batch_size,
            "pooling": "+".join(state.pooling),
            "pooling_source": state.pooling_source,
            "normalize": state.normalize,
            "embedding": True,
            "embedding_dimensions": hidden * len(state.pooling),
            "chat": False,
            "streaming": False,
            "scoring": False,
        }


def pool(hidden: Any, mask: Any, modes: Sequence[str]) -> Any:
    """Token states (batch, tokens, dim) and their attention mask -> one vector per row: each of `modes`
    (cls | mean | max | mean_sqrt_len | last), concatenated in that order. Padding is on the right."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    counts = m.sum(1).clamp(min=1)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "mean":
            parts.append((hidden * m).sum(1) / counts)
        elif mode == "mean_sqrt_len":
            parts.append((hidden * m).sum(1) / counts.sqrt())
        elif mode == "max":
            parts.append(hidden.masked_fill(m == 0, float("-inf")).max(1).values)
        elif mode == "last":
            last = (mask.sum(1) - 1).clamp(min=0)
            parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        else:
            raise ConfigError(f"pooling {mode!r}: use one of {', '.join(POOLINGS)}")
    return torch.cat(parts, dim=-1)


def _options(ip: Mapping[str, Any]) -> tuple[str | None, bool, int | None]:
    """`pooling`, `normalize` and `max_seq_length` from the infer params, checked (ConfigError naming the
    valid values)."""
    pooling = ip.get("pooling")
    if pooling is not None:
        pooling = str(pooling).strip().lower()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={ip['pooling']!r} is not a pooling; valid: {', '.join(POOLINGS)}")
    try:
        normalize = parse_bool(ip.get("normalize", True))
    except (ValueError, ConfigError):
        raise ConfigError(f"normalize={ip.get('normalize')!r} is not a boolean; use true or false") from None
    max_seq = ip.get("max_seq_length")
    if max_seq is not None:
        try:
            max_seq = int(str(max_seq))
        except ValueError:
            max_seq = 0
        if max_seq < 1:
            raise ConfigError(f"max_seq_length={ip['max_seq_length']!r} is not a positive whole number; e.g. 512")
    return pooling, normalize, max_seq


def _max_seq_length(model_dir: str, config: Any, tokenizer: Any) -> int:
    """Tokens a text may have: sentence_bert_config.json's max_seq_length, else the model's positions (less
    RoBERTa's two reserved ones), never more than the tokenizer's own limit."""
    st = Path(model_dir, "sentence_bert_config.json")
    if st.is_file():
        value = json_object(st).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # position ids start after the padding index
    limit = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return max(1, min(positions, limit))
