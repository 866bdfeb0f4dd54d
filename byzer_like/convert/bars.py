"""The libraries' progress bars during a conversion, shown as one `display.ProgressLine`.

transformers draws a tqdm bar per stage (`Converting and de-quantizing GGUF tensors...`, `Loading weights`,
`Writing model shards`, the reload's `Loading weights` again): a screen of bars for one import. Inside
`bars_as(line)` each of them instead updates the one line (`loading weights 21/272`). transformers' own bars
go through its public hook (`transformers.utils.logging.set_tqdm_hook`); the GGUF reader's bar is made with
`tqdm.auto.tqdm` imported into `transformers.modeling_gguf_pytorch_utils`, which is swapped for the time
of the block. Both are put back when the block ends.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

from ..display import ProgressLine


class _Bar:
    """A tqdm stand-in: counts, and tells the line `desc n/total` as it goes. Methods of tqdm it does not
    have (`set_postfix`, `refresh`, ...) do nothing."""

    def __init__(self, line: ProgressLine, iterable: Iterable | None = None, desc: str | None = None,
                 total: float | None = None, **_: Any):
        self.line, self.iterable = line, iterable
        self.desc = (desc or "working").rstrip(". :")
        self.desc = self.desc[:1].lower() + self.desc[1:]
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, 0
        self._tell(force=True)

    def _tell(self, force: bool = False) -> None:
        count = f" {self.n}/{int(self.total)}" if self.total else (f" {self.n}" if self.n else "")
        self.line.show(self.desc + count, force=force)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: float = 1) -> None:
        self.n += int(n)
        self._tell(force=bool(self.total) and self.n >= self.total)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = (desc or self.desc).rstrip(". :")

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


@contextlib.contextmanager
def bars_as(line: ProgressLine) -> Iterator[ProgressLine]:
    """Within the block, transformers' progress bars (and the GGUF reader's) update `line` instead of
    drawing bars; yields `line`."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: _Bar(line, *args, **kwargs))
    reader_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = lambda *args, **kwargs: _Bar(line, *args, **kwargs)
    try:
        yield line
    finally:
        gguf_utils.tqdm = reader_tqdm
        hf_logging.set_tqdm_hook(previous)
