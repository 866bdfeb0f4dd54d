"""What a user sees on stderr: this project's output and real warnings, not the libraries' chatter.

One policy, in this module. The faces (`byzer-like`, `%load_ext byzer_like`, `ByzerLLM`) call
`configure()`; `cluster.connect` takes Ray's options from `ray_init_options()` and calls
`after_ray_init()`. `byzer-like --verbose` or `BYZER_LIKE_LOG=debug` turns the policy off: Ray then logs
at INFO, forwards its workers' output, and nothing below is filtered.

The noise, where it comes from, and how it is kept out by default:

- Ray's driver logs (`Connecting to existing Ray cluster ...`): `ray.init(logging_level=WARNING,
  log_to_driver=False)`; the replicas' and workers' output stays in Ray's log files.
- Ray Serve's INFO lines in the driver (`Started <...SharedRouterLongPollClient...>`, `Deleting app ...`)
  and Ray's `Missing packages: ['ipywidgets']` (logged while `import ray` runs in a notebook kernel): a
  filter on those loggers keeps WARNING and above. A filter, because Serve resets its logger's level
  and handlers when it is imported, never its filters.
- Serve's router's `Failed to get queue length from Replica(...) within 0.1s` when a replica is busy (a
  loaded machine; the router retries by itself): dropped.
- DeepSpeed's `Setting accelerator to CPU` on a machine without a GPU (a WARNING, printed to stdout),
  torchao's `Failed to load .../_C_*.so` for kernels this machine cannot run, and torch's deprecation
  notice to torchao's authors (`<enum ...> is an Enum subclass ...`), each on every import: those
  messages are dropped (`DROPPED`), the loggers' other warnings stay.
- tqdm's `IProgress not found` in a kernel without ipywidgets (transformers uses `tqdm.auto`; the bar
  falls back to text): ignored.
- The `*** SIGTERM received ...` stack dump: Ray's C++ failure-signal handler catches SIGTERM too;
  after connecting, SIGTERM gets back the handler the process had before (crashes still dump).
- nanobind's `leaked ... instances / types / functions` at exit: DuckDB's binding reports the objects
  of a connection with Python functions that is still open when the interpreter ends; the engine's
  `Session` closes its connection at exit (`session/session.py`), so there is nothing to report.

Warnings from this project and every library's other warnings still show.

A training job's log file (`log.txt` in its run folder) holds what its process printed, libraries
included; `byzer-like jobs logs` shows it through `readable_log`, which drops the lines of `LOG_NOISE`
(each with where it comes from) and the repeats, and says how many it hid; `--verbose` shows the file
as it is.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import threading
import warnings
from typing import Any

ENV = "BYZER_LIKE_LOG"
# logger -> messages (parts of them) dropped whatever their level; for the loggers in QUIET, INFO and DEBUG go too
DROPPED: dict[str, tuple[str, ...]] = {
    "DeepSpeed": ("Setting accelerator to CPU",),
    # torchao's optional CUDA / other-Python kernels, on every import where they cannot load
    "torchao": ("Failed to load ",),
    # a deprecation addressed to torchao's authors, printed on every import of torchao
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
    # Serve's router probing a busy replica's queue on a loaded machine (a WARNING; it retries on its own)
    "ray.serve": ("Failed to get queue length from Replica",),
}
QUIET = ("ray.serve", "ray.widgets.util")
IGNORED_WARNINGS = (r"IProgress not found",)


def is_verbose() -> bool:
    """Whether the user asked for everything (`BYZER_LIKE_LOG=debug`, which `--verbose` sets)."""
    return os.environ.get(ENV, "").strip().lower() == "debug"


class _Quiet(logging.Filter):
    """Keeps a logger's records at `level` and above, except those that contain one of `dropped`."""

    def __init__(self, level: int, dropped: tuple[str, ...] = ()):
        super().__init__()
        self.level = level
        self.dropped = dropped

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return False
        if not self.dropped:
            return True
        message = record.getMessage()
        return not any(part in message for part in self.dropped)


_installed: list[tuple[logging.Logger, logging.Filter]] = []


def configure(verbose: bool | None = None) -> None:
    """Apply the policy to this process (again is harmless). Call it before the libraries run.

    `verbose=True` sets `BYZER_LIKE_LOG=debug` in the environment, so that the subprocesses and
    Ray workers started from here see it too; None or False leave the environment as it is."""
    if verbose:
        os.environ[ENV] = "debug"
    for logger, f in _installed:
        logger.removeFilter(f)
    _installed.clear()
    if is_verbose():
        return
    for name in {*QUIET, *DROPPED}:
        logger = logging.getLogger(name)
        f = _Quiet(logging.WARNING if name in QUIET else logging.NOTSET, DROPPED.get(name, ()))
        logger.addFilter(f)
        _installed.append((logger, f))
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def ray_init_options() -> dict[str, Any]:
    """The logging keywords of `ray.init` for this process."""
    if is_verbose():
        return {"logging_level": logging.INFO, "log_to_driver": True}
    return {"logging_level": logging.WARNING, "log_to_driver": False}


