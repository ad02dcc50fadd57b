"""Evaluation modes shared by the tasks that need them: generation, and log-likelihood over candidates.

* :class:`Generation` (summarization, LLM-Adapters): ``generate`` from the prompt alone, greedy or beam
  search with the task's settings (any ``generate`` keyword). The new tokens come back at a fixed width,
  so that the batches of a split concatenate after ``accelerator.gather_for_metrics``; :func:`decode`
  turns them into text once, when the split is scored.
* :class:`LogLikelihood` (LLM-Adapters ``eval_mode: loglik``): every candidate continuation, e.g.
  ``"the correct answer is true"``, is scored after the prompt as the sum of its tokens' log-probabilities;
  the choice is the argmax, and the argmax after dividing by the continuation's length in characters.

The tokenizer's special ids reach ``predict_step`` in the batch (``special_ids``: pad, end of sequence),
set by the task's collate function, so the task object holds nothing tokenizer-specific.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def unwrap(model):
    """The model under DistributedDataParallel / DataParallel / torch.compile wrappers (these lack generate)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and not hasattr(model, "generate"):
            model = model._orig_mod
        else:
            return model


def pad(seqs: list[list[int]], value: int, side: str = "right", length: int | None = None) -> torch.Tensor:
    """A (len(seqs), length) LongTensor: each sequence padded with ``value`` on ``side``."""
    length = max([len(s) for s in seqs] + [0]) if length is None else length
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:length]
        if s:
            if side == "left":
                out[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
            else:
                out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def fixed_width(ids: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """``ids`` (batch, t) cut or right-padded with ``value`` to (batch, width)."""
    if ids.shape[1] >= width:
        return ids[:, :width]
    fill = ids.new_full((ids.shape[0], width - ids.shape[1]), value)
    return torch.cat([ids, fill], dim=1)


def framing(tokenizer) -> tuple[list[int], int]:
    """(prefix ids the tokenizer puts before a text, end-of-sequence id).

    LLaMA: ([bos], eos); BERT-style tokenizers (the tiny test models): ([CLS], [SEP]); GPT-2/GPT-J: ([], eos).
    """
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    framed = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(framed) - len(plain) + 1) if framed[i:i + len(plain)] == plain), 0)
    prefix, suffix = list(framed[:start]), list(framed[start + len(plain):])
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = suffix[0] if suffix else tokenizer.sep_token_id
    if eos is None:
        eos = tokenizer.pad_token_id
    return prefix, int(eos)


def special_ids(tokenizer, n: int, eos: int | None = None) -> torch.Tensor:
    """(n, 2) rows of (pad id, end-of-sequence id) for a batch of n; pad falls back to the end of sequence."""
    eos = framing(tokenizer)[1] if eos is None else eos
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return torch.tensor([[pad_id, eos]] * n, dtype=torch.long)


