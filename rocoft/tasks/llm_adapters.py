"""LLM-Adapters instruction tuning and evaluation (commonsense and arithmetic reasoning, Hu et al. 2023).

Example record (``dataset/boolq/test.json``; training files add the target ``output``, e.g.
``"the correct answer is true"``), in a JSON list of such records::

    {"instruction": "Please answer the following question with true or false, question: do iran and afghanistan
                     speak the same language?\\n\\nAnswer format: true/false",
     "input": "", "output": "the correct answer is true", "answer": "true"}

Files follow LLM-Adapters' layout under ``data_dir`` (``data_files`` names them directly instead)::

    <data_dir>/ft-training_set/commonsense_170k.json     pooled training sets (train_set)
    <data_dir>/ft-training_set/math_10k.json
    <data_dir>/dataset/<test_set>/test.json               per-task test sets (boolq, ARC-Easy, gsm8k, AQuA ...)
    <data_dir>/dataset/<test_set>/train.json              per-task training (train_set=<task name>)

Nothing is downloaded: missing files are one clear error. Training: Alpaca prompt + ``output`` + EOS, cut
at ``max_length`` (null: ``data.max_length``; the paper uses 256); the loss covers the response tokens
only. Evaluation (``eval_mode``): ``generate`` (greedy, or beam search with ``generation.num_beams``)
from the prompt alone, left-padded, the answer extracted by ``answer_type`` (``rocoft.metrics.answers``:
label / number / letter / auto; nothing extractable counts as wrong, ``unparseable``); ``loglik`` scores
each label word as the continuation ``loglik_template`` after the prompt (``loglik_acc``, and
``loglik_acc_norm`` per character); ``both``. Validation rows carved from a pooled training set mix the
pool's tasks: they are scored with the pool's rules (``pool_label_words`` / ``auto``). Accuracies are fractions.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..metrics.answers import ANSWER_TYPES, gold_text, same_label, score_output
from .base import Encoded, Task
from .data import RECORDS, read_records
from .modes import Generation, LogLikelihood, continuation_ids, decode, framing, pad, special_ids

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
EVAL_MODES = ("generate", "loglik", "both")
# generation.max_new_tokens when a config leaves it out: as every task YAML sets it (label words are short;
# arithmetic answers are worked step by step)
MAX_NEW_TOKENS = {"label": 32, "number": 256, "letter": 256, "auto": 256}


def default_data_dir() -> Path:
    """``${ROCOFT_DATA:-data}/llm_adapters``: the task YAMLs' ``data_dir``."""
    return Path(os.environ.get("ROCOFT_DATA", "data")) / "llm_adapters"


def build_prompt(instruction: str, input: str | None = "") -> str:  # noqa: A002 - the record's field name
    """The Alpaca prompt LLM-Adapters uses (the variant with an input when ``input`` is non-empty)."""
    instruction = "" if instruction is None else str(instruction)
    if input is not None and not (isinstance(input, float) and input != input) and str(input).strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=str(input))
    return PROMPT.format(instruction=instruction)


def training_example(prefix, prompt_ids, resp_ids, eos: int, cutoff: int) -> dict:
    ids = list(prefix) + list(prompt_ids) + list(resp_ids) + [eos]
    labels = [-100] * (len(prefix) + len(prompt_ids)) + list(resp_ids) + [eos]
    return {"input_ids": ids[:cutoff], "attention_mask": [1] * min(len(ids), cutoff), "labels": labels[:cutoff]}


