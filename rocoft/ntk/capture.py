"""One chunk of examples -> the per-example factors of every selected parameter's gradient.

For a function f(x) in R^C of a batch, one forward pass with hooks keeps each relevant layer's input
and output, then one backward per output class c (of ``f[:, c].sum()``: the examples of a batch are
independent in ``eval()`` mode, so this gives every example's own gradient) yields the gradient G of
f_c w.r.t. each layer's output. A parameter's per-example gradient is then a product of two factors
in the parameter's own (rows x columns) layout, ``grad = L^T R`` summed over the example's tokens:

* ``nn.Linear`` weight (d_out x d_in): L = G, R = X (the layer input); bias: L = G, R = 1;
* ``nn.Embedding`` weight (vocab x d): L = one-hot(token ids) (none for ``padding_idx``), R = G;
* ``Conv1D`` (GPT-2, weight d_in x d_out): L = X, R = G; bias as for Linear;
* any other parameter (norms, ...): its owning module's per-example gradient, materialised with
  ``torch.func`` (vmap of the module's vector-Jacobian product); such modules must take one tensor.

Tokens where G is zero for every class (padding, positions after the scored one) are dropped per
example; columns where a factor is zero for the whole chunk (a head's vocabulary outside the label
words, a token table's unused rows) are dropped too and the kept column indices recorded.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

KNOWN = (nn.Linear, nn.Embedding)


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


@dataclass
class Factor:
    """``vals`` [c, B, T, k] (c = 1 or C classes) over the columns ``cols`` (sorted global indices of a
    dimension of size ``size``; None = all of them, in order)."""

    vals: torch.Tensor
    cols: torch.Tensor | None
    size: int

    @property
    def width(self) -> int:
        return self.vals.shape[-1]

    def select(self, index: torch.Tensor) -> "Factor":
        """Only the columns in ``index`` (sorted)."""
        if self.cols is None:
            return Factor(self.vals[..., index.to(self.vals.device)], index, self.size)
        keep = torch.isin(self.cols, index)
        return Factor(self.vals[..., keep], self.cols[keep], self.size)

    def transform(self, matrix: torch.Tensor, scale: float) -> "Factor":
        """``scale * vals @ matrix^T`` over all columns (LoRA: R = s X A^T)."""
        return Factor(scale * (self.dense() @ matrix.to(self.vals).T), None, matrix.shape[0])

    def dense(self) -> torch.Tensor:
        if self.cols is None:
            return self.vals
        out = self.vals.new_zeros(*self.vals.shape[:-1], self.size)
        out[..., self.cols] = self.vals
        return out


def sparse_columns(vals: torch.Tensor, size: int, threshold: float = 0.5) -> Factor:
    """A factor keeping only the columns that are non-zero somewhere, if they are few."""
    nonzero = vals.ne(0).flatten(0, -2).any(0)
    count = int(nonzero.sum())
    if count > threshold * size:
        return Factor(vals, None, size)
    cols = nonzero.nonzero().flatten()
    return Factor(vals[..., cols], cols, size)


@dataclass
class Chunk:
    """The factors of one chunk of ``n`` examples: ``uses[param]`` lists one (L, R) pair per use of the
    parameter (a tied weight has several); ``grads[param]`` is a materialised per-example gradient
    [C, n, numel] (other parameters)."""

    n: int
    classes: int
    uses: dict[str, list[tuple[Factor, Factor]]] = field(default_factory=dict)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Call:
    name: str
    module: nn.Module
    x: torch.Tensor
    out: torch.Tensor
    version: int


@contextmanager
def _grad_enabled(model: nn.Module):
    """Every parameter requires grad while capturing (so each layer output is in the graph), eval mode."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _batch_size(batch) -> int:
    for v in (batch.values() if isinstance(batch, dict) else batch):
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    raise ValueError("A batch must hold at least one tensor (batch size = its first dimension)")


