"""Which r rows / columns of a weight RoCoFT trains.

Strategies:
  * ``first``  -- indices 0..r-1 (the paper's default).
  * ``random`` -- r distinct indices drawn with a seeded ``torch.Generator``.
  * ``max`` / ``min`` / ``mixed`` -- Wanda-style importance (paper Section 6, eq. 3). For weight
    W (d_out x d_in) and the layer's real input activations X (N x d_in), entry scores are
    ``S_ij = |W_ij| * ||X_j||_2`` where ``||X_j||_2`` is the l2 norm of input feature j over all
    calibration tokens. Row score: ``s_i = sum_j S_ij``; column score: ``s_j = sum_i S_ij``.
    ``max`` keeps the r highest scores, ``min`` the r lowest, ``mixed`` ceil(r/2) highest and
    floor(r/2) lowest. Ties break towards the lower index (stable sort).
"""

from __future__ import annotations

import torch

STRATEGIES = ("first", "random", "max", "min", "mixed")
SCORED = ("max", "min", "mixed")


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor, axis: str) -> torch.Tensor:
    """Row (sum over j) or column (sum over i) scores of ``|W_ij| * ||X_j||_2``, in float64."""
    s = weight.detach().abs().double() * input_norm.double().to(weight.device)[None, :]
    return s.sum(1) if axis == "row" else s.sum(0)


def sample_entries(numel: int, p: float, generator=None) -> torch.Tensor:
    """Flat indices of the entries that train, each independently with probability ``p`` (at least one)."""
    keep = torch.rand(numel, generator=generator) < p
    if not keep.any():
        keep[torch.randint(numel, (1,), generator=generator)] = True
    return keep.nonzero().flatten()


def select_indices(size: int, rank: int, strategy: str = "first", *, generator=None,
                   scores: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``rank`` sorted distinct indices in ``[0, size)`` chosen by ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown RoCoFT selection {strategy!r}; choose one of {STRATEGIES}")
    if not 1 <= rank <= size:
        raise ValueError(f"RoCoFT rank must be between 1 and the matrix dimension {size}, got {rank}")
    if strategy == "first":
        idx = torch.arange(rank)
    elif strategy == "random":
        idx = torch.randperm(size, generator=generator)[:rank]
    else:
        if scores is None or scores.numel() != size:
            raise ValueError(f"Selection {strategy!r} needs {size} calibration scores "
                             "(give apply_rocoft calibration_batches=...)")
        order = torch.sort(scores.detach().cpu().double(), descending=True, stable=True).indices
        if strategy == "max":
            idx = order[:rank]
        elif strategy == "min":
            idx = torch.sort(scores.detach().cpu().double(), stable=True).indices[:rank]
        else:
            hi = order[: (rank + 1) // 2]
            rest = torch.sort(scores.detach().cpu().double(), stable=True).indices
            lo = [i for i in rest.tolist() if i not in set(hi.tolist())][: rank // 2]
            idx = torch.cat([hi, torch.tensor(lo, dtype=torch.long)])
    return idx.sort().values


def choose_index(weight: torch.Tensor, config, generator, input_norm=None) -> torch.Tensor:
    """The indices one weight trains under ``config`` (rows, columns, or flat entries)."""
    if config.axis == "entry":
        return sample_entries(weight.numel(), float(config.p), generator)
    size = weight.shape[0 if config.axis == "row" else 1]
    if config.rank > size:
        raise ValueError(f"RoCoFT rank {config.rank} exceeds the {config.axis} count {size} of a "
                         f"{tuple(weight.shape)} weight")
    scores = wanda_scores(weight, input_norm, config.axis) if input_norm is not None else None
    selection = config.selection if scores is not None or config.selection not in SCORED else "first"
    return select_indices(size, config.rank, selection, generator=generator, scores=scores)


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """The RNG of one layer's random choice: depends on the seed and the layer's name only, so that
    ``apply_rocoft`` and ``get_peft_model`` pick the same rows whatever order layers are visited in."""
    offset = sum((i + 1) * ord(c) for i, c in enumerate(layer_name)) % 1_000_003  # stable across processes
    return torch.Generator().manual_seed(seed * 1_000_003 + offset)
