"""Training progress: step, loss, tokens/s and ETA, written to the catalog and printed to the job's log.

A `Reporter` holds only strings and numbers, so it pickles into Ray Train workers; the rank-0 worker
(or the single sft process) calls it after each logged step. Without a job id it only prints.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Mapping

# under a job's folder: TensorBoard's event files (the sft Trainer's, sfft's DeepSpeed monitor's), which
# `jobs status` names and `byzer-like jobs tensorboard` serves
TENSORBOARD_DIR = "tensorboard"


class StopRequest:
    """A stop asked for by a signal, honoured at a safe point of the training loop.

    The job runner's SIGTERM handler calls `request()`: while a loop has said it `defers` stops (sft's
    Trainer, between steps), the request is only noted and the loop raises SystemExit at its next step
    end, so a checkpoint being saved is always finished first; otherwise it raises at once."""

    def __init__(self) -> None:
        self.defers = False
        self.requested: int | None = None  # the signal number

    def request(self, signum: int) -> None:
        if not self.defers:
            raise SystemExit(128 + signum)
        self.requested = signum

    def check(self) -> None:
        """At a safe point: SystemExit if a stop was requested."""
        if self.requested is not None:
            raise SystemExit(128 + self.requested)


STOP = StopRequest()  # one per process: the runner's


class Reporter:
    def __init__(self, workspace_root: str | None = None, job_id: str | None = None, *, total_steps: int | None = None,
                 out: Any = None):
        self.workspace_root = workspace_root
        self.job_id = job_id
        self.total_steps = total_steps
        self._out = out
        self._t0: float | None = None
        self._step0 = 0
        self._tokens = 0

    def __getstate__(self) -> dict:
        return {"workspace_root": self.workspace_root, "job_id": self.job_id, "total_steps": self.total_steps,
                "_out": None, "_t0": None, "_step0": 0, "_tokens": 0}

    def start(self, step: int, total_steps: int | None = None) -> None:
        """Training begins (or resumes) at `step`: rates and ETA count from here."""
        self._t0 = time.monotonic()
        self._step0 = step
        self._tokens = 0
        if total_steps is not None:
            self.total_steps = total_steps
        self._print(f"training from step {step}" + (f" of {total_steps}" if total_steps else ""))

    def step(self, step: int, *, tokens: int = 0, **metrics: Any) -> dict:
        """Record progress at `step`; `tokens` are those processed since the last call."""
        if self._t0 is None:
            self.start(step - 1 if step > 0 else 0)
        self._tokens += int(tokens)
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        done = step - self._step0
        clean = {k: _num(v) for k, v in metrics.items() if v is not None}
        clean["tokens_per_s"] = round(self._tokens / elapsed, 2)
        if self.total_steps and done > 0:
            clean["eta_s"] = round(max(self.total_steps - step, 0) * elapsed / done, 1)
        if self.total_steps:
            clean["progress"] = round(min(step / self.total_steps, 1.0), 4)
        if self.job_id and self.workspace_root:
            from ..catalog import Catalog

            Catalog(self.workspace_root).record_progress(self.job_id, step, clean, total_steps=self.total_steps)
        shown = " ".join(f"{k}={v}" for k, v in clean.items() if k != "progress")
        self._print(f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "") + f" {shown}")
        return clean

    def _print(self, line: str) -> None:
        out = self._out or sys.stdout
        print(f"[byzer-like] {line}", file=out, flush=True)


def final_metrics(last: Mapping[str, Any], result: Mapping[str, Any]) -> dict:
    """The metrics of a run that finished: the last progress point's (`last`, logged every few steps)
    updated by the run's own `result`, so that they describe the final step: progress 1.0, no time
    left, the final loss and the final epoch (when the run gives one)."""
    metrics = {**last, **result, "progress": 1.0, "eta_s": 0.0}
    if result.get("final_loss") is not None:
        metrics["loss"] = result["final_loss"]
    return metrics


def _num(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "item"):  # a tensor or numpy scalar
        return _num(v.item())
    return v


__all__ = ["Reporter", "StopRequest", "final_metrics"]
