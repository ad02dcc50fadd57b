"""Sparse fine-tuning baselines: SFT (SpIEL) and Diff pruning. Neither is in peft 0.21.

Both learn a sparse difference D to each targeted weight, ``y = x (W + D)^T + b``, and both budget
it per matrix the way ``rank`` budgets LoRA: ``rank * (d_in + d_out)`` entries (LoRA's parameter
count at that rank; rank 8 on RoBERTa-base gives 1.33M, the scale of the paper's Table 1 rows),
or ``density * d_in * d_out`` where ``density`` is set.

**SFT** (Ansell et al., 2024, "Scaling Sparse Fine-Tuning to Large Language Models", arXiv:2401.16405;
SpIEL-AG, the accumulated-gradient variant, as the authors' code ``AlanAnsell/peft``). Each matrix
keeps k indices and k trained values (:class:`SparseDeltaLinear`): the parameter and the optimizer
state are those k values only (the forward builds the dense D transiently). The indices start
uniformly at random (seeded by the run seed and the layer's name) and are updated at steps
``s = accumulation_steps + m * regrow_every`` (m = 0, 1, ...; s < the run's steps):

* the gradient of D is read over the ``accumulation_steps`` (5) steps ending at s: at the first of
  them the k entries of largest |gradient| become candidates, whose gradients are summed;
* drop: the ``n = rate * k`` trained entries of smallest |value| (|value| = the change from the
  pretrained weight), rate = 1 at the first update (a full reselection, as the authors' code) and
  ``regrow_rate * (1 - s / total_steps)`` after (regrow_rate = 0.2, regrow_every = 100: their defaults);
* regrow: the n candidates of largest |summed gradient| not still trained; a dropped entry that is
  regrown keeps its value, the others start at zero (the pretrained weight). The k indices stay k.
  The new entries' AdamW moments start at the window's mean gradient and mean squared gradient, so
  that AdamW's bias-corrected estimates equal them (the authors give each entry its own step count;
  torch's AdamW has one per tensor).

The run must be one process (the regrowth reads each process's own gradients).

**Diff pruning** (Guo, Rush and Kim, 2021, "Parameter-Efficient Transfer Learning with Diff Pruning",
ACL): D = z * w with a dense diff w (zero at start: the model is unchanged) and a hard-concrete gate z
per entry (Louizos et al., 2018): ``s = sigmoid(log u - log(1-u) + log_alpha)``, u ~ U(0, 1),
``z = clamp(s (r - l) + l, 0, 1)`` with l = -1.5, r = 1.5, log_alpha initialised to 5, temperature 1,
as the paper; at evaluation ``z = clamp(sigmoid(log_alpha) (r - l) + l, 0, 1)``. The loss gains
``l0_penalty * sum sigmoid(log_alpha - log(-l / r))`` (the expected number of non-zero entries;
l0_penalty = 1.25e-7 as the paper) and log_alpha trains with its own learning rate (``alpha_lr`` 0.1).
At ``project_at`` x the run's steps (1.0: after the last step) D is projected onto the target
sparsity by magnitude: each matrix keeps its budget of entries of largest |z * w| (the paper's target
is one sparsity for the whole diff vector; per matrix, every adapted layer keeps a share), the rest
are set to zero, and the gate becomes that fixed 0/1 mask (steps after it
fine-tune w under the fixed mask, the paper's second phase; ``project_at < 1`` runs it). The
artifact is the projected D as indices and values, loaded as a :class:`SparseDeltaLinear`.
The paper's structured (group) penalty is not implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.selection import layer_generator
from ..errors import UserError
from .wrapping import LinearWrapper, LinearWrapperMethod


class SparseDeltaLinear(LinearWrapper):
    """``x (W + D)^T + b`` with D zero except at the flat positions ``indices``, where it holds ``values``.

    ``grad_hook``, when set, is called with D's dense gradient in every backward (SFT's regrowth)."""

    def __init__(self, base: nn.Linear, indices: torch.Tensor):
        super().__init__(base)
        self.register_buffer("indices", indices.to(device=base.weight.device, dtype=torch.long))
        self.values = nn.Parameter(torch.zeros(len(indices), device=base.weight.device))
        self.grad_hook = None

    def delta_weight(self):
        w = self.base.weight
        flat = torch.zeros(w.numel(), dtype=self.values.dtype, device=w.device)
        return flat.scatter(0, self.indices, self.values).view_as(w)

    def forward(self, x):
        delta = self.delta_weight()
        if self.grad_hook is not None and delta.requires_grad:
            delta.register_hook(self.grad_hook)
        return F.linear(x, self.base.weight + delta.to(self.base.weight.dtype), self.base.bias)


class _SparseMethod(LinearWrapperMethod):
    def __init__(self, name: str, *, rank: int | None = None, density: float | None = None, **kwargs):
        if density is None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise UserError(f"method={name}: set a positive integer rank (budget rank * (d_in + d_out) per "
                            f"matrix) or a density in (0, 1], got rank={rank!r}")
        if density is not None and not 0 < float(density) <= 1:
            raise UserError(f"method={name}: density must be in (0, 1], got {density!r}")
        super().__init__(name, rank=None if density is not None else rank, **kwargs)
        self.density = None if density is None else float(density)
        self.total_steps = None

    def wrap_saved(self, name, layer, state):
        return SparseDeltaLinear(layer, state[f"{name}.indices"])

    def budget(self, layer: nn.Linear) -> int:
        numel = layer.weight.numel()
        k = round(self.density * numel) if self.density is not None else self.rank * (
            layer.in_features + layer.out_features)
        return max(1, min(int(k), numel))


class SFT(_SparseMethod):
    """SpIEL-AG: k trained entries per matrix, periodically dropped (smallest |value|) and regrown
    (largest accumulated |gradient|)."""

    def __init__(self, name: str, *, regrow_every: int = 100, accumulation_steps: int = 5,
                 regrow_rate: float = 0.2, **kwargs):
        super().__init__(name, **kwargs)
        if regrow_every < 1 or not 1 <= accumulation_steps <= regrow_every or not 0 <= regrow_rate <= 1:
            raise UserError(f"method={name}: needs regrow_every >= accumulation_steps >= 1 and regrow_rate in "
                            f"[0, 1], got {regrow_every}, {accumulation_steps}, {regrow_rate}")
        self.every, self.window, self.rate = int(regrow_every), int(accumulation_steps), float(regrow_rate)
        self._optimizer = None
        self._step = 1  # the step the next backward belongs to
        self._acc: dict[str, dict] = {}  # per layer: candidates and their summed gradients in the current window

    def wrap(self, name, layer):
        k, numel = self.budget(layer), layer.weight.numel()
        return SparseDeltaLinear(layer, torch.randperm(numel, generator=layer_generator(self.seed, name))[:k].sort()[0])

    def apply(self, model, *, total_steps=None, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized() and (
                torch.distributed.get_world_size() > 1):
            raise UserError(f"method={self.name} runs on one process: its regrowth reads each process's own "
                            f"gradients (launch without multi-process data parallelism).")
        self.total_steps = total_steps
        model = super().apply(model, **kwargs)
        self._open_window(model, 1)
        return model

    def optimizer(self, model, train_cfg):
        from ..engine import build_optimizer

        self._optimizer = build_optimizer(model, train_cfg)
        return self._optimizer

    # ---- the schedule
    def is_update_step(self, step: int) -> bool:
        before_end = self.total_steps is None or step < self.total_steps
        return step >= self.window and (step - self.window) % self.every == 0 and before_end

    def next_update(self, step: int) -> int:
        """The first update step at or after ``step``."""
        return self.window + self.every * max(0, math.ceil((step - self.window) / self.every))

    def drop_rate(self, step: int) -> float:
        if step == self.window:
            return 1.0
        return self.rate * (1 - step / self.total_steps) if self.total_steps else self.rate

    def _open_window(self, model, step: int) -> None:
        """Read D's gradients during ``step`` if an update follows within the window."""
        self._step = step
        s = self.next_update(step)
        reading = s - step < self.window and self.is_update_step(s)
        for name, layer in self.wrappers(model):
            layer.grad_hook = (lambda g, name=name, layer=layer: self._accumulate(name, layer, g)) if reading else None

    @torch.no_grad()
    def _accumulate(self, name: str, layer: SparseDeltaLinear, grad: torch.Tensor) -> None:
        g = grad.reshape(-1).float()
        acc = self._acc.get(name)
        if acc is None:
            candidates = torch.topk(g.abs(), len(layer.indices)).indices
            acc = self._acc[name] = {"candidates": candidates, "sum": torch.zeros_like(g[candidates]),
                                     "sum_sq": torch.zeros_like(g[candidates]), "n": 0}
        picked = g[acc["candidates"]]
        acc["sum"] += picked
        acc["sum_sq"] += picked * picked
        acc["n"] += 1

    def after_step(self, model, step):
        if self.is_update_step(step):
            p = self.drop_rate(step)
            for name, layer in self.wrappers(model):
                acc = self._acc.pop(name, None)
                if acc is not None:
                    self.regrow(layer, acc, int(len(layer.indices) * p))
        self._open_window(model, step + 1)

    @torch.no_grad()
    def regrow(self, layer: SparseDeltaLinear, acc: dict, n: int) -> None:
        """Drop the ``n`` smallest |values|, regrow the best candidates not still trained (budget unchanged)."""
        if n < 1:
            return
        idx, values, numel = layer.indices, layer.values, layer.base.weight.numel()
        drop = torch.topk(values.abs(), n, largest=False).indices  # slots, smallest |value| first
        outgoing = torch.zeros(numel, dtype=torch.bool, device=idx.device)
        outgoing[idx[drop]] = True
        remaining = torch.zeros_like(outgoing)
        remaining[idx] = True
        remaining &= ~outgoing
        free = ~remaining[acc["candidates"]]
        cand, total, total_sq = acc["candidates"][free], acc["sum"][free], acc["sum_sq"][free]
        best = torch.topk(total.abs(), min(n, len(cand))).indices
        incoming, total, total_sq = cand[best], total[best], total_sq[best]
        regrown = torch.zeros_like(outgoing)
        regrown[incoming] = True
        new = ~outgoing[incoming]  # a dropped entry regrown keeps its slot and value
        incoming, total, total_sq = incoming[new], total[new], total_sq[new]
        slots = drop[~regrown[idx[drop]]][: len(incoming)]
        idx[slots] = incoming
        values[slots] = 0.0
        self._restart_moments(values, slots, total / acc["n"], total_sq / acc["n"])

    def _restart_moments(self, values, slots, mean, mean_sq) -> None:
        state = self._optimizer.state.get(values) if self._optimizer is not None else None
        if not state or "exp_avg" not in state:
            return
        beta1, beta2 = next(g["betas"] for g in self._optimizer.param_groups if any(p is values for p in g["params"]))
        t = float(state["step"])
        state["exp_avg"][slots] = (mean * (1 - beta1 ** t)).to(state["exp_avg"].dtype)
        state["exp_avg_sq"][slots] = (mean_sq * (1 - beta2 ** t)).to(state["exp_avg_sq"].dtype)

    # ---- checkpoints: which entries train, and the window under way
    def extra_state(self, model):
        return {"indices": {n: m.indices.clone() for n, m in self.wrappers(model)},
                "windows": {n: dict(a) for n, a in self._acc.items()}, "next_step": self._step}

    def load_extra_state(self, model, state):
        for name, layer in self.wrappers(model):
            layer.indices.copy_(state["indices"][name])
        self._acc = {n: dict(a) for n, a in state["windows"].items()}
        self._open_window(model, state["next_step"])


