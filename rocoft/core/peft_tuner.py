"""RoCoFT as a peft method: the one RoCoFT layer (:class:`RoCoFTLayer`) and its tuner (:class:`RoCoFTModel`).

Importing ``rocoft`` registers it, after which the usual peft workflow applies::

    model = get_peft_model(base, RoCoFTConfig(axis="row", rank=3, modules_to_save=["classifier"]))
    ... train ...
    model.save_pretrained(dir)                    # only the trained values + their indices + config
    model = PeftModel.from_pretrained(base, dir)  # exact outputs on a fresh base
    merged = model.merge_and_unload()             # a plain transformers model

``rocoft.apply_rocoft`` injects the same layers through the same tuner (without the PeftModel
wrapper). A layer holds one :class:`RoCoFTSlice` per adapter; the base weight keeps the pretrained
values, so adapters can be added, switched, disabled, deleted and combined (several active
adapters add their changes) as with any peft tuner. Merging writes the trained values into the
base weight; unmerging restores the values it overwrote.
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils.peft_types import register_peft_method
from torch import nn

from .config import RoCoFTConfig, _ensure_peft_type
from .layer import RoCoFTSlice
from .selection import SCORED, choose_index, layer_generator
from .targets import (FAMILY_TARGETS, check_untied, is_target, replace_everywhere, target_patterns,
                      tied_modules)


class RoCoFTLayer(nn.Module, BaseTunerLayer):
    """A linear layer with one or more RoCoFT adapters (``rocoft_slices[adapter_name]``) over a frozen base."""

    adapter_layer_names = ("rocoft_slices",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Linear, adapter_name: str, index: torch.Tensor, config: RoCoFTConfig,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"RoCoFT adapts nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.rocoft_slices = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self.kwargs = {}
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.update_layer(adapter_name, index, config, generator)

    def update_layer(self, adapter_name: str, index: torch.Tensor, config: RoCoFTConfig,
                     generator: torch.Generator | None = None) -> None:
        dtype = getattr(torch, config.master_dtype) if config.master_dtype else None
        s = RoCoFTSlice(self.base_layer.weight, config.axis, index, dtype, config.reuse_saved_inputs)
        if not config.init_weights and s.weight.device.type != "meta":
            s.perturb(generator if generator is not None else torch.Generator().manual_seed(config.seed))
        self.rocoft_slices[adapter_name] = s
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def slice(self, adapter_name: str | None = None) -> RoCoFTSlice:
        """The trained values of ``adapter_name`` (None: the active adapter, which must be one)."""
        if adapter_name is None:
            active = [a for a in self.active_adapters if a in self.rocoft_slices]
            if len(active) != 1:
                raise ValueError(f"RoCoFTLayer.slice() needs an adapter name: active adapters here are {active}")
            adapter_name = active[0]
        return self.rocoft_slices[adapter_name]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.rocoft_slices]
        if len(active) == 1:
            return self.rocoft_slices[active[0]].linear(x, self.base_layer)
        y = self.base_layer(x, *args, **kwargs)
        for name in active:  # several active adapters: their changes add up, as LoRA's do
            y = self.rocoft_slices[name].add_correction(y, x, self.base_layer.weight)
        return y

    def _pristine_weight(self) -> torch.Tensor:
        """The base weight without any merged adapter (a copy when some are merged)."""
        w = self.base_layer.weight.detach()
        if not self.merged_adapters:
            return w
        w = w.clone()
        for name in reversed(self.merged_adapters):
            s = self.rocoft_slices[name]
            s.scatter(w, s.origin)
        return w

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write the trained values into the base weight (after another merged adapter: add the change)."""
        w = self.base_layer.weight
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.rocoft_slices:
                continue
            s = self.rocoft_slices[name]
            current = s.gather(w)
            if self.merged_adapters:  # the change of this adapter on top of those already merged
                new = current.to(s.weight.dtype) + s.delta(self._pristine_weight())
            else:  # the trained values themselves, exactly
                new = s.weight.detach()
            if safe_merge and not torch.isfinite(new).all():
                raise ValueError(f"NaNs or infs in the merged weights of adapter {name!r}")
            s.origin = current.clone()
            s.scatter(w, new)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        while self.merged_adapters:
            s = self.rocoft_slices[self.merged_adapters.pop()]
            s.scatter(self.base_layer.weight, s.origin)
            s.origin = None

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense update ``W_finetuned - W_pretrained`` of one adapter (zero outside its rows/columns)."""
        s = self.rocoft_slices[adapter_name]
        delta = torch.zeros_like(self.base_layer.weight, dtype=s.weight.dtype)
        s.scatter(delta, s.delta(self._pristine_weight()).detach())
        return delta

    def __repr__(self) -> str:
        return "rocoft." + super().__repr__()


class RoCoFTModel(BaseTuner):
    """The peft tuner that injects :class:`RoCoFTLayer` into the targeted linear layers."""

    prefix: str = "rocoft_"
    tuner_layer_cls = RoCoFTLayer
    target_module_mapping = FAMILY_TARGETS

    def _prepare_adapter_config(self, peft_config: RoCoFTConfig, model_config: dict) -> RoCoFTConfig:
        self._tied = tied_modules(self.model)  # once per injection, read for each target
        if peft_config.target_modules is None:
            peft_config.target_modules = target_patterns(self.model, peft_config)
        if (peft_config.selection in SCORED and peft_config.axis != "entry"
                and getattr(peft_config, "index_fn", None) is None):
            warnings.warn(f"RoCoFT selection {peft_config.selection!r} needs calibration data, which "
                          "get_peft_model cannot take: rows/columns start as 'first' (a checkpoint's saved "
                          "indices replace them on load). Use rocoft.apply_rocoft(model, config, "
                          "calibration_batches=...) to select by Wanda scores.", stacklevel=2)
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config: RoCoFTConfig, key: str) -> bool:
        return is_target(key, peft_config.target_modules, peft_config)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        base = target.get_base_layer() if isinstance(target, RoCoFTLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(f"RoCoFT adapts nn.Linear layers; {current_key} is {type(base).__name__}")
        if getattr(self, "_tied", None) is None:
            self._tied = tied_modules(self.model)
        check_untied([current_key], self._tied)
        index_fn = getattr(peft_config, "index_fn", None)
        index = index_fn(current_key, base.weight) if index_fn is not None else None
        if index is None:
            index = choose_index(base.weight, peft_config, layer_generator(peft_config.seed, current_key))
        noise = layer_generator(peft_config.seed + 1, current_key)  # init_weights=False only
        if isinstance(target, RoCoFTLayer):
            target.update_layer(adapter_name, index, peft_config, noise)
            return
        new_module = RoCoFTLayer(target, adapter_name, index, peft_config, noise)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
        replace_everywhere(self.model, target, new_module)  # the same layer registered under other names too

    def _unload_and_optionally_merge(self, merge=True, *args, **kwargs):
        if not merge:  # the base layers leave holding their pretrained weights
            for module in self.model.modules():
                if isinstance(module, RoCoFTLayer):
                    module.unmerge()
        return super()._unload_and_optionally_merge(merge, *args, **kwargs)


_ensure_peft_type()
register_peft_method(name="rocoft", config_cls=RoCoFTConfig, model_cls=RoCoFTModel)
