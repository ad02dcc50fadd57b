"""What every task provides to the training loop (and to any other user of a task)."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .data import Source, SplitSpec, load_splits, read_table, subsample


class Encoded(Dataset):
    """One tokenised split: ``rows`` (dicts of python lists: what ``collate`` batches) and what scoring needs.

    ``examples``: per-example columns for scoring and prediction records (gold answers, prompts, ids ...);
    ``features``: per-row bookkeeping when a row is not an example (QA: the windows of a long context)."""

    def __init__(self, rows: list[dict], split: str = "train", tokenizer=None, examples: dict | None = None,
                 features: dict | None = None):
        self.rows, self.split, self.tokenizer = rows, split, tokenizer
        self.examples, self.features = examples or {}, features or {}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class Splits(dict):
    """What ``Task.splits`` returns: split -> DataFrame, and ``labels``: what the data says about the task's
    labels (a classification task's ``LabelSet``; None for the other tasks)."""

    def __init__(self, frames: dict, labels=None):
        super().__init__(frames)
        self.labels = labels


def settings(cls, value, key: str):
    """A dataclass of settings from a config mapping; unknown keys are one clear error."""
    if isinstance(value, cls):
        return value
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value or {}) - names)
    if unknown:
        raise UserError(f"Unknown setting(s) {unknown} in task.{key}; known: {sorted(names)}.")
    return cls(**(value or {}))


class Task:
    """A task: its raw splits, how to tokenise them, batch them, predict and score.

    The settings are constructor arguments (a task YAML names the class in ``_target_``; see
    :func:`rocoft.tasks.build_task`). Subclasses set ``kind`` (the model head: ``rocoft.models.HEAD_CLASSES``)
    and implement ``encode``, ``collate``, ``predict_step`` and ``score``. The training loop:

    * encodes every split: ``data[split] = encode(df, tokenizer, max_length, split)``, an :class:`Encoded`;
    * trains on ``loss(model, batch)`` of the collated batches (default: the model's own loss);
    * evaluates each of ``eval_splits`` (those present) by gathering ``predict_step`` outputs over all
      processes, then ``metrics, records = score(outputs, data[split])``; metrics are fractions (see
      ``rocoft.metrics``), records (if not None) go to ``<run>/predictions_<split>.jsonl``.

    Tasks are plain objects usable outside the training loop (e.g. for kernel analyses).
    """

    kind: str = ""
    main_metric: str = ""
    default_eval_splits = ("validation", "test")
    reader = staticmethod(read_table)   # reads one local data file (rocoft.tasks.data)
    text_columns: tuple[str, ...] = ()   # the text columns: the key of split.dedupe
    stratify: str | None = None          # the column carved splits are stratified by
    column_hint = ""                     # ends the error for a missing column: how to fix it

    def __init__(self, name: str, dataset: dict | None = None, data_files: dict | str | None = None,
                 eval_splits: list[str] | None = None, split: dict | None = None, main_metric: str | None = None):
        self.name = name
        self.source = settings(Source, dataset, "dataset")
        self.data_files = {"train": data_files} if isinstance(data_files, str) else dict(data_files or {})
        self.eval_splits = list(eval_splits or self.default_eval_splits)
        self.split = settings(SplitSpec, split, "split")
        self.main_metric = main_metric or self.main_metric

    @property
    def num_labels(self) -> int | None:
        return None

    # ---- raw data
    def files(self) -> dict:
        """Split -> local file to read (``task.data_files``; empty: the source is ``task.dataset``)."""
        return {s: p for s, p in self.data_files.items() if p}

    def required_columns(self, split: str) -> list[str]:
        """The columns ``split`` must have as read (before ``prepare``). The loader checks them, once, for
        every split (the train split also for the splits carved from it); ``encode`` trusts its input."""
        return list(self.text_columns)

    def hint(self) -> str:
        """How to give the data offline (ends every data error)."""
        return (f"give local files with columns [{', '.join(self.required_columns('train'))}], e.g. "
                f"task.data_files.train=train.csv task.data_files.validation=dev.csv (csv, tsv, json, jsonl or "
                f"parquet).")

    def prepare(self, df, split: str):
        """One split as read, in the task's columns (the identity unless a task needs more)."""
        return df

    def load(self) -> dict:
        """All splits, whole: train / validation / test (or the task's own), missing ones carved from train."""
        return load_splits(self.name, self.files(), self.source, self.split, self.reader, self.prepare,
                           self.required_columns, self.text_columns, self.stratify, self.eval_splits, self.hint(),
                           self.column_hint)

    def splits(self, max_train: int | None = None, max_eval: int | None = None) -> Splits:
        """Raw DataFrames per split, capped at ``max_train`` / ``max_eval`` rows (a seeded subset), and in
        ``.labels`` the task's label set as the whole training split gives it (:meth:`label_set`)."""
        raw = self.load()
        return Splits({s: subsample(df, max_train if s == "train" else max_eval, self.split.seed)
                       for s, df in raw.items()}, labels=self.label_set(raw["train"]))

    def label_set(self, train=None):
        """The labels a classification task predicts (``ClassificationTask``); None for the other tasks."""

    def use_model(self, model_cfg) -> None:
        """Adapt the task to the run's model config (a prompt task picks its masked- or causal-LM head);
        :func:`rocoft.tasks.build_task` calls it when given the model config. Most tasks need nothing."""

    # ---- features, prediction, scoring
    def model_inputs(self, batch: dict) -> dict:
        """The part of a collated batch the model itself takes (what calibration passes feed it)."""
        return batch

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The training loss of one collated batch: the model's own (labels in the batch) unless a task
        defines its own (a prompt task's cross-entropy over label-word logits)."""
        return model(**batch).loss

    def encode(self, df, tokenizer, max_length: int, split: str = "train") -> Encoded:
        raise NotImplementedError

    def collate(self, tokenizer):
        raise NotImplementedError

    @torch.no_grad()
    def predict_step(self, model, batch) -> dict[str, torch.Tensor]:
        """Per-example tensors to gather across processes (first dim = batch)."""
        raise NotImplementedError

    def score(self, outputs: dict[str, torch.Tensor], encoded: Encoded) -> tuple[dict[str, float], list[dict] | None]:
        """(metrics, per-example records or None) of the gathered ``outputs`` of the split ``encoded``."""
        raise NotImplementedError
