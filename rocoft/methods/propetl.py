"""PROPETL (Zeng et al. 2023, "One network, many masks: towards more parameter-efficient transfer learning"):
one *prototype* module is shared by every layer, and each layer uses it through its own learned binary mask.

The prototype is an adapter (``propetl_adapter``: a bottleneck adapter after each feed-forward output, the
Pfeiffer placement of the paper's RoBERTa runs), a prefix (``propetl_prefix``: key and value vectors of every
self-attention) or LoRA (``propetl_lora``: ``x A^T B^T * alpha / r`` added to the query and value projections;
one prototype per projection kind, since their shapes may differ). Each layer's mask has one real-valued score
per prototype weight (Kaiming-uniform init); the forward pass keeps the ``mask_keep`` fraction of the entries
with the largest ``|score|`` (mask 1, the rest 0: the official code's ``GetSubnet``, whose ``sparsity`` is this
kept fraction) and the backward pass sends the gradient straight through to the scores. The scores learn at their
own rate ``mask_lr`` (the official scripts: 3e-3 adapter, 1e-4 prefix, 3e-2 LoRA). Biases are not masked.

Counts: trainable = one prototype + one score per prototype weight per layer (+ the task head), as the paper's
#TTPs count them; the deployed masks are bits. Prefixes are trained directly (no reparameterising MLP), so
PROPETL Prefix here is much smaller than the paper's 10.49M, which counts AdapterHub's prefix MLP.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .adapters import AddedModulesMethod, Bottleneck, PrefixVectors, add_prefix, add_sequential, find_sites, hidden_size


class BinaryMask(nn.Module):
    """A learned {0, 1} mask of ``shape``: the top ``keep`` fraction of ``|scores|`` is 1; straight-through."""

    def __init__(self, shape, keep: float):
        super().__init__()
        self.keep = keep
        self.scores = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def forward(self):
        a = self.scores.abs()
        kept = max(1, int(self.keep * a.numel()))
        threshold = a.flatten().kthvalue(a.numel() - kept + 1).values
        hard = (a >= threshold).to(a.dtype)
        return hard + (a - a.detach())  # value: the binary mask; gradient: d/d|scores| = identity


class MaskedAdapter(nn.Module):
    """The shared prototype adapter seen through this layer's masks on its down and up weights."""

    def __init__(self, prototype: Bottleneck, keep: float):
        super().__init__()
        self.prototype = prototype  # the same module in every layer (its parameters are named once)
        self.down_mask = BinaryMask(prototype.down.weight.shape, keep)
        self.up_mask = BinaryMask(prototype.up.weight.shape, keep)

    def forward(self, h):
        return self.prototype(h, masks=(self.down_mask(), self.up_mask()))


class MaskedPrefix(nn.Module):
    """The shared prototype prefix (length, 2 d) times this layer's mask."""

    def __init__(self, prototype: PrefixVectors, keep: float):
        super().__init__()
        self.prototype, self.mask = prototype, BinaryMask(prototype.kv.shape, keep)

    def forward(self):
        return self.prototype() * self.mask()


class LoRAPair(nn.Module):
    """LoRA's A (r x d_in, Kaiming-uniform) and B (d_out x r, zero): the prototype of ``propetl_lora``."""

    def __init__(self, d_in: int, d_out: int, r: int):
        super().__init__()
        self.A, self.B = nn.Parameter(torch.empty(r, d_in)), nn.Parameter(torch.zeros(d_out, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))


class MaskedLoRA(nn.Module):
    """``x (A*m_A)^T (B*m_B)^T * scaling``: the delta this layer's masks make of the shared LoRA prototype."""

    def __init__(self, prototype: LoRAPair, keep: float, scaling: float):
        super().__init__()
        self.prototype, self.scaling = prototype, scaling
        self.A_mask, self.B_mask = BinaryMask(prototype.A.shape, keep), BinaryMask(prototype.B.shape, keep)

    def forward(self, x):
        return F.linear(F.linear(x, self.prototype.A * self.A_mask()), self.prototype.B * self.B_mask()) * self.scaling


def _lora_hook(module, args, output, *, site):
    return output + site(args[0])


class Propetl(AddedModulesMethod):
    """PROPETL with an adapter, prefix or LoRA prototype. ``rank``: the adapter bottleneck, the prefix length,
    or the LoRA r."""

    PROTOTYPES = ("adapter", "prefix", "lora")

    def __init__(self, name: str, *, rank: int, prototype: str, mask_keep: float, mask_lr: float,
                 lora_alpha: float = 16.0, **context):
        super().__init__(name, rank=rank, **context)
        if prototype not in self.PROTOTYPES:
            raise UserError(f"method={name}: prototype must be one of {self.PROTOTYPES}, got {prototype!r}")
        if not 0 < mask_keep <= 1:
            raise UserError(f"method={name}: mask_keep is the kept fraction of each mask, in (0, 1]; got {mask_keep}")
        self.prototype, self.mask_keep, self.mask_lr = prototype, float(mask_keep), float(mask_lr)
        self.lora_alpha = float(lora_alpha)

    def attach(self, model):
        d, r, keep = hidden_size(model), int(self.rank), self.mask_keep
        if self.prototype == "adapter":
            shared = Bottleneck(d, r, act="relu", init="lora")
            for _, module in find_sites(model, self, "ffn_out"):
                add_sequential(module, MaskedAdapter(shared, keep))
        elif self.prototype == "prefix":
            shared = PrefixVectors(r, d)
            for _, module in find_sites(model, self, "self_attn"):
                add_prefix(module, MaskedPrefix(shared, keep))
        else:
            for kind in ("query", "value"):
                sites = find_sites(model, self, kind)
                shared = LoRAPair(sites[0][1].in_features, sites[0][1].out_features, r)
                for _, module in sites:
                    site = MaskedLoRA(shared, keep, self.lora_alpha / r)
                    module.add_module("propetl_lora", site)
                    module.register_forward_hook(partial(_lora_hook, site=site))

    def optimizer(self, model, train_cfg):
        """The suite's AdamW groups, with the mask scores in their own group at ``mask_lr`` (no weight decay)."""
        from ..engine import no_decay

        scores = {id(m.scores) for m in model.modules() if isinstance(m, BinaryMask)}
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        rest = [(n, p) for n, p in params if id(p) not in scores]
        groups = [{"params": [p for n, p in rest if not no_decay(n, p)], "weight_decay": train_cfg.weight_decay},
                  {"params": [p for n, p in rest if no_decay(n, p)], "weight_decay": 0.0},
                  {"params": [p for _, p in params if id(p) in scores], "weight_decay": 0.0, "lr": self.mask_lr}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.lr,
                                 betas=tuple(train_cfg.get("adam_betas", (0.9, 0.999))),
                                 eps=train_cfg.get("adam_eps", 1e-8))


__all__ = ["BinaryMask", "LoRAPair", "MaskedAdapter", "MaskedLoRA", "MaskedPrefix", "Propetl"]
