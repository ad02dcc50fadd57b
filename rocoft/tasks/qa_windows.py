"""Extractive QA between characters and tokens: context windows with their labels, and spans back from logits.

A question + context pair is tokenised with truncation of the context only; a long context becomes several
overlapping windows ("features"). Each window keeps the character offsets of its context tokens (-1 for
question, special and padding tokens) and the position of its CLS token. Training windows are labelled
with the answer's start/end token, or CLS twice when the answer is not wholly inside the window or the
question has none. :func:`best_answers` maps per-window start/end logits back to answer text.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def windows(tokenizer, questions: list[str], contexts: list[str], max_length: int, doc_stride: int) -> list[tuple]:
    """Features ``(example, window, row, offsets, cls)`` in example order; ``row`` holds the model inputs.

    Questions longer than half the room are cut (SQuAD questions: ~10-60 tokens); the overlap between
    windows is ``doc_stride`` tokens, at most half the room left for the context."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    max_q = room // 2
    questions = list(questions)
    q_enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    q_len = [len(ids) for ids in q_enc["input_ids"]]
    for i, ids in enumerate(q_enc["input_ids"]):
        if len(ids) > max_q:
            questions[i] = questions[i][:q_enc["offset_mapping"][i][max_q - 1][1]]
            q_len[i] = len(tokenizer(questions[i], add_special_tokens=False)["input_ids"])
    strides = [max(0, min(doc_stride, (room - n) // 2)) for n in q_len]
    feats = []
    for stride in sorted(set(strides)):
        group = [i for i, s in enumerate(strides) if s == stride]
        enc = tokenizer([questions[i] for i in group], [contexts[i] for i in group], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        count = Counter()
        for f, local in enumerate(enc["overflow_to_sample_mapping"]):
            ex = group[local]
            ids = enc["input_ids"][f]
            cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            seq = enc.sequence_ids(f)
            offsets = np.array([o if s == 1 else (-1, -1) for o, s in zip(enc["offset_mapping"][f], seq)],
                               dtype=np.int32).reshape(-1, 2)
            feats.append((ex, count[ex], {k: enc[k][f] for k in MODEL_INPUTS if k in enc}, offsets, cls))
            count[ex] += 1
    feats.sort(key=lambda t: (t[0], t[1]))
    return feats


def _locate(context: str, text: str, start: int) -> int:
    """``start``, or the nearest occurrence of ``text`` in the context when ``start`` is off."""
    if context[start:start + len(text)] == text:
        return start
    found = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
    return min(found, key=lambda s: abs(s - start)) if found else start


def label_window(context: str, answers: dict, offsets: np.ndarray, cls: int) -> tuple[int, int]:
    """Start/end token of the (first) answer if it lies wholly inside this window, else CLS twice."""
    if not answers["text"]:
        return cls, cls
    text = answers["text"][0]
    start = _locate(context, text, int(answers["answer_start"][0]))
    end = start + len(text)
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if len(ctx) == 0 or not (offsets[ctx[0], 0] <= start and offsets[ctx[-1], 1] >= end):
        return cls, cls
    s_tok = ctx[offsets[ctx, 1] > start]  # first context token ending after the answer starts
    e_tok = ctx[offsets[ctx, 0] < end]    # last context token starting before the answer ends
    if len(s_tok) == 0 or len(e_tok) == 0 or s_tok[0] > e_tok[-1]:
        return cls, cls
    return int(s_tok[0]), int(e_tok[-1])


def best_answers(contexts, feature_example, feature_offsets, feature_cls, start_logits, end_logits,
                 n_best: int = 20, max_answer_length: int = 30, with_negative: bool = False,
                 null_score_diff_threshold: float = 0.0):
    """Answer text per example from per-feature logits.

    Per example over all its windows: the best valid span among the ``n_best`` start x end logits (score =
    start + end logit; inside the context, end >= start, shorter than ``max_answer_length`` tokens). For v2
    (``with_negative``) the answer is "" when the null score (CLS start + end, the minimum over the windows)
    beats the best span by more than ``null_score_diff_threshold``.

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
