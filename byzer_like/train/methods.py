"""What sft's freeze and prefix methods do to a model, and the checks they need before a job starts.

- freeze (llm-module's `type=freeze`, LLaMA-Factory's `finetuning_type=freeze`): every weight is frozen but
  those of the last `numLayerTrainable` decoder layers (only their `freezeTrainableModules` submodules when
  given) and of `freezeExtraModules` outside the layers; the output is a whole model.
- prefix (PaddleNLP's Prefix Tuning; Li & Liang 2021): peft's `PrefixTuningConfig`, `numVirtualTokens` learnt
  keys and values prepended in every attention layer; the output is a peft adapter over its base, served by
  the transformers back end (it cannot be merged into the weights, and vLLM serves LoRA adapters only).

`check_method` reads only the base's config.json and builds the model's modules on the meta device (no
weights), so a 7B base is checked in a second. torch, transformers and peft are imported inside the functions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, did_you_mean

PREFIX_PEFT_TYPE = "PREFIX_TUNING"


def adapter_peft_type(adapter_dir: str | Path) -> str | None:
    """The `peft_type` of the peft adapter in `adapter_dir` (`LORA`, `PREFIX_TUNING`, ...), from its
    adapter_config.json; None where the folder holds no readable config."""
    try:
        config = json.loads(Path(adapter_dir, "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("peft_type") if isinstance(config, dict) else None
    return str(value) if value else None


def is_prefix_adapter(adapter_dir: str | Path | None) -> bool:
    """Whether `adapter_dir` holds a prefix-tuning adapter (peft's PREFIX_TUNING)."""
    return bool(adapter_dir) and adapter_peft_type(adapter_dir) == PREFIX_PEFT_TYPE


def check_method(opts: Any, base_dir: str) -> None:
    """The checks of sft's `opts.method` on the base model in `base_dir`, before anything slow starts:
    freeze: numLayerTrainable at most the model's decoder layers, the named modules present; prefix: a model
    family peft can prefix. ConfigError saying what to do otherwise; other methods pass."""
    method = getattr(opts, "method", None)
    if method == "freeze":
        freeze_plan(meta_model(base_dir), opts.num_layer_trainable, opts.freeze_trainable_modules,
                    opts.freeze_extra_modules)
    elif method == "prefix":
        check_prefix_family(base_dir)


def meta_model(base_dir: str) -> Any:
    """The causal LM of `base_dir` built from its config.json on torch's meta device: its modules and parameter
    names, no weights (a second for a 7B model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def decoder_layers(model: Any) -> tuple[str, int]:
    """(the qualified name of `model`'s list of decoder layers, how many there are): the first ModuleList
    whose length is the config's layer count (`num_hidden_layers`, `n_layer` or `num_layers`), e.g.
    `model.layers` (llama, qwen2), `transformer.h` (gpt2). ConfigError for a model with no such list."""
    import torch

    config = model.config
    n = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers")
              if isinstance(getattr(config, k, None), int)), None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and n is not None and len(module) == n:
            return name, n
    raise ConfigError(f"cannot find the decoder layers of this {config.model_type!r} model, which freeze tuning "
                      "trains the last of; use method=\"lora\" or method=\"full\"")


def freeze_plan(model: Any, num_layers: int, modules: Sequence[str] | None = None,
                extra: Sequence[str] | None = None) -> list[str]:
    """The names of `model`'s parameters that freeze tuning trains: those in the last `num_layers` decoder
    layers (`decoder_layers`), only within the submodules named in `modules` when given (a name matches any
    part of the path inside the layer: `mlp`, `self_attn`, `q_proj`), plus those outside the layers in a
    module named in `extra` (`embed_tokens`, `lm_head`, `norm`). ConfigError when `num_layers` is above the
    model's layer count, or a name matches nothing (with the closest name and the ones there are)."""
    prefix, total = decoder_layers(model)
    if num_layers > total:
        raise ConfigError(f"numLayerTrainable={num_layers} is more than the {total} decoder layers of this model; "
                          f"give at most {total} (or method=\"full\" to train every weight)")
    trained_ids = {str(i) for i in range(total - num_layers, total)}
    names = [n for n, _ in model.named_parameters()]
    inner: set[str] = set()  # module names inside a layer
    outer: set[str] = set()  # module names outside the layers
    chosen: list[str] = []
    used_modules: set[str] = set()
    used_extra: set[str] = set()
    for n in names:
        parts = n.split(".")[:-1]  # the modules on the path, the parameter's own name dropped
        if n.startswith(prefix + "."):
            layer, *path = n[len(prefix) + 1:].split(".")[:-1]
            inner.update(path)
            if layer not in trained_ids:
                continue
            hit = [m for m in (modules or []) if m in path]
            used_modules.update(hit)
            if modules is None or hit:
                chosen.append(n)
        else:
            outer.update(parts)
            hit = [m for m in (extra or []) if m in parts]
            used_extra.update(hit)
            if hit:
                chosen.append(n)
    for given, used, there, key in ((modules, used_modules, inner, "freezeTrainableModules"),
                                    (extra, used_extra, outer, "freezeExtraModules")):
        for m in given or []:
            if m not in used:
                raise ConfigError(f"{key}: no module {m!r} {'in the decoder layers' if there is inner else 'outside the decoder layers'}; "
                                  f"{did_you_mean(m, there)}modules there: {', '.join(sorted(there))}")
    return chosen


def apply_freeze(model: Any, opts: Any) -> list[str]:
    """Freeze every parameter of `model` but those `freeze_plan` names for `opts`; returns their names."""
    trained = set(freeze_plan(model, opts.num_layer_trainable, opts.freeze_trainable_modules,
                              opts.freeze_extra_modules))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    return sorted(trained)


def check_prefix_family(base_dir: str) -> None:
    """ConfigError, naming what to do, when peft cannot prefix-tune the causal LM in `base_dir`: a stateful
    model (Mamba, RWKV, ...: no key/value cache to prepend to), one whose cache is not transformers' standard
    DynamicCache, or one whose config lacks the layer / head / width sizes peft sizes the prefix by."""
    from peft import PrefixTuningConfig
    from peft.utils.other import _prepare_prompt_learning_config
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
    family = config.model_type
    todo = "use method=\"lora\" (or qlora, freeze, full) for this model"
    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(f"prefix tuning needs a transformers causal LM; {family!r} is not one; {todo}") from None
    if getattr(cls, "_is_stateful", False) or not cls._supports_default_dynamic_cache():
        raise ConfigError(f"peft cannot prefix-tune a {family!r} model ({cls.__name__} keeps no standard key/value "
                          f"cache to prepend the virtual tokens to); {todo}")
    try:
        _prepare_prompt_learning_config(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=1), config)
    except ValueError as e:
        raise ConfigError(f"peft cannot prefix-tune a {family!r} model: {e}; {todo}") from None


def prefix_model(model: Any, opts: Any) -> Any:
    """`model` wrapped by peft for prefix tuning with `opts.num_virtual_tokens` virtual tokens."""
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=opts.num_virtual_tokens))


__all__ = ["PREFIX_PEFT_TYPE", "adapter_peft_type", "apply_freeze", "check_method", "check_prefix_family",
           "decoder_layers", "freeze_plan", "is_prefix_adapter", "meta_model", "prefix_model"]
