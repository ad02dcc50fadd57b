"""Extractive question answering: SQuAD v1.1 and v2.0 (unanswerable questions).

Example question (official SQuAD JSON, ``dev-v1.1.json``; the hub's ``rajpurkar/squad`` has one row per
question with ``answers = {"text": [...], "answer_start": [...]}``, empty lists in v2.0 = no answer)::

    {"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [{
        "context": "Super Bowl 50 was an American football game to determine the champion of the National
                    Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion
                    Denver Broncos defeated ...",
        "qas": [{"id": "56be4db0acb8001400a502ec", "question": "Which NFL team represented the AFC at Super Bowl 50?",
                 "answers": [{"answer_start": 177, "text": "Denver Broncos"}, ...]}]}]}]}

Local files (``data_files``) may be that JSON (read by ``rocoft.tasks.data.read_squad``) or the hub layout
in json / jsonl / csv / parquet (in csv, ``answers`` is a JSON string). A long context becomes several
overlapping windows (``doc_stride``; see ``qa_windows.py``); evaluation picks, per question over all its
windows, the best span among the ``n_best`` start x end logits, or no answer (v2) when the null score wins
by more than ``null_score_diff_threshold``. Scores: the official exact match and token F1, as fractions.
"""

from __future__ import annotations

import ast
import json

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..metrics.squad import gold_answers, score_one, squad_metrics
from .base import Encoded, Task
from .data import read_squad
from .qa_windows import MODEL_INPUTS, best_answers, label_window, windows

NEG = -1.0e4  # logit padding: never a candidate (real logits are many orders smaller)


