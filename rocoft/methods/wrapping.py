"""Methods that wrap each targeted ``nn.Linear`` in a module of their own: MoSLoRA and LoRA-XS
(``lora_variants``), SFT and Diff pruning (``sparse``).

A wrapper keeps the pretrained layer as ``.base`` (frozen, never written to while training) and adds
its update ``delta_weight()`` in forward. The targets are the model config's ``target_modules`` (the
layers RoCoFT and LoRA adapt), matched as peft matches LoRA's; a layer inside a task head is never
wrapped (the head trains fully).

The artifact (``adapter/adapter.safetensors``) holds every tensor of the wrappers except their base
layer's, and the task head's; :meth:`LinearWrapperMethod.load` wraps a fresh base the same way and
loads them. :meth:`merged` adds each update to its base weight and puts the plain layer back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import name_matches
from ..core.targets import in_saved_module
from ..errors import UserError
from .base import Method, freeze, require_trainable

ARTIFACT = "adapter.safetensors"


class LinearWrapper(nn.Module):
    """A frozen ``nn.Linear`` (``base``) plus an update; subclasses define ``delta_weight`` and ``forward``."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``W_adapted - W_pretrained`` (shape of ``base.weight``)."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        return self.base


class LinearWrapperMethod(Method):
    """Wrap every targeted linear layer with :meth:`wrap`; the task head trains fully."""

    def __init__(self, name: str, *, rank: int | None = None, target_modules: list[str] | None = None, **context):
        super().__init__(name, rank=rank, **context)
        targets = self.model_cfg.target_modules if target_modules is None else target_modules
        self.targets = list(targets)

    def wrap(self, name: str, layer: nn.Linear) -> LinearWrapper:
        raise NotImplementedError

    def wrap_saved(self, name: str, layer: nn.Linear, state: dict) -> LinearWrapper:
        """The wrapper a saved artifact's tensors (``state``) load into (by default the training one)."""
        return self.wrap(name, layer)

    def target_names(self, model: nn.Module) -> list[str]:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_matches(n, self.targets)
                 and not in_saved_module(n, self.heads)]
        if not names:
            raise UserError(f"method={self.name}: target_modules {self.targets} match no linear layer of "
                            f"{self.model_cfg.name} (family {self.model_cfg.family}).")
        return names

    def _replace(self, model: nn.Module, make) -> nn.Module:
        for name in self.target_names(model):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, make(name, getattr(parent, child)))
        return model

    def apply(self, model, **_):
        freeze(model)
        self._replace(model, self.wrap)
        self.train_heads(model)
        require_trainable(model, self)
        return model

    @staticmethod
    def wrappers(model: nn.Module):
        return [(n, m) for n, m in model.named_modules() if isinstance(m, LinearWrapper)]

    def adapter_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The wrappers' tensors (not their base layer's) and the task head's, by state-dict name."""
        own = [n + "." for n, _ in self.wrappers(model)]
        bases = [n + "base." for n in own]
        heads = [n + "." for n, _ in model.named_modules() if self.heads and name_matches(n, self.heads)]
        return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
                if (k.startswith(tuple(own)) and not k.startswith(tuple(bases))) or k.startswith(tuple(heads))}

    def save(self, model, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state(model), str(directory / ARTIFACT), metadata={"method": self.name})

    def load(self, base, directory):
        state = load_file(str(Path(directory) / ARTIFACT))
        freeze(base)
        self._replace(base, lambda name, layer: self.wrap_saved(name, layer, state))
        expected = set(self.adapter_state(base))
        result = base.load_state_dict(state, strict=False)
        missing = sorted(expected & set(result.missing_keys))
        if result.unexpected_keys or missing:
            raise UserError(f"{directory} does not fit this model (method={self.name}): unexpected "
                            f"{result.unexpected_keys[:3]}, missing {missing[:3]}")
        freeze(base)
        return base

    def merged(self, model):
        for name, wrapper in self.wrappers(model):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, wrapper.merge())
        return model