class InstructionTask(Task):
    kind = "causal_lm"
    main_metric = "accuracy"
    reader = staticmethod(read_records)
    column_hint = f"Each file should be {RECORDS}."

    def __init__(self, data_dir: str | None = None, train_set: str | None = None, test_set: str | None = None,
                 answer_type: str = "label", label_words: list[str] | None = None,
                 pool_label_words: list[str] | None = None, case_sensitive: bool = True, eval_mode: str = "generate",
                 loglik_template: str = "the correct answer is {}", generation: dict | None = None,
                 max_length: int | None = None, max_prompt_length: int | None = None, **common):
        super().__init__(**common)
        if answer_type not in ANSWER_TYPES:
            raise UserError(f"task.answer_type={answer_type!r}: use one of {', '.join(ANSWER_TYPES)}.")
        if eval_mode not in EVAL_MODES:
            raise UserError(f"task.eval_mode={eval_mode!r}: use one of {', '.join(EVAL_MODES)}.")
        if eval_mode != "generate" and answer_type != "label":
            raise UserError(f"task.eval_mode={eval_mode} scores label words (commonsense tasks); task "
                            f"{self.name!r} has numeric/letter answers: use task.eval_mode=generate.")
        if answer_type == "label" and not label_words:
            raise UserError(f"Task {self.name!r} extracts label words: list them in task.label_words.")
        self.data_dir = Path(str(data_dir)).expanduser() if data_dir else default_data_dir()
        self.train_set, self.test_set = train_set, test_set
        self.answer_type, self.case_sensitive = answer_type, bool(case_sensitive)
        self.label_words = [str(w) for w in label_words or []]
        self.pool_label_words = [str(w) for w in pool_label_words or self.label_words]
        self.generates, self.logliks = eval_mode in ("generate", "both"), eval_mode in ("loglik", "both")
        self.loglik = LogLikelihood(loglik_template or LogLikelihood.template)
        self.generation = Generation.with_defaults(generation, {"max_new_tokens": MAX_NEW_TOKENS[answer_type]},
                                                   continues_prompt=True, fill="eos")
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        if eval_mode == "loglik" and self.main_metric == "accuracy":
            self.main_metric = "loglik_acc"

    # ---- data
    def files(self) -> dict[str, Path]:
        """Split -> file: LLM-Adapters' layout under data_dir, overridden by data_files."""
        files = {}
        if self.train_set:
            own = self.train_set == self.name and self.test_set
            files["train"] = (self.data_dir / "dataset" / str(self.test_set) / "train.json" if own
                              else self.data_dir / "ft-training_set" / f"{self.train_set}.json")
        if self.test_set:
            files["test"] = self.data_dir / "dataset" / str(self.test_set) / "test.json"
        files.update({s: Path(str(p)).expanduser() for s, p in super().files().items()})
        return files

    def hint(self) -> str:
        names = ", ".join(repr(n) for n in dict.fromkeys([self.train_set, self.test_set]) if n)
        return (f"Task {self.name!r} needs the LLM-Adapters dataset(s) {names}, which cannot be downloaded here. "
                f"Each file is {RECORDS}. Put LLM-Adapters' ft-training_set/ and dataset/ folders under "
                f"{self.data_dir} (or set ROCOFT_DATA, or task.data_dir=/path), or name the files directly, e.g. "
                f"task.data_files.train=/path/{self.train_set or 'train'}.json "
                f"task.data_files.test=/path/{self.test_set or 'task'}/test.json")

    def required_columns(self, split: str) -> list[str]:
        """Training records need the prompt and the target response; evaluation records the prompt and the
        gold answer (``input`` is optional)."""
        return ["instruction", "output"] if split == "train" else ["instruction", "answer"]

    def rules(self, split: str) -> tuple[str, list[str]]:
        """(answer type, label words) that score ``split``: a split carved from a pool mixes the pool's tasks."""
        if self.train_set not in (None, self.name) and split != "train" and split not in self.files():
            return ("label", self.pool_label_words) if self.answer_type == "label" else ("auto", [])
        return self.answer_type, self.label_words

    # ---- features
    def encode(self, df, tokenizer, max_length, split="train"):
        prefix, eos = framing(tokenizer)
        inputs = df["input"].tolist() if "input" in df.columns else [""] * len(df)
        if split == "train":
            prompts = [build_prompt(i, x) for i, x in zip(df["instruction"].tolist(), inputs)]
            cutoff = int(self.max_length or max_length)
            p_ids, r_ids = continuation_ids(tokenizer, prompts, df["output"].fillna("").astype(str).tolist())
            rows = [training_example(prefix, p, r, eos, cutoff) for p, r in zip(p_ids, r_ids)]
            kept = [row for row in rows if any(y != -100 for y in row["labels"])]
            if rows and not kept:
                raise UserError(f"No training example of task {self.name!r} keeps a response token within the "
                                f"cut-off length {cutoff} (data.max_length): the prompts are longer. Raise it, e.g. "
                                f"data.max_length=256 as in the paper.")
            if len(kept) < len(rows):
                warnings.warn(f"{len(rows) - len(kept)} of {len(rows)} training examples of task {self.name!r} "
                              f"have no response token within the cut-off length {cutoff}; they are left out",
                              stacklevel=2)
            return Encoded(kept, split, tokenizer)
        prompts = [build_prompt(i, x) for i, x in zip(df["instruction"].tolist(), inputs)]
        limit = self.max_prompt_length
        rows = []
        for i, ids in enumerate(tokenizer(prompts, add_special_tokens=False)["input_ids"]):
            ids = list(prefix) + list(ids)
            if limit and len(ids) > limit:  # keep the special prefix and the end ("### Response:\n")
                ids = list(prefix) + ids[len(ids) - (limit - len(prefix)):]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "index": i})
        if self.logliks:
            for row, cands in zip(rows, self.loglik.candidate_ids(tokenizer, prompts, self.rules(split)[1])):
                row["cand_ids"] = cands
        golds = [gold_text(v) for v in df["answer"].tolist()]
        return Encoded(rows, split, tokenizer, examples={"prompt": prompts, "gold": golds})

    def collate(self, tokenizer):
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else framing(tokenizer)[1]

        def collate(rows):
            if "labels" in rows[0]:  # training: right padding, padded labels ignored
                return {"input_ids": pad([r["input_ids"] for r in rows], pad_id),
                        "attention_mask": pad([r["attention_mask"] for r in rows], 0),
                        "labels": pad([r["labels"] for r in rows], -100)}
            # evaluation: prompts left-padded so that generation continues every prompt at the same position
            batch = {"input_ids": pad([r["input_ids"] for r in rows], pad_id, "left"),
                     "attention_mask": pad([r["attention_mask"] for r in rows], 0, "left"),
                     "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
                     "special_ids": special_ids(tokenizer, len(rows))}
            if "cand_ids" in rows[0]:
                batch.update(LogLikelihood.collate([r["input_ids"] for r in rows], [r["cand_ids"] for r in rows],
                                                   pad_id))
            return batch
        return collate

    # ---- evaluation
    @torch.no_grad()
    def predict_step(self, model, batch):
        out = {"index": batch["index"]}
        if self.generates:
            out["generated"] = self.generation(model, batch)
        if self.logliks and "ll_ids" in batch:
            out["loglik"] = self.loglik(model, batch)
        return out

    def score(self, outputs, encoded):
        answer_type, words = self.rules(encoded.split)
        prompts, golds = encoded.examples["prompt"], encoded.examples["gold"]
        eos = framing(encoded.tokenizer)[1]
        first = {}
        for j, i in enumerate(outputs["index"].tolist()):
            first.setdefault(i, j)  # gather_for_metrics already drops duplicates; be safe anyway
        records = []
        for i in sorted(first):
            j, gold = first[i], golds[i]
            rec = {"index": i, "prompt": prompts[i], "output": None, "extracted": None, "gold": gold, "correct": None}
            if "generated" in outputs:
                text = decode(encoded.tokenizer, outputs["generated"][j], stop=eos)
                got, ok = score_output(text, gold, answer_type, words, self.case_sensitive)
                rec.update(output=text, extracted=got, correct=bool(ok))
            if "loglik" in outputs:
                scores = outputs["loglik"][j].tolist()
                best, best_norm = self.loglik.choose(scores, words)
                rec.update(loglik_choice=best, loglik_correct=same_label(best, gold, self.case_sensitive),
                           loglik_choice_norm=best_norm,
                           loglik_correct_norm=same_label(best_norm, gold, self.case_sensitive),
                           loglik_scores=dict(zip(words, scores)))
            records.append(rec)
        n = max(len(records), 1)
        metrics = {}
        if "generated" in outputs:
            metrics["accuracy"] = sum(r["correct"] for r in records) / n
            metrics["unparseable"] = float(sum(r["extracted"] is None for r in records))
        if "loglik" in outputs:
            metrics["loglik_acc"] = sum(r["loglik_correct"] for r in records) / n
            metrics["loglik_acc_norm"] = sum(r["loglik_correct_norm"] for r in records) / n
        metrics["examples"] = float(len(records))
        return metrics, records
