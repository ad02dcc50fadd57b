"""Scoring functions, pure and task-free: each takes predictions and references, returns numbers.

Unit: every score is a FRACTION. accuracy, f1, exact_match, SQuAD's HasAns/NoAns scores, ROUGE-1/2/L/Lsum
and the LLM-Adapters accuracies lie in [0, 1]; matthews_corr, pearson and spearman in [-1, 1]. The keys in
:data:`UNSCALED` are not scores (losses, perplexity, counts, lengths): reports show every other key x100.

| module            | what                                                              |
|-------------------|-------------------------------------------------------------------|
| classification.py | accuracy, F1, Matthews correlation; Pearson / Spearman (sklearn, scipy) |
| squad.py          | the official SQuAD v1.1 / v2.0 exact match and token F1           |
| rouge.py          | ROUGE with an offline sentence splitter (rouge-score)             |
| answers.py        | LLM-Adapters answer extraction: label word, number, option letter |
"""

from .answers import extract_label, extract_letter, extract_number, gold_text, score_output
from .classification import classification_metrics, regression_metrics
from .rouge import ROUGE_KEYS, rouge, rouge_scores, split_sentences
from .squad import normalize_answer, score_one, squad_metrics, token_f1

# Per-split metrics.json keys that are not scores (reported as they are, never x100).
UNSCALED = frozenset({"loss", "perplexity", "examples", "unparseable", "gen_words", "HasAns_total", "NoAns_total",
                      "n", "kernel_rel_diff_l1", "kernel_rel_diff_l2", "kernel_params"})

__all__ = ["ROUGE_KEYS", "UNSCALED", "classification_metrics", "extract_label", "extract_letter", "extract_number",
           "gold_text", "normalize_answer", "regression_metrics", "rouge", "rouge_scores", "score_one",
           "score_output", "split_sentences", "squad_metrics", "token_f1"]
