"""Abstractive summarization with a seq2seq model (XSum, CNN/DailyMail); ROUGE-1/2/L/Lsum.

Example row (XSum, hub ``EdinburghNLP/xsum``; CNN/DailyMail 3.0.0 has ``article``, ``highlights``, ``id``)::

    document,summary,id
    "The full cost of damage in Newton Stewart ... is still being assessed.","Clean-up operations are ...",35232142

Training: the source (truncated to ``max_source_length``, null = ``data.max_length``) is the encoder
input; the labels are the tokenised target (``max_target_length``) with padding positions set to -100.
Evaluation: generation from the source only (``generation``: beams, length penalty, no-repeat n-gram
size; ``max_new_tokens`` defaults to the target length); the decoded summaries are scored against the
raw reference texts with ``rocoft.metrics.rouge`` (F-measures averaged over examples, fractions).
"""

from __future__ import annotations

import torch

from ..metrics import ROUGE_KEYS, rouge_scores
from .base import Encoded, Task
from .modes import Generation, decode, pad, special_ids


class SummarizationTask(Task):
    kind = "seq2seq"
    main_metric = "rougeLsum"
    column_hint = "Rename them or set task.source_field / task.target_field."

    def __init__(self, source_field: str = "document", target_field: str = "summary", id_field: str | None = None,
                 max_source_length: int | None = None, max_target_length: int = 64, generation: dict | None = None,
                 **common):
        super().__init__(**common)
        self.source_field, self.target_field, self.id_field = source_field, target_field, id_field
        self.max_source_length, self.max_target_length = max_source_length, int(max_target_length)
        self.text_columns = [source_field, target_field]
        # seq2seq output: the decoder's start token + at most max_new_tokens new ones
        self.generation = Generation.with_defaults(generation, {"max_new_tokens": self.max_target_length},
                                                   extra_width=1)

    def encode(self, df, tokenizer, max_length, split="train"):
        sources = df[self.source_field].fillna("").astype(str).tolist()
        targets = df[self.target_field].fillna("").astype(str).tolist()
        enc = tokenizer(sources, truncation=True, max_length=self.max_source_length or max_length)
        rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]} for i in range(len(df))]
        if split == "train":
            labels = tokenizer(text_target=targets, truncation=True, max_length=self.max_target_length)
            for row, lab in zip(rows, labels["input_ids"]):
                row["labels"] = lab
            return Encoded(rows, split, tokenizer)
        for i, row in enumerate(rows):
            row["index"] = i
        ids = df[self.id_field].astype(str).tolist() if self.id_field and self.id_field in df.columns else None
        return Encoded(rows, split, tokenizer, examples={"source": sources, "reference": targets, "id": ids})

    def collate(self, tokenizer):
        pad_id = tokenizer.pad_token_id

        def collate(rows):
            batch = {"input_ids": pad([r["input_ids"] for r in rows], pad_id),
                     "attention_mask": pad([r["attention_mask"] for r in rows], 0)}
            if "labels" in rows[0]:
                batch["labels"] = pad([r["labels"] for r in rows], -100)
            if "index" in rows[0]:
                batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
                batch["special_ids"] = special_ids(tokenizer, len(rows))
            return batch
        return collate

    @torch.no_grad()
    def predict_step(self, model, batch):
        return {"index": batch["index"], "generated": self.generation(model, batch)}

    def score(self, outputs, encoded):
        data, order = encoded.examples, {}
        for j, i in enumerate(outputs["index"].tolist()):
            order.setdefault(i, j)  # gather_for_metrics already drops duplicates; be safe anyway
        order = sorted(order.items())
        preds = [decode(encoded.tokenizer, outputs["generated"][j]) for _, j in order]
        refs = [data["reference"][i] for i, _ in order]
        per = rouge_scores(preds, refs)
        records = []
        for (i, _), pred, ref, s in zip(order, preds, refs, per):
            rec = {"index": i} if data["id"] is None else {"index": i, "id": data["id"][i]}
            rec.update(source=data["source"][i][:500], prediction=pred, reference=ref,
                       rouge1=s["rouge1"], rouge2=s["rouge2"], rougeL=s["rougeL"])
            records.append(rec)
        n = max(len(records), 1)
        metrics = {k: sum(s[k] for s in per) / n for k in ROUGE_KEYS}
        metrics["gen_words"] = sum(len(r["prediction"].split()) for r in records) / n
        metrics["examples"] = float(len(records))
        return metrics, records
