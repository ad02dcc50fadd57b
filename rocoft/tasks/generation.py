"""Helpers shared by the generation tasks (summarization.py, llm_adapters.py).

* padding lists of token ids into batch tensors (left or right), and generated ids to a fixed width
  so that the batches of a split concatenate after ``accelerator.gather_for_metrics``;
* a tokenizer's special-token framing (the prefix it puts before a text, its end-of-sequence id);
* ``generate`` on a possibly wrapped model (DDP, torch.compile) with the task's generation settings.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def unwrap(model):
    """The model under DistributedDataParallel / DataParallel / torch.compile wrappers (these lack generate)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and not hasattr(model, "generate"):
            model = model._orig_mod
        else:
            return model


def pad(seqs: list[list[int]], value: int, side: str = "right", length: int | None = None) -> torch.Tensor:
    """A (len(seqs), length) LongTensor: each sequence padded with ``value`` on ``side``."""
    length = max([len(s) for s in seqs] + [0]) if length is None else length
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:length]
        if s:
            if side == "left":
                out[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
            else:
                out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def fixed_width(ids: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """``ids`` (batch, t) cut or right-padded with ``value`` to (batch, width)."""
    if ids.shape[1] >= width:
        return ids[:, :width]
    fill = ids.new_full((ids.shape[0], width - ids.shape[1]), value)
    return torch.cat([ids, fill], dim=1)


def framing(tokenizer) -> tuple[list[int], int]:
    """(prefix ids the tokenizer puts before a text, end-of-sequence id).

    LLaMA: ([bos], eos); BERT-style tokenizers (the tiny test models): ([CLS], [SEP]); GPT-2/GPT-J: ([], eos).
    """
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    framed = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(framed) - len(plain) + 1) if framed[i:i + len(plain)] == plain), 0)
    prefix, suffix = list(framed[:start]), list(framed[start + len(plain):])
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = suffix[0] if suffix else tokenizer.sep_token_id
    if eos is None:
        eos = tokenizer.pad_token_id
    return prefix, int(eos)


def generation_kwargs(gen_cfg, defaults: dict | None = None) -> dict:
    """The task's ``generation`` settings as ``generate`` keyword arguments (null values dropped)."""
    kwargs = dict(defaults or {})
    plain = OmegaConf.to_container(gen_cfg, resolve=True) if OmegaConf.is_config(gen_cfg) else dict(gen_cfg or {})
    kwargs.update({k: v for k, v in plain.items() if v is not None})
    kwargs.setdefault("num_beams", 1)
    kwargs.setdefault("do_sample", False)
    return kwargs


def generate(model, input_ids, attention_mask, **kwargs) -> torch.Tensor:
    return unwrap(model).generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
