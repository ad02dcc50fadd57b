"""The RoCoFT linear layer: train r rows or r columns of a frozen weight, in place.

For ``y = x W^T + b`` with W of shape (d_out, d_in) and only rows R (or columns C) trained:

* ``grad_x = grad_y W``                     -- exactly what a frozen layer computes anyway;
* rows:    ``grad_W[R, :] = grad_y[:, R]^T x``  -- an r x d_in matmul, needs x saved;
* columns: ``grad_W[:, C] = grad_y^T x[:, C]``  -- a d_out x r matmul, needs only x[:, C] saved.

No full weight gradient is formed, the weight is never rebuilt per forward (the official
code's ``torch.cat``), and the optimizer only ever sees the r x d slice. The trained slice
is an ``nn.Parameter`` of its own (an fp32 master copy when the base weight is half
precision); its values are written into the frozen weight, in place, only when it changed
(i.e. after an optimizer step or a state-dict load), so the forward is a plain ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AXES = ("row", "column")


class _RoCoFTLinearFn(torch.autograd.Function):
    """``F.linear`` whose backward produces grad_x, the trained slice's grad and the bias grad only."""

    @staticmethod
    def forward(ctx, x, trained, weight, bias, index, axis):  # noqa: D401 - autograd API
        # ``trained`` is only an autograd handle: its values already live inside ``weight``.
        out = F.linear(x, weight, bias)  # autocast (if enabled) applies here as usual
        ctx.axis, ctx.weight, ctx.compute_dtype = axis, weight, out.dtype
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        saved = None
        if ctx.needs_input_grad[1]:
            saved = x if axis == "row" else x.index_select(-1, index)  # columns: only r features
            saved = saved.to(out.dtype)
        ctx.save_for_backward(saved, index)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved, index = ctx.saved_tensors
        cdtype = ctx.compute_dtype
        g = grad_out.to(cdtype)
        g2 = g.reshape(-1, g.shape[-1])  # (N, d_out)
        grad_x = grad_trained = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = g.matmul(ctx.weight.to(cdtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            if ctx.axis == "row":  # (r, N) @ (N, d_in)
                grad_trained = g2.index_select(1, index).t().matmul(saved.reshape(-1, saved.shape[-1]))
            else:  # (d_out, N) @ (N, r)
                grad_trained = g2.t().matmul(saved.reshape(-1, saved.shape[-1]))
        if ctx.needs_input_grad[3]:
            grad_bias = g2.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_trained, None, grad_bias, None, None


class RoCoFTLinear(nn.Module):
    """Wraps an ``nn.Linear`` (kept as ``base_layer``) so that only r rows/columns train.

    Attributes:
        base_layer: the original layer; its ``weight`` is frozen and always holds the current
            full weight (trained slice included), so merging is just returning it.
        rocoft_weight: the trainable slice, shape (r, d_in) for rows, (d_out, r) for columns.
        rocoft_index: long tensor of the r trained row/column indices (sorted).
        rocoft_origin: the slice's pretrained values (to unmerge / swap adapters).
    """

    def __init__(self, base_layer: nn.Linear, axis: str, index: torch.Tensor, master_dtype=None):
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"RoCoFT axis must be one of {AXES}, got {axis!r}")
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"RoCoFT wraps nn.Linear layers, got {type(base_layer).__name__}")
        dim = 0 if axis == "row" else 1
        size = base_layer.weight.shape[dim]
        index = torch.as_tensor(index, dtype=torch.long, device=base_layer.weight.device).sort().values
        if index.numel() == 0 or index.numel() > size or index.unique().numel() != index.numel():
            raise ValueError(f"RoCoFT needs 1..{size} distinct {axis} indices, got {index.tolist()}")
        if index.min() < 0 or index.max() >= size:
            raise ValueError(f"RoCoFT {axis} indices must lie in [0, {size}), got {index.tolist()}")
        self.base_layer, self.axis, self.dim = base_layer, axis, dim
        base_layer.weight.requires_grad_(False)
        weight = base_layer.weight
        if master_dtype is None:
            master_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        origin = weight.detach().index_select(dim, index)
        self.register_buffer("rocoft_index", index)
        self.register_buffer("rocoft_origin", origin.clone())
        self.rocoft_weight = nn.Parameter(origin.to(master_dtype))
        self._synced_version = None

    @property
    def rank(self) -> int:
        return self.rocoft_index.numel()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @torch.no_grad()
    def sync(self, force: bool = False) -> None:
        """Write the trained slice into the frozen weight if it changed since the last write."""
        version = self.rocoft_weight._version
        if force or version != self._synced_version:
            w = self.base_layer.weight
            w.index_copy_(self.dim, self.rocoft_index, self.rocoft_weight.to(w.dtype))
            self._synced_version = self.rocoft_weight._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sync()
        layer = self.base_layer
        return _RoCoFTLinearFn.apply(x, self.rocoft_weight, layer.weight, layer.bias, self.rocoft_index, self.axis)

    @torch.no_grad()
    def unmerged_weight(self) -> torch.Tensor:
        """The pretrained weight (slice restored to its original values), as a new tensor."""
        w = self.base_layer.weight.detach().clone()
        return w.index_copy_(self.dim, self.rocoft_index, self.rocoft_origin.to(w.dtype))

    def merge(self) -> nn.Linear:
        """Return the base layer holding the fine-tuned weight (no RoCoFT module left)."""
        self.sync(force=True)
        return self.base_layer

    def extra_repr(self) -> str:
        return f"axis={self.axis}, rank={self.rank}, master_dtype={self.rocoft_weight.dtype}"
