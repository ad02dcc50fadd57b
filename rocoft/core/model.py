"""Apply RoCoFT to a model (without peft), calibrate selection scores, count and merge."""

from __future__ import annotations

import torch
from torch import nn

from .config import RoCoFTConfig
from .layer import RoCoFTLinear
from .selection import SCORED, sample_entries, select_indices, wanda_scores
from .targets import default_targets, name_matches


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at ``name``, and everywhere else the module at ``name`` is registered (one module
    reused under several names must train as one)."""
    replace_everywhere(model, model.get_submodule(name), new)


def replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Every registration of ``old`` in ``model`` (except inside ``new``, which may wrap it) becomes ``new``."""
    inside_new = {id(m) for m in new.modules()}
    for parent in list(model.modules()):
        if id(parent) in inside_new:
            continue
        for child, module in list(parent._modules.items()):
            if module is old:
                setattr(parent, child, new)


def tied_modules(model: nn.Module) -> set[str]:
    """Names of the modules whose weight another module also holds (tied embeddings and LM head, ...)."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(module))
    return {n for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and len(owners.get(id(m.weight), ())) > 1}


def check_untied(names, tied: set[str]) -> None:
    """RoCoFT writes trained values into the weight in place: a weight that another module also uses
    would be trained through one of them only."""
    for name in names:
        if name in tied:
            raise ValueError(f"RoCoFT target {name!r} shares its weight with another module (tied weights): untie "
                             f"them first (e.g. config.tie_word_embeddings=False) or leave {name!r} out of the targets")


def target_patterns(model: nn.Module, config: RoCoFTConfig):
    if config.target_modules is not None:
        return config.target_modules
    return default_targets(getattr(getattr(model, "config", None), "model_type", None))


def in_saved_module(name: str, modules_to_save) -> bool:
    """True if ``name`` or a module containing it is trained fully (``modules_to_save``)."""
    parts = name.split(".")
    return bool(modules_to_save) and any(name_matches(".".join(parts[:i]), modules_to_save)
                                         for i in range(1, len(parts) + 1))


def is_target(name: str, module: nn.Module, patterns, config: RoCoFTConfig) -> bool:
    return (isinstance(module, nn.Linear) and name_matches(name, patterns)
            and not name_matches(name, config.exclude_modules) and not in_saved_module(name, config.modules_to_save))


def find_targets(model: nn.Module, config: RoCoFTConfig) -> list[str]:
    """Names of the ``nn.Linear`` layers RoCoFT adapts (never those trained fully as heads)."""
    patterns = target_patterns(model, config)
    names = [n for n, m in model.named_modules() if is_target(n, m, patterns, config)]
    if not names:
        raise ValueError(f"RoCoFT target patterns {patterns} matched no nn.Linear layer of {type(model).__name__}")
    check_untied(names, tied_modules(model))
    return names


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


def choose_index(weight: torch.Tensor, config: RoCoFTConfig, generator, input_norm=None) -> torch.Tensor:
    """The indices one weight trains under ``config`` (rows, columns, or flat entries)."""
    if config.axis == "entry":
        return sample_entries(weight.numel(), float(config.p), generator)
    size = weight.shape[0 if config.axis == "row" else 1]
    if config.rank > size:
        raise ValueError(f"RoCoFT rank {config.rank} exceeds the {config.axis} count {size} of a "
                         f"{tuple(weight.shape)} weight")
    scores = wanda_scores(weight, input_norm, config.axis) if input_norm is not None else None
    return select_indices(size, config.rank, config.selection, generator=generator, scores=scores)


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """The RNG of one layer's random choice: depends on the seed and the layer's name only, so that
    ``apply_rocoft`` and ``get_peft_model`` pick the same rows whatever order layers are visited in."""
    offset = sum((i + 1) * ord(c) for i, c in enumerate(layer_name)) % 1_000_003  # stable across processes
    return torch.Generator().manual_seed(seed * 1_000_003 + offset)


def apply_rocoft(model: nn.Module, config: RoCoFTConfig, calibration_batches=None) -> nn.Module:
    """Freeze ``model`` and replace its targeted linears by :class:`RoCoFTLinear`, in place.

    Trains the selected values, biases per ``config.bias`` and ``config.modules_to_save`` fully.
    ``calibration_batches`` (an iterable of model-input dicts) is required by the Wanda-score
    selections ``max`` / ``min`` / ``mixed``. (For save / load / merge through peft, use
    ``peft.get_peft_model(model, config)`` instead.)
    """
    names = find_targets(model, config)
    norms = None
    if config.selection in SCORED and config.axis != "entry":
        if calibration_batches is None:
            raise ValueError(f"Selection {config.selection!r} needs calibration_batches")
        norms = calibrate_input_norms(model, names, calibration_batches)
    for p in model.parameters():
        p.requires_grad_(False)
    master = getattr(torch, config.master_dtype) if config.master_dtype else None
    for name in names:
        layer = model.get_submodule(name)
        index = choose_index(layer.weight, config, layer_generator(config.seed, name),
                             None if norms is None else norms[name])
        _set_module(model, name, RoCoFTLinear(layer, config.axis, index, master_dtype=master,
                                                    reuse_saved_inputs=config.reuse_saved_inputs))
        if config.bias == "rocoft_only" and layer.bias is not None:
            layer.bias.requires_grad_(True)
    if config.bias == "all":
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.requires_grad_(True)
    for n, m in model.named_modules():
        if config.modules_to_save and name_matches(n, config.modules_to_save):
            m.requires_grad_(True)
    return model


def rocoft_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RoCoFTLinear)]


def merge_rocoft(model: nn.Module) -> nn.Module:
    """Replace every RoCoFTLinear by its base nn.Linear holding the fine-tuned weight."""
    for name, layer in rocoft_layers(model):
        _set_module(model, name, layer.merge())
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts; trained RoCoFT values count once (they live inside their weight)."""
    from .layer import RoCoFTSlice

    slice_ids = {id(m.weight) for m in model.modules() if isinstance(m, RoCoFTSlice)}
    total = sum(p.numel() for p in model.parameters() if id(p) not in slice_ids)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
