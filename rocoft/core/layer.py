"""The RoCoFT computation: train r rows or r columns of a frozen weight without changing it.

For ``y = x W^T + b`` with W of shape (d_out, d_in), pretrained weight W0 (kept, frozen, never
written), and only rows R (or columns C) trained, holding values W_R (or W_C):

* forward, rows:    ``y = x W0^T + b``, then ``y[:, R] += x D_R^T`` with ``D_R = W_R - W0[R, :]``
  (an N x d_in x r matmul added into r output features);
* forward, columns: ``y = x W0^T + b + x[:, C] D_C^T`` with ``D_C = W_C - W0[:, C]`` (one rank-r
  ``addmm`` into y), so y equals ``x W^T + b`` for the fine-tuned W;
* ``grad_x = grad_y W = grad_y W0 + grad_y[:, R] D_R`` (rows) or ``+ (grad_y D_C)`` scattered into
  the columns C of grad_x: what a frozen layer computes anyway, plus an r-sized correction;
* rows:    ``grad_W[R, :] = grad_y[:, R]^T x``  -- an r x d_in matmul, needs x saved;
* columns: ``grad_W[:, C] = grad_y^T x[:, C]``  -- a d_out x r matmul, needs only x[:, C] saved;
* entries (the random-entry ablation, each entry trained with probability p): the forward uses
  ``W = W0`` with the trained entries E written into a per-call copy, and
  ``grad_W.flat[E] = (grad_y^T x).flat[E]``.

No full weight gradient is kept, the weight is never rebuilt per forward for rows and columns
(the official code's ``torch.cat``), and the optimizer only ever sees the trained values, which
live in a :class:`RoCoFTSlice` (an fp32 master copy when the base weight is half precision). The
base weight always holds the pretrained values, as with every peft tuner: merging writes the
trained values into it, unmerging restores them.

The row gradient needs the whole input x, which a frozen layer would not keep. Where the op that
produced x already keeps what x is made of for its own backward (SwiGLU's ``act(gate) * up`` keeps
both factors; ``gelu(h)`` / ``silu(h)`` keep h), the row layer keeps references to those instead of
x and rebuilds x in backward with the same op: bit-identical, no memory beyond the frozen floor's
(``reuse_saved_inputs``; off under torch.compile, under saved-tensor hooks such as activation
checkpointing, and when x was changed in place after it was made, where x is simply kept).
Writes through ``.data`` escape autograd's version counters, here as everywhere in torch: edit
activations through the tensors themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AXES = ("row", "column", "entry")


def _saved_tensor_hooks_active() -> bool:
    """Saved-tensor hooks (activation checkpointing, offloading) would intercept the producer's saved values."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return True if top is None else top(False) is not None  # unknown torch: assume hooks, keep x


def _rebuild_recipe(x: torch.Tensor):
    """``(op, tensors)`` rebuilding ``x`` exactly from tensors its producer's autograd node already
    keeps alive, or None. Recognised producers: ``a * b`` with both factors saved (both need grad),
    ``gelu(h)`` and ``silu(h)`` (which save h)."""
    fn = x.grad_fn
    if fn is None or x._version != 0 or torch.compiler.is_compiling() or _saved_tensor_hooks_active():
        return None  # (a version above 0: x was changed in place, e.g. under no_grad, after its producer ran)
    kind = type(fn).__name__
    try:
        if kind == "MulBackward0":
            a, b = fn._saved_self, fn._saved_other
            if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.result_type(a, b) == x.dtype
                    and torch.broadcast_shapes(a.shape, b.shape) == x.shape):
                return "mul", (a, b)
        elif kind in ("GeluBackward0", "SiluBackward0"):
            h = fn._saved_self
            if isinstance(h, torch.Tensor) and h.dtype == x.dtype and h.shape == x.shape:
                return (f"gelu:{fn._saved_approximate}" if kind == "GeluBackward0" else "silu"), (h,)
    except (RuntimeError, AttributeError):  # saved values already freed or not exposed
        pass
    return None


def _rebuild(op: str, parts) -> torch.Tensor:
    with torch.autocast(parts[0].device.type, enabled=False):  # exactly the forward's op, no autocast
        if op == "mul":
            return parts[0] * parts[1]
        if op == "silu":
            return F.silu(parts[0])
        return F.gelu(parts[0], approximate=op.split(":", 1)[1])


