"""Qwen2 family (Qwen1.5 / Qwen2 / Qwen2.5 checkpoints)."""
from byzer_like.backends.hf import CausalLMPlugin
from byzer_like.backends.recipe import python_recipe
from byzer_like.plugins.model_types import FAMILIES

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

plugin = CausalLMPlugin(
    "qwen2",
    model_types=FAMILIES["qwen2"],
    # every linear layer of the blocks (attention and MLP), as the QLoRA paper found necessary to match full
    # fine-tuning (Dettmers et al. 2023, section 4); attention alone learns little at the default rank
    lora_target_modules=("all-linear",),
    stop_tokens=("<|im_end|>", "<|endoftext|>"),
    fallback_chat_template=CHATML_TEMPLATE,
)
# Byzer-LLM's Python recipe: `from byzer_like_models.qwen2 import init_model`, then `model.stream_chat(...)`
init_model, stream_chat = python_recipe(plugin)
