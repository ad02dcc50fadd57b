"""Save a model adapted with :func:`rocoft.apply_rocoft` as a peft adapter, and load it back.

The files are exactly what ``PeftModel.save_pretrained`` writes for a RoCoFT adapter
(``adapter_config.json`` + ``adapter_model.safetensors``: the trained values, their indices,
trained biases and the fully trained modules such as the task head), so either
``PeftModel.from_pretrained(base, dir)`` or :func:`load_adapter` reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import RoCoFTConfig
from .model import apply_rocoft

PEFT_PREFIX = "base_model.model."


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trained values + indices of every RoCoFT layer and every other trainable parameter, peft-named."""
    state = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and ".rocoft." not in n}
    out = {}
    for key, value in state.items():
        if ".rocoft." in key:
            out[PEFT_PREFIX + key.replace(".rocoft.", ".rocoft_slices.")] = value
        elif key in trainable:
            out[PEFT_PREFIX + key] = value
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_adapter(model: nn.Module, config: RoCoFTConfig, directory: str | os.PathLike,
                 base_model_name_or_path: str | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.base_model_name_or_path = base_model_name_or_path or config.base_model_name_or_path
    config.save_pretrained(str(directory))
    save_file(adapter_state_dict(model), str(directory / "adapter_model.safetensors"))
    return directory


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the saved RoCoFT adapter in ``directory`` to a fresh base ``model`` (no peft wrapper)."""
    directory = Path(directory)
    config = RoCoFTConfig.from_pretrained(str(directory))
    if config.selection in ("max", "min", "mixed"):
        config.selection = "first"  # the saved indices replace the placeholder choice below
    apply_rocoft(model, config)
    state = {k.removeprefix(PEFT_PREFIX).replace(".rocoft_slices.", ".rocoft."): v
             for k, v in load_file(str(directory / "adapter_model.safetensors")).items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"Adapter {directory} does not fit this model: unexpected {result.unexpected_keys[:3]}")
    return model
