"""LLM-Adapters instruction tuning and evaluation (commonsense and arithmetic reasoning, Hu et al. 2023).

Data: JSON lists of records ``{"instruction": ..., "input": "" (optional), "output": ..., "answer": ...}``
(training and test files alike), in LLM-Adapters' layout under ``task.data_dir``::

    <data_dir>/ft-training_set/commonsense_170k.json     pooled training sets (task.train_set)
    <data_dir>/ft-training_set/math_10k.json
    <data_dir>/dataset/<test_set>/test.json               per-task test sets (boolq, ARC-Easy, gsm8k, AQuA ...)
    <data_dir>/dataset/<test_set>/train.json              per-task training (task.train_set=<task name>)

``task.data_files.{train,validation,test}`` name files directly. Nothing is downloaded: missing files
are one clear :class:`UserError`.

Training: Alpaca prompt + ``output`` + EOS, cut at ``data.max_length`` (``task.max_length`` overrides;
the paper uses 256); the loss covers the response tokens only (prompt tokens are labelled -100).

Evaluation (``task.eval_mode``):

* ``generate`` (default): greedy (``task.generation.num_beams`` > 1: beam search) generation from the
  prompt alone, left-padded; the answer is extracted from the generated text
  (``task.answer_type``):

  - ``label``: the FIRST match of the task's label words (``task.label_words``, e.g. ``true|false``),
    compared with ``answer`` as an exact string. Case-sensitive by default, as in LLM-Adapters
    (``"True"`` does not count as ``"true"``); ``task.case_sensitive=false`` matches any casing.
  - ``number``: the LAST number in the text (thousands separators ``1,234`` removed; negatives and
    decimals kept), correct when ``|pred - float(answer)| < 1e-3``.
  - ``letter`` (AQuA): the option letter A-E; see :func:`extract_letter`.
  - ``auto``: ``letter`` when the gold answer is a single letter A-E, else ``number`` (math_10k, which
    mixes AQuA with numeric problems).

  Text with nothing to extract counts as wrong (``unparseable``), never dropped.
* ``loglik``: each label word is scored as the continuation ``task.loglik_template`` (default
  ``"the correct answer is {}"``, the response format of commonsense_170k) after the prompt: the sum
  of the continuation's token log-probabilities; ``loglik_acc`` = argmax is the answer,
  ``loglik_acc_norm`` = the same after dividing each score by the continuation's length in characters.
* ``both``: both.

Validation rows carved from a pooled training set (``task.split.validation``) mix the pool's tasks:
they are scored with the pool's rules (any commonsense label word / ``auto``), the test split with the
task's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from ..errors import UserError
from .base import Features, Task
from .data import carve_splits, read_table, subsample
from .generation import fixed_width, framing, generate, generation_kwargs, pad

PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")

LABEL_WORDS = {
    "boolq": ["true", "false"],
    "piqa": ["solution1", "solution2"],
    "siqa": ["answer1", "answer2", "answer3"],
    "arc_e": [f"answer{i}" for i in range(1, 6)],
    "arc_c": [f"answer{i}" for i in range(1, 6)],
    "obqa": [f"answer{i}" for i in range(1, 6)],
    "hellaswag": [f"ending{i}" for i in range(1, 5)],
    "winogrande": ["option1", "option2"],
}
ALL_LABEL_WORDS = list(dict.fromkeys(w for words in LABEL_WORDS.values() for w in words))
ANSWER_TYPES = ("label", "number", "letter", "auto")
EVAL_MODES = ("generate", "loglik", "both")
SCHEMA = ('a JSON list of records {"instruction": str, "input": str (may be empty), "output": str (the target '
          'response), "answer": str (the gold answer)}')


def build_prompt(instruction: str, input: str | None = "") -> str:  # noqa: A002 - the record's field name
    """The Alpaca prompt LLM-Adapters uses (the variant with an input when ``input`` is non-empty)."""
    instruction = "" if instruction is None else str(instruction)
    if input is not None and not (isinstance(input, float) and input != input) and str(input).strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=str(input))
    return PROMPT.format(instruction=instruction)


# ---------------------------------------------------------------- answer extraction

def extract_label(text: str, words, case_sensitive: bool = True) -> str | None:
    """The first occurrence in ``text`` of any of ``words`` (as LLM-Adapters: no word boundaries), returned
    as written in ``words``; None when there is none."""
    words = [str(w) for w in words]
    pattern = re.compile("|".join(re.escape(w) for w in words), 0 if case_sensitive else re.IGNORECASE)
    m = pattern.search(text or "")
    if m is None:
        return None
    return m.group(0) if case_sensitive else {w.lower(): w for w in words}[m.group(0).lower()]


# LLM-Adapters' rule, kept exactly so that scores compare with the published ones: drop every comma,
# then take the last match of -?\d+\.?\d* ("1,234" -> 1234; "7 - 10 = -3" -> -3; "5-3" -> -3; "7." -> 7).
_NUMBER = re.compile(r"-?\d+\.?\d*")


def extract_number(text: str) -> float | None:
    """The last number in ``text`` after removing all commas (LLM-Adapters' rule); None if none."""
    found = _NUMBER.findall((text or "").replace(",", ""))
    return float(found[-1]) if found else None


_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?:?\s*(?:(?i:option)\s*)?[(\[]?([A-E])(?![A-Za-z0-9])")
_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-E])(?![A-Za-z0-9])")


def extract_letter(text: str) -> str | None:
    """The AQuA option letter in ``text``.

    1. the first letter stated as the answer: ``answer is C``, ``Answer: (B)``, ``answer is option D``;
    2. otherwise the first standalone capital A-E (not part of a word or number: ``(C)``, ``C.``, ``C)``),
       skipping the article ``A`` (an ``A`` followed by a space and a lowercase word: ``A train ...``).
    None when neither is found.
    """
    text = text or ""
    m = _ANSWER_LETTER.search(text)
    if m:
        return m.group(1)
    for m in _LETTER.finditer(text):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():]):
            continue
        return m.group(1)
    return None


