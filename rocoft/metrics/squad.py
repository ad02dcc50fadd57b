"""The official SQuAD v1.1 / v2.0 scores: exact match and token F1 after answer normalisation.

A prediction is scored against every gold answer of its question and keeps the best of each score;
an unanswerable question (v2.0) has the single gold answer "" and is right only when the prediction
normalises to nothing. Scores are fractions in [0, 1] (the official script prints them x100).
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

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
    """Mean exact match and F1 (fractions); v2 (``with_negative``) adds the HasAns / NoAns breakdown and counts."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    scores = np.array([score_one(p, g) for p, g in zip(predictions, golds)], dtype=float).reshape(-1, 2)
    out = {"exact_match": float(scores[:, 0].mean()) if len(scores) else 0.0,
           "f1": float(scores[:, 1].mean()) if len(scores) else 0.0}
    if with_negative:
        has = np.array([g != [""] for g in golds], dtype=bool)
        for name, mask in (("HasAns", has), ("NoAns", ~has)):
            if mask.any():
                out[f"{name}_exact"] = float(scores[mask, 0].mean())
                out[f"{name}_f1"] = float(scores[mask, 1].mean())
            out[f"{name}_total"] = int(mask.sum())
    return out
