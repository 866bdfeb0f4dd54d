"""The options of preference training (`dpo/<family>`, `orpo/<family>`, `kto/<family>`), validated before
anything expensive starts.

Each model is a `TrainOptions` (the keys every training run takes) plus sft's adapter keys (`method`,
`loraR`, ...: the same fields, copied from `SftOptions`) and the method's own: `beta`, `lossType`,
`maxLength`, `maxPromptLength`. They build TRL's configs (`train.preference`), never the other way round;
the loss types listed here are TRL 1.16's (`trl.DPOConfig.loss_type`, `trl.KTOConfig.loss_type`), checked
against TRL by tests/test_preference.py. This module imports neither torch nor TRL.
"""
from __future__ import annotations

import copy
import json
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..errors import closest
from .options import LoraFields, SftOptions, TrainOptions

# TRL 1.16's DPOConfig.loss_type values (several may be combined: `lossType="sigmoid,sft"`)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# TRL 1.16's KTOConfig.loss_type values
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def _like_sft(name: str) -> Any:
    """SftOptions' field `name` (default, bounds, aliases, description), for a model of its own."""
    return copy.deepcopy(SftOptions.model_fields[name])


def loss_types(value: Any, valid: tuple[str, ...], *, many: bool) -> list[str]:
    """`lossType` as a list of TRL's names: a name, a comma-separated list (`many`) or a list; ValueError naming
    the valid ones (with the closest one first) for a name TRL does not know."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"give a loss type; valid ones: {', '.join(valid)}")
    if len(names) > 1 and not many:
        raise ValueError(f"give one loss type, not {len(names)}; valid ones: {', '.join(valid)}")
    for n in names:
        if n not in valid:
            near = closest(n, valid, cutoff=0.6)
            hint = f"did you mean {near!r}? " if near else ""
            raise ValueError(f"unknown loss type {n!r}; {hint}valid ones: {', '.join(valid)}")
    return names


class PreferenceOptions(LoraFields, TrainOptions):
    """Keys every preference method takes: the adapter (as sft's), batch, lengths and beta."""

    kind: ClassVar[str] = ""
    default_eval_metrics: ClassVar[str] = "exact_match"

    pretrained_model_type: str = Field(description="dpo/<family>, orpo/<family> or kto/<family>")
    method: Literal["lora", "qlora", "full"] | None = _like_sft("method")  # None: settled as sft's is
    per_device_batch_size: int | None = _like_sft("per_device_batch_size")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="the peak learning rate (default: 5e-6 with "
                                        "lora / qlora, 1e-6 full)")
    eval_split: float = Field(0.0, ge=0, lt=0.5, description="fraction of the rows held out: the eval loss and "
                              "rewards (eval_loss, eval_rewards/margins) after every epoch")
    max_length: int = Field(1024, ge=8, le=1_048_576, description="prompt + answer tokens per sequence (TRL's "
                            "max_length: longer ones keep their start)")
    max_prompt_length: int | None = Field(None, ge=1, le=1_048_576, description="keep only the last N tokens of a "
                                          "longer prompt (TRL 1.16 has no such option: byzer-like cuts the prompt "
                                          "after TRL has tokenized it); default: prompts are cut only by maxLength")
    beta: float = Field(0.1, description="how far the model may move from the reference: higher keeps it closer "
                        "(DPO, KTO: TRL's beta; ORPO: the weight of the odds-ratio loss, the paper's lambda)")

    batch_size = SftOptions.batch_size  # sft's rule: about 0.2% of the rows, 1 to 8

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        if isinstance(v, str):  # `q_proj,v_proj` or a JSON list, as sft takes them
            v = json.loads(v) if v.strip().startswith("[") else [m.strip() for m in v.split(",") if m.strip()]
        return v

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("beta must be above 0 (TRL's default is 0.1; a higher beta keeps the model closer to "
                             "the reference); e.g. beta=\"0.1\"")
        return v

    @field_validator("max_prompt_length")
    @classmethod
    def _prompt_fits(cls, v: int | None, info: ValidationInfo) -> int | None:
        longest = info.data.get("max_length")
        if v is not None and longest is not None and v >= longest:
            raise ValueError(f"maxPromptLength={v} leaves no room for the answer within maxLength={longest}; make "
                             "maxPromptLength smaller than maxLength")
        return v

    def lr(self) -> float:
        """The learning rate: the given one, else 5e-6 with lora / qlora (LLaMA-Factory's DPO examples) and
        1e-6 full (TRL's default)."""
        return self.learning_rate or (1e-6 if self.method == "full" else 5e-6)

    def loss_type_names(self) -> list[str]:
        """The TRL loss types this run trains with (none for ORPO, which has one loss)."""
        return [n for n in (getattr(self, "loss_type", None) or "").split(",") if n]


class DpoOptions(PreferenceOptions):
    """Direct preference optimisation (`dpo/<family>`) on prompt / chosen / rejected rows."""

    kind: ClassVar[str] = "dpo"

    loss_type: str = Field("sigmoid", description="TRL's DPO loss: " + ", ".join(DPO_LOSS_TYPES)
                           + " (comma-separated to combine several, with equal weights)")

    @field_validator("loss_type", mode="before")
    @classmethod
    def _dpo_loss(cls, v: Any) -> Any:
        return ",".join(loss_types(v, DPO_LOSS_TYPES, many=True))


class OrpoOptions(PreferenceOptions):
    """Odds-ratio preference optimisation (`orpo/<family>`): no reference model (TRL's experimental ORPO)."""

    kind: ClassVar[str] = "orpo"


class KtoOptions(PreferenceOptions):
    """Kahneman-Tversky optimisation (`kto/<family>`) on prompt / completion / label rows."""

    kind: ClassVar[str] = "kto"

    loss_type: str = Field("kto", validate_default=True, description="TRL's KTO loss: " + ", ".join(KTO_LOSS_TYPES))
    desirable_weight: float = Field(1.0, gt=0, description="the weight of rows labelled true (raise it when they are "
                                    "fewer than the false ones)")
    undesirable_weight: float = Field(1.0, gt=0, description="the weight of rows labelled false")

    @field_validator("loss_type", mode="before")
    @classmethod
    def _kto_loss(cls, v: Any, info: ValidationInfo) -> Any:
        name = loss_types(v, KTO_LOSS_TYPES, many=False)[0]
        # TRL's KTO estimates its KL term from the other rows of a batch: one row per batch cannot
        if name == "kto" and info.data.get("per_device_batch_size") == 1:
            raise ValueError("KTO's loss needs at least 2 rows per batch (it estimates the KL term from the other "
                             "rows of the batch); set batchSize=\"2\" or more, or lossType=\"apo_zero_unpaired\"")
        return name

    def batch_size(self, rows: int) -> int:
        """sft's rule (`SftOptions.batch_size`), at least 2 for the kto loss (its KL term needs a batch)."""
        n = SftOptions.batch_size(self, rows)
        return max(n, 2) if self.loss_type == "kto" else n


__all__ = ["DPO_LOSS_TYPES", "DpoOptions", "KTO_LOSS_TYPES", "KtoOptions", "OrpoOptions", "PreferenceOptions",
           "loss_types"]