def gold_text(value) -> str:
    """A record's answer as a string (JSON numbers and booleans made strings as they would be written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def score_output(text: str, gold: str, answer_type: str, words=(), case_sensitive: bool = True):
    """(extracted answer or None, correct) for one generated text."""
    gold = gold_text(gold)
    if answer_type == "auto":
        answer_type = "letter" if re.fullmatch(r"[A-E]", gold) else "number"
    if answer_type == "label":
        got = extract_label(text, words, case_sensitive)
        ok = got is not None and (got == gold if case_sensitive else got.lower() == gold.lower())
        return got, ok
    if answer_type == "letter":
        got = extract_letter(text)
        return got, got is not None and got == gold.upper()
    got = extract_number(text)
    try:
        target = float(gold.replace(",", ""))
    except ValueError:
        return got, False
    return got, got is not None and abs(got - target) < 1e-3


# ---------------------------------------------------------------- tokenisation

def _plain(x):
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def response_ids(tokenizer, prompts: list[str], responses: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, response ids) without special tokens. The pair is tokenised jointly and cut where the
    prompt's own tokens end, so that the model sees at evaluation exactly the prefix it was trained on;
    when a token straddles the boundary, the response is tokenised on its own."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full = tokenizer([p + r for p, r in zip(prompts, responses)], add_special_tokens=False)["input_ids"]
    out = []
    for p, f, r in zip(p_ids, full, responses):
        out.append(list(f[len(p):]) if f[:len(p)] == p else tokenizer(r, add_special_tokens=False)["input_ids"])
    return [list(p) for p in p_ids], out


def training_example(prefix, prompt_ids, resp_ids, eos: int, cutoff: int) -> dict:
    ids = list(prefix) + list(prompt_ids) + list(resp_ids) + [eos]
    labels = [-100] * (len(prefix) + len(prompt_ids)) + list(resp_ids) + [eos]
    return {"input_ids": ids[:cutoff], "attention_mask": [1] * min(len(ids), cutoff), "labels": labels[:cutoff]}


class InstructionTask(Task):
    kind = "causal_lm"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.answer_type = cfg.get("answer_type", "label")
        if self.answer_type not in ANSWER_TYPES:
            raise UserError(f"task.answer_type={self.answer_type!r}: use one of {', '.join(ANSWER_TYPES)}.")
        self.eval_mode = cfg.get("eval_mode", "generate")
        if self.eval_mode not in EVAL_MODES:
            raise UserError(f"task.eval_mode={self.eval_mode!r}: use one of {', '.join(EVAL_MODES)}.")
        if self.eval_mode != "generate" and self.answer_type != "label":
            raise UserError(f"task.eval_mode={self.eval_mode} scores label words (commonsense tasks); task "
                            f"{self.name!r} has numeric/letter answers: use task.eval_mode=generate.")
        words = cfg.get("label_words") or LABEL_WORDS.get(self.name, ALL_LABEL_WORDS)
        self.label_words = [str(w) for w in words]
        self.case_sensitive = bool(cfg.get("case_sensitive", True))
        self.loglik_template = str(cfg.get("loglik_template") or "the correct answer is {}")
        main = cfg.get("main_metric") or "accuracy"
        self.main_metric = "loglik_acc" if self.eval_mode == "loglik" and main == "accuracy" else main
        self.pooled_splits: set[str] = set()  # splits carved from a pooled training set
        self._eval = {}
        self._tokenizer = None
        self._eos = self._pad = 0
        self._cache = None

    @property
    def generates(self) -> bool:
        return self.eval_mode in ("generate", "both")

    @property
    def logliks(self) -> bool:
        return self.eval_mode in ("loglik", "both")

    # ---- data
    def data_files(self) -> dict[str, Path]:
        """Split -> file: LLM-Adapters' layout under task.data_dir, overridden by task.data_files."""
        cfg, files = self.cfg, {}
        root = Path(str(cfg.get("data_dir") or ".")).expanduser()
        train_set, test_set = cfg.get("train_set"), cfg.get("test_set")
        if train_set:
            own = train_set == self.name and test_set
            files["train"] = (root / "dataset" / str(test_set) / "train.json" if own
                              else root / "ft-training_set" / f"{train_set}.json")
        if test_set:
            files["test"] = root / "dataset" / str(test_set) / "test.json"
        given = _plain(cfg.get("data_files")) or {}
        if isinstance(given, str):
            given = {"train": given}
        files.update({split: Path(str(path)).expanduser() for split, path in given.items() if path})
        return files

    def _missing_files_error(self, missing: dict[str, Path]) -> UserError:
        cfg = self.cfg
        names = [n for n in dict.fromkeys([cfg.get("train_set"), cfg.get("test_set")]) if n]
        listing = "; ".join(f"{split}: {path}" for split, path in missing.items())
        return UserError(
            f"Task {self.name!r} needs the LLM-Adapters dataset(s) {', '.join(map(repr, names))}, which cannot be "
            f"downloaded here; missing {listing}. Each file is {SCHEMA}. Put LLM-Adapters' ft-training_set/ and "
            f"dataset/ folders under {cfg.get('data_dir')} (or set ROCOFT_DATA, or task.data_dir=/path), or name "
            f"the files directly, e.g. task.data_files.train=/path/{cfg.get('train_set') or 'train'}.json "
            f"task.data_files.test=/path/{cfg.get('test_set') or 'task'}/test.json")

    def load(self) -> dict[str, pd.DataFrame]:
        """train / validation / test DataFrames; missing validation/test carved from train (task.split)."""
        files = self.data_files()
        missing = {s: p for s, p in files.items() if not p.is_file()}
        if missing:
            raise self._missing_files_error(missing)
        if "train" not in files:
            raise UserError(f"Task {self.name!r} has no training file: set task.train_set or task.data_files.train.")
        splits = {split: read_records(path) for split, path in files.items()}
        for split, df in splits.items():
            if len(df) == 0:
                raise UserError(f"The {split} file of task {self.name!r} ({files[split]}) has no records.")
        carved = carve_splits(dict(splits), self.cfg.split, None)
        pooled = self.cfg.get("train_set") not in (None, self.name)  # a pool of several tasks
        self.pooled_splits = {s for s in carved if s not in splits} if pooled else set()
        return carved

    def splits(self, max_train=None, max_eval=None):
        seed = self.cfg.split.seed
        return {s: subsample(df, max_train if s == "train" else max_eval, seed) for s, df in self.load().items()}

    def check_columns(self, df, split, columns):
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UserError(f"The {split} records of task {self.name!r} lack field(s) {missing} (they have "
                            f"{list(df.columns)}); each file should be {SCHEMA}.")

    def rules(self, split: str) -> tuple[str, list[str]]:
        """(answer type, label words) that score ``split``."""
        if split in self.pooled_splits:
            return ("label", ALL_LABEL_WORDS) if self.answer_type == "label" else ("auto", [])
        return self.answer_type, self.label_words

    def encode(self, df, tokenizer, max_length, split="train"):
        self._tokenizer = tokenizer
        prefix, self._eos = framing(tokenizer)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos
        inputs = df["input"].tolist() if "input" in df.columns else [""] * len(df)
        if split == "train":
            self.check_columns(df, split, ["instruction", "output"])
            prompts = [build_prompt(i, x) for i, x in zip(df["instruction"].tolist(), inputs)]
            outputs = df["output"].fillna("").astype(str).tolist()
            cutoff = int(self.cfg.get("max_length") or max_length)
            p_ids, r_ids = response_ids(tokenizer, prompts, outputs)
            rows = [training_example(prefix, p, r, self._eos, cutoff) for p, r in zip(p_ids, r_ids)]
            kept = [row for row in rows if any(y != -100 for y in row["labels"])]
            if rows and not kept:
                raise UserError(f"No training example of task {self.name!r} keeps a response token within the "
                                f"cut-off length {cutoff} (data.max_length): the prompts are longer. Raise it, e.g. "
                                f"data.max_length=256 as in the paper.")
            if len(kept) < len(rows):
                print(f"note: {len(rows) - len(kept)} of {len(rows)} training examples of task {self.name!r} "
                      f"have no response token within the cut-off length {cutoff}; they are left out")
            return Features(kept)
        self.check_columns(df, split, ["instruction", "answer"])
        prompts = [build_prompt(i, x) for i, x in zip(df["instruction"].tolist(), inputs)]
        golds = [gold_text(v) for v in df["answer"].tolist()]
        answer_type, words = self.rules(split)
        conts = [self.loglik_template.format(w) for w in words] if self.logliks else []
        p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        limit = self.cfg.get("max_prompt_length")
        rows = []
        for i, ids in enumerate(p_ids):
            ids = list(prefix) + list(ids)
            if limit and len(ids) > limit:  # keep the special prefix and the end ("### Response:\n")
                ids = list(prefix) + ids[len(ids) - (limit - len(prefix)):]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "index": i})
        if conts:
            for k, cont in enumerate(conts):
                _, c_ids = response_ids(tokenizer, prompts, [cont] * len(prompts))
                for row, c in zip(rows, c_ids):
                    row.setdefault("cand_ids", []).append(c)
        self._eval[split] = {"prompt": prompts, "gold": golds, "answer_type": answer_type, "words": list(words),
                             "conts": conts}
        return Features(rows)

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
                     "index": torch.tensor([r["index"] for r in rows], dtype=torch.long)}
            if "cand_ids" in rows[0]:  # (batch, candidates, length): prompt + continuation, right-padded
                seqs = [[r["input_ids"] + c for c in r["cand_ids"]] for r in rows]
                width = max(len(s) for ss in seqs for s in ss)
                batch["ll_ids"] = torch.stack([pad(ss, pad_id, length=width) for ss in seqs])
                batch["ll_mask"] = torch.stack([pad([[1] * len(s) for s in ss], 0, length=width) for ss in seqs])
                batch["ll_cont"] = torch.stack([pad([[0] * len(r["input_ids"]) + [1] * len(c) for c in r["cand_ids"]],
                                                    0, length=width) for r in rows])
            return batch
        return collate

    # ---- evaluation
    def generation_kwargs(self) -> dict:
        default = 32 if self.answer_type == "label" else 256
        kwargs = generation_kwargs(self.cfg.get("generation"), {"max_new_tokens": default})
        kwargs.setdefault("pad_token_id", self._pad)
        kwargs.setdefault("eos_token_id", self._eos)
        return kwargs

    @torch.no_grad()
    def predict_step(self, model, batch):
        out = {"index": batch["index"]}
        if self.generates:
            kwargs = self.generation_kwargs()
            ids = batch["input_ids"]
            gen = generate(model, ids, batch["attention_mask"], **kwargs)
            if gen.shape[1] >= ids.shape[1] and torch.equal(gen[:, :ids.shape[1]], ids):
                gen = gen[:, ids.shape[1]:]  # decoder-only models return prompt + new tokens
            out["generated"] = fixed_width(gen, kwargs["max_new_tokens"], self._eos)
        if self.logliks and "ll_ids" in batch:
            scores = []
            for k in range(batch["ll_ids"].shape[1]):
                ids, cont = batch["ll_ids"][:, k], batch["ll_cont"][:, k, 1:].float()
                logits = model(input_ids=ids, attention_mask=batch["ll_mask"][:, k]).logits
                logits = logits[:, -ids.shape[1]:-1].float()  # (prompt-learning methods prepend virtual tokens)
                target = ids[:, 1:].unsqueeze(-1)
                token_lp = logits.gather(-1, target).squeeze(-1) - logits.logsumexp(-1)
                scores.append((token_lp * cont).sum(1))
            out["loglik"] = torch.stack(scores, 1)
        return out

    def decode(self, ids) -> str:
        ids = [int(t) for t in ids]
        if self._eos in ids:
            ids = ids[:ids.index(self._eos)]
        return self._tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _records(self, outputs, split) -> list[dict]:
        if self._cache is not None and self._cache[0] is outputs:
            return self._cache[1]
        data = self._eval[split]
        answer_type, words = data["answer_type"], data["words"]
        first = {}
        for j, i in enumerate(outputs["index"].tolist()):
            first.setdefault(i, j)  # gather_for_metrics already drops duplicates; be safe anyway
        records = []
        for i in sorted(first):
            j, gold = first[i], data["gold"][i]
            rec = {"index": i, "prompt": data["prompt"][i], "output": None, "extracted": None, "gold": gold,
                   "correct": None}
            if "generated" in outputs:
                text = self.decode(outputs["generated"][j])
                got, ok = score_output(text, gold, answer_type, words, self.case_sensitive)
                rec.update(output=text, extracted=got, correct=bool(ok))
            if "loglik" in outputs:
                scores = outputs["loglik"][j].tolist()
                norm = [s / max(len(c), 1) for s, c in zip(scores, data["conts"])]
                best = words[max(range(len(words)), key=scores.__getitem__)]
                best_norm = words[max(range(len(words)), key=norm.__getitem__)]
                same = (lambda a: a == gold) if self.case_sensitive else (lambda a: a.lower() == gold.lower())
                rec.update(loglik_choice=best, loglik_correct=same(best), loglik_choice_norm=best_norm,
                           loglik_correct_norm=same(best_norm), loglik_scores=dict(zip(words, scores)))
            records.append(rec)
        self._cache = (outputs, records)
        return records

    def compute_metrics(self, outputs, split="validation"):
        records = self._records(outputs, split)
        n = max(len(records), 1)
        metrics = {}
        if "generated" in outputs:
            metrics["accuracy"] = 100.0 * sum(r["correct"] for r in records) / n
            metrics["unparseable"] = float(sum(r["extracted"] is None for r in records))
        if "loglik" in outputs:
            metrics["loglik_acc"] = 100.0 * sum(r["loglik_correct"] for r in records) / n
            metrics["loglik_acc_norm"] = 100.0 * sum(r["loglik_correct_norm"] for r in records) / n
        metrics["examples"] = float(len(records))
        return metrics

    def prediction_records(self, outputs, split):
        return self._records(outputs, split)


def read_records(path: Path) -> pd.DataFrame:
    """A JSON list of records (or JSON lines) read with its values' own types (pandas' read_json would turn
    answers like "18" into integers); other formats through ``read_table``."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".jsonl"):
        df = read_table(path)
    else:
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            try:
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as e:
                raise UserError(f"Could not read {path}: it should be {SCHEMA} ({e}).") from None
        if isinstance(data, dict):
            data = data.get("data", data.get("examples", [data]))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"Could not read {path}: it should be {SCHEMA}.")
        df = pd.DataFrame(data)
    if "input" in df.columns:
        df["input"] = df["input"].fillna("").astype(str)
    return df
