"""Abstractive summarization with a seq2seq model (XSum, CNN/DailyMail); ROUGE-1/2/L/Lsum.

Example row (XSum; CNN/DailyMail 3.0.0 has ``article``, ``highlights``, ``id``)::

    document,summary,id
    "The full cost of damage in Newton Stewart ... is still being assessed.","Clean-up operations are ...",35232142

Training: the source (truncated to ``task.max_source_length``, null = ``data.max_length``) is the encoder
input; the labels are the tokenised target (``task.max_target_length``) with padding positions set to -100.
Evaluation: ``model.generate`` from the source only, with ``task.generation`` (beams, length penalty,
no-repeat n-gram size; ``max_new_tokens`` defaults to the target length); the decoded summaries are
scored against the raw reference texts with ``rouge_score`` (Porter stemmer), F-measure averaged over
examples, in percent. ``rougeLsum`` sees one sentence per line (``split_sentences`` below).
"""

from __future__ import annotations

import re

import torch

from ..errors import UserError
from .base import Features, Task
from .generation import fixed_width, generate, generation_kwargs, pad

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? (possibly followed by closing quotes/brackets), then whitespace, then an
# uppercase letter, a digit or an opening quote/bracket.
_BOUNDARY = re.compile(r"""([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
_ABBREVIATIONS = {"Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "Gen", "Sen", "Rep", "Gov", "Lt", "Col",
                  "Capt", "Sgt", "Rev", "Mt", "No", "vs", "etc", "Inc", "Co", "Corp", "Ltd", "Jan", "Feb",
                  "Aug", "Sept", "Oct", "Nov", "Dec"}


def _is_abbreviation(chunk: str) -> bool:
    """Whether ``chunk`` ends with a period that belongs to an abbreviation or an initial (Mr. / J. / U.S.)."""
    chunk = chunk.rstrip("\"'\u201d\u2019)]")
    if not chunk.endswith(".") or chunk.endswith(".."):
        return False
    words = chunk[:-1].split()
    if not words:
        return False
    word = words[-1].lstrip("\"'\u201c\u2018([")
    return word in _ABBREVIATIONS or re.fullmatch(r"(?:[A-Za-z]\.)*[A-Z]", word) is not None


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, offline and dependency-free (no nltk).

    Line breaks are sentence boundaries; within a line a sentence ends after ``.``, ``!`` or ``?``
    (plus any closing quotes or brackets) followed by whitespace and an uppercase letter, a digit or
    an opening quote, except after a single-letter initial (``J.``, ``U.S.``) or a common abbreviation
    (``Mr.``, ``Dr.``, ``St.`` ...).
    """
    sentences = []
    for line in str(text).splitlines():
        line = line.strip()
        start = 0
        for m in _BOUNDARY.finditer(line):
            if _is_abbreviation(line[start:m.end(1)]):
                continue
            piece = line[start:m.end(1)].strip()
            if piece:
                sentences.append(piece)
            start = m.end()
        rest = line[start:].strip()
        if rest:
            sentences.append(rest)
    return sentences


def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("Summarization metrics need the rouge-score package: pip install rouge-score==0.1.2") from None
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_scores(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """Per-example ROUGE-1/2/L/Lsum F-measures in percent (sentences one per line for all four keys:
    rouge1/2/L tokenise across line breaks, so only rougeLsum depends on the split)."""
    scorer = _scorer()
    out = []
    for pred, ref in zip(predictions, references):
        s = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        out.append({k: 100.0 * s[k].fmeasure for k in ROUGE_KEYS})
    return out


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE F-measures averaged over examples, in percent."""
    per = rouge_scores(predictions, references)
    return {k: sum(p[k] for p in per) / max(len(per), 1) for k in ROUGE_KEYS}


class SummarizationTask(Task):
    kind = "seq2seq"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.source_field = cfg.get("source_field", "document")
        self.target_field = cfg.get("target_field", "summary")
        self.main_metric = cfg.get("main_metric", "rougeLsum")
        self._eval = {}  # split -> {"source": [...], "reference": [...], "id": [...] or None}
        self._tokenizer = None
        self._cache = None

    # ---- data
    def encode(self, df, tokenizer, max_length, split="train"):
        self.check_columns(df, split, [self.source_field, self.target_field])
        self._tokenizer = tokenizer
        sources = df[self.source_field].fillna("").astype(str).tolist()
        targets = df[self.target_field].fillna("").astype(str).tolist()
        enc = tokenizer(sources, truncation=True, max_length=self.cfg.get("max_source_length") or max_length)
        rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]} for i in range(len(df))]
        if split == "train":
            labels = tokenizer(text_target=targets, truncation=True, max_length=int(self.cfg.max_target_length))
            for row, lab in zip(rows, labels["input_ids"]):
                row["labels"] = lab
        else:
            id_field = self.cfg.get("id_field")
            ids = df[id_field].astype(str).tolist() if id_field and id_field in df.columns else None
            self._eval[split] = {"source": sources, "reference": targets, "id": ids}
            for i, row in enumerate(rows):
                row["index"] = i
        return Features(rows)

    def collate(self, tokenizer):
        pad_id = tokenizer.pad_token_id

        def collate(rows):
            batch = {"input_ids": pad([r["input_ids"] for r in rows], pad_id),
                     "attention_mask": pad([r["attention_mask"] for r in rows], 0)}
            if "labels" in rows[0]:
                batch["labels"] = pad([r["labels"] for r in rows], -100)
            if "index" in rows[0]:
                batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
            return batch
        return collate

    # ---- evaluation
    def generation_kwargs(self) -> dict:
        return generation_kwargs(self.cfg.get("generation"), {"max_new_tokens": int(self.cfg.max_target_length)})

    @torch.no_grad()
    def predict_step(self, model, batch):
        kwargs = self.generation_kwargs()
        pad_id = self._tokenizer.pad_token_id if self._tokenizer is not None else 0
        kwargs.setdefault("pad_token_id", pad_id)
        out = generate(model, batch["input_ids"], batch["attention_mask"], **kwargs)
        # decoder start token + at most max_new_tokens new ones: a fixed width so batches concatenate
        return {"index": batch["index"], "generated": fixed_width(out, kwargs["max_new_tokens"] + 1, pad_id)}

    def _results(self, outputs, split):
        if self._cache is not None and self._cache[0] is outputs:
            return self._cache[1]
        data = self._eval[split]
        seen, order = set(), []
        for j, i in enumerate(outputs["index"].tolist()):
            if i not in seen:
                seen.add(i)
                order.append((i, j))
        order.sort()
        generated = outputs["generated"]
        preds = [self._tokenizer.decode(generated[j].tolist(), skip_special_tokens=True).strip() for _, j in order]
        refs = [data["reference"][i] for i, _ in order]
        per = rouge_scores(preds, refs)
        records = []
        for (i, _), pred, ref, s in zip(order, preds, refs, per):
            rec = {"index": i}
            if data["id"] is not None:
                rec["id"] = data["id"][i]
            rec.update(source=data["source"][i][:500], prediction=pred, reference=ref,
                       rouge1=s["rouge1"], rouge2=s["rouge2"], rougeL=s["rougeL"])
            records.append((rec, s))
        self._cache = (outputs, records)
        return records

    def compute_metrics(self, outputs, split="validation"):
        records = self._results(outputs, split)
        n = max(len(records), 1)
        metrics = {k: sum(s[k] for _, s in records) / n for k in ROUGE_KEYS}
        metrics["gen_words"] = sum(len(r["prediction"].split()) for r, _ in records) / n
        metrics["examples"] = float(len(records))
        return metrics

    def prediction_records(self, outputs, split):
        return [r for r, _ in self._results(outputs, split)]