def parse_answers(value) -> tuple[list[str], list[int]]:
    """(texts, starts) from the many shapes an ``answers`` cell takes (dict, list of dicts, string)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return [], []
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return [], []
        try:
            value = json.loads(value)
        except ValueError:
            value = ast.literal_eval(value)
        return parse_answers(value)
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        texts = [] if texts is None else [texts] if isinstance(texts, str) else list(texts)
        starts = [] if starts is None else [starts] if np.isscalar(starts) else list(starts)
        return [str(t) for t in texts], [int(s) for s in starts]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(a["text"]) for a in value], [int(a["answer_start"]) for a in value]
    raise ValueError(f"unreadable answers value {value!r}")


class QATask(Task):
    kind = "question_answering"
    main_metric = "f1"
    default_eval_splits = ("validation",)
    reader = staticmethod(read_squad)
    column_hint = "QA data needs [id, question, context, answers] or the official SQuAD JSON format."

    def __init__(self, version_2_with_negative: bool = False, doc_stride: int = 128, n_best: int = 20,
                 max_answer_length: int = 30, null_score_diff_threshold: float = 0.0, **common):
        super().__init__(**common)
        self.with_negative = bool(version_2_with_negative)
        self.doc_stride, self.n_best, self.max_answer_length = int(doc_stride), int(n_best), int(max_answer_length)
        self.null_threshold = float(null_score_diff_threshold or 0.0)

    def hint(self) -> str:
        v = "2.0" if self.with_negative else "1.1"
        return (f"give local files, e.g. task.data_files.train=train-v{v}.json task.data_files.validation=dev-v{v}.json"
                f": the official SQuAD JSON, or json/jsonl/csv/parquet with columns [id, question, context, answers] "
                f"(answers = {{\"text\": [...], \"answer_start\": [...]}}).")

    def required_columns(self, split: str) -> list[str]:
        return ["context", "question", "answers"]  # id, title and is_impossible are optional

    def prepare(self, df: pd.DataFrame, split: str) -> pd.DataFrame:
        """Columns id, title, context, question, answers={"text": [...], "answer_start": [...]} (lists)."""
        out = pd.DataFrame({
            "id": df["id"].astype(str).tolist() if "id" in df else [f"{split}-{i}" for i in range(len(df))],
            "title": df["title"].fillna("").astype(str).tolist() if "title" in df else [""] * len(df),
            "context": df["context"].fillna("").astype(str).tolist(),
            "question": df["question"].fillna("").astype(str).tolist(),
        })
        impossible = (df["is_impossible"].fillna(False).astype(bool).tolist() if "is_impossible" in df
                      else [False] * len(df))
        answers = []
        for i, (value, imp) in enumerate(zip(df["answers"].tolist(), impossible)):
            try:
                texts, starts = ([], []) if imp else parse_answers(value)
            except (ValueError, KeyError, TypeError, SyntaxError):
                raise UserError(f"Task {self.name!r}, {split} row {i}: cannot read answers {value!r}; use "
                                f"{{\"text\": [...], \"answer_start\": [...]}}.") from None
            if len(texts) != len(starts):
                raise UserError(f"Task {self.name!r}, {split} row {i}: answers has {len(texts)} texts but "
                                f"{len(starts)} answer_start values.")
            answers.append({"text": texts, "answer_start": starts})
        out["answers"] = answers
        return out

    def encode(self, df, tokenizer, max_length, split="train"):
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"Task {self.name!r} needs a fast tokenizer (character offsets); "
                            f"{type(tokenizer).__name__} is not one.")
        df = df.reset_index(drop=True)  # a split as loaded (prepared): splits() / load()
        if max_length - tokenizer.num_special_tokens_to_add(pair=True) < 2:
            raise UserError(f"data.max_length={max_length} leaves no room for a question and a context.")
        contexts, answers = df["context"].tolist(), df["answers"].tolist()
        # some SQuAD questions start with much whitespace
        feats = windows(tokenizer, [q.lstrip() for q in df["question"]], contexts, max_length, self.doc_stride)
        rows = []
        for index, (ex, _, row, offsets, cls) in enumerate(feats):
            if split == "train":
                row["start_positions"], row["end_positions"] = label_window(contexts[ex], answers[ex], offsets, cls)
            else:
                row["feature_index"], row["logits_width"] = index, max_length
            rows.append(row)
        if split == "train":
            return Encoded(rows, split, tokenizer)
        examples = {"id": df["id"].tolist(), "question": df["question"].tolist(), "context": contexts,
                    "answers": [a["text"] for a in answers], "golds": [gold_answers(a["text"]) for a in answers]}
        features = {"example": np.array([t[0] for t in feats], dtype=np.int64), "offsets": [t[3] for t in feats],
                    "cls": np.array([t[4] for t in feats], dtype=np.int64)}
        return Encoded(rows, split, tokenizer, examples, features)

    def collate(self, tokenizer):
        # always right padding: token positions then match the offsets kept per feature
        return QACollator(tokenizer.pad_token_id or 0)

    @torch.no_grad()
    def predict_step(self, model, batch):
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out = model(**inputs)
        n = inputs["input_ids"].shape[1]
        start, end = out.start_logits.float(), out.end_logits.float()
        if start.shape[1] > n:  # prompt-learning methods prepend virtual tokens
            start, end = start[:, -n:], end[:, -n:]
        # one width for every batch (the encoding's max_length), so that the batches concatenate
        pad = (0, max(int(batch["logits_width"].max()), n) - n)
        return {"start_logits": torch.nn.functional.pad(start, pad, value=NEG),
                "end_logits": torch.nn.functional.pad(end, pad, value=NEG),
                "feature_index": batch["feature_index"]}

    def score(self, outputs, encoded):
        info, feats = encoded.examples, encoded.features
        n_feat = len(feats["example"])
        index = outputs["feature_index"].cpu().numpy().astype(np.int64)
        width = outputs["start_logits"].shape[1]
        start = np.full((n_feat, width), NEG, dtype=np.float32)
        end = np.full((n_feat, width), NEG, dtype=np.float32)
        start[index] = outputs["start_logits"].cpu().float().numpy()
        end[index] = outputs["end_logits"].cpu().float().numpy()
        seen = np.zeros(n_feat, dtype=bool)
        seen[index] = True
        keep = np.flatnonzero(seen)  # features not scored (none in a full pass) give no candidate
        answers, diffs = best_answers(
            info["context"], feats["example"][keep], [feats["offsets"][f] for f in keep], feats["cls"][keep],
            start[keep], end[keep], n_best=self.n_best, max_answer_length=self.max_answer_length,
            with_negative=self.with_negative, null_score_diff_threshold=self.null_threshold)
        records = []
        for i, (pred, golds) in enumerate(zip(answers, info["golds"])):
            em, f1 = score_one(pred, golds)
            record = {"id": info["id"][i], "question": info["question"][i], "prediction": pred,
                      "answers": info["answers"][i], "exact": em, "f1": round(f1, 6)}
            if self.with_negative:
                record["null_minus_best"] = None if diffs[i] is None else round(float(diffs[i]), 6)
            records.append(record)
        return squad_metrics(answers, info["golds"], self.with_negative), records


class QACollator:
    """Pads model inputs on the right to the batch's longest row; stacks labels / feature indices."""

    def __init__(self, pad_token_id: int):
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for key, value in self.pad.items():
            if key in rows[0]:
                batch[key] = torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows],
                                          dtype=torch.long)
        for key in ("start_positions", "end_positions", "feature_index", "logits_width"):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch
