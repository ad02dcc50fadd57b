"""Parameter sets of an eNTK: which entries of which parameters the kernel sums over.

A :class:`ParamSet` maps a parameter's canonical name (its first name in ``model.named_parameters()``)
to a :class:`Selection`: the whole tensor, some rows or some columns of a 2-D weight (RoCoFT), or the
B matrix of a LoRA adapter at its initialisation (B = 0, A fixed: the only LoRA factor with a non-zero
gradient). Rows and columns refer to the weight's own layout: for ``nn.Linear`` (d_out x d_in) a row
is an output unit and a column an input feature, as in RoCoFT; for ``nn.Embedding`` (vocab x d) a row
is a token. Every set reports its number of entries per parameter group (:data:`GROUPS`).

Builders: :func:`full_set` (every parameter with ``requires_grad``, as the reference code counts),
:func:`rocoft_set` (the rows / columns a RoCoFT run with the same config and seed trains: the suite's
own target and index selection), :func:`lora_set` (peft's own LoRA initialisation of A),
:func:`bitfit_set` (biases), :func:`group_set` (one parameter group) and
:meth:`ParamSet.complement` (the rest of the full set).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.config import RoCoFTConfig
from ..core.model import calibrate_input_norms
from ..core.selection import SCORED, choose_index, layer_generator
from ..core.targets import find_targets, target_patterns

GROUPS = ("embeddings", "attention", "feed_forward", "norms_biases", "head", "other")
HEAD_NAMES = ("lm_head", "cls", "score", "classifier", "qa_outputs", "pooler")
ATTENTION = re.compile(r"(^|\.)(attention|attn|self_attn|self_attention|crossattention|encoder_attn)(\.|$)")


@dataclass(frozen=True)
class Selection:
    """Entries of one parameter in a set. ``kind``: ``full``, ``rows``, ``cols`` or ``lora``.

    ``index``: sorted row / column indices (rows, cols). ``lora_a``: LoRA's A (r x d_in) and
    ``scale`` (alpha / r): the set holds B (d_out x r) of the adapter on this Linear weight."""

    kind: str = "full"
    index: torch.Tensor | None = None
    lora_a: torch.Tensor | None = None
    scale: float = 1.0

    def key(self) -> tuple:
        """Hashable identity (two selections with equal keys select the same entries)."""
        if self.kind in ("rows", "cols"):
            return (self.kind, tuple(self.index.tolist()))
        if self.kind == "lora":
            return ("lora", id(self.lora_a), self.scale)
        return ("full",)

    def count(self, shape: torch.Size) -> int:
        d0, d1 = shape[0], (int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1)
        if self.kind == "rows":
            return len(self.index) * d1
        if self.kind == "cols":
            return d0 * len(self.index)
        if self.kind == "lora":
            return d0 * self.lora_a.shape[0]
        return int(torch.Size(shape).numel())


@dataclass
class ParamSet:
    """A named parameter set: ``selections`` (parameter name -> Selection), ``groups`` (parameter name ->
    group) and ``shapes`` of the model it was built for; ``info`` says how it was built."""

    name: str
    selections: dict[str, Selection]
    groups: dict[str, str]
    shapes: dict[str, torch.Size]
    info: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Entries per group (every group listed) and ``total``."""
        out = {g: 0 for g in GROUPS}
        for name, sel in self.selections.items():
            out[self.groups[name]] += sel.count(self.shapes[name])
        out["total"] = sum(out[g] for g in GROUPS)
        return out

    def describe(self) -> dict:
        """JSON-ready description (kind per parameter, counts, info) for metadata and hashing."""
        return {"name": self.name, "counts": self.counts, "info": self.info,
                "selections": {n: list(s.key()) if s.kind != "lora" else ["lora", s.lora_a.shape[0], s.scale,
                                                                          float(s.lora_a.double().sum())]
                               for n, s in sorted(self.selections.items())}}

    def complement(self, full: "ParamSet", name: str | None = None) -> "ParamSet":
        """The entries of ``full`` not in this set (rows -> the other rows, cols -> the other columns)."""
        rest = {}
        for pname, sel in full.selections.items():
            mine = self.selections.get(pname)
            if mine is None:
                rest[pname] = sel
            elif mine.kind in ("rows", "cols") and sel.kind == "full":
                size = self.shapes[pname][0 if mine.kind == "rows" else 1]
                keep = torch.ones(size, dtype=torch.bool)
                keep[mine.index] = False
                if keep.any():
                    rest[pname] = Selection(mine.kind, keep.nonzero().flatten())
            elif mine.kind != "full" or sel.kind != "full":
                raise ValueError(f"No complement of a {mine.kind} selection of {pname!r} within a {sel.kind} one")
        return ParamSet(name or f"{full.name}_minus_{self.name}", rest, full.groups, full.shapes,
                        {"complement_of": self.name, "within": full.name})


