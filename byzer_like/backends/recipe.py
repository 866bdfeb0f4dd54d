"""Byzer-LLM's Python recipe for a built-in model package: module-level `init_model` and `stream_chat`, and
`model.stream_chat` attached to the loaded model, so Byzer's "use a plugin as a Python package" example runs:

    from byzer_like_models.llama import init_model
    model, tokenizer = init_model("/models/llama", {"quantization": "false"})
    response = model.stream_chat(tokenizer, "Hello", [], temperature=0.7, top_p=0.8, max_length=1024)
    print(response)  # [(answer, meta)]: Byzer's list of one (text, metadata) pair

(Byzer-LLM's plugins do the same: `model.stream_chat = types.MethodType(stream_chat, model)` at the end of
their `init_model`, and their `stream_chat` returns `[(answer, "")]`.) Streaming stays with the plugin's own
`stream_chat` generator, which the serving layer uses."""
from __future__ import annotations

import types
from typing import Any, Callable


def python_recipe(plugin: Any) -> tuple[Callable[..., tuple[Any, Any]], Callable[..., list[tuple[str, dict]]]]:
    """`(init_model, stream_chat)` for a package whose `plugin` follows the contract (`init_model(model_dir,
    infer_params, sys_conf) -> (model, tokenizer)`, `stream_chat(model, tokenizer, ins, his, ...)` yielding
    `(text so far, meta)`). `stream_chat(model, tokenizer, ins, his=[], max_length=None, top_p=0.95,
    temperature=0.1, **kwargs)` returns `[(answer, meta)]`, the whole answer at once; `init_model` attaches it
    to the model as `model.stream_chat(tokenizer, ins, ...)`. Errors are the plugin's (ModelDirError for a
    directory that holds no model)."""

    def stream_chat(self: Any, tokenizer: Any, ins: str, his: list[dict[str, str]] | None = None,
                    max_length: int | None = None, top_p: float = 0.95, temperature: float = 0.1,
                    **kwargs: Any) -> list[tuple[str, dict]]:
        last: tuple[str, dict] = ("", {})
        for text, meta in plugin.stream_chat(self, tokenizer, ins, list(his or []), max_length=max_length,
                                             top_p=top_p, temperature=temperature, **kwargs):
            last = (text, meta or last[1])
        return [last]

    def init_model(model_dir: str, infer_params: dict[str, str] | None = None,
                   sys_conf: dict[str, str] | None = None) -> tuple[Any, Any]:
        model, tokenizer = plugin.init_model(model_dir, dict(infer_params or {}), dict(sys_conf or {}))
        model.stream_chat = types.MethodType(stream_chat, model)
        return model, tokenizer

    return init_model, stream_chat


__all__ = ["python_recipe"]
