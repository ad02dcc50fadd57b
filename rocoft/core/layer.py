"""The RoCoFT computation: train r rows or r columns of a frozen weight, in place.

For ``y = x W^T + b`` with W of shape (d_out, d_in) and only rows R (or columns C) trained:

* ``grad_x = grad_y W``                         -- exactly what a frozen layer computes anyway;
* rows:    ``grad_W[R, :] = grad_y[:, R]^T x``  -- an r x d_in matmul, needs x saved;
* columns: ``grad_W[:, C] = grad_y^T x[:, C]``  -- a d_out x r matmul, needs only x[:, C] saved;
* entries (the random-entry ablation, each entry trained with probability p):
  ``grad_W.flat[E] = (grad_y^T x).flat[E]``.

No full weight gradient is kept, the weight is never rebuilt per forward (the official code's
``torch.cat``), and the optimizer only ever sees the trained values. These live in a
:class:`RoCoFTSlice` (an fp32 master copy when the base weight is half precision) and are
written into the frozen weight, in place, only when they changed (after an optimizer step or
a state-dict load), so the forward is a plain ``F.linear``. The consequences of writing into the
frozen weight (one active adapter per layer, the base weight changes while training) are listed in
``rocoft.core.peft_tuner``.

The row gradient needs the whole input x, which a frozen layer would not keep. Where the op that
produced x already keeps what x is made of for its own backward (SwiGLU's ``act(gate) * up`` keeps
both factors; ``gelu(h)`` / ``silu(h)`` keep h), the row layer keeps references to those instead of
x and rebuilds x in backward with the same op: bit-identical, no memory beyond the frozen floor's
(``reuse_saved_inputs``; off under torch.compile, under saved-tensor hooks such as activation
checkpointing, and when x was changed in place after it was made, where x is simply kept).
Writes through ``.data`` escape autograd's version counters, here as everywhere in torch: edit
activations (and trained values) through the tensors themselves.
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


class _SliceLinearFn(torch.autograd.Function):
    """``F.linear`` whose backward produces grad_x, the trained values' grad and the bias grad only."""

    @staticmethod
    def forward(ctx, x, trained, weight, bias, index, axis, reuse_saved_inputs=True):
        # ``trained`` is only an autograd handle: its values already live inside ``weight``.
        out = F.linear(x, weight, bias)  # autocast (if enabled) applies here as usual
        ctx.axis, ctx.compute_dtype = axis, out.dtype
        ctx.x_dtype, ctx.bias_dtype = x.dtype, None if bias is None else bias.dtype
        ctx.rebuild, parts = None, (None,)
        if ctx.needs_input_grad[1]:
            recipe = _rebuild_recipe(x) if axis == "row" and reuse_saved_inputs else None
            if recipe is not None:
                ctx.rebuild, parts = recipe
            else:  # columns: only the r selected features
                parts = ((x.index_select(-1, index) if axis == "column" else x).to(out.dtype),)
        ctx.save_for_backward(index, weight, *parts)  # autograd flags any in-place change before backward
        return out

    @staticmethod
    def backward(ctx, grad_out):
        index, weight, *parts = ctx.saved_tensors
        saved = parts[0] if ctx.rebuild is None else _rebuild(ctx.rebuild, parts).to(ctx.compute_dtype)
        g = grad_out.to(ctx.compute_dtype)
        g2 = g.reshape(-1, g.shape[-1])  # (N, d_out)
        grad_x = grad_trained = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = g2.mm(weight.to(ctx.compute_dtype)).view(*g.shape[:-1], weight.shape[1]).to(ctx.x_dtype)
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
        origin: the pretrained values at ``index`` (not saved: read from the pretrained base the
            slice was built on), used to restore the base weight (unmerge, adapter swap, unload).
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
        self.register_buffer("origin", self.gather(base_weight).clone(), persistent=False)
        self.weight = nn.Parameter(self.origin.to(dtype or base_weight.dtype, copy=True))
        self._synced_version = None

    def __setstate__(self, state):  # a deepcopy / unpickled copy starts new version counters: write again
        super().__setstate__(state)
        self._synced_version = None

    def _apply(self, fn, recurse=True):
        """Moves and casts (``model.to``, ``.half()``, ``.cuda()``) move the trained values but never lower
        their precision: a half-precision cast of the model keeps the float32 master copy."""
        master = self.weight.detach()
        super()._apply(fn, recurse)
        if self.weight.dtype != master.dtype and torch.finfo(self.weight.dtype).bits < torch.finfo(master.dtype).bits:
            self.weight.data = master.to(self.weight.device)
        self._synced_version = None
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
        self._synced_version = None

    @property
    def rank(self) -> int:
        return self.index.numel()

    @property
    def ready(self) -> bool:
        """False while the trained values are placeholders on the meta device (peft's ``low_cpu_mem_usage``
        loading creates them there): nothing is written into the weight until real values are loaded."""
        return not self.weight.is_meta

    def gather(self, w: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        w, index = w.detach(), self.index if index is None else index.to(w.device)
        if self.axis == "entry":
            return w.reshape(-1).index_select(0, index)
        return w.index_select(0 if self.axis == "row" else 1, index)

    @torch.no_grad()
    def scatter(self, w: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` at ``index`` into ``w``, in place."""
        values = values.to(w.dtype)
        if self.axis != "entry":
            w.index_copy_(0 if self.axis == "row" else 1, self.index, values)
        elif w.is_contiguous():
            w.view(-1).index_copy_(0, self.index, values)
        else:  # a strided weight (e.g. a transposed view) has no flat view
            w.index_put_((self.index // w.shape[1], self.index % w.shape[1]), values)

    def sync(self, w: torch.Tensor, force: bool = False) -> None:
        """Write the trained values into ``w`` if they changed since the last write."""
        if self.ready and (force or self.weight._version != self._synced_version):
            self.scatter(w, self.weight)
            self._synced_version = self.weight._version

    def restore(self, w: torch.Tensor) -> None:
        """Put the pretrained values back into ``w``; the next ``sync`` writes the trained ones again."""
        self.scatter(w, self.origin)
        self._synced_version = None

    @torch.no_grad()
    def reset_origin(self, w: torch.Tensor, origin: torch.Tensor | None = None) -> None:
        """Re-read the pretrained values (after ``index`` was loaded) from a pristine ``w``, or take ``origin``."""
        self.origin = (self.gather(w) if origin is None else origin).clone()
        self._synced_version = None

    @torch.no_grad()
    def perturb(self, generator: torch.Generator) -> None:
        """Move the values away from the pretrained ones (``init_weights=False``: makes merge/disable observable)."""
        noise = torch.randn(self.weight.shape, generator=generator).to(self.weight)
        self.weight.add_(noise * self.weight.float().std().clamp_min(1e-2).to(self.weight.dtype))

    def linear(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        """``base(x)`` with this slice's values written into its weight (they must be there: see ``sync``)."""
        return _SliceLinearFn.apply(x, self.weight, base.weight, base.bias, self.index, self.axis,
                                     self.reuse_saved_inputs)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, n={self.rank}, dtype={self.weight.dtype}"


def origin_for_load(rocoft_slice: RoCoFTSlice, w: torch.Tensor, state_dict: dict, base_key: str, slice_prefix: str):
    """Before ``load_state_dict`` (with the pretrained values back in ``w``): a state dict carrying both the
    base weight (``base_key``) and this slice holds the *trained* values at the slice's indices inside that
    base weight, so the pretrained values are read now, from ``w``. Otherwise None: they are read after
    the load, from the loaded base weight (an adapter loaded onto a fresh base, or a new base)."""
    if base_key not in state_dict or slice_prefix + "weight" not in state_dict:
        return None
    index = torch.as_tensor(state_dict.get(slice_prefix + "index", rocoft_slice.index), dtype=torch.long)
    return rocoft_slice.gather(w, index)
