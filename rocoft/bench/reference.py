"""The official RoCoFT code's way of training rows/columns, rebuilt here for comparison (``torchcat_*``).

The official code keeps the first r rows (columns) of a weight as a Parameter and the rest as a frozen
tensor, and rebuilds the full weight with ``torch.cat`` in every forward. The suite's RoCoFT layer
instead trains the selected values inside a plain ``F.linear``; the benchmark measures both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorchCatLinear(nn.Module):
    """How the official RoCoFT code trains rows/columns: the first r rows (columns) are a Parameter,
    the rest a frozen buffer, and every forward rebuilds the full weight with ``torch.cat`` before
    ``F.linear``. Autograd therefore forms the full (d_out x d_in) weight gradient every step (then
    slices it), and each layer keeps its rebuilt weight alive until the backward.

    The trained slice keeps the base dtype (``torch.cat`` needs one dtype), as in the official code. The
    buffer is a view of the original weight (no copy) and the bias stays frozen (``bias="none"``)."""

    def __init__(self, base: nn.Linear, axis: str, rank: int):
        super().__init__()
        self.dim = 0 if axis == "row" else 1
        w = base.weight.detach()
        size = w.shape[self.dim]
        if not 1 <= rank <= size:
            raise ValueError(f"torchcat rank {rank} must lie in [1, {size}] ({axis}s of a {tuple(w.shape)} weight)")
        self.trainable = nn.Parameter(w.narrow(self.dim, 0, rank).clone())
        self.register_buffer("frozen", w.narrow(self.dim, rank, size - rank))
        self.register_buffer("bias", None if base.bias is None else base.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.trainable, self.frozen], dim=self.dim)
        return F.linear(x, weight, self.bias)


def replace_with_torchcat(model: nn.Module, names, axis: str, rank: int) -> None:
    """Freeze ``model`` and put a :class:`TorchCatLinear` at each named ``nn.Linear``."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        model.set_submodule(name, TorchCatLinear(model.get_submodule(name), axis, rank), strict=True)
