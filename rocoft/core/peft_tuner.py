"""RoCoFT as a PEFT method: ``peft.get_peft_model(model, RoCoFTConfig(...))``.

Importing ``rocoft`` registers it, after which the usual peft workflow applies::

    model = get_peft_model(base, RoCoFTConfig(axis="row", rank=3, modules_to_save=["classifier"]))
    ... train ...
    model.save_pretrained(dir)                    # only the trained values + their indices + config
    model = PeftModel.from_pretrained(base, dir)  # exact outputs on a fresh base
    merged = model.merge_and_unload()             # a plain transformers model

RoCoFT updates the weight in place, so a layer holds each adapter's trained values and
indices (one :class:`RoCoFTSlice` per adapter) and writes the *active* adapter's values into
the base weight; switching or disabling adapters first restores the pretrained values.
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils.peft_types import register_peft_method
from torch import nn

from .config import RoCoFTConfig, _ensure_peft_type
from .layer import RoCoFTSlice, origin_for_load
from .model import (check_untied, choose_index, in_saved_module, layer_generator, replace_everywhere,
                    target_patterns, tied_modules)
from .selection import SCORED
from .targets import FAMILY_TARGETS, name_matches


class RoCoFTLayer(nn.Module, BaseTunerLayer):
    """A linear layer with one or more RoCoFT adapters; the active one lives inside ``base_layer.weight``."""

    adapter_layer_names = ("rocoft_slices",)

    def __init__(self, base_layer: nn.Linear, adapter_name: str, index: torch.Tensor, config: RoCoFTConfig):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"RoCoFT adapts nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.rocoft_slices = nn.ModuleDict()
        self.merged_adapters: list[str] = []
        self._written: str | None = None  # the adapter whose values are in base_layer.weight now
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self._register_load_state_dict_pre_hook(_restore_before_load, with_module=True)
        self.register_load_state_dict_post_hook(_reset_after_load)
        self.update_layer(adapter_name, index, config)

    def update_layer(self, adapter_name: str, index: torch.Tensor, config: RoCoFTConfig) -> None:
        self.write(None)  # a new adapter reads pristine pretrained values
        master = getattr(torch, config.master_dtype) if config.master_dtype else None
        self.rocoft_slices[adapter_name] = RoCoFTSlice(self.base_layer.weight, config.axis, index, master,
                                                         config.reuse_saved_inputs)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        if self._written == adapter_name:
            self.write(None)  # its values leave the weight with it
        super().delete_adapter(adapter_name)
        self.write(self._single_active())

    def write(self, adapter_name: str | None, force: bool = False) -> None:
        """Make ``base_layer.weight`` hold ``adapter_name``'s values (None: the pretrained ones)."""
        w = self.base_layer.weight
        if self._written != adapter_name or force:
            if self._written is not None and self._written in self.rocoft_slices:
                self.rocoft_slices[self._written].restore(w)
            if adapter_name is not None:
                self.rocoft_slices[adapter_name].sync(w, force=True)
            self._written = adapter_name
        elif adapter_name is not None:
            self.rocoft_slices[adapter_name].sync(w)

    def _single_active(self) -> str | None:
        active = [a for a in self.active_adapters if a in self.rocoft_slices]
        if len(active) > 1:
            raise ValueError(f"RoCoFT updates weights in place: one active adapter at a time, got {active}")
        return active[0] if active else None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            self.write(None)
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        adapter = self._single_active()
        self.write(adapter)
        if adapter is None:
            return self.base_layer(x, *args, **kwargs)
        return self.rocoft_slices[adapter].linear(x, self.base_layer)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        if len(adapter_names) > 1 or self.merged_adapters:
            raise ValueError("RoCoFT merges one adapter at a time (its values replace weight entries in place)")
        name = adapter_names[0]
        self.write(name, force=True)
        if safe_merge and not torch.isfinite(self.base_layer.weight).all():
            self.write(None)
            raise ValueError(f"NaNs or infs in the merged weights of adapter {name!r}")
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if self.merged_adapters:
            self.merged_adapters.pop()
            self.write(None)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense update ``W_finetuned - W_pretrained`` of one adapter (zero outside its rows/columns)."""
        s = self.rocoft_slices[adapter_name]
        delta = torch.zeros_like(self.base_layer.weight, dtype=s.weight.dtype)
        s.scatter(delta, s.weight.detach() - s.origin.to(s.weight.dtype))
        return delta

    def __repr__(self) -> str:
        return "rocoft." + super().__repr__()


def _restore_before_load(module: RoCoFTLayer, state_dict, prefix, *args, **kwargs):
    module.write(None)
    w = module.base_layer.weight
    module._pending_origins = {name: origin_for_load(s, w, state_dict, prefix + "base_layer.weight",
                                                     f"{prefix}rocoft_slices.{name}.")
                               for name, s in module.rocoft_slices.items()}


def _reset_after_load(module: RoCoFTLayer, incompatible_keys):
    pending = getattr(module, "_pending_origins", None) or {}
    for name, s in module.rocoft_slices.items():
        s.reset_origin(module.base_layer.weight, pending.get(name))
    module._pending_origins = None


class RoCoFTModel(BaseTuner):
    """The peft tuner that injects :class:`RoCoFTLayer` into the targeted linear layers."""

    prefix: str = "rocoft_"
    tuner_layer_cls = RoCoFTLayer
    target_module_mapping = FAMILY_TARGETS

    def _prepare_adapter_config(self, peft_config: RoCoFTConfig, model_config: dict) -> RoCoFTConfig:
        self._tied = tied_modules(self.model)  # once per injection, read for each target
        if peft_config.target_modules is None:
            peft_config.target_modules = target_patterns(self.model, peft_config)
        if peft_config.selection in SCORED and peft_config.axis != "entry":
            warnings.warn(f"RoCoFT selection {peft_config.selection!r} needs calibration data, which "
                          "get_peft_model cannot take: rows/columns start as 'first' (a checkpoint's saved "
                          "indices replace them on load). Use rocoft.apply_rocoft(model, config, "
                          "calibration_batches=...) to select by Wanda scores.", stacklevel=2)
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: RoCoFTConfig, key: str) -> bool:
        return (name_matches(key, peft_config.target_modules) and not name_matches(key, peft_config.exclude_modules)
                and not in_saved_module(key, peft_config.modules_to_save))

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        generator = layer_generator(peft_config.seed, current_key)
        base = target.get_base_layer() if isinstance(target, RoCoFTLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(f"RoCoFT adapts nn.Linear layers; {current_key} is {type(base).__name__}")
        config = peft_config
        if config.selection in SCORED and config.axis != "entry":
            config = RoCoFTConfig(**{**config.to_dict(), "selection": "first", "peft_type": None})
        if getattr(self, "_tied", None) is None:
            self._tied = tied_modules(self.model)
        check_untied([current_key], self._tied)
        index = choose_index(base.weight, config, generator)
        if isinstance(target, RoCoFTLayer):
            target.update_layer(adapter_name, index, peft_config)
            return
        new_module = RoCoFTLayer(target, adapter_name, index, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
        replace_everywhere(self.model, target, new_module)  # the same layer registered under other names too

    def _unload_and_optionally_merge(self, merge=True, *args, **kwargs):
        if not merge:  # the base layers leave holding their pretrained weights
            for module in self.model.modules():
                if isinstance(module, RoCoFTLayer):
                    module.merged_adapters.clear()
                    module.write(None)
        return super()._unload_and_optionally_merge(merge, *args, **kwargs)

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        for module in self.model.modules():
            if isinstance(module, RoCoFTLayer):
                module.write(module._single_active())


_ensure_peft_type()
register_peft_method(name="rocoft", config_cls=RoCoFTConfig, model_cls=RoCoFTModel)
