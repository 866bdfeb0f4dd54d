"""Any `AutoModelForCausalLM` directory: the model type comes from its config.json.

`families` holds Byzer-LLM's model folder names that are Hugging Face causal LM families (`llama2`, `qwen`,
`chatglm2`, `baichuan`, `falcon`, `zephyr`, ...; `byzer_like.plugins.model_types.BYZER_FAMILIES`): each loads
the way `auto` does, after checking that the directory's config.json holds a model of that family
(registered as `byzer_like_models.auto:families.<name>`).
"""
from types import SimpleNamespace

from byzer_like.backends.hf import CausalLMPlugin
from byzer_like.backends.recipe import python_recipe
from byzer_like.plugins.model_types import BYZER_FAMILIES

STOP_TOKENS = ("</s>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>")

# LoRA targets for "all linear layers" are resolved by peft when the family is unknown.
plugin = CausalLMPlugin(
    "auto",
    lora_target_modules=("all-linear",),
    stop_tokens=STOP_TOKENS,
)

families = SimpleNamespace(**{
    name: CausalLMPlugin(name, model_types=types, lora_target_modules=("all-linear",), stop_tokens=STOP_TOKENS)
    for name, types in BYZER_FAMILIES.items()
})
# Byzer-LLM's Python recipe: `from byzer_like_models.auto import init_model`, then `model.stream_chat(...)`
init_model, stream_chat = python_recipe(plugin)
