"""Every built-in family on vLLM's engine: `pretrainedModelType="vllm/<family>"` (byzer_like/backends/vllm_engine.py).

`families.<name>` wraps the family's own plugin (`llama`, `qwen2`, `gpt2`, `auto`, and Byzer-LLM's names that
load through `auto`), so a directory is checked and prompted exactly as on the transformers engine; the model
type table routes `vllm/<name>` here (byzer_like.plugins.model_types).
"""
from types import SimpleNamespace

from byzer_like.backends.vllm_engine import VLLMPlugin
from byzer_like_models import auto, gpt2, llama, qwen2

families = SimpleNamespace(
    llama=VLLMPlugin(llama.plugin),
    qwen2=VLLMPlugin(qwen2.plugin),
    gpt2=VLLMPlugin(gpt2.plugin),
    auto=VLLMPlugin(auto.plugin),
    **{name: VLLMPlugin(plugin) for name, plugin in vars(auto.families).items()},
)
