"""Apply RoCoFT to a model in place (no PeftModel wrapper), calibrate selection scores, count and merge.

:func:`apply_rocoft` is peft's own injection (the :class:`RoCoFTModel` tuner, as
``peft.inject_adapter_in_model`` uses it), with two additions: Wanda-score selections first
calibrate on real inputs and hand the chosen indices to the tuner (``config.index_fn``, as SHiRA's
``mask_fn``), and the heads in ``modules_to_save`` train in place, without peft's copies.
"""

from __future__ import annotations

import copy

import torch
from peft.tuners.tuners_utils import cast_adapter_dtype
from torch import nn

from .config import RoCoFTConfig
from .layer import RoCoFTSlice
from .peft_tuner import RoCoFTLayer, RoCoFTModel
from .selection import SCORED, choose_index, layer_generator
from .targets import find_targets, name_matches, replace_everywhere, target_patterns

ADAPTER = "default"


@torch.no_grad()
def calibrate_input_norms(model: nn.Module, layer_names: list[str], batches) -> dict[str, torch.Tensor]:
    """l2 norm over all calibration tokens of each input feature of each named layer.

    Forward pre-hooks capture each layer's *real* input during ordinary forward passes of the
    whole model over ``batches`` (dicts of model inputs), so attention, norms and residuals
    are all accounted for. Padding tokens are included as the model sees them.
    """
    sq, hooks = {}, []

    def make_hook(name):
        def hook(_module, args):
            x = args[0].detach().double()
            sq[name] = sq.get(name, 0) + x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        return hook

    for name in layer_names:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            model(**batch)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    missing = [n for n in layer_names if n not in sq]
    if missing:
        raise ValueError(f"Calibration batches never reached layers {missing[:3]}; give at least one batch")
    return {n: v.sqrt() for n, v in sq.items()}


def apply_rocoft(model: nn.Module, config: RoCoFTConfig, calibration_batches=None) -> nn.Module:
    """Freeze ``model`` and put :class:`RoCoFTLayer` (adapter ``"default"``) into its targeted linears, in place.

    Trains the selected values, biases per ``config.bias`` and ``config.modules_to_save`` fully (in
    place: no copies, no parameters added). ``calibration_batches`` (an iterable of model-input dicts)
    is required by the Wanda-score selections ``max`` / ``min`` / ``mixed``. Returns ``model`` itself.
    """
    if rocoft_layers(model):
        raise ValueError("This model already has RoCoFT layers: apply_rocoft adapts a base model once. Start from "
                         "a fresh base, or add a second adapter through peft (PeftModel.add_adapter / load_adapter).")
    names = find_targets(model, config)  # clear errors first: no match, tied weights
    inject = copy.copy(config)  # the heads train in place, not as peft's ModulesToSaveWrapper copies
    inject.modules_to_save, inject.heads_in_place = None, config.modules_to_save
    inject.target_modules = target_patterns(model, config)
    if inject.index_fn is None and config.selection in SCORED and config.axis != "entry":
        if calibration_batches is None:
            raise ValueError(f"Selection {config.selection!r} needs calibration_batches")
        norms = calibrate_input_norms(model, names, calibration_batches)
        inject.index_fn = lambda name, weight: choose_index(weight, config, layer_generator(config.seed, name),
                                                            norms[name])
    for p in model.parameters():
        p.requires_grad_(False)
    RoCoFTModel(model, inject, adapter_name=ADAPTER)  # peft's injection, as inject_adapter_in_model does it
    if not config.master_dtype:
        cast_adapter_dtype(model, ADAPTER, autocast_adapter_dtype=True)  # fp32 master for half-precision bases
    if config.modules_to_save:
        for n, m in model.named_modules():
            if name_matches(n, list(config.modules_to_save)):
                m.requires_grad_(True)
    return model


def rocoft_layers(model: nn.Module) -> list[tuple[str, RoCoFTLayer]]:
    """Every RoCoFT layer of ``model`` with its name (a layer registered twice is listed once)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RoCoFTLayer)]


def merge_rocoft(model: nn.Module) -> nn.Module:
    """Write the active adapter into the weights and put the plain ``nn.Linear`` layers back."""
    for _, layer in rocoft_layers(model):
        layer.merge()
        replace_everywhere(model, layer, layer.get_base_layer())
    if isinstance(getattr(model, "peft_config", None), dict):
        del model.peft_config
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts; ``total`` is the base model's (trained RoCoFT values replace
    entries of their weight, so they are not counted twice)."""
    slice_ids = {id(m.weight) for m in model.modules() if isinstance(m, RoCoFTSlice)}
    total = sum(p.numel() for p in model.parameters() if id(p) not in slice_ids)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
