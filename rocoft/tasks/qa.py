"""Extractive question answering: SQuAD v1.1 and v2.0 (unanswerable questions).

Example row (hub layout, ``rajpurkar/squad`` / ``rajpurkar/squad_v2``)::

    id: 56be4db0acb8001400a502ec   title: Super_Bowl_50
    context: "Super Bowl 50 was an American football game ..."
    question: "Which NFL team represented the AFC at Super Bowl 50?"
    answers: {"text": ["Denver Broncos", ...], "answer_start": [177, ...]}   (v2: empty lists = no answer)

Local files (``task.data_files``) may be the official SQuAD JSON (``{"version", "data": [{"title",
"paragraphs": [{"context", "qas": [...]}]}]}``), flattened here to one row per question, or the hub
layout above in json / jsonl / csv / parquet (in csv, ``answers`` is a JSON string).

Protocol: question + context tokenised with truncation of the context only; a long context becomes
several overlapping windows ("features"; overlap ``task.doc_stride`` tokens). Training features are
labelled with the answer's start/end token, or the CLS token when the answer is not wholly inside
the window or the question has none. Evaluation picks, per question over all its windows, the best
valid span among the ``n_best`` start x end logits (score = start + end logit); for v2 the answer is
"" when the null score (CLS start + end, the minimum over the windows) beats the best span by more
than ``null_score_diff_threshold``. Scores: the official SQuAD exact match and token F1, in percent.
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from ..errors import UserError
from .base import Features, Task
from .data import carve_splits, load_splits, read_table, subsample

NEG = -1.0e4  # logit padding: never a candidate (real logits are many orders smaller)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
COLUMNS = ("id", "title", "context", "question", "answers")


# ----------------------------------------------------------------------------------------------- metric
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the (whole words), collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # no-answer on either side: right only if both are empty
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(texts) -> list[str]:
    """The gold list scored against: answers that normalise to something, else [""] (no answer)."""
    golds = [t for t in texts if normalize_answer(t)]
    return golds or [""]


def score_one(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(exact, f1) of one prediction, each the max over the gold answers, in [0, 1]."""
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def squad_metrics(predictions: list[str], golds: list[list[str]], with_negative: bool = False) -> dict:
    """Official SQuAD scores in percent; v2 (``with_negative``) adds the HasAns / NoAns breakdown."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    scores = np.array([score_one(p, g) for p, g in zip(predictions, golds)], dtype=float).reshape(-1, 2)
    out = {"exact_match": float(100.0 * scores[:, 0].mean()) if len(scores) else 0.0,
           "f1": float(100.0 * scores[:, 1].mean()) if len(scores) else 0.0}
    if with_negative:
        has = np.array([g != [""] for g in golds], dtype=bool)
        for name, mask in (("HasAns", has), ("NoAns", ~has)):
            if mask.any():
                out[f"{name}_exact"] = float(100.0 * scores[mask, 0].mean())
                out[f"{name}_f1"] = float(100.0 * scores[mask, 1].mean())
            out[f"{name}_total"] = int(mask.sum())
    return out


# ------------------------------------------------------------------------------------- post-processing
def best_answers(contexts, feature_example, feature_offsets, feature_cls, start_logits, end_logits,
                 n_best: int = 20, max_answer_length: int = 30, with_negative: bool = False,
                 null_score_diff_threshold: float = 0.0):
    """Answer text per example from per-feature logits.

    ``feature_offsets[f]`` is an int array (tokens, 2) of character offsets into the context, -1 for
    tokens outside the context; ``start_logits`` / ``end_logits`` are (features, >= tokens) arrays.
    Returns ``(answers, null_minus_best)``: the answer strings ("" = no answer) and, per example, the
    null score minus the best span score (None where not computed: v1, or no valid span).
    """
    start_logits, end_logits = np.asarray(start_logits, dtype=np.float64), np.asarray(end_logits, np.float64)
    n_examples = len(contexts)
    best = [(-np.inf, "") for _ in range(n_examples)]
    null = [np.inf] * n_examples
    for f, ex in enumerate(feature_example):
        offsets = np.asarray(feature_offsets[f]).reshape(-1, 2)
        n = len(offsets)
        s_log, e_log = start_logits[f, :n], end_logits[f, :n]
        cls = int(feature_cls[f])
        null[ex] = min(null[ex], float(s_log[cls] + e_log[cls]))
        k = min(n_best, n)
        s_idx = np.argsort(-s_log, kind="stable")[:k]
        e_idx = np.argsort(-e_log, kind="stable")[:k]
        in_ctx = offsets[:, 0] >= 0
        valid = (in_ctx[s_idx][:, None] & in_ctx[e_idx][None, :]
                 & (e_idx[None, :] >= s_idx[:, None]) & (e_idx[None, :] - s_idx[:, None] < max_answer_length))
        if not valid.any():
            continue
        scores = np.where(valid, s_log[s_idx][:, None] + e_log[e_idx][None, :], -np.inf)
        i, j = np.unravel_index(np.argmax(scores), scores.shape)
        if scores[i, j] > best[ex][0]:
            s, e = s_idx[i], e_idx[j]
            best[ex] = (float(scores[i, j]), contexts[ex][offsets[s, 0]:offsets[e, 1]])
    answers, diffs = [], []
    for ex in range(n_examples):
        score, text = best[ex]
        has_span = np.isfinite(score)
        diff = null[ex] - score if with_negative and has_span and np.isfinite(null[ex]) else None
        if with_negative and (not has_span or (diff is not None and diff > null_score_diff_threshold)):
            text = ""
        answers.append(text)
        diffs.append(diff)
    return answers, diffs


# ---------------------------------------------------------------------------------------------- data
def _is_official(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("data"), list)
            and all(isinstance(a, dict) and "paragraphs" in a for a in obj["data"]))


def flatten_official(obj) -> pd.DataFrame:
    """Official SQuAD JSON -> one row per question with hub-style columns."""
    rows = []
    for article in obj["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                rows.append({"id": str(qa.get("id", len(rows))), "title": article.get("title", ""),
                             "context": paragraph["context"], "question": qa["question"],
                             "answers": {"text": [a["text"] for a in answers],
                                         "answer_start": [int(a["answer_start"]) for a in answers]}})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def read_qa_file(path) -> pd.DataFrame:
    """One split from a local file: the official SQuAD JSON, or a flat table ``read_table`` reads."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".json" and p.is_file():
        try:
            with open(p, encoding="utf-8") as fh:
                obj = json.load(fh)
        except (ValueError, UnicodeDecodeError):
            obj = None  # JSON lines under a .json name, or not JSON: read_table says what is wrong
        if _is_official(obj):
            return flatten_official(obj)
    return read_table(p)


