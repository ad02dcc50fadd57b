"""ROUGE-1/2/L/Lsum F-measures (``rouge_score``, Porter stemmer) with an offline sentence splitter.

rougeLsum needs one sentence per line; nltk's splitter needs a download, so :func:`split_sentences`
does it with a rule. Scores are fractions in [0, 1].
"""

from __future__ import annotations

import re

from ..errors import UserError

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
    """Per-example ROUGE-1/2/L/Lsum F-measures in [0, 1] (sentences one per line for all four keys:
    rouge1/2/L tokenise across line breaks, so only rougeLsum depends on the split)."""
    scorer = _scorer()
    out = []
    for pred, ref in zip(predictions, references):
        s = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        out.append({k: s[k].fmeasure for k in ROUGE_KEYS})
    return out


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE F-measures averaged over examples, in [0, 1]."""
    per = rouge_scores(predictions, references)
    return {k: sum(p[k] for p in per) / max(len(per), 1) for k in ROUGE_KEYS}
