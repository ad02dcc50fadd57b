"""Brute-force eNTK from explicit per-example gradients: the independent reference for tests and the benchmark.

One ``torch.autograd.grad`` call per (example, class) gives the full gradient of that output w.r.t. the
parameters; the selected entries (whole tensors, rows, columns) are flattened and concatenated, and the
kernel is the matrix of their dot products (float64). LoRA sets need the adapter's own B parameters:
``extra`` maps a parameter name of the set to the tensor to differentiate instead (e.g. peft's
``lora_B`` weight of that layer, whose gradient then is taken as is). To bound memory, the parameters
are processed in blocks of at most ``block_numel`` entries (one forward per batch and block), and only
the first set's gradients of one block are kept.
"""

from __future__ import annotations

import torch
from torch import nn

from .params import ParamSet, Selection


def _pick(g: torch.Tensor, sel: Selection) -> torch.Tensor:
    if sel.kind == "rows":
        return g.reshape(g.shape[0], -1)[sel.index].flatten()
    if sel.kind == "cols":
        return g.reshape(g.shape[0], -1)[:, sel.index].flatten()
    return g.flatten()


def _blocks(items: list, sizes: list[int], limit: int) -> list[list]:
    out, cur, total = [], [], 0
    for item, size in zip(items, sizes):
        if cur and total + size > limit:
            out.append(cur)
            cur, total = [], 0
        cur.append(item)
        total += size
    return out + [cur] if cur else out


def _grads(model, fn, batch, tensors, sels):
    """Yield the selected flattened gradient (float64) of every (example, class) of one batch."""
    out = fn(batch)
    n, classes = out.shape
    for i in range(n):
        for c in range(classes):
            gs = torch.autograd.grad(out[i, c], tensors, retain_graph=True, allow_unused=True)
            yield torch.cat([_pick(torch.zeros_like(t) if g is None else g, s).double()
                             for g, t, s in zip(gs, tensors, sels)])


def brute_force_kernel(model: nn.Module, fn, pset: ParamSet, batches_a, batches_b=None, *,
                       extra: dict[str, torch.Tensor] | None = None, block_numel: int = 10_000_000) -> torch.Tensor:
    """K [N, C, M, C] from explicit per-example gradients (``batches_b`` None: the set with itself)."""
    params = dict(model.named_parameters())
    extra = extra or {}
    names = list(pset.selections)
    tensors = {n: extra[n] if n in extra else params[n] for n in names}
    sizes = [pset.selections[n].count(tensors[n].shape) if n not in extra else tensors[n].numel() for n in names]
    batches_a = list(batches_a)
    batches_b = batches_a if batches_b is None else list(batches_b)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    total = None
    try:
        for p in list(params.values()) + list(extra.values()):
            p.requires_grad_(True)
        for block in _blocks(names, sizes, block_numel):
            ts = [tensors[n] for n in block]
            sels = [Selection() if n in extra else pset.selections[n] for n in block]
            ga = torch.stack([g for b in batches_a for g in _grads(model, fn, b, ts, sels)])
            part = torch.stack([ga @ g for b in batches_b for g in _grads(model, fn, b, ts, sels)], 1)
            total = part if total is None else total + part
            del ga
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    with torch.no_grad():
        classes = fn(batches_a[0]).shape[1]
        n, m = (sum(fn(b).shape[0] for b in bs) for bs in (batches_a, batches_b))
    if total is None:  # an empty set
        total = torch.zeros(n * classes, m * classes, dtype=torch.float64)
    return total.reshape(n, classes, m, classes)
