"""Default RoCoFT/PEFT target layers per architecture family (the paper's choice: attention
query/key/value/output and the feed-forward in/out projections of every block)."""

from __future__ import annotations

import re

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
    """True if module ``name`` matches any pattern.

    A plain pattern matches the whole dotted name or a dotted suffix of it (``"query"`` matches
    ``encoder.layer.0.attention.self.query``; ``"output.dense"`` matches both
    ``...attention.output.dense`` and ``...layer.0.output.dense``). A pattern that starts with
    ``re:`` is a regular expression that must match the whole name.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    for p in patterns or ():
        if p.startswith("re:"):
            if re.fullmatch(p[3:], name):
                return True
        elif name == p or name.endswith("." + p):
            return True
    return False
