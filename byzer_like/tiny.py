"""Build small but real Hugging Face-format causal LMs locally, with no hub access.

`make_tiny("llama", "/tmp/m")` trains a byte-level BPE tokenizer on local text, builds a randomly
initialised `LlamaForCausalLM` / `Qwen2ForCausalLM` / `GPT2LMHeadModel`, and saves both with
`save_pretrained`, so demos and tests load it through exactly the code path a 7B checkpoint takes
(`AutoTokenizer` / `AutoModelForCausalLM.from_pretrained`, safetensors, a ChatML chat template).

The default text is a fixed list of the Python standard library's own modules (~1.5 MB on 3.11),
so the same family, size and seed give byte-identical weights and tokenizer on every machine
with the same Python minor version. With `pretrain_seconds > 0` the model is also trained for
that much wall time on the same text, which turns random bytes into Python-ish words; that run
is time-bounded and therefore not byte-deterministic.

torch, transformers and tokenizers are imported inside the functions that need them, so
importing this module is cheap. The command line is `byzer-like models make-tiny`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

FAMILIES = ("llama", "qwen2", "gpt2")
# modules whose docstrings give `prose_lines` its English text
_PROSE_MODULES = ("argparse", "collections", "json", "logging", "pathlib", "shutil", "subprocess", "textwrap",
                  "threading")


def prose_lines(n: int = 480) -> list[str]:
    """`n` distinct lines of English prose (over 30 characters each) from the docstrings of a fixed list of
    standard-library modules: local text for pretraining tables, GPTQ calibration and tests. ValueError
    when there are fewer than `n` such lines."""
    import importlib
    import inspect

    lines: list[str] = []
    seen: set[str] = set()
    for name in _PROSE_MODULES:
        mod = importlib.import_module(name)
        for obj in [mod, *(getattr(mod, k) for k in sorted(dir(mod)) if not k.startswith("_"))]:
            doc = inspect.getdoc(obj) if callable(obj) or obj is mod else None
            for line in (doc or "").splitlines():
                line = line.strip()
                if len(line) > 30 and not line.startswith((">>>", "...")) and line not in seen:
                    seen.add(line)
                    lines.append(line)
    if len(lines) < n:
        raise ValueError(f"only {len(lines)} lines of prose in the standard library's docstrings, {n} asked for")
    return lines[:n]


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    intermediate: int  # width of the gated (SwiGLU) MLP of llama and qwen2
    gpt2_inner: int  # GPT-2's MLP has two matrices instead of three, so it is wider for similar size
    max_positions: int
    vocab: int


SIZES: dict[str, Size] = {
    "tiny": Size(hidden=128, layers=2, heads=4, intermediate=384, gpt2_inner=512, max_positions=512, vocab=4096),
    "small": Size(hidden=256, layers=4, heads=4, intermediate=768, gpt2_inner=1024, max_positions=1024, vocab=4096),
}

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOT, IM_START, IM_END)  # trained first, so they get ids 0, 1, 2

# ChatML, with no BOS: `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

MARKER = "byzer_like_tiny.json"

# Paths relative to the stdlib directory: prose-rich, long-lived modules present in 3.11-3.13.
# The list is fixed (not "whatever is installed") so the corpus, and hence the tokenizer, is the
# same on every machine; a module missing from some future Python is skipped and the corpus
# description in byzer_like_tiny.json (file count, sha256) shows the difference.
STDLIB_CORPUS = tuple(
    f"{name}.py"
    for name in (
        "abc argparse base64 bisect calendar cmd code codecs colorsys configparser contextlib copy "
        "csv dataclasses difflib enum filecmp fileinput fnmatch fractions functools getopt gettext "
        "glob graphlib gzip heapq hmac keyword linecache logging/__init__ numbers operator optparse "
        "os pprint queue random sched secrets shlex shutil statistics string subprocess tempfile "
        "textwrap threading timeit tokenize traceback types warnings weakref"
    ).split()
)
CORPUS_SUFFIXES = (".txt", ".md", ".rst", ".py")  # files taken from a user-given corpus directory

# Pretraining hyper-parameters: fixed, the only knob is wall time.
BATCH = 16
SEQ_LEN = 128
PEAK_LR = 3e-3
MIN_LR_FRACTION = 0.1  # cosine decay over the time budget ends at PEAK_LR * this
WARMUP_STEPS = 20
CHAT_FRACTION = 0.1  # share of training rows that are ChatML conversations (teaches <|im_end|>)
VAL_BLOCKS = 64  # held-out validation: at most this many SEQ_LEN-token blocks from the corpus tail
PROGRESS_EVERY_S = 5.0


def make_tiny(
    family: str,
    out_dir: str | os.PathLike[str],
    *,
    size: str = "tiny",
    seed: int = 0,
    pretrain_seconds: float = 0.0,
    corpus: str | None = None,
    progress: bool = False,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Build a causal LM of `family` ("llama" | "qwen2" | "gpt2") into out_dir; return a summary dict
    (family, size, params, vocab_size, out_dir, seconds, and when pretrained: steps, loss_start, loss_end).

    `corpus` is a UTF-8 text file or a directory (its .txt/.md/.rst/.py files, recursively, in sorted
    order); by default a fixed selection of the standard library's sources. An existing non-empty
    out_dir is only overwritten if it already holds a model built here, and `overwrite` is on
    (FileExistsError otherwise).
    """
    started = time.monotonic()
    out = _check_arguments(family, size, pretrain_seconds, out_dir, overwrite)
    spec = SIZES[size]
    docs, corpus_info = _load_corpus(corpus)
    raw_tok = _train_tokenizer(docs, spec.vocab)
    tokenizer = _fast_tokenizer(raw_tok, spec)
    model = _random_model(family, spec, raw_tok, seed)

    training: dict[str, Any] = {}
    if pretrain_seconds > 0:
        training = _pretrain(model, raw_tok, docs, pretrain_seconds, seed=seed, progress=progress)
        model.eval()

    _save(out, model, tokenizer)
    _write_marker(out, family=family, size=size, seed=seed, spec=spec, corpus_info=corpus_info, training=training)
    summary: dict[str, Any] = {
        "family": family,
        "size": size,
        "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": raw_tok.get_vocab_size(),
        "out_dir": str(out),
        "seconds": round(time.monotonic() - started, 3),
    }
    if training:
        summary.update({k: training[k] for k in ("steps", "loss_start", "loss_end")})
    return summary


