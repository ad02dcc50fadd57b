"""LoRA with an r x r matrix between its two projections: MoSLoRA and LoRA-XS.

Both adapt each targeted layer as ``y = x W^T + b + s * B M A x`` with A (r x d_in), M (r x r),
B (d_out x r) and the scaling ``s = alpha / r`` (as LoRA). peft 0.21 implements neither (its
TinyLoRA builds on LoRA-XS's SVD but trains a vector through random projections, a different method).

* **MoSLoRA** (Wu et al., 2024, "Mixture-of-Subspaces in Low-Rank Adaptation", arXiv:2406.11909): A,
  M and B all train. Initialisation as the authors' code: A and the mixer M Kaiming-uniform
  (a = sqrt(5), nn.Linear's default; ``mixer_init: orthogonal`` is the paper's other choice), B zero, so
  the update is zero at the start. Trainable per layer: r (d_in + d_out) + r^2.
* **LoRA-XS** (Bałazy et al., 2024, "LoRA-XS: Low-Rank Adaptation with Extremely Small Number of
  Parameters", arXiv:2405.17604): A and B are fixed from the truncated SVD of the pretrained weight,
  ``W = U S V^T``: A = S_r V_r^T (the singular values go with the first projection, as the authors'
  code), B = U_r; only M (their R) trains, initialised from N(0, init_std^2) with init_std = 1e-5 as
  the authors' code (``init_std: 0`` makes the start exact). Trainable per layer: r^2; A and B are
  kept in the model (frozen, counted as added parameters) until merged. alpha = 16 as their GLUE script.

``rank`` is r. Randomness comes from a generator seeded by the run seed and the layer's name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.selection import layer_generator
from ..errors import UserError
from .wrapping import LinearWrapper, LinearWrapperMethod


class MixedLowRankLinear(LinearWrapper):
    """``base(x) + scaling * B M A dropout(x)``; A and B train unless ``fixed_projections``."""

    def __init__(self, base: nn.Linear, A: torch.Tensor, M: torch.Tensor, B: torch.Tensor, scaling: float,
                 dropout: float = 0.0, fixed_projections: bool = False):
        super().__init__(base)
        self.lora_A = nn.Parameter(A, requires_grad=not fixed_projections)
        self.lora_M = nn.Parameter(M)
        self.lora_B = nn.Parameter(B, requires_grad=not fixed_projections)
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        out = self.base(x)
        h = F.linear(F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_M), self.lora_B)
        return out + (h * self.scaling).to(out.dtype)

    def delta_weight(self):
        return self.scaling * (self.lora_B @ self.lora_M @ self.lora_A)


class _LowRankMethod(LinearWrapperMethod):
    def __init__(self, name: str, *, rank: int, alpha: float = 16.0, dropout: float = 0.0, **kwargs):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UserError(f"method={name}: rank must be a positive integer, got {rank!r}")
        super().__init__(name, rank=rank, **kwargs)
        self.alpha, self.dropout = float(alpha), float(dropout)

    def check_rank(self, name: str, layer: nn.Linear) -> None:
        if self.rank > min(layer.in_features, layer.out_features):
            raise UserError(f"method={self.name}: rank {self.rank} exceeds the smaller dimension of {name} "
                            f"({layer.out_features} x {layer.in_features}).")


class MoSLoRA(_LowRankMethod):
    """LoRA whose two projections are joined by a trainable r x r mixer (all three train)."""

    def __init__(self, name: str, *, mixer_init: str = "kaiming", **kwargs):
        if mixer_init not in ("kaiming", "orthogonal"):
            raise UserError(f"method={name}: mixer_init must be 'kaiming' or 'orthogonal', got {mixer_init!r}")
        super().__init__(name, **kwargs)
        self.mixer_init = mixer_init

    def wrap(self, name, layer):
        self.check_rank(name, layer)
        g, r = layer_generator(self.seed, name), self.rank
        A = nn.init.kaiming_uniform_(torch.empty(r, layer.in_features), a=math.sqrt(5), generator=g)
        M = torch.empty(r, r)
        if self.mixer_init == "kaiming":
            nn.init.kaiming_uniform_(M, a=math.sqrt(5), generator=g)
        else:
            nn.init.orthogonal_(M, generator=g)
        B = torch.zeros(layer.out_features, r)
        device = layer.weight.device
        return MixedLowRankLinear(layer, A.to(device), M.to(device), B.to(device), self.alpha / r, self.dropout)


class LoRAXS(_LowRankMethod):
    """A and B from the pretrained weight's truncated SVD, fixed; only the r x r matrix between them trains."""

    def __init__(self, name: str, *, init_std: float = 1e-5, **kwargs):
        super().__init__(name, **kwargs)
        self.init_std = float(init_std)

    def wrap(self, name, layer):
        self.check_rank(name, layer)
        r = self.rank
        U, S, Vh = torch.linalg.svd(layer.weight.detach().float(), full_matrices=False)
        A, B = (S[:r, None] * Vh[:r]).contiguous(), U[:, :r].contiguous()
        M = torch.randn(r, r, generator=layer_generator(self.seed, name)) * self.init_std
        return MixedLowRankLinear(layer, A, M.to(A.device), B, self.alpha / r, self.dropout, fixed_projections=True)
