"""Benchmark shapes (model configs at exact sizes, random weights), per-device settings and inputs.

A shape is a transformers config at a real model's size; its weights are random (never downloaded),
built through the suite's own :func:`rocoft.models.build_model` (``source: random``) directly on the
target device (or on ``meta`` for the memory estimate). Defaults per device, each overridable on the
command line (``--dtype/--autocast/--batch/--seq-len/--warmup/--repeats``):

    cpu : float32, batch 8 x seq 128 (tiny, tiny-llama 4 x 32; llama-1b 2 x 128), warmup 2, repeats 5
    cuda: llama2-7b bf16 4 x 512; llama-1b bf16 8 x 512; roberta-base fp32 + bf16 autocast 32 x 128;
          warmup 4, repeats 12
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch import nn

from ..models import build_model as build_suite_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Shape:
    name: str
    model_type: str
    task: str  # "seq_cls" (RobertaForSequenceClassification) or "causal_lm"
    config: dict
    defaults: dict  # device type -> {"dtype", "autocast", "batch", "seq_len"}
    gpu_only: bool = False

    @property
    def model_class(self) -> str:
        return "RobertaForSequenceClassification" if self.task == "seq_cls" else "LlamaForCausalLM"

    @property
    def max_seq_len(self) -> int:
        """Longest input the position embeddings allow (RoBERTa's positions start after the pad id)."""
        return self.config["max_position_embeddings"] - (2 if self.model_type == "roberta" else 0)


def _roberta(hidden, layers, heads, ffn, vocab):
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                vocab_size=vocab, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, num_labels=2)


def _llama(hidden, layers, heads, ffn, vocab=32000):
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, intermediate_size=ffn, vocab_size=vocab,
                max_position_embeddings=4096, tie_word_embeddings=False)


def _d(dtype, autocast, batch, seq_len):
    return dict(dtype=dtype, autocast=autocast, batch=batch, seq_len=seq_len)


SHAPES: dict[str, Shape] = {s.name: s for s in [
    Shape("tiny", "roberta", "seq_cls", _roberta(64, 2, 4, 256, 1000),
          {"cpu": _d("float32", False, 4, 32), "cuda": _d("float32", False, 4, 32)}),
    Shape("roberta-base", "roberta", "seq_cls", _roberta(768, 12, 12, 3072, 50265),
          {"cpu": _d("float32", False, 8, 128), "cuda": _d("float32", True, 32, 128)}),
    Shape("tiny-llama", "llama", "causal_lm", _llama(64, 2, 4, 176, vocab=1000),
          {"cpu": _d("float32", False, 4, 32), "cuda": _d("float32", False, 4, 32)}),
    Shape("llama-1b", "llama", "causal_lm", _llama(2048, 16, 32, 5504),
          {"cpu": _d("float32", False, 2, 128), "cuda": _d("bfloat16", False, 8, 512)}),
    Shape("llama2-7b", "llama", "causal_lm", _llama(4096, 32, 32, 11008),
          {"cuda": _d("bfloat16", False, 4, 512)}, gpu_only=True),
]}
DEVICE_DEFAULTS = {"cpu": dict(warmup=2, repeats=5), "cuda": dict(warmup=4, repeats=12)}


@dataclass
class Settings:
    """Everything one shape's measurement needs; the same for every variant."""
    shape: Shape
    device: torch.device
    dtype: str
    autocast: bool
    batch: int
    seq_len: int
    warmup: int
    repeats: int
    seed: int = 0
    input_seed: int = 1234
    lora_dropout: float = 0.0
    lr: float = 1e-4

    @property
    def autocast_dtype(self):
        return torch.bfloat16 if self.autocast else None


def model_config(shape: Shape, dtype: str):
    """The shape as a ``conf/model``-style config for :func:`rocoft.models.build_model` (random weights).

    The dtype also goes into the transformers config, so the weights are created in it (not cast after:
    a bf16 LLaMA-2-7B never exists in float32 on the device)."""
    config = {k: v for k, v in shape.config.items() if k != "num_labels"}
    return OmegaConf.create({"name": shape.name, "family": shape.model_type, "source": "random", "hub_id": None,
                             "path": None, "tokenizer": None, "dtype": dtype, "load_kwargs": {},
                             "config": {**config, "dtype": dtype},
                             "target_modules": None, "head_modules": None})  # the variants pick the targets


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype | str, seed: int) -> nn.Module:
    """Random-init model from the shape's config (never downloads), built directly on ``device``."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    kind = "classification" if shape.task == "seq_cls" else "causal_lm"
    torch.manual_seed(seed)
    with torch.device(device):
        model = build_suite_model(model_config(shape, name), kind, num_labels=shape.config.get("num_labels"))
    return model.to(device).train()


def make_inputs(shape: Shape, batch: int, seq_len: int, device: torch.device, seed: int) -> dict:
    """Random token ids (no pad/bos/eos ids), an all-ones mask and labels (class ids or the ids themselves)."""
    g = torch.Generator().manual_seed(seed)
    vocab = shape.config["vocab_size"]
    ids = torch.randint(3, vocab, (batch, seq_len), generator=g)  # >= 3: no pad/bos/eos ids
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if shape.task == "seq_cls":
        inputs["labels"] = torch.randint(0, shape.config["num_labels"], (batch,), generator=g)
    else:
        inputs["labels"] = ids.clone()
    return {k: v.to(device) for k, v in inputs.items()}
