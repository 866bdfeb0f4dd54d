"""Llama family (Llama 2/3, Mistral-style checkpoints saved as `llama`)."""
from byzer_like.backends.hf import CausalLMPlugin
from byzer_like.backends.recipe import python_recipe
from byzer_like.plugins.model_types import FAMILIES

# Llama 2's [INST] format, for checkpoints whose tokenizer has no chat template.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)

plugin = CausalLMPlugin(
    "llama",
    model_types=FAMILIES["llama"],
    # every linear layer of the blocks (attention and MLP), as the QLoRA paper found necessary to match full
    # fine-tuning (Dettmers et al. 2023, section 4); attention alone learns little at the default rank
    lora_target_modules=("all-linear",),
    stop_tokens=("</s>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>"),
    fallback_chat_template=LLAMA2_TEMPLATE,
)
# Byzer-LLM's Python recipe: `from byzer_like_models.llama import init_model`, then `model.stream_chat(...)`
init_model, stream_chat = python_recipe(plugin)
