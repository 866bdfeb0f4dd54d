"""byzer-like: run the whole life of a large language model on a Ray cluster.

`from byzer_like import ByzerLLM` is the Python client; `byzer-like --help` the command line.
Importing this package loads neither ray nor torch, nor the client's own dependencies (pydantic,
pyarrow): `ByzerLLM` and the client's types (`LLMRequest`, `InferBackend`, `Templates`...) are imported on first use, so that `byzer-like --help` and
`byzer-like models list` start in a fraction of a second.
"""
from . import cluster as _cluster  # noqa: F401  (sets Ray's loopback environment before ray is imported)
from .errors import ByzerError
from .version import __version__

__all__ = ["ByzerLLM", "ByzerError", "InferBackend", "LLMClassResponse", "LLMRequest", "LLMResponse", "Template",
           "Templates", "__version__", "load_ipython_extension"]
_CLIENT_NAMES = ("ByzerLLM", "InferBackend", "LLMClassResponse", "LLMRequest", "LLMResponse", "Template", "Templates")
_LAZY = {name: ".client" for name in _CLIENT_NAMES}


def __getattr__(name: str):
    """`byzer_like.ByzerLLM` and the client's types, imported when first asked for."""
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython):
    """`%load_ext byzer_like`: the `%%byzer` cell magic and the `%byzer` line magic."""
    from .notebook import load_ipython_extension as load

    load(ipython)
