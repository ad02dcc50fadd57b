"""Causal language modelling on a text column (loss on every non-padding token).

Example row (``task=rotten_tomatoes_lm``: the Rotten Tomatoes sentences, label used only to stratify)::

    text,label,source
    "the rock is destined to be the 21st century's new " conan " ...",1,rotten_tomatoes

Metrics: mean token negative log-likelihood (``loss``) and ``perplexity`` = exp(loss); not scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Encoded, Task


class CausalLMTask(Task):
    kind = "causal_lm"
    main_metric = "perplexity"
    column_hint = "Rename it or set task.text_fields."

    def __init__(self, text_fields: list[str] = ("text",), label_field: str | None = None, **common):
        super().__init__(**common)
        self.text_columns, self.stratify = list(text_fields), label_field  # the label only stratifies carved splits

    def encode(self, df, tokenizer, max_length, split="train"):
        field = self.text_columns[0]
        enc = tokenizer(df[field].fillna("").astype(str).tolist(), truncation=True, max_length=max_length)
        return Encoded([{k: enc[k][i] for k in ("input_ids", "attention_mask")} for i in range(len(df))], split,
                       tokenizer)

    def collate(self, tokenizer):
        def collate(rows):
            batch = tokenizer.pad(rows, return_tensors="pt")
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
            return batch
        return collate

    @torch.no_grad()
    def predict_step(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none")
        return {"nll_sum": nll.sum(1), "tokens": (shift_labels != -100).sum(1)}

    def score(self, outputs, encoded):
        loss = float(outputs["nll_sum"].sum() / outputs["tokens"].sum().clamp(min=1))
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}, None
