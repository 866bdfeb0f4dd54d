"""Named prompt templates for training data (`template="chatml"`), as LLaMA-Factory's `template` names them.

Each is a Jinja chat template, the format of `tokenizer.chat_template` (rendered by transformers'
`apply_chat_template` over `{role, content}` messages, `add_generation_prompt` for the answer's opening), so
training (`data.encode`) and serving render prompts through the same code whatever the template. Without a
`template` the model's own chat template is used (the plugin's fallback when the tokenizer has none). The
chosen template is set on the tokenizer that is saved with the trained model or adapter, so a deployment of
it prompts the way it was trained.

Formats, from the projects that define them:
- alpaca: Stanford Alpaca's `### Instruction:` / `### Response:` blocks (LLaMA-Factory's `alpaca`);
- chatml: OpenAI's ChatML, `<|im_start|>role ... <|im_end|>` (LLaMA-Factory's `chatml`);
- qwen: ChatML with Qwen's default system prompt "You are a helpful assistant." (LLaMA-Factory's `qwen`);
- llama2: Meta's Llama 2 chat format, `[INST] <<SYS>> ... <</SYS>> ... [/INST]` (LLaMA-Factory's `llama2`);
- llama3: Meta's Llama 3 header format, `<|start_header_id|>role<|end_header_id|>` ... `<|eot_id|>`;
- mistral: Mistral's `[INST] ... [/INST]` (the system prompt before the first user turn);
- vicuna: FastChat's vicuna_v1.1, `USER: ... ASSISTANT: ...</s>`.

This module imports nothing heavy.
"""
from __future__ import annotations

from ..errors import ConfigError, did_you_mean

# the bos/eos tokens a template writes come from the tokenizer (`bos_token`, `eos_token`), as in model repos
TEMPLATES: dict[str, str] = {
    "alpaca": (
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'assistant' %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "qwen": (
        "{% if not messages or messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
        "<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama2": (
        "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
        "{% set first = 1 if system is not none else 0 %}"
        "{% for m in messages[first:] %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] "
        "{% if loop.first and system is not none %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
        "{{ m['content'] }} [/INST]{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "mistral": (
        "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
        "{% set first = 1 if system is not none else 0 %}{{ bos_token }}"
        "{% for m in messages[first:] %}{% if m['role'] == 'user' %}[INST] "
        "{% if loop.first and system is not none %}{{ system }}\n\n{% endif %}{{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    "vicuna": (
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }} {% else %}"
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. {% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
        "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
}


def template_name(name: str) -> str:
    """The known template `name` spells (case and surrounding spaces ignored); ValueError naming the known ones
    (with the closest) otherwise, which the options model reports as a ConfigError on `template`."""
    key = str(name).strip().lower()
    if key not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; {did_you_mean(key, list(TEMPLATES))}known templates: "
                         f"{', '.join(sorted(TEMPLATES))} (or leave template out for the model's own chat template)")
    return key


def chat_template(name: str) -> str:
    """The Jinja chat template of the template called `name` (`template_name` checks it: ConfigError)."""
    try:
        return TEMPLATES[template_name(name)]
    except ValueError as e:
        raise ConfigError(str(e)) from None


__all__ = ["TEMPLATES", "chat_template", "template_name"]
