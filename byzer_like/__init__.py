"""byzer-like: run the whole life of a large language model on a Ray cluster.

`from byzer_like import ByzerLLM` is the Python client; `byzer-like --help` the command line.
Importing this package loads neither ray nor torch.
"""
from .client import ByzerLLM, LLMResponse
from .errors import ByzerError

__version__ = "0.1.0"
__all__ = ["ByzerLLM", "ByzerError", "LLMResponse", "__version__", "load_ipython_extension"]


def load_ipython_extension(ipython):
    """`%load_ext byzer_like`: the `%%byzer` cell magic and the `%byzer` line magic."""
    from .notebook import load_ipython_extension as load

    load(ipython)