def _gather(w: torch.Tensor, axis: str, index: torch.Tensor) -> torch.Tensor:
    w = w.detach()
    if axis == "entry":
        return w.reshape(-1).index_select(0, index)
    return w.index_select(0 if axis == "row" else 1, index)


@torch.no_grad()
def _scatter(w: torch.Tensor, axis: str, index: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` at ``index`` into ``w``, in place."""
    values = values.to(w.dtype)
    if axis != "entry":
        w.index_copy_(0 if axis == "row" else 1, index, values)
    elif w.is_contiguous():
        w.view(-1).index_copy_(0, index, values)
    else:  # a strided weight (e.g. a transposed view) has no flat view
        w.index_put_((index // w.shape[1], index % w.shape[1]), values)


def _entry_weight(weight: torch.Tensor, trained: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The pretrained weight with the trained entries written into a copy (the entry ablation only)."""
    w = weight.detach().clone()
    _scatter(w, "entry", index, trained.detach())
    return w


class _RoCoFTLinearFn(torch.autograd.Function):
    """``F.linear`` with the fine-tuned weight, whose backward produces grad_x, the trained values' grad and
    the bias grad only (see the module docstring for every formula)."""

    @staticmethod
    def forward(ctx, x, trained, weight, bias, index, axis, reuse_saved_inputs=True):
        # weight: the pretrained weight W0 (never written); trained: the values at index
        ctx.axis, ctx.x_dtype, ctx.bias_dtype = axis, x.dtype, None if bias is None else bias.dtype
        if axis == "entry":
            out = F.linear(x, _entry_weight(weight, trained, index), bias)  # autocast (if enabled) applies here
            delta = trained.detach()
        else:
            out = F.linear(x, weight, bias)
            dt = out.dtype
            delta = (trained.detach() - _gather(weight, axis, index).to(trained.dtype)).to(dt)  # D_R or D_C
            if axis == "row":  # y[:, R] += x D_R^T, computed as (D_R x^T)^T: the skinny side as rows (faster BLAS)
                x2 = x.reshape(-1, x.shape[-1]).to(dt)
                out.view(-1, out.shape[-1]).index_add_(1, index, delta.mm(x2.t()).t())
            else:  # y += x[:, C] D_C^T
                xc = x.index_select(-1, index).to(dt)
                out.view(-1, out.shape[-1]).addmm_(xc.reshape(-1, xc.shape[-1]), delta.t())
        ctx.compute_dtype = out.dtype
        ctx.rebuild, parts = None, (None,)
        if ctx.needs_input_grad[1]:
            recipe = _rebuild_recipe(x) if axis == "row" and reuse_saved_inputs else None
            if recipe is not None:
                ctx.rebuild, parts = recipe
            else:  # columns: only the r selected features
                parts = (xc if axis == "column" else x.to(out.dtype),)
        ctx.save_for_backward(index, weight, delta, *parts)  # autograd flags any in-place change before backward
        return out

    @staticmethod
    def backward(ctx, grad_out):
        index, weight, delta, *parts = ctx.saved_tensors
        cd = ctx.compute_dtype
        saved = parts[0] if ctx.rebuild is None else _rebuild(ctx.rebuild, parts).to(cd)
        g = grad_out.to(cd)
        g2 = g.reshape(-1, g.shape[-1])  # (N, d_out)
        grad_x = grad_trained = grad_bias = None
        if ctx.needs_input_grad[0]:
            if ctx.axis == "entry":
                grad_x = g2.mm(_entry_weight(weight, delta, index).to(cd))
            else:
                grad_x = g2.mm(weight.to(cd))  # grad_y W0, as a frozen layer
                if ctx.axis == "row":  # + grad_y[:, R] D_R
                    grad_x.addmm_(g2.index_select(1, index), delta)
                else:  # + grad_y D_C into the columns C, as (D_C^T grad_y^T)^T
                    grad_x.index_add_(1, index, delta.t().mm(g2.t()).t())
            grad_x = grad_x.view(*g.shape[:-1], weight.shape[1]).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            x2 = saved.reshape(-1, saved.shape[-1])
            if ctx.axis == "row":  # (r, N) @ (N, d_in)
                grad_trained = g2.index_select(1, index).t().matmul(x2)
            elif ctx.axis == "column":  # ((r, N) @ (N, d_out))^T: the skinny side as rows is 5-8x faster on CPU BLAS
                grad_trained = x2.t().matmul(g2).t()
            else:  # sampled entries of the (d_out, d_in) gradient
                grad_trained = g2.t().matmul(x2).reshape(-1).index_select(0, index)
        if ctx.needs_input_grad[3]:
            grad_bias = g2.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_trained, None, grad_bias, None, None, None


class RoCoFTSlice(nn.Module):
    """The trained part of one weight: r rows, r columns, or a set of entries.

    Attributes:
        weight: the trained values: (r, d_in) rows, (d_out, r) columns, or (n,) entries.
        index: sorted long tensor of row / column indices, or flat entry indices (``i * d_in + j``).
        origin: while merged, the values the merge overwrote in the base weight (restored by unmerge).
        reuse_saved_inputs: rows only: rebuild the input in backward from what its producer saved
            (see the module docstring) instead of keeping it.
    """

    def __init__(self, base_weight: torch.Tensor, axis: str, index, dtype=None, reuse_saved_inputs=True):
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"RoCoFT axis must be one of {AXES}, got {axis!r}")
        size = base_weight.numel() if axis == "entry" else base_weight.shape[0 if axis == "row" else 1]
        index = torch.as_tensor(index, dtype=torch.long).cpu().sort().values  # validated on the CPU
        if index.numel() == 0 or index.unique().numel() != index.numel() or index.min() < 0 or index.max() >= size:
            raise ValueError(f"RoCoFT needs 1..{size} distinct {axis} indices in [0, {size}), got {index.tolist()}")
        self.axis, self.reuse_saved_inputs = axis, bool(reuse_saved_inputs)
        self.register_buffer("index", index.to(base_weight.device))
        self.origin: torch.Tensor | None = None
        self.weight = nn.Parameter(self.gather(base_weight).to(dtype or base_weight.dtype, copy=True))

    def _apply(self, fn, recurse=True):
        """Moves and casts (``model.to``, ``.half()``, ``.cuda()``) move the trained values but never lower
        their precision: a half-precision cast of the model keeps the float32 master copy."""
        master = self.weight.detach()
        super()._apply(fn, recurse)
        if self.weight.dtype != master.dtype and torch.finfo(self.weight.dtype).bits < torch.finfo(master.dtype).bits:
            self.weight.data = master.to(self.weight.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A saved adapter may hold another number of entries than this layer sampled: take its shape."""
        index = state_dict.get(prefix + "index")
        if index is not None and index.shape != self.index.shape:
            n = index.numel()
            shape = {"row": (n, self.weight.shape[1]), "column": (self.weight.shape[0], n), "entry": (n,)}[self.axis]
            self.index = torch.empty(index.shape, dtype=torch.long, device=self.index.device)
            self.weight = nn.Parameter(self.weight.new_empty(shape), requires_grad=self.weight.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def rank(self) -> int:
        return self.index.numel()

    def gather(self, w: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return _gather(w, self.axis, self.index if index is None else index.to(w.device))

    def scatter(self, w: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` at ``index`` into ``w``, in place."""
        _scatter(w, self.axis, self.index, values)

    def delta(self, base_weight: torch.Tensor) -> torch.Tensor:
        """The trained values minus the pretrained ones (``D`` of the module docstring)."""
        return self.weight - self.gather(base_weight).to(self.weight.dtype)

    @torch.no_grad()
    def perturb(self, generator: torch.Generator) -> None:
        """Move the values away from the pretrained ones (``init_weights=False``: makes merge/disable observable)."""
        noise = torch.randn(self.weight.shape, generator=generator).to(self.weight)
        self.weight.add_(noise * self.weight.float().std().clamp_min(1e-2).to(self.weight.dtype))

    def linear(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        """``base(x)`` computed with this slice's values in place of the pretrained ones."""
        return _RoCoFTLinearFn.apply(x, self.weight, base.weight, base.bias, self.index, self.axis,
                                     self.reuse_saved_inputs)

    def add_correction(self, y: torch.Tensor, x: torch.Tensor, base_weight: torch.Tensor) -> torch.Tensor:
        """``y`` plus this slice's change of the output (plain autograd: the several-active-adapters path)."""
        d = self.delta(base_weight).to(y.dtype)
        if self.axis == "row":
            return y.index_add(-1, self.index, F.linear(x.to(y.dtype), d))
        if self.axis == "column":
            return y + F.linear(x.index_select(-1, self.index).to(y.dtype), d)
        dense = torch.zeros(base_weight.numel(), dtype=y.dtype, device=y.device).index_add(0, self.index, d)
        return y + F.linear(x.to(y.dtype), dense.view(base_weight.shape))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, n={self.rank}, dtype={self.weight.dtype}"
