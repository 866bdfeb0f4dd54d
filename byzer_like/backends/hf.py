"""The shared implementation behind the built-in Hugging Face plugins (`models/llama`, `qwen2`, `gpt2`, `auto`).

One `CausalLMPlugin` per model family; a family differs only in the model types it accepts, its
fallback prompt format (used when the tokenizer has no chat template), its stop tokens and its
LoRA target modules. torch and transformers are imported inside the methods, so importing a
plugin (in the driver, to check it) stays cheap.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Iterator, Mapping, Sequence

from .. import structured
from ..config import SetupConfig, parse_bool
from ..errors import ConfigError, InvalidRequestError, ModelDirError, NotSupportedError, PromptTooLongError
from ..plugins.contract import request_arguments
from ..plugins.model_types import ENCODER_CONFIG_TYPES
from . import grammar
from .hf_batches import (BASE_ROW, SharedLock, adapter_rows, answer_tokens, cut_at_stop, generate_rows,
                         hook_lora_layers)
from ..train.methods import is_prefix_adapter
from .hf_dirs import check_model_files, context_length, model_config, model_facts, saved_quantization, worker_device
from .sampling import row_generators, seeded

# Answer length when the caller gives neither max_length nor max_new_tokens.
DEFAULT_MAX_NEW_TOKENS = 512
# kwargs of stream_chat this implementation uses; other generation.* keys (e.g. Byzer's
# generation.image for multimodal models) are ignored and reported in the metadata.
GENERATION_KEYS = {
    "system_msg", "user_role", "assistant_role", "max_new_tokens", "stop", "seed", "top_k",
    "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "do_sample", "raw_prompt",
    "response_format", "adapter",
}


def answer_budget(prompt_tokens: int, max_length: Any, max_new_tokens: Any, context_length: int) -> int:
    """New tokens an answer may have (Byzer's rules, every engine): `max_length` bounds prompt + answer
    (never past the model's context), `max_new_tokens` the answer, DEFAULT_MAX_NEW_TOKENS when neither is
    given. Raises PromptTooLongError when the prompt leaves no room for one token."""
    limit = min(int(max_length), context_length) if max_length else context_length
    budget = limit - prompt_tokens
    if budget < 1:
        raise PromptTooLongError(
            f"the prompt has {prompt_tokens} tokens, which leaves no room for an answer within "
            f"max_length={max_length or context_length} (model context {context_length}); shorten it or raise max_length")
    if max_new_tokens is not None:
        return min(budget, int(max_new_tokens))
    return budget if max_length else min(budget, DEFAULT_MAX_NEW_TOKENS)


# a prefix-tuning adapter served per request: peft does not mix prompt-learning and LoRA adapters in one model
PREFIX_PER_REQUEST = ("{adapter} is a prefix-tuning adapter, which is not served per request over a shared base "
                      "(peft mixes LoRA adapters only); deploy it on its own: modelTable=\"<adapter>\" on the "
                      "transformers back end")

GENERIC_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass
class _State:
    """What a loaded model carries for this plugin (attached as `model.byzer_like`)."""

    model_dir: str
    context_length: int
    stop_ids: list[int]
    max_batch_size: int
    device: str
    quantization: str | None
    merged_adapter: str | None = None  # the deployment's adapter_dir, merged into the weights at load
    prefix: Any = None  # the PeftModel of a prefix-tuning adapter_dir (kept unmerged: CausalLMPlugin._prefix)
    peft: Any = None  # the PeftModel over the model once an adapter was loaded (load_adapter)
    lock: SharedLock = field(default_factory=SharedLock)


@dataclass
class _Prepared:
    ids: list[int]
    budget: int
    gen: dict[str, Any]
    stop: list[str]
    ignored: list[str] = field(default_factory=list)
    response_format: dict | None = None  # decoding constrained to it (backends/grammar.py)
    adapter: str | None = None  # the name of the LoRA adapter it is answered through (load_adapter)


class _TokenStreamer:
    """A transformers streamer that queues the decoded text after every new token.

    Text that ends inside a multi-byte character (the decoder shows U+FFFD) waits for the next token."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.queue: Queue = Queue()
        self._prompt_seen = False
        self._sent = ""

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate() first sends the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text != self._sent and not text.endswith("\ufffd"):
            self._sent = text
            self.queue.put(text)

    def end(self) -> None:
        self.queue.put(None)


# a config.json architecture that AutoModelForCausalLM loads
_CAUSAL_LM = re.compile(r"(ForCausalLM|LMHeadModel)$")


class CausalLMPlugin:
    """A model plugin for a family of `AutoModelForCausalLM` models."""

    def __init__(
        self,
        family: str,
        *,
        model_types: Sequence[str] = (),
        lora_target_modules: Sequence[str] = (),
        stop_tokens: Sequence[str] = (),
        fallback_chat_template: str = GENERIC_TEMPLATE,
    ):
        self.family = family
        self.model_types = tuple(model_types)
        self.lora_target_modules = tuple(lora_target_modules)
        self.stop_tokens = tuple(stop_tokens)
        self.fallback_chat_template = fallback_chat_template

    def __repr__(self) -> str:
        return f"CausalLMPlugin({self.family!r})"

    # -- loading ---------------------------------------------------------------------------------
    def check_model_dir(self, model_dir: str, infer_params: Mapping[str, Any] | None = None) -> None:
        """Refuse, before any worker starts, a directory that this family cannot load."""
        ip = dict(infer_params or {})
        cfg = model_config(model_dir)
        model_type = cfg.get("model_type")
        if self.model_types and model_type not in self.model_types:
            raise ModelDirError(
                f"{model_dir!r} holds a {model_type!r} model, not {self.family}; "
                f"use pretrained_model_type={model_type!r} if that plugin exists, or 'auto'"
            )
        architectures = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
        auto_map = cfg.get("auto_map") if isinstance(cfg.get("auto_map"), dict) else {}
        if architectures and not any(_CAUSAL_LM.search(a) for a in architectures) \
                and "AutoModelForCausalLM" not in auto_map:
            hint = ("deploy it as pretrainedModelType=\"custom/bge\" (a sentence-embedding model) and call it with "
                    "embedding_query / emb" if model_type in ENCODER_CONFIG_TYPES else
                    "it is a reward model: deploy it as pretrainedModelType=\"reward\" (or with modelTable alone) and "
                    "call it with llm_param(map(\"instruction\", q, \"response\", a))"
                    if any(a.endswith("ForSequenceClassification") for a in architectures) else
                    "it serves Hugging Face causal LMs (architectures ...ForCausalLM, ...LMHeadModel) and saas/* services")
            raise ModelDirError(
                f"{model_dir!r} holds a {architectures[0]} ({model_type!r}), not a causal language model, which "
                f"the {self.family!r} plugin cannot load; {hint}"
            )
        check_model_files(model_dir, cfg, ip)
        adapter = ip.get("adapter_dir")
        if adapter and not (Path(adapter, "adapter_config.json").is_file()
                            and Path(adapter, "adapter_model.safetensors").is_file()):
            raise ModelDirError(f"adapter_dir {adapter!r} is not a LoRA adapter (adapter_config.json and "
                                "adapter_model.safetensors expected)")

    def init_model(self, model_dir: str, infer_params: Mapping[str, str] | None = None,
                   sys_conf: Mapping[str, str] | None = None) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ip = dict(infer_params or {})
        setup = SetupConfig.from_sys_conf(sys_conf or {})  # the contract's sys_conf, read once
        trust = parse_bool(ip.get("trust_remote_code", False))
        allow_pickle = parse_bool(ip.get("allow_pickle_weights", False))
        in4 = parse_bool(ip.get("load_in_4bit", False))
        in8 = parse_bool(ip.get("load_in_8bit", False))
        dtype_name = str(ip.get("dtype", "auto"))
        want_device = str(ip.get("device", "auto"))
        self.check_model_dir(model_dir, ip)

        device = worker_device(setup, want_device)
        kwargs, quant = self._load_options(model_dir, device, dtype_name, in4=in4, in8=in8)
        kwargs.update(trust_remote_code=trust, use_safetensors=None if allow_pickle else True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        adapter_dir = ip.get("adapter_dir") or None
        prefix = None
        if adapter_dir and is_prefix_adapter(adapter_dir):  # prefix tuning: kept beside the model (see _prefix)
            model, prefix = self._prefix(model, adapter_dir)
        elif adapter_dir:  # a LoRA adapter trained on this base: merged for plain-speed inference
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
            model = model.merge_and_unload() if quant is None else model
        if quant is None:
            (prefix or model).to(device)
        model.eval()
        # an adapter saved with its tokenizer (sft saves one) prompts with the template it was trained with
        tok_dir = adapter_dir if adapter_dir and Path(adapter_dir, "tokenizer_config.json").is_file() else model_dir
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not tokenizer.chat_template:
            tokenizer.chat_template = self.fallback_chat_template
        model.byzer_like = _State(
            model_dir=str(model_dir),
            context_length=context_length(model.config),
            stop_ids=self._stop_ids(model, tokenizer),
            max_batch_size=setup.max_batch_size,
            device=device,
            quantization=quant,
            merged_adapter=adapter_dir,
            prefix=prefix,
        )
        return model, tokenizer

    @staticmethod
    def _prefix(model: Any, adapter_dir: str) -> tuple[Any, Any]:
        """The model that generates with the prefix-tuning adapter in `adapter_dir`, and peft's model around it.

        peft's own `PeftModel.generate` swaps the base model's `prepare_inputs_for_generation` for its own for
        the length of one call and back, which is not safe when several threads generate at once (the first to
        finish would take the prefix from the others mid-answer). Here the swap is made once, at load: every
        `generate` of the base model, on any thread, starts its key/value cache with the virtual tokens (peft's
        `get_prompt`) and widens the attention mask by them. Forward passes outside `generate` (scoring) go
        through peft's model, which does the same."""
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
        peft_model.eval()
        base = peft_model.get_base_model()
        base.prepare_inputs_for_generation = peft_model.prepare_inputs_for_generation
        return base, peft_model

    @staticmethod
    def _load_options(model_dir: str, device: str, dtype_name: str, *, in4: bool, in8: bool) -> tuple[dict, str | None]:
        """`from_pretrained`'s dtype, device map and quantization for `model_dir` on `device`, and how the
        weights are quantized (None: full precision): a quantized export as its config.json says, else
        bitsandbytes 4-bit nf4 / 8-bit when asked."""
        import torch

        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name) if dtype_name != "auto" else
                                  (torch.float32 if device == "cpu" else "auto")}
        quant = saved_quantization(model_dir)
        if quant is not None:  # a quantized export: its config.json says how; transformers loads it so
            kwargs["device_map"] = {"": device if device == "cpu" else 0}
        elif in4 or in8:
            from transformers import BitsAndBytesConfig

            quant = "4bit" if in4 else "8bit"
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.float32 if device == "cpu" else torch.bfloat16)
                if in4 else BitsAndBytesConfig(load_in_8bit=True)
            )
            kwargs["device_map"] = {"": device if device == "cpu" else 0}
        return kwargs, quant

    # -- LoRA adapters over the loaded model (many per deployment, chosen per request) ------------
    def load_adapter(self, model: Any, adapter_dir: str, name: str) -> None:
        """Load the LoRA adapter in `adapter_dir` (trained on this model) under `name`; requests whose
        `adapter` is `name` are then answered through it, in the same batches as other adapters' and the
        base model's requests. The weights stay unmerged (peft's mixed-adapter batches). Waits until the
        generations running now have ended (loading changes the model's modules). Raises NotSupportedError
        on a model that merged an adapter at load, ModelDirError for a directory that holds no adapter."""
        from peft import PeftModel

        state: _State = model.byzer_like
        if state.merged_adapter:
            how = "serves the prefix-tuning adapter" if state.prefix is not None else "merged the adapter"
            raise NotSupportedError(f"this deployment {how} {state.merged_adapter!r} (adapter_dir) since it loaded; "
                                    "deploy the base model without adapter_dir to serve adapters over it")
        if not Path(adapter_dir, "adapter_config.json").is_file():
            raise ModelDirError(f"{adapter_dir!r} is not a LoRA adapter (no adapter_config.json)")
        if is_prefix_adapter(adapter_dir):
            raise NotSupportedError(PREFIX_PER_REQUEST.format(adapter=repr(adapter_dir)))
        with state.lock.alone():
            if state.peft is None:  # the LoRA layers go into `model` itself: it stays the object that generates
                state.peft = PeftModel.from_pretrained(model, adapter_dir, adapter_name=name, is_trainable=False)
            else:
                state.peft.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
            hook_lora_layers(model)
            model.eval()  # the new layers' dropout off

    def unload_adapter(self, model: Any, name: str) -> None:
        """Remove the adapter loaded as `name` (its memory is freed); the base model and the other adapters
        are unchanged. Waits until the generations running now have ended."""
        state: _State = model.byzer_like
        if state.peft is None or name not in state.peft.peft_config:
            return
        with state.lock.alone():
            state.peft.delete_adapter(name)

    def _stop_ids(self, model: Any, tokenizer: Any) -> list[int]:
        ids: list[int] = []
        eos = getattr(model.generation_config, "eos_token_id", None)
        for value in (eos if isinstance(eos, list) else [eos]) + [tokenizer.eos_token_id]:
            if value is not None and value not in ids:
                ids.append(int(value))
        vocab = tokenizer.get_vocab()
        for tok in self.stop_tokens:
            if tok in vocab and vocab[tok] not in ids:
                ids.append(vocab[tok])
        return ids

    # -- prompts and options ---------------------------------------------------------------------
    def build_prompt(self, tokenizer: Any, ins: str, his: Sequence[Mapping[str, str]], kwargs: Mapping[str, Any]) -> str:
        if parse_bool(kwargs.get("raw_prompt", False)):  # a plain completion: the text continues as it is
            return ins
        system_msg = kwargs.get("system_msg")
        user_role, assistant_role = kwargs.get("user_role"), kwargs.get("assistant_role")
        if user_role or assistant_role:
            # Byzer's explicit role names: a plain-text dialogue, whatever the chat template says
            names = {"user": user_role or "User", "assistant": assistant_role or "Assistant"}
            lines = [str(system_msg)] if system_msg else []
            for m in his:
                lines.append(m["content"] if m["role"] == "system" else f"{names.get(m['role'], m['role'])}:{m['content']}")
            lines.append(f"{names['user']}:{ins}")
            return "\n".join(lines) + f"\n{names['assistant']}:"
        messages = [{"role": "system", "content": str(system_msg)}] if system_msg else []
        messages += [{"role": m["role"], "content": m["content"]} for m in his]
        messages.append({"role": "user", "content": ins})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _prepare(self, model: Any, tokenizer: Any, ins: str, his: Sequence[Mapping[str, str]], max_length: int | None,
                 top_p: float, temperature: float, kwargs: Mapping[str, Any]) -> _Prepared:
        state: _State = model.byzer_like
        prompt = self.build_prompt(tokenizer, ins, his, kwargs)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        budget = answer_budget(len(ids), max_length, kwargs.get("max_new_tokens"), state.context_length)
        do_sample = parse_bool(kwargs["do_sample"]) if "do_sample" in kwargs else temperature > 0
        gen: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            if temperature <= 0:
                raise InvalidRequestError("do_sample needs temperature > 0")
            gen.update(temperature=float(temperature), top_p=float(top_p))
            if kwargs.get("top_k") is not None:
                gen["top_k"] = int(kwargs["top_k"])
        for key, cast in (("repetition_penalty", float), ("no_repeat_ngram_size", int), ("min_new_tokens", int)):
            if kwargs.get(key) is not None:
                gen[key] = cast(kwargs[key])
        if kwargs.get("seed") is not None:
            gen["seed"] = int(kwargs["seed"])
        stop = kwargs.get("stop") or []
        stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        ignored = sorted(k for k in kwargs if k not in GENERATION_KEYS)
        adapter = kwargs.get("adapter") or None
        if adapter is not None and (state.peft is None or adapter not in state.peft.peft_config):
            raise InvalidRequestError(f"adapter {adapter!r} is not loaded on this replica", code="adapter_not_loaded")
        fmt = kwargs.get("response_format")
        if fmt is not None:
            try:  # a plugin may be called directly, not only through a checked request
                fmt = structured.normalize(fmt)
            except ConfigError as e:
                raise InvalidRequestError(str(e), code="invalid_response_format") from None
            if fmt is not None:  # compiled now (and kept): a schema it cannot use fails this request alone
                grammar.compiled(model, tokenizer, fmt, state.stop_ids)
        return _Prepared(ids=ids, budget=budget, gen=gen, stop=[s for s in stop if s], ignored=ignored,
                         response_format=fmt, adapter=adapter)

    def _generate(self, model: Any, tokenizer: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int,
                  gen: Mapping[str, Any], stop: Sequence[str] = (), response_format: Mapping[str, Any] | None = None,
                  adapters: Sequence[str | None] | None = None, **extra: Any) -> Any:
        """One batched `model.generate`; `adapters[i]`: the adapter of row i (None: the base model)."""
        import torch

        state: _State = model.byzer_like
        rows_in = int(input_ids.shape[0])
        processors = [] if response_format is None else [  # every row of the batch under the same grammar
            grammar.logits_processor(model, tokenizer, response_format, state.stop_ids, rows=rows_in)]
        generators = extra.pop("generators", None)  # each row's own (backends/sampling.py), else one per seed
        generators = row_generators([gen.get("seed")] * rows_in, gen) if generators is None else generators
        gen = seeded(gen, generators, processors)  # with the processors as `logits_processor`
        if stop:  # end a row as soon as it produced a stop string (the text is cut after decoding)
            gen.update(stop_strings=list(stop), tokenizer=tokenizer)
        rows = [a or BASE_ROW for a in adapters] if adapters is not None and any(adapters) else None
        with state.lock.shared(), adapter_rows(rows), torch.inference_mode():
            return model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                max_new_tokens=max_new_tokens, eos_token_id=state.stop_ids, pad_token_id=tokenizer.pad_token_id,
                **gen, **extra,
            )

    def _generate_rows(self, model: Any, tokenizer: Any, ids: Any, mask: Any, rows: Sequence[_Prepared]) -> list[list[int]]:
        """The new tokens of each row of a left-padded batch, the batch shrinking as its rows end
        (`hf_batches.generate_rows` over this plugin's `_generate`)."""
        return generate_rows(self._generate, model, tokenizer, ids, mask, rows)

    # -- the contract ----------------------------------------------------------------------------
    def stream_chat(self, model: Any, tokenizer: Any, ins: str, his: list[dict[str, str]] | None = None,
                    max_length: int | None = None, top_p: float = 0.95, temperature: float = 0.1,
                    **kwargs: Any) -> Iterator[tuple[str, dict]]:
        p = self._prepare(model, tokenizer, ins, his or [], max_length, top_p, temperature, kwargs)
        start = time.perf_counter()
        first: float | None = None
        streamer, thread, cancelled, failure = self._generate_in_thread(model, tokenizer, p)
        text, shown, finish = "", "", "length"
        # text that could be the start of a stop string is held back until it is decided
        hold = max((len(s) for s in p.stop), default=1) - 1
        try:
            while True:
                try:
                    item = streamer.queue.get(timeout=0.5)
                except Empty:
                    if not thread.is_alive():
                        break
                    continue
                if item is None:
                    break
                text = item
                cut = cut_at_stop(text, p.stop)
                if cut is not None:
                    text, finish = cut, "stop"
                    cancelled.set()
                visible = text if cut is not None or not hold else text[:-hold]
                if visible != shown:
                    shown = visible
                    if first is None:
                        first = time.perf_counter() - start
                    yield visible, {}
                if cut is not None:
                    break
        finally:
            cancelled.set()
            thread.join()
        if failure:
            raise failure[0]
        new, ended = answer_tokens(streamer.ids, p.budget, model.byzer_like.stop_ids)
        finish = "stop" if finish == "stop" or ended else "length"
        yield text, self._meta(len(p.ids), len(new), finish, first, time.perf_counter() - start, p.ignored)

    def _generate_in_thread(self, model: Any, tokenizer: Any, p: _Prepared) -> tuple[_TokenStreamer, threading.Thread,
                                                                                     threading.Event, list[BaseException]]:
        """Start one prepared request's `generate` on a thread of its own: (the streamer its text arrives on, the
        thread, the event that stops it after its next token, the list its error lands in)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        cancelled = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):  # noqa: ANN001
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = _TokenStreamer(tokenizer)
        failure: list[BaseException] = []
        input_ids = torch.tensor([p.ids])

        def work() -> None:
            try:
                self._generate(model, tokenizer, input_ids, torch.ones_like(input_ids), p.budget, p.gen,
                               response_format=p.response_format, adapters=[p.adapter], streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Cancel()]))
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                failure.append(e)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="byzer-like-generate", daemon=True)
        thread.start()
        return streamer, thread, cancelled, failure

    def batch_chat(self, model: Any, tokenizer: Any, requests: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, dict]]:
        """Answer many requests with batched `generate` calls.

        Requests are grouped by their sampling options, sorted by prompt length (so little padding is
        needed) and cut into batches of `max_batch_size`; answers come back in request order. Requests for
        different adapters (and the base model) share batches: each row goes through its own adapter."""
        import torch

        state: _State = model.byzer_like
        results: list[tuple[str | None, dict] | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, _Prepared]]] = {}
        for i, r in enumerate(requests):
            ins, his, kwargs = request_arguments(r)
            try:
                p = self._prepare(model, tokenizer, ins, his, kwargs.pop("max_length", None),
                                  float(kwargs.pop("top_p")), float(kwargs.pop("temperature")), kwargs)
            except InvalidRequestError as e:
                results[i] = (None, {"error": str(e), "error_code": e.code})
                continue
            same = {k: v for k, v in p.gen.items() if k != "seed"}  # seeded rows share batches: a generator each
            groups.setdefault(json.dumps([same, p.stop, p.response_format], sort_keys=True), []).append((i, p))
        pad = tokenizer.pad_token_id
        for members in groups.values():
            members.sort(key=lambda m: len(m[1].ids))
            for k in range(0, len(members), state.max_batch_size):
                chunk = members[k:k + state.max_batch_size]
                width = max(len(p.ids) for _, p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (_, p) in enumerate(chunk):
                    ids[row, width - len(p.ids):] = torch.tensor(p.ids)
                    mask[row, width - len(p.ids):] = 1
                start = time.perf_counter()
                answers = self._generate_rows(model, tokenizer, ids, mask, [p for _, p in chunk])
                seconds = time.perf_counter() - start
                for row, (i, p) in enumerate(chunk):
                    new, ended = answer_tokens(answers[row], p.budget, state.stop_ids)
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    cut = cut_at_stop(text, p.stop)
                    if cut is not None:
                        text = cut
                    finish = "stop" if ended or cut is not None else "length"
                    meta = self._meta(len(p.ids), len(new), finish, None, seconds, p.ignored)
                    meta["batch_size"] = len(chunk)
                    results[i] = (text, meta)
        return results  # type: ignore[return-value]

    def embed_query(self, model: Any, tokenizer: Any, text: str, **kwargs: Any) -> list[float]:
        """Mean of the last hidden states over the text's tokens, L2-normalised."""
        import torch

        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=model.byzer_like.context_length)
        with model.byzer_like.lock.shared(), torch.inference_mode():  # the base model, whatever adapters are loaded
            out = model(**{k: v.to(model.device) for k, v in enc.items()}, output_hidden_states=True)
        hidden = out.hidden_states[-1][0].float()
        mask = enc["attention_mask"][0].to(hidden.device).unsqueeze(-1).float()
        vec = (hidden * mask).sum(0) / mask.sum().clamp(min=1)
        return torch.nn.functional.normalize(vec, dim=0).tolist()

    def score_text(self, model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Token log-likelihoods of texts (the contract's optional `score_text`), batched.

        Each item: `{"text": str}` (every token after the first is scored), or with `"ins"` / `"his"`
        (a chat prompt, built as `stream_chat` builds it): then `text` is the answer after that prompt and
        only its tokens are scored. Returns `{"logprob": sum of natural-log probabilities, "tokens": n}`
        per item, in order; a text longer than the context is cut at its end (counted tokens say so)."""
        import torch

        state: _State = model.byzer_like
        rows: list[tuple[list[int], int]] = []  # (ids, index of the first scored token)
        for item in items:
            text = str(item.get("text") or "")
            if item.get("ins") is not None:
                prompt = self.build_prompt(tokenizer, str(item["ins"]), item.get("his") or [], {})
                head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                ids = head + tokenizer(text, add_special_tokens=False)["input_ids"]
                start = len(head)
            else:
                ids = tokenizer(text)["input_ids"]
                start = 1
            ids = ids[: state.context_length]
            rows.append((ids, max(1, min(start, len(ids)))))
        out: list[dict] = [{"logprob": 0.0, "tokens": 0} for _ in rows]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        for k in range(0, len(order), state.max_batch_size):
            chunk = order[k:k + state.max_batch_size]
            width = max(len(rows[i][0]) for i in chunk)
            if width < 2:
                continue
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, :len(rows[i][0])] = torch.tensor(rows[i][0])
                mask[r, :len(rows[i][0])] = 1
            with state.lock.shared(), torch.inference_mode():  # a prefix adapter's forward is peft's
                logits = (state.prefix or model)(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(logits.device).unsqueeze(-1))[..., 0]
            for r, i in enumerate(chunk):
                n, start = len(rows[i][0]), rows[i][1]
                scored = logp[r, start - 1:n - 1]
                out[i] = {"logprob": float(scored.sum()), "tokens": int(scored.numel())}
        return out

    def get_meta(self, model: Any, tokenizer: Any) -> dict:
        state: _State = model.byzer_like
        return {
            "family": self.family,
            **model_facts(model),
            "model_dir": state.model_dir,
            "context_length": state.context_length,
            "device": state.device,
            "quantization": state.quantization,
            "max_batch_size": state.max_batch_size,
            "lora_target_modules": list(self.lora_target_modules),
            "stop_token_ids": list(state.stop_ids),
            "embedding": True,
            "embedding_dimensions": getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None),
            "streaming": True,
            "response_formats": ["json_object", "json_schema"],  # decoding constrained (backends/grammar.py)
            "scoring": True,
            # LoRA adapters served per request over this model (load_adapter), unless one was merged at load
            "adapters": not state.merged_adapter,
        }

    def sft_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """Supervised fine-tuning (byzer_like.train.sft) with this family's LoRA targets, template and stops."""
        from ..train.context import TrainContext
        from ..train.sft import sft_train

        ctx = TrainContext.from_call("sft", data_refs, train_params, sys_conf)
        return sft_train(model_dir=ctx.model_dir, data_path=ctx.data_path, output_dir=ctx.output_dir,
                         run_dir=ctx.run_dir, options=ctx.options, target_modules=self.lora_target_modules,
                         fallback_template=self.fallback_chat_template, stop_tokens=self.stop_tokens,
                         cpus=ctx.cpus, gpus=ctx.gpus, reporter=ctx.reporter, resume=ctx.resume)

    def sfft_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """Continued pretraining (byzer_like.train.sfft) on Ray Train workers with DeepSpeed: a whole model, or a
        LoRA adapter over the base (method lora, on this family's LoRA targets)."""
        from ..train.context import TrainContext
        from ..train.sfft import sfft_train

        ctx = TrainContext.from_call("sfft", data_refs, train_params, sys_conf)
        result = sfft_train(model_dir=ctx.model_dir, data_path=ctx.data_path, output_dir=ctx.output_dir,
                            run_dir=ctx.run_dir, run_name=ctx.run_name, options=ctx.options,
                            num_workers=ctx.num_workers, cpus_per_worker=ctx.cpus, gpus_per_worker=ctx.gpus,
                            reporter=ctx.reporter, partition_sizes=ctx.partitions,
                            target_modules=self.lora_target_modules)
        return {"kind": "adapter" if ctx.options.trains_adapter() else "model", **result}

    def dpo_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """Direct preference optimisation (byzer_like.train.preference, TRL's DPOTrainer)."""
        return self._preference("dpo", data_refs, train_params, sys_conf)

    def orpo_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """Odds-ratio preference optimisation (byzer_like.train.preference, TRL's experimental ORPOTrainer)."""
        return self._preference("orpo", data_refs, train_params, sys_conf)

    def kto_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """Kahneman-Tversky optimisation (byzer_like.train.preference, TRL's KTOTrainer)."""
        return self._preference("kto", data_refs, train_params, sys_conf)

    def _preference(self, task: str, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """A preference method with this family's LoRA targets, template and stops."""
        from ..train.context import TrainContext
        from ..train.preference import preference_train

        ctx = TrainContext.from_call(task, data_refs, train_params, sys_conf)
        return preference_train(task, model_dir=ctx.model_dir, data_path=ctx.data_path, output_dir=ctx.output_dir,
                                run_dir=ctx.run_dir, options=ctx.options, target_modules=self.lora_target_modules,
                                fallback_template=self.fallback_chat_template, stop_tokens=self.stop_tokens,
                                cpus=ctx.cpus, gpus=ctx.gpus, reporter=ctx.reporter, resume=ctx.resume)

    def rm_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """A reward model (byzer_like.train.reward) on preference pairs, with this family's LoRA targets and
        chat template (the template it is saved with, so that a deployment scores the texts it trained on)."""
        from ..train.context import TrainContext
        from ..train.reward import rm_train

        ctx = TrainContext.from_call("rm", data_refs, train_params, sys_conf)
        return rm_train(model_dir=ctx.model_dir, data_path=ctx.data_path, output_dir=ctx.output_dir,
                        run_dir=ctx.run_dir, options=ctx.options, target_modules=self.lora_target_modules,
                        fallback_template=self.fallback_chat_template, cpus=ctx.cpus, gpus=ctx.gpus,
                        reporter=ctx.reporter, resume=ctx.resume)

    def ppo_train(self, data_refs: Any, train_params: Mapping[str, str], sys_conf: Mapping[str, str]) -> dict:
        """PPO (byzer_like.train.ppo: TRL's RLOOTrainer against a reward model's folder, resolved at submit) with
        this family's LoRA targets, template and stops."""
        from ..train.context import TrainContext
        from ..train.ppo import ppo_train

        ctx = TrainContext.from_call("ppo", data_refs, train_params, sys_conf)
        return ppo_train(model_dir=ctx.model_dir, data_path=ctx.data_path, output_dir=ctx.output_dir,
                         run_dir=ctx.run_dir, options=ctx.options, target_modules=self.lora_target_modules,
                         fallback_template=self.fallback_chat_template, stop_tokens=self.stop_tokens,
                         cpus=ctx.cpus, gpus=ctx.gpus, reporter=ctx.reporter, resume=ctx.resume)

    @staticmethod
    def _meta(n_in: int, n_out: int, finish: str, first: float | None, seconds: float, ignored: list[str]) -> dict:
        meta = {
            "input_tokens": n_in,
            "output_tokens": n_out,
            "finish_reason": finish,
            "generation_s": round(seconds, 6),
        }
        if first is not None:
            meta["time_to_first_token_s"] = round(first, 6)
        if ignored:
            meta["ignored_options"] = ignored
        return meta


