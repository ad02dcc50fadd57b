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

    Subclasses set ``kind`` (the model head: 'classification' or 'causal_lm') and implement
    ``encode``, ``collate``, ``predict_step`` and ``compute_metrics``.
    """

    kind: str = ""
    main_metric: str = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg.name

    @property
    def num_labels(self) -> int | None:
        return None

    def splits(self, max_train: int | None = None, max_eval: int | None = None) -> dict:
        """Raw DataFrames per split, capped at ``max_train`` / ``max_eval`` rows."""
        raw = load_splits(self.cfg)
        seed = self.cfg.split.seed
        return {s: subsample(df, max_train if s == "train" else max_eval, seed) for s, df in raw.items()}

    def encode(self, df, tokenizer, max_length: int) -> Features:
        raise NotImplementedError

    def collate(self, tokenizer):
        raise NotImplementedError

    @torch.no_grad()
    def predict_step(self, model, batch) -> dict[str, torch.Tensor]:
        """Per-example tensors to gather across processes (first dim = batch)."""
        raise NotImplementedError

    def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def check_columns(self, df, split: str, columns) -> None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(f"The {split} split of task {self.name!r} lacks column(s) {missing}; "
                            f"it has {list(df.columns)}. Rename them or set task.text_fields / task.label_field.")
