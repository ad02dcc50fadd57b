"""Save a model adapted with :func:`rocoft.apply_rocoft` as a peft adapter, and load it back.

The files are exactly what ``PeftModel.save_pretrained`` writes for a RoCoFT adapter
(``adapter_config.json`` + ``adapter_model.safetensors``: the trained values, their indices,
trained biases and the fully trained modules such as the task head), through peft's own
``get_peft_model_state_dict`` / ``set_peft_model_state_dict``, so either
``PeftModel.from_pretrained(base, dir)`` or :func:`load_adapter` reads them (also adapters written
by earlier versions of this suite, which used the same names).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from .config import RoCoFTConfig
from .model import ADAPTER, apply_rocoft
from .targets import name_matches

PEFT_PREFIX = "base_model.model."
INDEX_SUFFIX = ".rocoft_slices.index"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trained values + indices of every RoCoFT layer, trained biases and the heads, peft-named."""
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER, save_embedding_layers=False)
    config = model.peft_config[ADAPTER]
    heads = list(getattr(config, "heads_in_place", None) or config.modules_to_save or [])
    if heads:
        owners = [n for n, _ in model.named_modules() if name_matches(n, heads)]
        state.update({n: p for n, p in model.named_parameters()
                      if any(n.startswith(o + ".") for o in owners)})
    return {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_adapter(model: nn.Module, config: RoCoFTConfig, directory: str | os.PathLike,
                 base_model_name_or_path: str | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.base_model_name_or_path = base_model_name_or_path or config.base_model_name_or_path
    config.save_pretrained(str(directory))
    save_file(adapter_state_dict(model), str(directory / "adapter_model.safetensors"))
    return directory


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the saved RoCoFT adapter in ``directory`` to a fresh base ``model`` (no peft wrapper): the saved
    indices are used as they are (no calibration needed), then the saved values are loaded."""
    directory = Path(directory)
    config = RoCoFTConfig.from_pretrained(str(directory))
    state = load_file(str(directory / "adapter_model.safetensors"))
    saved = {k.removeprefix(PEFT_PREFIX).removesuffix(INDEX_SUFFIX): v for k, v in state.items()
             if k.endswith(INDEX_SUFFIX)}
    config.index_fn = lambda name, weight: saved.get(name)
    apply_rocoft(model, config)
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"Adapter {directory} does not fit this model: unexpected {result.unexpected_keys[:3]}")
    return model
