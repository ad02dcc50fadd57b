"""Which layers RoCoFT adapts: default targets per architecture family (the paper's choice: attention
query/key/value/output and the feed-forward in/out projections of every block), name matching as
peft does it for LoRA, heads left out, shared and tied layers found."""

from __future__ import annotations

import re

import torch
from torch import nn

FAMILY_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "attention.output.dense",
                   "intermediate.dense", "output.dense"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bloom": ["query_key_value", "self_attention.dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
}
FAMILY_TARGETS["mistral"] = FAMILY_TARGETS["qwen2"] = FAMILY_TARGETS["llama"]


def default_targets(model_type: str) -> list[str]:
    """Target patterns for a transformers ``config.model_type``; a clear error if unknown."""
    try:
        return FAMILY_TARGETS[model_type]
    except KeyError:
        raise ValueError(
            f"No default RoCoFT target modules for model type {model_type!r}; pass target_modules "
            f"explicitly (known families: {', '.join(sorted(FAMILY_TARGETS))})."
        ) from None


def name_matches(name: str, patterns) -> bool:
    r"""True if module ``name`` matches ``patterns``, as peft matches LoRA's ``target_modules``.

    A string is a regular expression that must match the whole name (``"lin0"``,
    ``r".*\.(query|value)"``). In a list, a pattern matches the whole dotted name or a dotted suffix
    of it (``"query"`` matches ``encoder.layer.0.attention.self.query``; ``"output.dense"`` matches
    both ``...attention.output.dense`` and ``...layer.0.output.dense``), and a pattern that starts
    with ``re:`` is a regular expression that must match the whole name.
    """
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    for p in patterns or ():
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif name == p or name.endswith("." + p):
            return True
    return False


def target_patterns(model: nn.Module, config) -> list[str] | str:
    if config.target_modules is not None:
        return config.target_modules
    return default_targets(getattr(getattr(model, "config", None), "model_type", None))


def in_saved_module(name: str, modules_to_save) -> bool:
    """True if ``name`` or a module containing it is trained fully (``modules_to_save``)."""
    parts = name.split(".")
    return bool(modules_to_save) and any(name_matches(".".join(parts[:i]), list(modules_to_save))
                                         for i in range(1, len(parts) + 1))


def is_target(name: str, patterns, config) -> bool:
    """Matched by the patterns, not excluded, not inside a fully trained head."""
    heads = config.modules_to_save or getattr(config, "heads_in_place", None)
    return (name_matches(name, patterns) and not name_matches(name, config.exclude_modules)
            and not in_saved_module(name, heads))


def find_targets(model: nn.Module, config) -> list[str]:
    """Names of the ``nn.Linear`` layers RoCoFT adapts (never those trained fully as heads)."""
    patterns = target_patterns(model, config)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and is_target(n, patterns, config)]
    if not names:
        raise ValueError(f"RoCoFT target patterns {patterns} matched no nn.Linear layer of {type(model).__name__}")
    check_untied(names, tied_modules(model))
    return names


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
    """Merging writes the trained values into the weight: a weight that another module also uses would
    change under that module too."""
    for name in names:
        if name in tied:
            raise ValueError(f"RoCoFT target {name!r} shares its weight with another module (tied weights): untie "
                             f"them first (e.g. config.tie_word_embeddings=False) or leave {name!r} out of the targets")
