"""Causal language modelling on a text column (loss on every non-padding token).

Metrics: mean token negative log-likelihood (``loss``) and ``perplexity`` = exp(loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Features, Task


class CausalLMTask(Task):
    kind = "causal_lm"
    main_metric = "perplexity"

    def encode(self, df, tokenizer, max_length, split="train"):
        field = self.cfg.text_fields[0]
        self.check_columns(df, split, [field])
        enc = tokenizer(df[field].fillna("").astype(str).tolist(), truncation=True, max_length=max_length)
        return Features([{k: enc[k][i] for k in ("input_ids", "attention_mask")} for i in range(len(df))])

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

    def compute_metrics(self, outputs, split="validation"):
        loss = float(outputs["nll_sum"].sum() / outputs["tokens"].sum().clamp(min=1))
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
