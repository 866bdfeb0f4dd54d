"""Request bodies of the OpenAI-compatible HTTP API, validated with pydantic.

Fields OpenAI defines that change nothing here (`user`, `presence_penalty`, ...) are accepted and
ignored, as OpenAI-compatible servers do; `response_format` (`json_object`, `json_schema`) constrains
the answer's decoding; fields whose meaning byzer-like cannot honour (`n` > 1, tools, logprobs) are refused with a 400 that names them, rather than silently dropped.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)

    def refused(self) -> list[tuple[str, str]]:
        """(field, why) for each field given a value this server does not support."""
        return []


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content parts of type {part.get('type')!r} are not supported; send text")
            pieces.append(part["text"])
        return "".join(pieces)


class _Sampling(_Body):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool | int | None = None
    # sampling extensions that vLLM's OpenAI server accepts too
    min_tokens: int | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return v

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def refused(self) -> list[tuple[str, str]]:
        out = []
        if self.n != 1:
            out.append(("n", "only n=1 is supported"))
        if self.logprobs:
            out.append(("logprobs", "logprobs are not supported"))
        return out

    def options(self) -> dict[str, Any]:
        """The request's sampling options in byzer-like's request keys (`config.chat_request`)."""
        opts: dict[str, Any] = {}
        if self.temperature is not None:
            opts["temperature"] = self.temperature
        if self.top_p is not None:
            opts["top_p"] = self.top_p
        if self.answer_tokens() is not None:
            opts["max_new_tokens"] = self.answer_tokens()
        if self.stop:
            opts["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.seed is not None:
            opts["seed"] = self.seed
        if self.min_tokens:
            opts["generation.min_new_tokens"] = self.min_tokens
        if self.top_k is not None:
            opts["top_k"] = self.top_k
        if self.repetition_penalty is not None:
            opts["repetition_penalty"] = self.repetition_penalty
        return opts


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def refused(self) -> list[tuple[str, str]]:
        out = super().refused()
        if self.tools or self.functions:
            out.append(("tools", "tool and function calling are not supported"))
        return out

    def options(self) -> dict[str, Any]:
        """The sampling options, plus `response_format` (checked by `structured.normalize` when the
        request is built: an invalid one is a 400 naming it)."""
        opts = super().options()
        if self.response_format is not None:
            opts["response_format"] = self.response_format
        return opts


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1 or not isinstance(self.prompt[0], str):
            raise ValueError("prompt must be one string (a list of one string is accepted)")
        return self.prompt[0]

    def refused(self) -> list[tuple[str, str]]:
        out = super().refused()
        if self.echo:
            out.append(("echo", "echo is not supported"))
        if self.suffix:
            out.append(("suffix", "suffix is not supported"))
        return out


class ScorePair(BaseModel):
    """One answer a reward model scores: the question (`instruction`) and the answer (`response`)."""

    model_config = ConfigDict(extra="forbid")

    instruction: str
    response: str
    system: str | None = None
    input: str | None = None


class ScoreRequest(_Body):
    """POST /v1/score: a reward model's score of each pair."""

    pairs: list[ScorePair] = Field(min_length=1)


class EmbeddingRequest(_Body):
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def refused(self) -> list[tuple[str, str]]:
        return [("dimensions", "choosing dimensions is not supported")] if self.dimensions else []
