"""Methods that only choose which existing parameters train: full fine-tuning, BitFit, LN tuning."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .base import Method, freeze, is_norm, require_trainable


class FullFT(Method):
    """Every parameter trains. Its artifact is the whole model (``save_pretrained``).

    The one method that runs under FSDP (``conf/accelerate/fsdp.yaml``): its checkpoints go through
    :mod:`rocoft.sharded`, and :meth:`gather` collects the sharded model on rank 0 before :meth:`save`."""

    sharded_engines_refused = None
    _gathered: dict | None = None

    def apply(self, model, **_):
        model.requires_grad_(True)
        return model

    def gather(self, model: nn.Module) -> None:
        from ..sharded import full_model_state, is_sharded

        self._gathered = full_model_state(model) if is_sharded(model) else None

    def save(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory, state_dict=self._gathered)

    def load(self, base, directory):
        return type(base).from_pretrained(directory)


class BitFit(Method):
    """Only biases (Zaken et al., 2021) and the task head train."""

    def apply(self, model, **_):
        freeze(model)
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.requires_grad_(True)
        self.train_heads(model)
        require_trainable(model, self)
        return model


class LNTuning(Method):
    """Only normalisation layers' parameters (LayerNorm / RMSNorm) and the task head train."""

    def apply(self, model, **_):
        freeze(model)
        for m in model.modules():
            if is_norm(m):
                m.requires_grad_(True)
        self.train_heads(model)
        require_trainable(model, self)
        return model