def _check_arguments(family: str, size: str, pretrain_seconds: float, out_dir: str | os.PathLike[str],
                     overwrite: bool) -> Path:
    """`out_dir` as a Path, once make_tiny's arguments are known good. ValueError for an unknown family or size
    or a pretrain_seconds that is not a finite number >= 0; FileExistsError when out_dir is a file, or a
    non-empty folder that holds no model built here (no MARKER) or that `overwrite` (off) protects."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
    if not (pretrain_seconds >= 0 and math.isfinite(pretrain_seconds)):
        raise ValueError(f"pretrain_seconds must be a finite number >= 0, got {pretrain_seconds!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} already holds a model; pass --overwrite to build a new one there, "
                              "or choose another directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(
            f"{out} is not empty and does not hold a model built by byzer_like.tiny (no {MARKER}); "
            "choose an empty or new directory"
        )
    return out


def _fast_tokenizer(raw_tok: Tokenizer, spec: Size) -> PreTrainedTokenizerFast:
    """`raw_tok` as a transformers tokenizer: <|endoftext|> is BOS, EOS, UNK and padding, the ChatML markers
    are special tokens, the chat template is ChatML (CHAT_TEMPLATE)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=spec.max_positions,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _random_model(family: str, spec: Size, raw_tok: Tokenizer, seed: int) -> PreTrainedModel:
    """A randomly initialised causal LM of `family` and `spec` for `raw_tok`'s vocabulary, seeded by `seed`
    without disturbing the caller's RNG; generate() stops at <|im_end|> or <|endoftext|>."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    eot, im_end = raw_tok.token_to_id(EOT), raw_tok.token_to_id(IM_END)
    config = _model_config(family, spec, vocab_size=raw_tok.get_vocab_size(), special_id=eot)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    # Chat answers end at <|im_end|>, plain text at <|endoftext|>: generate() stops at either.
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=eot)
    return model


def _save(out: Path, model: Any, tokenizer: Any) -> None:
    """`model` and `tokenizer` with save_pretrained into `out` (made when missing), without a progress bar."""
    out.mkdir(parents=True, exist_ok=True)
    # transformers 5 always writes safetensors (its `safe_serialization` flag is gone), never .bin.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard save needs no progress bar
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        hf_logging.enable_progress_bar()


def _write_marker(out: Path, *, family: str, size: str, seed: int, spec: Size, corpus_info: dict[str, Any],
                  training: dict[str, Any]) -> None:
    """MARKER (byzer_like_tiny.json) in `out`: how the model was built (family, size, seed, pretraining time,
    steps and validation losses, the corpus, the architecture), so a rebuild can be checked against it."""
    record = {
        "family": family,
        "size": size,
        "seed": seed,
        "pretrain_seconds": training.get("seconds", 0.0),
        "pretrain_steps": training.get("steps", 0),
        "corpus": corpus_info,
        "architecture": asdict(spec),
        **{k: training[k] for k in ("loss_start", "loss_end") if k in training},
    }
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _load_corpus(corpus: str | None) -> tuple[list[str], dict[str, Any]]:
    """Return the corpus as one string per file, and a description of it for byzer_like_tiny.json."""
    if corpus is None:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = [stdlib / rel for rel in STDLIB_CORPUS if (stdlib / rel).is_file()]
        source = f"python {platform.python_version()} stdlib ({len(files)} of {len(STDLIB_CORPUS)} listed modules)"
    else:
        root = Path(corpus)
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
        else:
            raise FileNotFoundError(f"corpus {corpus!r} is neither a file nor a directory")
        source = str(root)
    # Undecodable bytes become U+FFFD rather than failing the build.
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"corpus {source} holds no text (looked for {', '.join(CORPUS_SUFFIXES)} files)")
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode("utf-8"))
    info = {
        "source": source,
        "files": len(docs),
        "chars": sum(len(d) for d in docs),
        "sha256": digest.hexdigest(),
    }
    return docs, info


def _train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (every byte is representable, so nothing is ever unknown), one for all families.

    It uses Qwen2's normaliser and pre-tokeniser because transformers 5's `AutoTokenizer` loads any
    `model_type: qwen2` checkpoint as `Qwen2Tokenizer`, which rebuilds those two from its own code
    and ignores the ones in tokenizer.json; for llama and gpt2 tokenizer.json is used as saved.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def _model_config(family: str, spec: Size, *, vocab_size: int, special_id: int) -> PreTrainedConfig:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = {"bos_token_id": special_id, "eos_token_id": special_id, "pad_token_id": special_id}
    if family == "gpt2":
        # No dropout: these models see far too little training for regularisation to help.
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=spec.max_positions,
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.gpt2_inner,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=False,
            **ids,
        )
    config_class = LlamaConfig if family == "llama" else Qwen2Config
    return config_class(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        # Untied: with a tied output layer, a random-init model mostly repeats the prompt's last
        # token (often a newline); untied, its answers are arbitrary but visible text.
        tie_word_embeddings=False,
        **ids,
    )


def _pretrain(
    model: PreTrainedModel, tok: Tokenizer, docs: list[str], seconds: float, *, seed: int, progress: bool
) -> dict[str, Any]:
    """Next-token training on the corpus for `seconds` of wall time (validation before and after
    is not counted). Returns steps, seconds, loss_start and loss_end (validation losses)."""
    import torch

    train, val = _token_blocks(tok, docs)
    get_batch = _batch_sampler(tok, train, seed)
    loss_start = _val_loss(model, val)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    steps, seen, window_loss, window_steps = 0, 0, 0.0, 0
    t0 = last_report = time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        lr = _get_lr(steps, elapsed, seconds)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, labels = get_batch()
        window_loss += _train_step(model, optimizer, ids, labels)
        steps += 1
        seen += ids.numel()
        window_steps += 1
        now = time.monotonic()
        if progress and now - last_report >= PROGRESS_EVERY_S:
            print(
                f"pretrain step {steps} loss {window_loss / window_steps:.3f} lr {lr:.1e} "
                f"{seen / (now - t0):,.0f} tok/s {now - t0:.0f}/{seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            last_report, window_loss, window_steps = now, 0.0, 0
    trained_for = time.monotonic() - t0
    loss_end = _val_loss(model, val)
    if progress:
        print(
            f"pretrain done: {steps} steps in {trained_for:.0f} s, val loss {loss_start:.3f} -> {loss_end:.3f}",
            file=sys.stderr,
            flush=True,
        )
    return {"steps": steps, "seconds": round(trained_for, 1), "loss_start": loss_start, "loss_end": loss_end}


def _token_blocks(tok: Tokenizer, docs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus as one token stream (each document followed by <|endoftext|>): (train, val), the training
    ids (int64 [n]) and the held-out tail as int64 [blocks, SEQ_LEN], up to VAL_BLOCKS blocks and never more
    than a tenth of the text. ValueError when the corpus is under 10 x SEQ_LEN tokens."""
    import torch

    eot = tok.token_to_id(EOT)
    stream: list[int] = []
    for enc in tok.encode_batch(docs):
        stream += enc.ids + [eot]
    # Hold out the tail: up to VAL_BLOCKS blocks, never more than a tenth of the text.
    n_val = min(VAL_BLOCKS, len(stream) // (10 * SEQ_LEN)) * SEQ_LEN
    if n_val == 0:
        raise ValueError(f"corpus too small to pretrain on: {len(stream)} tokens, need at least {10 * SEQ_LEN}")
    train = torch.tensor(stream[: len(stream) - n_val])
    val = torch.tensor(stream[len(stream) - n_val :]).view(-1, SEQ_LEN)
    return train, val


def _batch_sampler(tok: Tokenizer, train: torch.Tensor, seed: int):
    """`get_batch()` -> (input_ids, labels), each int64 [BATCH, SEQ_LEN]: random windows of `train`, about
    CHAT_FRACTION of them ChatML conversations made of its lines (`_chat_stream`), drawn from a generator
    seeded by `seed`."""
    import torch

    chat, chat_labels, chat_starts = _chat_stream(tok, tok.decode(train.tolist(), skip_special_tokens=True))
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(SEQ_LEN)

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels): random windows of text, about CHAT_FRACTION of them conversations."""
        ids = train[torch.randint(0, len(train) - SEQ_LEN, (BATCH, 1), generator=gen) + offsets]
        labels = ids.clone()
        is_chat = torch.rand(BATCH, generator=gen) < CHAT_FRACTION
        if chat_starts.numel() and is_chat.any():
            window = chat_starts[torch.randint(0, len(chat_starts), (int(is_chat.sum()), 1), generator=gen)] + offsets
            ids[is_chat], labels[is_chat] = chat[window], chat_labels[window]
        return ids, labels

    return get_batch


def _get_lr(step: int, elapsed: float, seconds: float) -> float:
    """The learning rate of 0-based step `step`, `elapsed` s into a budget of `seconds`: PEAK_LR times a linear
    warmup over WARMUP_STEPS steps times a cosine decay by the elapsed share of the time (to MIN_LR_FRACTION)."""
    decay = MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
    return PEAK_LR * min(1.0, (step + 1) / WARMUP_STEPS) * decay


def _train_step(model: PreTrainedModel, optimizer: Any, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimizer step on (ids, labels) with the gradient norm clipped to 1; returns the batch's loss."""
    import torch

    # An explicit all-ones mask: the <|endoftext|> separators are not padding (GPT-2 warns otherwise).
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def _chat_stream(tok: Tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair up consecutive non-empty lines as one-turn ChatML conversations, concatenated into one
    token stream. Return the ids, the labels (only answers and their <|im_end|> are learnt, as in
    fine-tuning: the prompt side is -100) and the offsets where a conversation starts a full block."""
    import torch

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    pairs = list(zip(lines[::2], lines[1::2]))
    # Prompt and answer are encoded apart, exactly as generate() sees them: the prompt ends with the
    # chat template's generation prompt and the model continues from there.
    prompts = tok.encode_batch([f"{IM_START}user\n{q}{IM_END}\n{IM_START}assistant\n" for q, _ in pairs])
    answers = tok.encode_batch([f"{a}{IM_END}\n" for _, a in pairs])
    ids: list[int] = []
    labels: list[int] = []
    starts: list[int] = []
    for prompt, answer in zip(prompts, answers):
        starts.append(len(ids))
        ids += prompt.ids + answer.ids
        labels += [-100] * len(prompt.ids) + answer.ids
    return (
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor([s for s in starts if s + SEQ_LEN <= len(ids)], dtype=torch.long),
    )


def _val_loss(model: PreTrainedModel, val: torch.Tensor) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [
            model(input_ids=chunk, attention_mask=torch.ones_like(chunk), labels=chunk).loss.item()
            for chunk in val.split(BATCH)
        ]
    return round(sum(losses) / len(losses), 4)


# -- sentence encoders (Byzer's bge / m3e embedding models) ----------------------------------------
ENCODER_TYPES = ("bert", "xlm-roberta")
ENCODER_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
ENCODER_MAX_POSITIONS = 128


def make_tiny_encoder(
    out_dir: str | os.PathLike[str],
    *,
    model_type: str = "bert",
    pooling: str | None = None,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
) -> dict[str, Any]:
    """Build a randomly initialised sentence encoder (`BertModel`, or `XLMRobertaModel` as bge-m3 is) into
    out_dir with a WordPiece tokenizer trained on local prose, saved with `save_pretrained` (safetensors).

    `pooling` "cls" or "mean" also writes sentence-transformers' `modules.json` and `1_Pooling/config.json`
    (as bge and m3e checkpoints ship them); None writes neither. Returns a summary dict (model_type,
    pooling, hidden_size, params, vocab_size, out_dir). ValueError for an unknown model_type or pooling."""
    if model_type not in ENCODER_TYPES:
        raise ValueError(f"unknown encoder model_type {model_type!r}; valid: {', '.join(ENCODER_TYPES)}")
    if pooling not in (None, "cls", "mean"):
        raise ValueError(f"unknown pooling {pooling!r}; valid: cls, mean (or None for no sentence-transformers files)")
    import torch
    from transformers import AutoModel

    tok, tokenizer = _wordpiece_tokenizer()
    config = _encoder_config(model_type, vocab_size=tok.get_vocab_size(), hidden=hidden, layers=layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    out = Path(out_dir)
    _save(out, model, tokenizer)
    if pooling is not None:
        _write_sentence_transformers(out, pooling, hidden)
    return {"model_type": model_type, "pooling": pooling, "hidden_size": hidden,
            "params": sum(p.numel() for p in model.parameters()), "vocab_size": tok.get_vocab_size(), "out_dir": str(out)}


def _wordpiece_tokenizer() -> tuple[Tokenizer, PreTrainedTokenizerFast]:
    """A lower-casing WordPiece tokenizer (1024 tokens, ENCODER_SPECIALS first) trained on `prose_lines`, with
    BERT's `[CLS] A [SEP] B [SEP]` template: (the tokenizers object, it as a transformers tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(prose_lines(), trainers.WordPieceTrainer(vocab_size=1024, special_tokens=list(ENCODER_SPECIALS),
                                                                    show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]", model_max_length=ENCODER_MAX_POSITIONS)
    return tok, tokenizer


def _encoder_config(model_type: str, *, vocab_size: int, hidden: int, layers: int) -> PreTrainedConfig:
    """A BertConfig or XLMRobertaConfig: `layers` layers of width `hidden` (4 heads, MLP 2 x hidden), no
    dropout, ENCODER_MAX_POSITIONS positions (XLM-RoBERTa counts 2 more, for its padding offset)."""
    from transformers import BertConfig, XLMRobertaConfig

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=hidden * 2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  pad_token_id=0)
    return (BertConfig(max_position_embeddings=ENCODER_MAX_POSITIONS, **common) if model_type == "bert"
            else XLMRobertaConfig(max_position_embeddings=ENCODER_MAX_POSITIONS + 2, **common))


def _write_sentence_transformers(out: Path, pooling: str, hidden: int) -> None:
    """sentence-transformers' files in `out`, as bge and m3e checkpoints ship them: modules.json (transformer,
    pooling, normalize), 1_Pooling/config.json (`pooling` "cls" or "mean" over `hidden` dimensions) and
    sentence_bert_config.json."""
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": ENCODER_MAX_POSITIONS,
                                                                "do_lower_case": False}))