def sigterm_handler() -> Any:
    """SIGTERM's handler now (read it before `ray.init`, hand it to `after_ray_init`)."""
    return signal.getsignal(signal.SIGTERM)


def after_ray_init(previous_sigterm: Any) -> None:
    """Give SIGTERM back the handler it had before `ray.init` (Ray's handler prints a stack dump).

    Only from the main thread (elsewhere Python cannot set handlers), only for a handler Python knows
    (None: one set outside Python), and not when verbose."""
    if is_verbose() or previous_sigterm is None or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, previous_sigterm)


# Lines of a job's log that are the libraries' chatter, not the job's story (seen in real sft / sfft logs;
# tests/fixtures/job_logs): what each is -> a pattern matching the whole of such a line.
LOG_NOISE: dict[str, re.Pattern[str]] = {
    # torchao's compiled kernels for other GPUs / Pythons, tried at every import
    "compiled-extension load failures": re.compile(r"Failed to load \S+\.so\b.*"),
    # transformers' optional kernels-community kernels (bitsandbytes' CPU path)
    "optional kernels not installed": re.compile(r"Failed to load .* from kernels-community.*"),
    # torch's notice to torchao's authors, in glog form (`W1207 12:28:11.51 12660 .../_pytree.py:630] ...`)
    "torch deprecation notices": re.compile(r"[WI]\d{4} [\d:.]+ +\d+ .*\] .*is an Enum subclass and is now natively supported.*"),
    # `path.py:123: FutureWarning: ...` (the source line Python prints under it goes too, see readable_log)
    "deprecation warnings": re.compile(r"\S+:\d+: (?:Future|Deprecation|PendingDeprecation)Warning: .*"),
    # DeepSpeed on a machine without a GPU
    "accelerator notices": re.compile(r".*\bSetting accelerator to CPU\..*"),
    # tqdm bars written to a file (`Loading weights: 100%|####| 21/21 [00:00<00:00, ...]`)
    "progress bars": re.compile(r".*\d+%\|.*\| *\d+/\d+ \[.*"),
    # Ray Data's progress bars as its workers send them, and its size estimates
    "Ray Data progress": re.compile(r'\{"__magic_token__": "__ray_tqdm_magic_token__".*|Estimated parquet .*'),
}
# the trainer's own dict of a logging step (`{'loss': '8.38', 'grad_norm': ...}`): dropped when the job logged
# that step itself (`[byzer-like] step 5/8 loss=...`), so each step is logged once
TRAINER_STEP = re.compile(r"\{'loss': .*\}")
OWN_STEP = "[byzer-like] step "


def readable_log(text: str) -> tuple[str, dict[str, int]]:
    """A job's log as `jobs logs` shows it: without the lines of LOG_NOISE, the source line Python prints
    under a dropped warning, the trainer's step dicts when the job logged its steps itself, a blank line
    beside a dropped one, and a line repeated straight after itself (lines are split at carriage returns
    too: each state of a bar is one).
    Returns (text, how many lines were dropped per kind), the text ending in a newline when `text` does."""
    lines = _lines(text)
    kinds: list[str | None] = []
    own_steps = OWN_STEP in text
    for i, line in enumerate(lines):
        kind = next((k for k, p in LOG_NOISE.items() if p.fullmatch(line)), None)
        if kind is None and i and line[:1].isspace() and LOG_NOISE["deprecation warnings"].fullmatch(lines[i - 1]):
            kind = "deprecation warnings"  # `  warnings.warn(`: the source line of the warning above
        if kind is None and own_steps and TRAINER_STEP.fullmatch(line):
            kind = "steps logged twice"
        kinds.append(kind)
    kept: list[str] = []
    hidden: dict[str, int] = {}
    for i, (line, kind) in enumerate(zip(lines, kinds)):
        if kind is None and not line.strip() and (i + 1 < len(lines) and kinds[i + 1] or i and kinds[i - 1]):
            kind = "blank lines around them"  # what a bar or warning leaves before or after itself
        if kind is None and kept and line == kept[-1]:
            kind = "repeated lines"
        if kind is None:
            kept.append(line)
        else:
            hidden[kind] = hidden.get(kind, 0) + 1
    out = "\n".join(kept)
    return (out + "\n" if out and text.endswith("\n") else out), hidden


def _lines(text: str) -> list[str]:
    """`text`'s lines, a line holding carriage returns (a progress bar's states) split there, without the
    empty parts a carriage return leaves."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [part for line in lines for part in ([p for p in line.split("\r") if p] if "\r" in line else [line])]
