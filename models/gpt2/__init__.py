"""GPT-2 family."""
from byzer_like.backends.hf import CausalLMPlugin
from byzer_like.backends.recipe import python_recipe
from byzer_like.plugins.model_types import FAMILIES

# GPT-2 checkpoints were never chat-tuned: a plain dialogue.
DIALOGUE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

plugin = CausalLMPlugin(
    "gpt2",
    model_types=FAMILIES["gpt2"],
    lora_target_modules=("c_attn", "c_proj"),
    stop_tokens=("<|endoftext|>", "<|im_end|>"),
    fallback_chat_template=DIALOGUE_TEMPLATE,
)
# Byzer-LLM's Python recipe: `from byzer_like_models.gpt2 import init_model`, then `model.stream_chat(...)`
init_model, stream_chat = python_recipe(plugin)
