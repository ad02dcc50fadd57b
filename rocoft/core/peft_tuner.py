"""RoCoFT as a peft method: the one RoCoFT layer (:class:`RoCoFTLayer`) and its tuner (:class:`RoCoFTModel`).

Importing ``rocoft`` registers it, after which the usual peft workflow applies::

    model = get_peft_model(base, RoCoFTConfig(axis="row", rank=3, modules_to_save=["classifier"]))
    ... train ...
    model.save_pretrained(dir)                    # only the trained values + their indices + config
    model = PeftModel.from_pretrained(base, dir)  # exact outputs on a fresh base
    merged = model.merge_and_unload()             # a plain transformers model

``rocoft.apply_rocoft`` injects the same layers through the same tuner (without the PeftModel
wrapper). A layer holds one :class:`RoCoFTSlice` per adapter and writes the *active* adapter's values
into the frozen base weight, so that the forward is a plain ``F.linear`` (the design measured
fastest; see the README). What follows from writing into the weight, where peft's other tuners
differ:

* one adapter per layer is active at a time (``set_adapter([a, b])`` raises); switching, disabling,
  deleting and unloading first restore the pretrained values;
* merging takes one adapter at a time (its values replace weight entries; they do not add up);
* the base layer's ``weight`` changes while training (the optimizer updates the slice; the next
  forward writes it into the weight), so a full ``state_dict()`` holds the fine-tuned weight; the
  pretrained values are kept in each slice's ``origin`` and survive full state-dict round trips;
* the weight must be a plain, whole tensor on each process: DDP works, FSDP / DeepSpeed ZeRO-3
  sharding of the targeted weights does not;
* a weight shared with another module (tied embeddings) is refused.
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils.peft_types import register_peft_method
from torch import nn

from .config import RoCoFTConfig, _ensure_peft_type
from .layer import RoCoFTSlice, origin_for_load
from .selection import SCORED, choose_index, layer_generator
from .targets import (FAMILY_TARGETS, check_untied, is_target, replace_everywhere, target_patterns,
                      tied_modules)


class RoCoFTLayer(nn.Module, BaseTunerLayer):
    """A linear layer with one or more RoCoFT adapters; the active one lives inside ``base_layer.weight``."""

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
        self._written: str | None = None  # the adapter whose values are in base_layer.weight now
        self.kwargs = {}
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self._register_load_state_dict_pre_hook(_restore_before_load, with_module=True)
        self.register_load_state_dict_post_hook(_reset_after_load)
        self.update_layer(adapter_name, index, config, generator)

    def update_layer(self, adapter_name: str, index: torch.Tensor, config: RoCoFTConfig,
                     generator: torch.Generator | None = None) -> None:
        self.write(None)  # a new adapter reads pristine pretrained values
        dtype = getattr(torch, config.master_dtype) if config.master_dtype else None
        s = RoCoFTSlice(self.base_layer.weight, config.axis, index, dtype, config.reuse_saved_inputs)
        if not config.init_weights and s.ready:
            s.perturb(generator if generator is not None else torch.Generator().manual_seed(config.seed))
        self.rocoft_slices[adapter_name] = s
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def slice(self, adapter_name: str | None = None) -> RoCoFTSlice:
        """The trained values of ``adapter_name`` (None: the active adapter)."""
        return self.rocoft_slices[adapter_name or self._single_active()]

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        self.write(self._single_active())

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            self.unmerge()
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
            self._written = None
            if adapter_name is not None and self.rocoft_slices[adapter_name].ready:
                self.rocoft_slices[adapter_name].sync(w, force=True)
                self._written = adapter_name
        elif adapter_name is not None:
            self.rocoft_slices[adapter_name].sync(w)

    def _single_active(self) -> str | None:
        active = [a for a in self.active_adapters if a in self.rocoft_slices]
        if len(active) > 1:
            raise ValueError(f"RoCoFT writes the trained values into the frozen weight, so one adapter per layer can "
                             f"be active at a time, got {active}: activate one (set_adapter(name)), or merge them "
                             f"one after the other into copies of the model.")
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
        adapter_names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.rocoft_slices]
        if not adapter_names:
            return
        if len(adapter_names) > 1 or self.merged_adapters:
            raise ValueError(f"RoCoFT merges one adapter at a time (its values replace weight entries in place): "
                             f"got {adapter_names} with {self.merged_adapters} merged already; unmerge first.")
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
    if not module.disable_adapters:
        module.write(module._single_active())  # the weight holds the active adapter's values, as before the load


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
                    module.merged_adapters.clear()
                    module.write(None)
        return super()._unload_and_optionally_merge(merge, *args, **kwargs)


_ensure_peft_type()
register_peft_method(name="rocoft", config_cls=RoCoFTConfig, model_cls=RoCoFTModel)