def continuation_ids(tokenizer, prompts: list[str], continuations: list[str]) -> tuple[list, list]:
    """(prompt ids, continuation ids) without special tokens. The pair is tokenised jointly and cut where the
    prompt's own tokens end, so that the model sees at evaluation exactly the prefix it was trained on;
    when a token straddles the boundary, the continuation is tokenised on its own."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full = tokenizer([p + c for p, c in zip(prompts, continuations)], add_special_tokens=False)["input_ids"]
    out = []
    for p, f, c in zip(p_ids, full, continuations):
        out.append(list(f[len(p):]) if f[:len(p)] == p else tokenizer(c, add_special_tokens=False)["input_ids"])
    return [list(p) for p in p_ids], out


def decode(tokenizer, ids, stop: int | None = None) -> str:
    """Generated ids as text: cut at the first ``stop`` id (if given), special tokens dropped, stripped."""
    ids = [int(t) for t in ids]
    if stop is not None and stop in ids:
        ids = ids[:ids.index(stop)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


@dataclass
class Generation:
    """Generation from the prompt: ``settings`` are ``generate`` keywords (nulls dropped; greedy unless set).

    ``continues_prompt``: a decoder-only model returns prompt + new tokens, and the prompt is cut off;
    ``extra_width``: positions kept beyond ``max_new_tokens`` (1 for a seq2seq decoder's start token);
    ``fill``: "pad" or "eos", the id that pads the output to its fixed width."""
    settings: dict = field(default_factory=dict)
    continues_prompt: bool = False
    extra_width: int = 0
    fill: str = "pad"

    def __post_init__(self):
        self.settings = {k: v for k, v in (self.settings or {}).items() if v is not None}
        self.settings.setdefault("num_beams", 1)
        self.settings.setdefault("do_sample", False)

    @classmethod
    def with_defaults(cls, settings: dict | None, defaults: dict, **kwargs) -> "Generation":
        """The task's ``generation`` settings over ``defaults`` (a null setting keeps the default)."""
        given = {k: v for k, v in (settings or {}).items() if v is not None}
        return cls({**defaults, **given}, **kwargs)

    @property
    def width(self) -> int:
        return int(self.settings["max_new_tokens"]) + self.extra_width

    def kwargs(self, special: torch.Tensor | None = None) -> dict:
        """``generate`` keywords; ``special`` (from the batch) supplies pad / end-of-sequence ids not set."""
        kwargs = dict(self.settings)
        if special is not None:
            kwargs.setdefault("pad_token_id", int(special[0, 0]))
            if self.fill == "eos":
                kwargs.setdefault("eos_token_id", int(special[0, 1]))
        return kwargs

    @torch.no_grad()
    def __call__(self, model, batch) -> torch.Tensor:
        """(batch, width) generated ids."""
        kwargs = self.kwargs(batch.get("special_ids"))
        ids = batch["input_ids"]
        out = unwrap(model).generate(input_ids=ids, attention_mask=batch["attention_mask"], **kwargs)
        if self.continues_prompt and out.shape[1] >= ids.shape[1] and torch.equal(out[:, :ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]
        fill = kwargs["eos_token_id"] if self.fill == "eos" else kwargs.get("pad_token_id", 0)
        return fixed_width(out, self.width, fill)


@dataclass
class LogLikelihood:
    """Scores of candidate continuations (``template`` filled with each candidate word) after the prompt."""
    template: str = "the correct answer is {}"

    def continuations(self, words) -> list[str]:
        return [self.template.format(w) for w in words]

    def candidate_ids(self, tokenizer, prompts: list[str], words) -> list[list[list[int]]]:
        """Per prompt, the ids of each candidate continuation (tokenised jointly with the prompt)."""
        per_candidate = [continuation_ids(tokenizer, prompts, [c] * len(prompts))[1] for c in self.continuations(words)]
        return [[ids[i] for ids in per_candidate] for i in range(len(prompts))]

    @staticmethod
    def collate(prompts: list[list[int]], candidates: list[list[list[int]]], pad_id: int) -> dict:
        """(batch, candidates, length) prompt + continuation ids right-padded, their mask, the continuation mask."""
        seqs = [[p + c for c in cands] for p, cands in zip(prompts, candidates)]
        width = max(len(s) for ss in seqs for s in ss)
        return {"ll_ids": torch.stack([pad(ss, pad_id, length=width) for ss in seqs]),
                "ll_mask": torch.stack([pad([[1] * len(s) for s in ss], 0, length=width) for ss in seqs]),
                "ll_cont": torch.stack([pad([[0] * len(p) + [1] * len(c) for c in cands], 0, length=width)
                                        for p, cands in zip(prompts, candidates)])}

    @torch.no_grad()
    def __call__(self, model, batch) -> torch.Tensor:
        """(batch, candidates) summed log-probabilities of each continuation."""
        scores = []
        for k in range(batch["ll_ids"].shape[1]):
            ids, cont = batch["ll_ids"][:, k], batch["ll_cont"][:, k, 1:].float()
            logits = model(input_ids=ids, attention_mask=batch["ll_mask"][:, k]).logits
            logits = logits[:, -ids.shape[1]:-1].float()  # (prompt-learning methods prepend virtual tokens)
            token_lp = logits.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            scores.append((token_lp * cont).sum(1))
        return torch.stack(scores, 1)

    def choose(self, scores: list[float], words) -> tuple[str, str]:
        """(argmax word, argmax word after dividing each score by its continuation's length in characters)."""
        norm = [s / max(len(c), 1) for s, c in zip(scores, self.continuations(words))]
        return (words[max(range(len(words)), key=scores.__getitem__)],
                words[max(range(len(words)), key=norm.__getitem__)])