def owners(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """Canonical parameter name -> every (module name, module) that holds it directly (tied weights: several)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, list] = {n: [] for n in canonical.values()}
    for mname, module in model.named_modules(remove_duplicate=False):
        for p in module._parameters.values():
            if p is not None and id(p) in canonical:
                entry = (mname, module)
                if all(m is not module for _, m in out[canonical[id(p)]]):
                    out[canonical[id(p)]].append(entry)
    return out


def param_group(name: str, modules: list[nn.Module]) -> str:
    """The group of a parameter: embedding tables (tied output embeddings included), the head, norms and
    biases, attention or feed-forward weights, else ``other``."""
    if any(isinstance(m, nn.Embedding) for m in modules):
        return "embeddings"
    parts = name.split(".")
    if parts[0] in HEAD_NAMES or "lm_head" in parts:
        return "head"
    if name.endswith("bias") or any("norm" in type(m).__name__.lower() for m in modules):
        return "norms_biases"
    if parts[-1] == "weight" and any(isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D" for m in modules):
        return "attention" if ATTENTION.search(name) else "feed_forward"
    return "other"


def _base(model: nn.Module, name: str, selections: dict, info: dict) -> ParamSet:
    held = owners(model)
    params = dict(model.named_parameters())
    return ParamSet(name, selections, {n: param_group(n, [m for _, m in held[n]]) for n in held},
                    {n: p.shape for n, p in params.items()}, info)


def full_set(model: nn.Module, name: str = "full") -> ParamSet:
    """Every parameter with ``requires_grad`` (tied parameters once)."""
    return _base(model, name, {n: Selection() for n, p in model.named_parameters() if p.requires_grad},
                 {"kind": "full"})


def group_set(model: nn.Module, group: str, name: str | None = None) -> ParamSet:
    """The parameters of ``full_set`` in one group (see :data:`GROUPS`)."""
    if group not in GROUPS:
        raise ValueError(f"Unknown parameter group {group!r}; choose one of {GROUPS}")
    full = full_set(model)
    return ParamSet(name or group, {n: s for n, s in full.selections.items() if full.groups[n] == group},
                    full.groups, full.shapes, {"kind": "group", "group": group})


def group_sets(model: nn.Module) -> dict[str, ParamSet]:
    """One set per group that has parameters: their kernels sum to the full kernel."""
    sets = {g: group_set(model, g) for g in GROUPS}
    return {g: s for g, s in sets.items() if s.selections}


def bitfit_set(model: nn.Module, name: str = "bitfit") -> ParamSet:
    """Every bias (BitFit), norms' biases included."""
    return _base(model, name, {n: Selection() for n, p in model.named_parameters()
                               if p.requires_grad and n.endswith("bias")}, {"kind": "bitfit"})


def _linear_weight_names(model: nn.Module, module_names: list[str]) -> dict[str, str]:
    """Module name -> canonical name of its weight."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {m: canonical[id(model.get_submodule(m).weight)] for m in module_names}


def rocoft_set(model: nn.Module, axis: str = "row", rank: int = 1, *, selection: str = "first", seed: int = 0,
               target_modules=None, bias: str = "none", calibration_batches=None, name: str | None = None) -> ParamSet:
    """The r rows (``axis='row'``) or columns of every targeted Linear that ``apply_rocoft`` with the same
    config trains: the suite's own targets (:func:`rocoft.core.targets.find_targets`) and indices
    (:func:`rocoft.core.selection.choose_index`, seeded per layer name; Wanda selections calibrate on
    ``calibration_batches``). ``bias``: ``none``, ``rocoft_only`` (targeted layers' biases) or ``all``."""
    if axis not in ("row", "column"):
        raise ValueError(f"RoCoFT kernel axis must be 'row' or 'column', got {axis!r}")
    config = RoCoFTConfig(axis=axis, rank=rank, selection=selection, seed=seed, target_modules=target_modules,
                          bias=bias)
    names = find_targets(model, config)
    norms = None
    if selection in SCORED:
        if calibration_batches is None:
            raise ValueError(f"Selection {selection!r} needs calibration_batches")
        norms = calibrate_input_norms(model, names, calibration_batches)
    kind = "rows" if axis == "row" else "cols"
    sels = {}
    for module_name, pname in _linear_weight_names(model, names).items():
        weight = model.get_submodule(module_name).weight
        idx = choose_index(weight, config, layer_generator(seed, module_name), norms[module_name] if norms else None)
        sels[pname] = Selection(kind, idx.sort().values)
    if config.bias != "none":
        canonical = {id(p): n for n, p in model.named_parameters()}
        biases = ([model.get_submodule(m).bias for m in names] if config.bias == "rocoft_only"
                  else [p for n, p in model.named_parameters() if n.endswith("bias")])
        sels.update({canonical[id(b)]: Selection() for b in biases if b is not None})
    return _base(model, name or f"rocoft_{axis}_r{rank}", sels,
                 {"kind": "rocoft", "axis": axis, "rank": rank, "selection": selection, "seed": seed,
                  "bias": config.bias, "targets": len(names)})


def lora_set(model: nn.Module, rank: int = 8, alpha: float = 16, *, seed: int = 0, target_modules=None,
             name: str | None = None) -> ParamSet:
    """LoRA at its initialisation: the B matrices (zero) of adapters on the targeted Linears, with A as
    peft initialises it after ``torch.manual_seed(seed)`` (on a copy of the model; the global RNG is
    left as it was). Targets default to RoCoFT's (the suite's LoRA targets the same layers).

    At B = 0 the gradient w.r.t. A is zero, so only B enters the kernel: for a layer y = W x + s B A x
    the gradient of an output w.r.t. B is s * G^T (X A^T), G the gradient w.r.t. y."""
    from peft import LoraConfig, get_peft_model

    names = find_targets(model, RoCoFTConfig(target_modules=target_modules))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                                     target_modules=names))
    sels = {}
    for module_name, pname in _linear_weight_names(model, names).items():
        layer = peft_model.base_model.model.get_submodule(module_name)
        sels[pname] = Selection("lora", lora_a=layer.lora_A["default"].weight.detach().clone(),
                                scale=float(layer.scaling["default"]))
    del peft_model
    return _base(model, name or f"lora_r{rank}", sels,
                 {"kind": "lora", "rank": rank, "alpha": alpha, "seed": seed, "targets": len(names),
                  "patterns": str(target_patterns(model, RoCoFTConfig(target_modules=target_modules)))})
