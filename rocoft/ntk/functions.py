"""The functions whose eNTK the paper studies: the C label words' logits of a language model.

* masked LM (LM-BFF / the paper): the raw vocabulary logits of the label words at the ``<mask>``
  position, ``batch["mask_pos"]`` (one position per example);
* causal LM: the next-token logits of the label words after the prompt, at ``batch["target_pos"]``
  if given, else at each example's last attended token (right or left padding).

Each returns a callable ``batch -> [B, C]`` for :class:`rocoft.ntk.kernel.KernelEngine`; the other
entries of the batch (input_ids, attention_mask, ...) go to the model as they are.
"""

from __future__ import annotations

import torch
from torch import nn

POSITION_KEYS = ("mask_pos", "target_pos")


def _label_ids(label_ids) -> torch.Tensor:
    ids = torch.as_tensor(list(label_ids), dtype=torch.long)
    if ids.dim() != 1 or ids.numel() < 1:
        raise ValueError(f"label word ids must be a non-empty list of token ids, got {label_ids!r}")
    return ids


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in POSITION_KEYS}


def masked_lm_logits(model: nn.Module, label_ids):
    """``batch -> logits[b, mask_pos[b], label_ids]``; the batch must hold ``mask_pos`` [B]."""
    ids = _label_ids(label_ids)

    def fn(batch):
        if "mask_pos" not in batch:
            raise ValueError("masked-LM label logits need batch['mask_pos'] (the <mask> position of each example)")
        logits = model(**_model_inputs(batch)).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, batch["mask_pos"].to(logits.device)][:, ids.to(logits.device)]
    return fn


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token (works for right and left padding)."""
    t = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.ne(0) * (t + 1)).argmax(1)


def causal_lm_logits(model: nn.Module, label_ids):
    """``batch -> logits[b, target_pos[b], label_ids]`` (default position: the last attended token)."""
    ids = _label_ids(label_ids)

    def fn(batch):
        logits = model(**_model_inputs(batch)).logits
        if "target_pos" in batch:
            pos = batch["target_pos"]
        elif "attention_mask" in batch:
            pos = last_positions(batch["attention_mask"])
        else:
            pos = torch.full((logits.shape[0],), logits.shape[1] - 1)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, pos.to(logits.device)][:, ids.to(logits.device)]
    return fn
