"""Fine-tuning methods selected by ``conf/method/*.yaml`` (``method.kind``).

Every method freezes what it does not train and leaves the model's task head (``model.head_modules``
for the task's kind) fully trainable, as in the paper.
"""

from __future__ import annotations

from omegaconf import OmegaConf
from torch import nn

from .core import RoCoFTConfig, apply_rocoft, count_parameters, name_matches
from .errors import UserError


def head_patterns(model_cfg, kind: str) -> list[str]:
    heads = model_cfg.get("head_modules") or {}
    return list(heads.get(kind, []) or [])


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def rocoft_config(method_cfg, model_cfg, kind: str, seed: int) -> RoCoFTConfig:
    """The library config of a ``kind: rocoft`` method config (the model's targets unless the method sets some)."""
    targets = method_cfg.get("target_modules") or model_cfg.get("target_modules")
    try:
        return RoCoFTConfig(
            axis=method_cfg.axis, rank=int(method_cfg.get("rank") or 1), p=method_cfg.get("p"),
            bias=method_cfg.bias, selection=method_cfg.selection, seed=seed,
            target_modules=None if targets is None else list(_plain(targets)),
            modules_to_save=head_patterns(model_cfg, kind) or None, master_dtype=method_cfg.get("master_dtype"))
    except ValueError as e:
        raise UserError(f"method={method_cfg.name}: {e}") from None


def apply_method(model: nn.Module, method_cfg, model_cfg, kind: str, seed: int,
                 calibration_batches=None) -> nn.Module:
    """Make ``model`` train what ``method_cfg`` says; returns the (possibly wrapped) model."""
    if method_cfg.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method_cfg.kind == "rocoft":
        try:
            return apply_rocoft(model, rocoft_config(method_cfg, model_cfg, kind, seed),
                                calibration_batches=calibration_batches)
        except ValueError as e:
            raise UserError(f"method={method_cfg.name}: {e}") from None
    raise UserError(f"Unknown method.kind {method_cfg.kind!r} in method config {method_cfg.name!r}")


def parameter_report(model: nn.Module, model_cfg, kind: str) -> dict[str, int | float]:
    """Trainable parameters with and without the task head, and the model's total."""
    counts = count_parameters(model)
    heads = head_patterns(model_cfg, kind)
    head_params = {id(p): p for n, m in model.named_modules() if heads and name_matches(n, heads)
                   for p in m.parameters() if p.requires_grad}
    head = sum(p.numel() for p in head_params.values())
    counts["trainable_without_head"] = counts["trainable"] - head
    counts["trainable_percent"] = 100.0 * counts["trainable"] / counts["total"]
    return counts
