"""Constrained decoding for the Hugging Face plugins: a request's `response_format` as a logits processor.

xgrammar (the library vLLM and SGLang use) compiles the JSON schema against the model's tokenizer
and masks, at every step of `generate`, the tokens that would break it, so the answer always parses
as JSON of that schema (unless it is cut at max_new_tokens). One compiler per loaded model (its
tokenizer's vocabulary is read once); compiled grammars are kept per schema.

    processor = grammar.logits_processor(model, tokenizer, {"type": "json_object"}, stop_ids, rows=4)
    model.generate(..., logits_processor=LogitsProcessorList([processor]))

The option's shapes are checked in `byzer_like.structured`; a schema xgrammar cannot compile is an
InvalidRequestError (code `invalid_response_format`). xgrammar is imported on first use.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Mapping, Sequence

from ..errors import InvalidRequestError, NotSupportedError

XGRAMMAR_PIN = "xgrammar==0.2.8"
MAX_CACHED = 64  # compiled grammars kept per model
_lock = threading.Lock()


class _Compiler:
    """One model's grammar compiler and its compiled grammars (most recently used kept)."""

    def __init__(self, xgr: Any, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids))
        self.xgr = xgr
        self.compiler = xgr.GrammarCompiler(info)
        self.grammars: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def compile(self, response_format: Mapping[str, Any]) -> Any:
        key = json.dumps(response_format, sort_keys=True)
        with self.lock:
            if key in self.grammars:
                self.grammars.move_to_end(key)
                return self.grammars[key]
            try:
                if response_format["type"] == "json_object":
                    grammar = self.compiler.compile_json_schema({"type": "object"}, any_whitespace=False)
                else:
                    spec = response_format["json_schema"]
                    grammar = self.compiler.compile_json_schema(json.dumps(spec["schema"]), any_whitespace=False,
                                                                strict_mode=bool(spec.get("strict", True)))
            except Exception as e:  # noqa: BLE001 - xgrammar's own error types differ between releases
                raise InvalidRequestError(
                    f"response_format's JSON schema cannot be used to constrain the answer: {e}".splitlines()[0]
                    + "; simplify the schema (plain types, properties, required, enum, arrays)",
                    code="invalid_response_format") from None
            self.grammars[key] = grammar
            if len(self.grammars) > MAX_CACHED:
                self.grammars.popitem(last=False)
            return grammar


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError:
        raise NotSupportedError(f"response_format needs the xgrammar package on the model's workers: "
                                f"pip install {XGRAMMAR_PIN}") from None
    return xgrammar


def compiled(model: Any, tokenizer: Any, response_format: Mapping[str, Any], stop_ids: Sequence[int]) -> Any:
    """`response_format` (normalised by `structured.normalize`) compiled for this model's tokenizer
    (kept, so asking again is cheap: call it to check a request before generating). `stop_ids` end the
    answer once the JSON is complete. Raises InvalidRequestError for a schema that cannot be compiled,
    NotSupportedError without xgrammar."""
    xgr = _xgrammar()
    with _lock:
        compiler = getattr(model, "_byzer_like_grammar", None)
        if compiler is None:
            vocab = int(getattr(model.config, "vocab_size", 0) or 0) or len(tokenizer)  # the logits' width
            compiler = _Compiler(xgr, tokenizer, vocab, stop_ids)
            model._byzer_like_grammar = compiler
    return compiler.compile(response_format)


def logits_processor(model: Any, tokenizer: Any, response_format: Mapping[str, Any], stop_ids: Sequence[int],
                     rows: int = 1) -> Any:
    """A new transformers LogitsProcessor constraining each of `rows` sequences of one `generate` call
    to `response_format`. One processor serves one `generate` call only."""
    grammar = compiled(model, tokenizer, response_format, stop_ids)
    from xgrammar.contrib.hf import LogitsProcessor

    return LogitsProcessor([grammar] * rows)