class DiffPruningLinear(LinearWrapper):
    """``x (W + z * w)^T + b``: w a dense diff, z a hard-concrete gate per entry, or a fixed mask once projected."""

    def __init__(self, base: nn.Linear, log_alpha_init: float, stretch: tuple[float, float]):
        super().__init__(base)
        self.diff = nn.Parameter(torch.zeros_like(base.weight, dtype=torch.float32))
        self.log_alpha = nn.Parameter(torch.full_like(base.weight, log_alpha_init, dtype=torch.float32))
        self.l, self.r = stretch
        self.register_buffer("mask", None)  # the fixed 0/1 gate after projection

    def gate(self) -> torch.Tensor:
        if self.mask is not None:
            return self.mask
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid(torch.log(u) - torch.log1p(-u) + self.log_alpha)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (self.r - self.l) + self.l).clamp(0.0, 1.0)

    def expected_nonzero(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - math.log(-self.l / self.r)).sum()

    def delta_weight(self):
        return self.diff * self.gate()

    def forward(self, x):
        return F.linear(x, self.base.weight + self.delta_weight().to(self.base.weight.dtype), self.base.bias)


class DiffPruning(_SparseMethod):
    """A dense diff with an L0 (hard-concrete) penalty, projected by magnitude onto the target sparsity."""

    def __init__(self, name: str, *, l0_penalty: float = 1.25e-7, log_alpha_init: float = 5.0,
                 stretch: tuple[float, float] | list[float] = (-1.5, 1.5), alpha_lr: float = 0.1,
                 project_at: float = 1.0, **kwargs):
        super().__init__(name, **kwargs)
        l, r = (float(v) for v in stretch)
        if not (l < 0 and r > 1) or not 0 < project_at <= 1:
            raise UserError(f"method={name}: needs stretch (l < 0, r > 1) and project_at in (0, 1], got "
                            f"{stretch}, {project_at}")
        self.l0_penalty, self.log_alpha_init, self.stretch = float(l0_penalty), float(log_alpha_init), (l, r)
        self.alpha_lr, self.project_at = float(alpha_lr), float(project_at)

    def wrap(self, name, layer):
        return DiffPruningLinear(layer, self.log_alpha_init, self.stretch)

    def apply(self, model, *, total_steps=None, **kwargs):
        self.total_steps = total_steps
        model = super().apply(model, **kwargs)
        layers = [m for _, m in self.wrappers(model)]
        model.register_forward_hook(lambda module, args, output: self._add_penalty(module, layers, output))
        return model

    def _add_penalty(self, model, layers, output):
        """The training loss plus l0_penalty x the expected number of non-zero diff entries (until projected)."""
        if model.training and layers[0].mask is None and getattr(output, "loss", None) is not None:
            output.loss = output.loss + self.l0_penalty * sum(m.expected_nonzero() for m in layers)
        return output

    def optimizer(self, model, train_cfg):
        from ..engine import build_optimizer

        alphas = [m.log_alpha for _, m in self.wrappers(model)]
        for a in alphas:
            a.requires_grad_(False)
        opt = build_optimizer(model, train_cfg)
        for a in alphas:
            a.requires_grad_(True)
        opt.add_param_group({"params": alphas, "lr": self.alpha_lr, "weight_decay": 0.0})
        return opt

    def projection_step(self) -> int | None:
        return max(1, round(self.project_at * self.total_steps)) if self.total_steps else None

    def after_step(self, model, step):
        if step == self.projection_step():
            self.project(model)

    @torch.no_grad()
    def project(self, model) -> None:
        """Keep each matrix's budget of entries of largest |z * w|; its gate becomes that fixed 0/1 mask."""
        for _, m in self.wrappers(model):
            if not isinstance(m, DiffPruningLinear) or m.mask is not None:
                continue
            training = m.training
            delta = m.eval().delta_weight()
            mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
            mask[torch.topk(delta.abs().reshape(-1), self.budget(m.base)).indices] = 1.0
            m.diff.copy_(delta * mask.view_as(delta))
            m.mask = mask.view_as(delta)
            m.train(training)

    def save(self, model, directory):
        self.project(model)
        super().save(model, directory)

    def adapter_state(self, model):
        """The projected diff as a sparse delta (indices, values) per matrix, and the task head."""
        state = super().adapter_state(model)
        for name, m in self.wrappers(model):
            if isinstance(m, DiffPruningLinear):
                for key in ("diff", "log_alpha", "mask"):
                    state.pop(f"{name}.{key}", None)
                if m.mask is not None:
                    positions = m.mask.reshape(-1).nonzero().flatten()
                    state[f"{name}.indices"] = positions.cpu()
                    state[f"{name}.values"] = m.diff.reshape(-1)[positions].detach().float().cpu()
        return state

    def merged(self, model):
        self.project(model)
        return super().merged(model)

    def extra_state(self, model):
        return {"masks": {n: m.mask.reshape(-1).nonzero().flatten().cpu() for n, m in self.wrappers(model)
                          if isinstance(m, DiffPruningLinear) and m.mask is not None}}

    def load_extra_state(self, model, state):
        for name, m in self.wrappers(model):
            if name in state["masks"]:
                mask = torch.zeros(m.diff.numel(), dtype=m.diff.dtype, device=m.diff.device)
                mask[state["masks"][name].to(m.diff.device)] = 1.0
                m.mask = mask.view_as(m.diff)