def _record(calls: list, name: str, batch_size: int):
    def hook(module, args, out):
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            raise ValueError(f"eNTK: module {name} ({type(module).__name__}) must take and return one tensor "
                             "to have its parameters' gradients computed per example")
        x, new = args[0], None
        if out.shape[0] == 1 and batch_size > 1:  # shared across the batch (e.g. BERT's position ids): split it
            new = out.expand(batch_size, *out.shape[1:])
            x = x.expand(batch_size, *x.shape[1:])
        elif out.shape[0] != batch_size:
            raise ValueError(f"eNTK: output of {name} has first dimension {out.shape[0]}, not the batch size "
                             f"{batch_size}: cannot tell which example each row belongs to")
        o = out if new is None else new
        calls.append(_Call(name, module, x, o, o._version))
        return new
    return hook


def _compact_index(mask: torch.Tensor):
    """Per example, the positions where ``mask`` [B, T] holds, first, padded: (index [B, T'], valid [B, T'])."""
    count = int(mask.sum(1).max()) if mask.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :max(count, 1)]
    return order, mask.gather(1, order)


def _gather(t: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``t`` [..., B, T, k] at token positions ``index`` [B, T'], zero where not ``valid``."""
    idx = index.reshape(*([1] * (t.dim() - 3)), *index.shape, 1).expand(*t.shape[:-2], index.shape[1], t.shape[-1])
    return t.gather(-2, idx) * valid[..., None].to(t.dtype)


def _per_example_module_grads(module: nn.Module, names: list[str], x: torch.Tensor, g: torch.Tensor) -> dict:
    """Per-example gradients [C, B, numel] of ``module``'s own parameters ``names`` (vmap of its VJP)."""
    params = {n: module._parameters[n].detach() for n in names}

    def inner(p, xi, gi):
        return (functional_call(module, p, (xi.unsqueeze(0),)) * gi.unsqueeze(0)).sum()

    per = vmap(vmap(grad(inner), in_dims=(None, 0, 0)), in_dims=(None, None, 0))(params, x, g)
    return {n: v.reshape(g.shape[0], g.shape[1], -1) for n, v in per.items()}


class Capturer:
    """Hooks the modules that hold the parameters in ``names`` and turns a batch into a :class:`Chunk`.

    ``fn(batch)`` must return the [B, C] outputs whose kernel is wanted. ``dtype``: the factors' dtype
    (None: the model's)."""

    def __init__(self, model: nn.Module, fn, names, dtype: torch.dtype | None = None):
        from .params import owners

        self.model, self.fn, self.dtype = model, fn, dtype
        held = owners(model)
        unknown = sorted(set(names) - set(held))
        if unknown:
            raise ValueError(f"eNTK: {unknown[:3]} are not parameters of the model")
        self.roles: dict[str, list] = {}  # module name -> [(param name, role)]
        self.generic: dict[str, list[str]] = {}  # module name -> its own parameter attributes to differentiate
        self.modules: dict[str, nn.Module] = {}
        params = dict(model.named_parameters())
        for pname in names:
            mods = held[pname]
            known = [(m, mod) for m, mod in mods if isinstance(mod, KNOWN) or is_conv1d(mod)]
            for mname, mod in (known or mods):
                attr = next(a for a, p in mod._parameters.items() if p is params[pname])
                self.modules[mname] = mod
                if known:
                    self.roles.setdefault(mname, []).append((pname, attr))
                else:
                    self.generic.setdefault(mname, []).append(attr)
        self.canonical = {id(p): n for n, p in model.named_parameters()}

    def __call__(self, batch) -> Chunk:
        batch_size = _batch_size(batch)
        calls: list[_Call] = []
        hooks = [mod.register_forward_hook(_record(calls, name, batch_size)) for name, mod in self.modules.items()]
        try:
            with _grad_enabled(self.model):
                out = self.fn(batch)
                if out.dim() != 2 or out.shape[0] != batch_size:
                    raise ValueError(f"eNTK: the function must return [batch, classes], got {tuple(out.shape)}")
                for h in hooks:
                    h.remove()
                classes = out.shape[1]
                grads = [[] for _ in calls]
                for c in range(classes):
                    gs = torch.autograd.grad(out[:, c].sum(), [k.out for k in calls], retain_graph=c < classes - 1,
                                             allow_unused=True, materialize_grads=True)
                    for i, g in enumerate(gs):
                        grads[i].append(g.detach())
        finally:
            for h in hooks:
                h.remove()
        for k in calls:
            if k.out._version != k.version:
                raise ValueError(f"eNTK: the output of {k.name} was changed in place after the layer ran; its "
                                 "gradient cannot be taken per layer")
            k.out = None  # the graph is gone; only the inputs are still needed
        return self._factors(calls, grads, batch_size, classes)

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype) if self.dtype is not None else t

    def _factors(self, calls, grads: list[list], batch_size, classes) -> Chunk:
        """Factors of every call from its per-class output gradients ``grads[i]`` (C tensors each), which
        are consumed (released call by call, so the raw gradients never exist twice)."""
        chunk = Chunk(batch_size, classes)
        # token masks: a layer input shared by several layers (q, k, v) is compacted once, over their union
        site_mask: dict[int, torch.Tensor] = {}
        for k, gs in zip(calls, grads):
            if k.name in self.roles:
                m = torch.stack([g.reshape(batch_size, -1, g.shape[-1]).ne(0).any(-1) for g in gs]).any(0)
                site_mask[id(k.x)] = site_mask[id(k.x)] | m if id(k.x) in site_mask else m
        sites: dict[int, tuple] = {}
        for i, k in enumerate(calls):
            if k.name in self.generic:
                g, grads[i] = torch.stack(grads[i]), None
                per = _per_example_module_grads(k.module, self.generic[k.name], k.x.detach(), g)
                for attr, v in per.items():
                    pname = self.canonical[id(k.module._parameters[attr])]
                    v = self._cast(v)
                    chunk.grads[pname] = chunk.grads[pname] + v if pname in chunk.grads else v
                continue
            if id(k.x) not in sites:
                index, valid = _compact_index(site_mask[id(k.x)])
                sites[id(k.x)] = (index, valid, {})
            index, valid, shared = sites[id(k.x)]  # kept tokens first (a head's output: one position)
            g = torch.stack([_gather(self._cast(gc.reshape(batch_size, -1, gc.shape[-1])), index, valid)
                             for gc in grads[i]])
            grads[i] = None
            for pname, attr in self.roles[k.name]:
                pair = self._pair(k, attr, g, index, valid, shared)
                chunk.uses.setdefault(pname, []).append(pair)
            del g
        return chunk

    def _pair(self, k: _Call, attr: str, g: torch.Tensor, index, valid, shared) -> tuple[Factor, Factor]:
        """(L, R) of one use of a parameter; the input's factor is built once per shared input."""
        mod = k.module
        gf = sparse_columns(g, g.shape[-1])
        if attr == "bias":
            return gf, Factor(valid[None, ..., None].to(g.dtype), None, 1)
        if "x" not in shared:
            if isinstance(mod, nn.Embedding):
                ids = k.x.reshape(k.x.shape[0], -1).gather(1, index)
                ok = valid if mod.padding_idx is None else valid & ids.ne(mod.padding_idx)
                ids = torch.where(ok, ids, -1)
                cols = torch.unique(ids[ok])
                shared["x"] = Factor((ids[None, ..., None] == cols).to(g.dtype), cols, mod.num_embeddings)
            else:
                x = self._cast(k.x.detach().reshape(k.x.shape[0], -1, k.x.shape[-1]))
                shared["x"] = Factor(_gather(x[None], index, valid), None, x.shape[-1])
        xf = shared["x"]
        if isinstance(mod, nn.Embedding) or is_conv1d(mod):
            return xf, gf
        return gf, xf
