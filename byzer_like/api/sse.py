"""Answer bodies of the completion endpoints, whole or streamed as server-sent events.

A stream is `data: <chunk>\\n\\n` lines: any opening chunks, one chunk per text delta, the finish
chunk, the usage chunk when asked for, then `data: [DONE]`. An error after the status line is sent
is reported in the stream (its OpenAI error body, then [DONE]).
"""
from __future__ import annotations

import json
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

from starlette.responses import StreamingResponse

from .errors import api_error

DONE = "data: [DONE]\n\n"


def sse(data: Any) -> str:
    """One server-sent event carrying `data` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def usage(meta: Mapping[str, Any]) -> dict:
    """OpenAI's `usage` from an answer's metadata."""
    prompt, completion = int(meta.get("input_tokens") or 0), int(meta.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(meta: Mapping[str, Any]) -> str:
    """Why the answer ended; "stop" when the model did not say."""
    return meta.get("finish_reason") or "stop"


@dataclass(frozen=True)
class Chunks:
    """The bodies of one answer (an id and a creation time of its own); subclasses shape its choices."""

    PREFIX = ""
    OBJECT = ""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Chunks:
        """The bodies of a new answer from `model`."""
        return cls(f"{cls.PREFIX}-{uuid.uuid4().hex}", int(time.time()), model)

    def head(self, object: str | None = None) -> dict[str, Any]:  # noqa: A002 - OpenAI's name
        """The fields every body of this answer starts with."""
        return {"id": self.id, "object": object or self.OBJECT, "created": self.created, "model": self.model}

    def choice(self, text: str | None, finish: str | None) -> dict:
        """The chunk carrying a piece of text (or none) and, in the last one, why it finished."""
        raise NotImplementedError

    def usage(self, usage: dict) -> dict:
        """The chunk carrying the token counts, after the last choice."""
        return {**self.head(), "choices": [], "usage": usage}


class ChatChunks(Chunks):
    """`/v1/chat/completions` bodies: `chat.completion`, or `chat.completion.chunk` deltas."""

    PREFIX = "chatcmpl"
    OBJECT = "chat.completion.chunk"

    def choice(self, text: str | None, finish: str | None) -> dict:
        """A delta chunk: `{"content": text}`, or `{}` without text."""
        return self._delta({"content": text} if text is not None else {}, finish)

    def role(self) -> dict:
        """The opening chunk: the assistant's role, with empty content."""
        return self._delta({"role": "assistant", "content": ""}, None)

    def _delta(self, delta: dict, finish: str | None) -> dict:
        return {**self.head(), "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    def whole(self, text: str, meta: Mapping[str, Any]) -> dict:
        """The unstreamed answer: one assistant message, its usage and the replica that made it."""
        return {
            **self.head("chat.completion"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason(meta), "logprobs": None}],
            "usage": usage(meta), "system_fingerprint": meta.get("replica"),
        }


class CompletionChunks(Chunks):
    """`/v1/completions` bodies: `text_completion`, whole or streamed."""

    PREFIX = "cmpl"
    OBJECT = "text_completion"

    def choice(self, text: str | None, finish: str | None) -> dict:
        """A chunk of text ("" without text)."""
        return {**self.head(), "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]}

    def whole(self, text: str, meta: Mapping[str, Any]) -> dict:
        """The unstreamed answer with its usage."""
        return {**self.choice(text, finish_reason(meta)), "usage": usage(meta)}


async def events(first: dict | None, items: AsyncIterator[dict], chunks: Chunks, include_usage: bool,
                 start: list[dict]) -> AsyncIterator[str]:
    """SSE lines: `start` chunks, one chunk per text delta (`first` is the stream's item already
    received, None if it ended at once), the finish chunk, usage, then [DONE].
    Closing it (the client went away) closes `items`, which cancels the generation."""
    meta: dict = {}
    async with aclosing(items):
        try:
            for c in start:
                yield sse(c)
            pending = [first] if first is not None else []
            while True:
                item = pending.pop() if pending else await items.__anext__()
                if item.get("delta"):
                    yield sse(chunks.choice(item["delta"], None))
                if item.get("done"):
                    meta = item.get("metadata") or {}
        except StopAsyncIteration:
            pass
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in the stream
            yield sse(api_error(e).body())
            yield DONE
            return
    yield sse(chunks.choice(None, finish_reason(meta)))
    if include_usage:
        yield sse(chunks.usage(usage(meta)))
    yield DONE


def event_stream(lines: AsyncIterator[str]) -> StreamingResponse:
    """The 200 response that sends `lines` as they come (no caching, no proxy buffering)."""
    return StreamingResponse(lines, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
