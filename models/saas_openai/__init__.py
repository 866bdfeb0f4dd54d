"""`saas/openai` and Byzer's other OpenAI-protocol `saas/*` types: the remote back end's plugins
(byzer_like/backends/remote.py), registered as `byzer_like_models.saas_openai:plugin`, `:azure` and
`:providers.<name>` (plugins/model_types.py)."""
from byzer_like.backends.remote import PROVIDERS, azure, plugin, providers

__all__ = ["PROVIDERS", "azure", "plugin", "providers"]
