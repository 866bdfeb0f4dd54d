"""Any `AutoModelForCausalLM` directory: the model type comes from its config.json."""
from byzer_like.plugins.hf import CausalLMPlugin

# LoRA targets for "all linear layers" are resolved by peft when the family is unknown.
plugin = CausalLMPlugin(
    "auto",
    lora_target_modules=("all-linear",),
    stop_tokens=("</s>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>"),
)
