"""What every task provides to the training loop (and to any other user of a task)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .data import load_splits, subsample


class Features(Dataset):
    """A list of tokenised examples (dicts of python lists) as a torch Dataset."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class Task:
    """A task: its raw splits, how to tokenise them, batch them, predict and score.

    Subclasses set ``kind`` (the model head: see ``rocoft.models.HEAD_CLASSES``) and implement
    ``encode``, ``collate``, ``predict_step`` and ``compute_metrics``. The training loop:

    * encodes every split with ``encode(df, tokenizer, max_length, split)``;
    * evaluates each of ``eval_splits`` (those present) by gathering ``predict_step`` outputs over
      all processes, then ``compute_metrics(outputs, split)``;
    * writes ``prediction_records(outputs, split)`` (if not None) to ``<run>/predictions_<split>.jsonl``.

    Tasks are plain objects usable outside the training loop (e.g. for kernel analyses).
    """

    kind: str = ""
    main_metric: str = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg.name

    @property
    def num_labels(self) -> int | None:
        return None

    @property
    def eval_splits(self) -> list[str]:
        """Splits scored at the end of a run; the first is also the periodic validation split."""
        return list(self.cfg.get("eval_splits") or ["validation", "test"])

    def splits(self, max_train: int | None = None, max_eval: int | None = None) -> dict:
        """Raw DataFrames per split, capped at ``max_train`` / ``max_eval`` rows."""
        raw = load_splits(self.cfg)
        seed = self.cfg.split.seed
        return {s: subsample(df, max_train if s == "train" else max_eval, seed) for s, df in raw.items()}

    def encode(self, df, tokenizer, max_length: int, split: str = "train") -> Features:
        raise NotImplementedError

    def collate(self, tokenizer):
        raise NotImplementedError

    @torch.no_grad()
    def predict_step(self, model, batch) -> dict[str, torch.Tensor]:
        """Per-example tensors to gather across processes (first dim = batch)."""
        raise NotImplementedError

    def compute_metrics(self, outputs: dict[str, torch.Tensor], split: str = "validation") -> dict[str, float]:
        raise NotImplementedError

    def prediction_records(self, outputs: dict[str, torch.Tensor], split: str) -> list[dict] | None:
        """Per-example records (input, output, gold, ...) written next to the metrics; None = none."""
        return None

    def check_columns(self, df, split: str, columns) -> None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(f"The {split} split of task {self.name!r} lacks column(s) {missing}; "
                            f"it has {list(df.columns)}. Rename them or set task.text_fields / task.label_field.")
