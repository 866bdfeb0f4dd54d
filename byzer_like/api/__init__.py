"""The OpenAI-compatible HTTP API and chat page (`byzer-like serve`, `ByzerLLM().serve()`)."""
