"""Any `AutoModelForCausalLM` directory: the model type comes from its config.json.

`families` holds Byzer-LLM's model folder names that are Hugging Face causal LM families (`llama2`, `qwen`,
`chatglm2`, `baichuan`, `falcon`, `zephyr`, ...): each loads the way `auto` does, after checking that the
directory's config.json holds a model of that family (registered as `byzer_like_models.auto:families.<name>`).
"""
from types import SimpleNamespace

from byzer_like.plugins.hf import CausalLMPlugin

STOP_TOKENS = ("</s>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>")

# LoRA targets for "all linear layers" are resolved by peft when the family is unknown.
plugin = CausalLMPlugin(
    "auto",
    lora_target_modules=("all-linear",),
    stop_tokens=STOP_TOKENS,
)

# Byzer-LLM's name -> the config.json model_type values of that family
FAMILIES: dict[str, tuple[str, ...]] = {
    "llama2": ("llama",),
    "qwen": ("qwen", "qwen2"),
    "chatglm2": ("chatglm",),
    "chatglm6b": ("chatglm",),
    "baichuan": ("baichuan",),
    "falcon": ("falcon", "RefinedWeb", "RefinedWebModel"),
    "zephyr": ("mistral",),
    "dolly": ("gpt_neox",),
    "moss": ("moss",),
    "starcode": ("gpt_bigcode", "starcoder2"),
}

families = SimpleNamespace(**{
    name: CausalLMPlugin(name, model_types=types, lora_target_modules=("all-linear",), stop_tokens=STOP_TOKENS)
    for name, types in FAMILIES.items()
})
