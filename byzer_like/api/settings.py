"""What an HTTP API server enforces, and how its key is kept (only its digest)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiSettings:
    """What the server enforces. The key itself never reaches the server: only its SHA-256."""

    api_key_sha256: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096
    max_embedding_inputs: int = 2048
    request_timeout_s: float = 600.0
    # the workspace whose registry `model="m:qa_model"` (a LoRA adapter over deployment m) is resolved in
    workspace: str | None = None


def key_digest(key: str) -> str:
    """The SHA-256 (hex) of an API key: what the server keeps and compares."""
    return hashlib.sha256(key.encode()).hexdigest()
