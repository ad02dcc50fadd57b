"""Answer extraction for LLM-Adapters' evaluation (Hu et al. 2023): which answer a generated text states.

* ``label``: the FIRST match of any of the task's label words (``true|false``, ``answer1|...|answer5``),
  compared with the gold answer as an exact string; case-sensitive by default, as LLM-Adapters.
* ``number``: the LAST number after removing every comma, correct within 1e-3 of the gold answer.
* ``letter`` (AQuA): the option letter A-E stated as the answer, else the first standalone one.
* ``auto``: ``letter`` when the gold answer is a single letter A-E, else ``number`` (math_10k mixes both).

Text with nothing to extract is wrong (the extracted answer is None), never dropped.
"""

from __future__ import annotations

import re

ANSWER_TYPES = ("label", "number", "letter", "auto")


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


def same_label(a: str, b: str, case_sensitive: bool = True) -> bool:
    return a == b if case_sensitive else a.lower() == b.lower()


def score_output(text: str, gold: str, answer_type: str, words=(), case_sensitive: bool = True):
    """(extracted answer or None, correct) for one generated text."""
    gold = gold_text(gold)
    if answer_type == "auto":
        answer_type = "letter" if re.fullmatch(r"[A-E]", gold) else "number"
    if answer_type == "label":
        got = extract_label(text, words, case_sensitive)
        return got, got is not None and same_label(got, gold, case_sensitive)
    if answer_type == "letter":
        got = extract_letter(text)
        return got, got is not None and got == gold.upper()
    got = extract_number(text)
    try:
        target = float(gold.replace(",", ""))
    except ValueError:
        return got, False
    return got, got is not None and abs(got - target) < 1e-3