def _answers(value) -> tuple[list[str], list[int]]:
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
        return _answers(value)
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

    def __init__(self, cfg):
        super().__init__(cfg)
        self.main_metric = cfg.get("main_metric", "f1")
        self.with_negative = bool(cfg.get("version_2_with_negative", "null_score_diff_threshold" in cfg))
        self.doc_stride = int(cfg.get("doc_stride", 128))
        self.n_best = int(cfg.get("n_best", 20))
        self.max_answer_length = int(cfg.get("max_answer_length", 30))
        self.null_threshold = float(cfg.get("null_score_diff_threshold", 0.0) or 0.0)
        self.max_length = None
        self.examples: dict[str, dict] = {}   # split -> per-question and per-feature bookkeeping
        self._cache = None                     # (outputs, split, answers, diffs) of the last scoring

    @property
    def eval_splits(self) -> list[str]:
        return list(self.cfg.get("eval_splits") or ["validation"])

    # ---- raw data
    def splits(self, max_train=None, max_eval=None):
        files = self.cfg.get("data_files")
        files = OmegaConf.to_container(files) if OmegaConf.is_config(files) else files
        if isinstance(files, str):
            files = {"train": files}
        files = {s: p for s, p in (files or {}).items() if p}
        if files:
            raw = {s: read_qa_file(p) for s, p in files.items()}
        elif self.cfg.dataset.source == "hub":
            raw = self._from_hub()
        else:
            raw = load_splits(self.cfg)
        raw = {s: self.standardize(df, s) for s, df in raw.items()}
        for s, df in raw.items():
            if len(df) == 0:
                raise UserError(f"The {s} split of task {self.name!r} is empty.")
        raw = carve_splits(raw, self.cfg.split, None)
        seed = self.cfg.split.seed
        return {s: subsample(df, max_train if s == "train" else max_eval, seed) for s, df in raw.items()}

    def _from_hub(self) -> dict[str, pd.DataFrame]:
        ds = self.cfg.dataset
        try:
            import datasets

            loaded = datasets.load_dataset(ds.hub_id, ds.get("hub_config"))
        except Exception as e:  # noqa: BLE001 - the hub client raises many types offline
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(
                f"Could not load dataset {ds.hub_id!r} for task {self.name!r} from the Hugging Face hub "
                f"({type(e).__name__}: {first}). Offline, give local files, e.g. "
                f"task.data_files.train=train-v{'2.0' if self.with_negative else '1.1'}.json "
                f"task.data_files.validation=dev-v{'2.0' if self.with_negative else '1.1'}.json: the official "
                f"SQuAD JSON, or json/jsonl/csv/parquet with columns [id, question, context, answers] "
                f"(answers = {{\"text\": [...], \"answer_start\": [...]}}).") from None
        names = dict(ds.get("hub_splits") or {})
        wanted = list(dict.fromkeys(["train", *self.eval_splits, *names]))
        return {s: loaded[names.get(s, s)].to_pandas() for s in wanted if names.get(s, s) in loaded}

    def standardize(self, df: pd.DataFrame, split: str) -> pd.DataFrame:
        """Columns id, title, context, question, answers={"text": [...], "answer_start": [...]} (lists)."""
        missing = [c for c in ("context", "question", "answers") if c not in df.columns]
        if missing:
            raise UserError(f"The {split} split of task {self.name!r} lacks column(s) {missing}; it has "
                            f"{list(df.columns)}. QA data needs [id, question, context, answers] or the "
                            f"official SQuAD JSON format.")
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
                texts, starts = ([], []) if imp else _answers(value)
            except (ValueError, KeyError, TypeError, SyntaxError):
                raise UserError(f"Task {self.name!r}, {split} row {i}: cannot read answers {value!r}; use "
                                f"{{\"text\": [...], \"answer_start\": [...]}}.") from None
            if len(texts) != len(starts):
                raise UserError(f"Task {self.name!r}, {split} row {i}: answers has {len(texts)} texts but "
                                f"{len(starts)} answer_start values.")
            answers.append({"text": texts, "answer_start": starts})
        out["answers"] = answers
        return out

    # ---- features
    def encode(self, df, tokenizer, max_length, split="train"):
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(f"Task {self.name!r} needs a fast tokenizer (character offsets); "
                            f"{type(tokenizer).__name__} is not one.")
        if not {"context", "question"} <= set(df.columns) or "answers" not in df.columns \
                or not all(isinstance(a, dict) and isinstance(a.get("text"), list) for a in df["answers"]):
            df = self.standardize(df, split)
        df = df.reset_index(drop=True)
        self.max_length = max_length
        special = tokenizer.num_special_tokens_to_add(pair=True)
        room = max_length - special
        if room < 2:
            raise UserError(f"data.max_length={max_length} leaves no room for a question and a context.")
        max_q = room // 2  # questions longer than half the room are cut (SQuAD questions: ~10-60 tokens)
        questions = [q.lstrip() for q in df["question"]]  # some SQuAD questions start with much whitespace
        contexts = df["context"].tolist()
        q_enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        q_len = [len(ids) for ids in q_enc["input_ids"]]
        for i, ids in enumerate(q_enc["input_ids"]):
            if len(ids) > max_q:
                questions[i] = questions[i][:q_enc["offset_mapping"][i][max_q - 1][1]]
                q_len[i] = len(tokenizer(questions[i], add_special_tokens=False)["input_ids"])
        # overlap between windows: task.doc_stride, at most half the window left for the context
        strides = [max(0, min(self.doc_stride, (room - n) // 2)) for n in q_len]

        train = split == "train"
        feats = []  # (example, window, row, offsets, cls)
        for stride in sorted(set(strides)):
            group = [i for i, s in enumerate(strides) if s == stride]
            enc = tokenizer([questions[i] for i in group], [contexts[i] for i in group], truncation="only_second",
                            max_length=max_length, stride=stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True)
            windows = Counter()
            for f, local in enumerate(enc["overflow_to_sample_mapping"]):
                ex = group[local]
                seq = enc.sequence_ids(f)
                ids = enc["input_ids"][f]
                cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
                offsets = np.array([o if s == 1 else (-1, -1) for o, s in zip(enc["offset_mapping"][f], seq)],
                                   dtype=np.int32).reshape(-1, 2)
                row = {k: enc[k][f] for k in MODEL_INPUTS if k in enc}
                feats.append((ex, windows[ex], row, offsets, cls))
                windows[ex] += 1
        feats.sort(key=lambda t: (t[0], t[1]))

        answers = df["answers"].tolist()
        rows = []
        for index, (ex, _, row, offsets, cls) in enumerate(feats):
            if train:
                row["start_positions"], row["end_positions"] = self._label(contexts[ex], answers[ex], offsets, cls)
            else:
                row["feature_index"] = index
            rows.append(row)
        if not train:
            self.examples[split] = {
                "id": df["id"].tolist(), "question": df["question"].tolist(), "context": contexts,
                "answers": [a["text"] for a in answers],
                "golds": [gold_answers(a["text"]) for a in answers],
                "feature_example": np.array([t[0] for t in feats], dtype=np.int64),
                "offsets": [t[3] for t in feats], "cls": np.array([t[4] for t in feats], dtype=np.int64),
            }
        return Features(rows)

    @staticmethod
    def _locate(context: str, text: str, start: int) -> int:
        """``start``, or the nearest occurrence of ``text`` in the context when ``start`` is off."""
        if context[start:start + len(text)] == text:
            return start
        found = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
        return min(found, key=lambda s: abs(s - start)) if found else start

    def _label(self, context, answers, offsets, cls) -> tuple[int, int]:
        """Start/end token of the (first) answer if it lies wholly inside this window, else CLS twice."""
        if not answers["text"]:
            return cls, cls
        text = answers["text"][0]
        start = self._locate(context, text, int(answers["answer_start"][0]))
        end = start + len(text)
        ctx = np.flatnonzero(offsets[:, 0] >= 0)
        if len(ctx) == 0 or not (offsets[ctx[0], 0] <= start and offsets[ctx[-1], 1] >= end):
            return cls, cls
        s_tok = ctx[offsets[ctx, 1] > start]  # first context token ending after the answer starts
        e_tok = ctx[offsets[ctx, 0] < end]    # last context token starting before the answer ends
        if len(s_tok) == 0 or len(e_tok) == 0 or s_tok[0] > e_tok[-1]:
            return cls, cls
        return int(s_tok[0]), int(e_tok[-1])

    def collate(self, tokenizer):
        # always right padding: token positions then match the offsets kept per feature
        return QACollator(tokenizer.pad_token_id or 0)

    # ---- prediction and scoring
    @torch.no_grad()
    def predict_step(self, model, batch):
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out = model(**inputs)
        n = inputs["input_ids"].shape[1]
        start, end = out.start_logits.float(), out.end_logits.float()
        if start.shape[1] > n:  # prompt-learning methods prepend virtual tokens
            start, end = start[:, -n:], end[:, -n:]
        width = max(self.max_length or n, n)
        pad = (0, width - n)
        return {"start_logits": torch.nn.functional.pad(start, pad, value=NEG),
                "end_logits": torch.nn.functional.pad(end, pad, value=NEG),
                "feature_index": batch["feature_index"]}

    def _answers_for(self, outputs, split):
        if self._cache is not None and self._cache[0] is outputs and self._cache[1] == split:
            return self._cache[2], self._cache[3]
        if split not in self.examples:
            raise UserError(f"Task {self.name!r}: split {split!r} was not encoded for evaluation.")
        info = self.examples[split]
        n_feat = len(info["feature_example"])
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
            info["context"], info["feature_example"][keep], [info["offsets"][f] for f in keep], info["cls"][keep],
            start[keep], end[keep], n_best=self.n_best, max_answer_length=self.max_answer_length,
            with_negative=self.with_negative, null_score_diff_threshold=self.null_threshold)
        self._cache = (outputs, split, answers, diffs)
        return answers, diffs

    def compute_metrics(self, outputs, split="validation"):
        answers, _ = self._answers_for(outputs, split)
        return squad_metrics(answers, self.examples[split]["golds"], self.with_negative)

    def prediction_records(self, outputs, split):
        answers, diffs = self._answers_for(outputs, split)
        info = self.examples[split]
        records = []
        for i, (pred, golds) in enumerate(zip(answers, info["golds"])):
            em, f1 = score_one(pred, golds)
            record = {"id": info["id"][i], "question": info["question"][i], "prediction": pred,
                      "answers": info["answers"][i], "exact": em, "f1": round(f1, 6)}
            if self.with_negative:
                record["null_minus_best"] = None if diffs[i] is None else round(float(diffs[i]), 6)
            records.append(record)
        return records


class QACollator:
    """Pads model inputs on the right to the batch's longest row; stacks labels / feature indices."""

    def __init__(self, pad_token_id: int):
        self.pad = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for key, value in self.pad.items():
            if key not in rows[0]:
                continue
            padded = [list(r[key]) + [value] * (width - len(r[key])) for r in rows]
            batch[key] = torch.tensor(padded, dtype=torch.long)
        for key in ("start_positions", "end_positions", "feature_index"):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch
