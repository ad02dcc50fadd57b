"""What the benchmark compares: the variants, and how each is applied to a freshly built model.

Every variant targets the same layers (RoCoFT's default targets of the model family,
``rocoft.FAMILY_TARGETS[model_type]``). Names (a comma list on the command line):

    frozen_floor      all weights frozen, embedding output requires grad: the backward still runs
                      through every block. No parameter trains (no optimizer step).
    full_ft           every parameter trains.
    lora_r<N>         peft LoRA, r=N, alpha=2N, dropout --lora-dropout (0), on the exact target names.
    rocoft_row_r<N>   rocoft.apply_rocoft(axis="row", rank=N)   (also rocoft_col_r<N>)
    torchcat_row_r<N> reference re-implementation of the official code (rocoft.bench.reference):
                      trained rows as a Parameter, the rest as a buffer, weight rebuilt with torch.cat
                      every forward (full weight gradient every step). Also torchcat_col_r<N>.

Task heads (classifier / lm_head) are frozen in every variant but full_ft, so "trainable" counts only
the adaptation itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..core import RoCoFTConfig, apply_rocoft, count_parameters, find_targets
from .reference import replace_with_torchcat


@dataclass(frozen=True)
class Variant:
    name: str
    method: str  # frozen_floor | full_ft | lora | rocoft | torchcat
    axis: str | None = None
    rank: int | None = None

    def fields(self) -> dict:
        """The variant's columns in a benchmark record."""
        return {"variant": self.name, "method": self.method, "axis": self.axis, "rank": self.rank}


DEFAULT_VARIANTS = ["frozen_floor", "full_ft", "lora_r8",
                    *[f"rocoft_row_r{r}" for r in (1, 3, 8, 64)], *[f"rocoft_col_r{r}" for r in (1, 3, 8, 64)],
                    "torchcat_row_r3"]
_VARIANT_RE = re.compile(r"^(?:(?P<fixed>frozen_floor|full_ft)|lora_r(?P<lr>\d+)|"
                         r"(?P<m>rocoft|torchcat)_(?P<axis>row|col)_r(?P<r>\d+))$")


def parse_variant(name: str) -> Variant:
    m = _VARIANT_RE.match(name.strip())
    if not m:
        raise ValueError(f"unknown variant {name!r}: use frozen_floor, full_ft, lora_r<N>, rocoft_row_r<N>, "
                         f"rocoft_col_r<N>, torchcat_row_r<N> or torchcat_col_r<N> (N >= 1)")
    if m["fixed"]:
        return Variant(m["fixed"], m["fixed"])
    rank = int(m["lr"] or m["r"])
    if rank < 1:
        raise ValueError(f"variant {name!r}: the rank must be >= 1")
    if m["lr"]:
        return Variant(name.strip(), "lora", rank=rank)
    return Variant(name.strip(), m["m"], axis="row" if m["axis"] == "row" else "column", rank=rank)


def prepare(model: nn.Module, variant: Variant, lora_dropout: float) -> tuple[nn.Module, list[str]]:
    """Apply ``variant`` to ``model``; returns the (possibly wrapped) model and the targeted layer names."""
    targets = find_targets(model, RoCoFTConfig())  # the family's default target layers, full names
    if variant.method == "full_ft":
        for p in model.parameters():
            p.requires_grad_(True)
    elif variant.method == "frozen_floor":
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_())
    elif variant.method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=variant.rank, lora_alpha=2 * variant.rank, lora_dropout=lora_dropout,
                         target_modules=list(targets), bias="none")
        model = get_peft_model(model, cfg)
    elif variant.method == "rocoft":
        apply_rocoft(model, RoCoFTConfig(axis=variant.axis, rank=variant.rank))
    elif variant.method == "torchcat":
        replace_with_torchcat(model, targets, variant.axis, variant.rank)
    else:  # pragma: no cover - parse_variant guards this
        raise ValueError(variant.method)
    return model, targets


def adapt(model: nn.Module, variant: Variant, lora_dropout: float) -> tuple[nn.Module, dict]:
    """:func:`prepare` plus the record's parameter counts (``rocoft.count_parameters``): the total is the
    plain model's, the trainable count the adapted model's."""
    total = count_parameters(model)["total"]
    model, targets = prepare(model, variant, lora_dropout)
    trainable = count_parameters(model)["trainable"]
    counts = dict(trainable_params=trainable, total_params=total, n_targets=len(targets),
                  trainable_pct=100.0 * trainable / total)
    return model, counts
