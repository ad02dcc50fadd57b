"""rocoft.metrics: every scoring function alone, against hand-computed values or an independent library
(scikit-learn, scipy, rouge-score). Scores are fractions."""

import numpy as np
import pytest

from rocoft.metrics import (UNSCALED, classification_metrics, extract_label, extract_letter, extract_number,
                            normalize_answer, regression_metrics, rouge, rouge_scores, score_one, score_output,
                            split_sentences, squad_metrics, token_f1)


# ------------------------------------------------------------------------------------ classification


def test_classification_metrics_against_hand_computed_values():
    # preds 1 0 1 1 0 ; labels 1 0 0 1 1 -> TP=2 FP=1 FN=1 TN=1
    m = classification_metrics([1, 0, 1, 1, 0], [1, 0, 0, 1, 1], ("accuracy", "f1", "matthews_corr"))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["matthews_corr"] == pytest.approx((2 * 1 - 1 * 1) / (3 * 3 * 2 * 2) ** 0.5)


def test_f1_averages_over_the_tasks_labels_not_those_present():
    from sklearn.metrics import f1_score

    labels, preds = [0, 1, 1, 0, 1], [0, 1, 0, 0, 2]  # a 3-class task; class 2 is absent from the labels
    got = classification_metrics(preds, labels, ("f1",), num_labels=3)["f1"]
    assert got == pytest.approx(f1_score(labels, preds, average="macro", labels=[0, 1, 2], zero_division=0))
    labels, preds = [0, 1, 1, 0], [0, 1, 0, 0]  # 3 classes, none predicted or labelled 2: still macro
    assert classification_metrics(preds, labels, ("f1",), num_labels=3)["f1"] == pytest.approx(
        f1_score(labels, preds, average="macro", labels=[0, 1, 2], zero_division=0))
    assert classification_metrics(preds, labels, ("f1",), num_labels=2)["f1"] == pytest.approx(
        f1_score(labels, preds))  # two classes: F1 of class 1 (MRPC / QQP)


def test_metrics_against_independent_formulas():
    preds, labels = [1, 1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 1, 1]
    tp, tn, fp, fn = 3, 2, 1, 1
    m = classification_metrics(preds, labels, ("accuracy", "f1", "matthews_corr"))
    assert m["accuracy"] == pytest.approx((tp + tn) / 7)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["matthews_corr"] == pytest.approx(mcc)
    x, y = np.array([1.0, 2.0, 3.5, 4.0, 0.5]), np.array([1.2, 1.9, 3.0, 4.5, 1.0])
    r = regression_metrics(x, y)
    pearson = ((x - x.mean()) * (y - y.mean())).sum() / np.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    rx, ry = x.argsort().argsort().astype(float), y.argsort().argsort().astype(float)  # no ties here
    spearman = np.corrcoef(rx, ry)[0, 1]
    assert r["pearson"] == pytest.approx(pearson) and r["spearman"] == pytest.approx(spearman)


# ---------------------------------------------------------------------------------------- squad


def test_normalization_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("  The  Denver Broncos! ") == "denver broncos"
    assert normalize_answer("An apple, a pear; THE end.") == "apple pear end"
    assert normalize_answer("theatre another") == "theatre another"  # articles only as whole words
    assert normalize_answer("a") == "" and normalize_answer("...") == ""


def test_exact_match_and_f1_against_hand_computed_values():
    assert score_one("the Denver Broncos", ["Denver Broncos"]) == (1.0, 1.0)
    # several golds: the max of each score (not necessarily from the same gold)
    assert score_one("Broncos", ["Denver Broncos", "the Broncos"]) == (1.0, 1.0)
    em, f1 = score_one("Denver", ["Denver Broncos", "Carolina Panthers"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)  # p = 1/1, r = 1/2
    # partial overlap: pred "denver broncos won" vs gold "broncos won super bowl": 2 common tokens,
    # p = 2/3, r = 2/4 -> f1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    assert token_f1("Denver Broncos won.", "Broncos won Super Bowl") == pytest.approx(4 / 7)
    # repeated tokens count with multiplicity: pred "x y y" gold "y z": common 1, p=1/3, r=1/2 -> 0.4
    assert token_f1("x y y", "y z") == pytest.approx(0.4)
    # no-answer: empty vs empty is right, empty vs non-empty (either way) is wrong
    assert score_one("", [""]) == (1.0, 1.0)
    assert score_one("", ["Broncos"]) == (0.0, 0.0)
    assert score_one("Broncos", [""]) == (0.0, 0.0)
    assert score_one("the", [""]) == (1.0, 1.0)  # normalises to empty


def test_metrics_are_fractions_with_the_v2_breakdown():
    preds = ["Denver Broncos", "Denver", "", "Paris"]
    golds = [["Denver Broncos"], ["Denver Broncos"], [""], [""]]
    m = squad_metrics(preds, golds, with_negative=True)
    assert m["exact_match"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    assert m["HasAns_exact"] == pytest.approx(0.5) and m["HasAns_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["NoAns_exact"] == pytest.approx(0.5) and m["NoAns_f1"] == pytest.approx(0.5)
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 2
    assert set(squad_metrics(preds[:2], golds[:2])) == {"exact_match", "f1"}


# ---------------------------------------------------------------------------------------- rouge


def test_sentence_splitter_on_a_hand_made_paragraph():
    text = ('The storm hit Newton Stewart on Friday. Mr. Smith, 54, said "It was awful!" Roads were shut. '
            'Was anyone hurt? 12 people were treated by Dr. Jones of the U.S. Army at St. Mary\'s. '
            'prices rose 3.5 per cent. "We will rebuild," the council said.\nA second line here')
    assert split_sentences(text) == [
        "The storm hit Newton Stewart on Friday.",
        'Mr. Smith, 54, said "It was awful!"',
        "Roads were shut.",
        "Was anyone hurt?",
        "12 people were treated by Dr. Jones of the U.S. Army at St. Mary's. prices rose 3.5 per cent.",
        '"We will rebuild," the council said.',
        "A second line here",
    ]
    assert split_sentences("") == [] and split_sentences("no end punctuation") == ["no end punctuation"]


def test_rouge_matches_rouge_score_computed_independently():
    from rouge_score import rouge_scorer

    preds = ["The cat sat on the mat. It was happy.", "Police arrested two men in London.", ""]
    refs = ["A cat was sitting on the mat. The cat was happy.", "Two men were arrested by police in London.",
            "Nothing happened."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    lines = {0: ("A cat was sitting on the mat.\nThe cat was happy.", "The cat sat on the mat.\nIt was happy."),
             1: (refs[1], preds[1]), 2: (refs[2], preds[2])}
    expected = [scorer.score(*lines[i]) for i in range(3)]
    per = rouge_scores(preds, refs)
    for e, p in zip(expected, per):
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert p[key] == pytest.approx(e[key].fmeasure)
    assert per[2]["rouge1"] == 0.0
    mean = rouge(preds, refs)
    assert mean["rouge2"] == pytest.approx(sum(e["rouge2"].fmeasure for e in expected) / 3)
    # rougeLsum sees the sentence split: a summary whose sentences are reordered keeps its rougeLsum
    swapped = rouge_scores(["It was happy. The cat sat on the mat."], [preds[0]])[0]
    assert swapped["rougeLsum"] == pytest.approx(1.0) and swapped["rougeL"] < 100.0


# ------------------------------------------------------------------------------- answer extraction


def test_number_extraction():
    assert extract_number("The answer is 1,234.") == 1234
    assert extract_number("12 apples, then 3 more: 15 in all. The answer is 15") == 15
    assert extract_number("So 7 - 10 = -3. The answer is -3") == -3
    assert extract_number("She pays $3.75 per kg, 2.5 kg cost 9.375") == pytest.approx(9.375)
    assert extract_number("Total: 1,234,567 people") == 1234567
    assert extract_number("5-3") == -3  # LLM-Adapters' regex: a hyphen before a digit is a minus sign
    assert extract_number("about 3,50 m") == 350  # every comma removed, as LLM-Adapters does
    assert extract_number("x = 7.") == 7 and extract_number(".5") == 5
    assert extract_number("I do not know") is None and extract_number("") is None
    assert score_output("The answer is 1,234.", "1234", "number") == (1234, True)
    assert score_output("The answer is 0.3333", "0.33333", "number")[1] is True
    assert score_output("The answer is 0.34", "0.33333", "number")[1] is False
    assert score_output("no idea", "4", "number") == (None, False)
    assert score_output("it is 1,000", "1,000", "number")[1] is True


def test_label_extraction_first_match_and_case_sensitivity():
    assert extract_label("answer2 is better than answer1", ["answer1", "answer2", "answer3"]) == "answer2"
    assert extract_label("the correct answer is solution1", ["solution1", "solution2"]) == "solution1"
    assert extract_label("the correct answer is ending4", ["ending1", "ending2"]) is None
    # case-sensitive by default, as LLM-Adapters (its training responses are lowercase): "True" is no label
    assert extract_label("True, it is false", ["true", "false"]) == "false"
    assert extract_label("True", ["true", "false"]) is None
    assert score_output("True", "true", "label", ["true", "false"]) == (None, False)
    assert extract_label("True", ["true", "false"], case_sensitive=False) == "true"
    assert score_output("True", "true", "label", ["true", "false"], case_sensitive=False) == ("true", True)
    words = ["option1", "option2"]
    assert score_output("the correct answer is option2", "option2", "label", words) == ("option2", True)


def test_aqua_letter_extraction():
    assert extract_letter("The answer is C.") == "C"
    assert extract_letter("A train travels 60 km in 1 hour... Answer: (B) 20") == "B"
    assert extract_letter("The answer is option D") == "D"
    assert extract_letter("A man buys 3 pens. So (E) is right") == "E"  # the article "A" is skipped
    assert extract_letter("Options: (A) 1 (B) 2") == "A"
    assert extract_letter("ABCDE and BAD words, but 5 apples") is None
    assert extract_letter("") is None
    assert score_output("the answer is b", "B", "letter") == (None, False)
    assert score_output("The answer is B", "B", "letter") == ("B", True)
    assert score_output("The answer is B", "B", "auto") == ("B", True)  # auto: letter golds -> letters
    assert score_output("The answer is 12", "12", "auto") == (12, True)


# ------------------------------------------------------------------------------------------- units


def test_unscaled_names_the_keys_that_are_not_scores():
    assert {"loss", "perplexity", "examples", "unparseable", "gen_words", "HasAns_total", "NoAns_total"} <= UNSCALED
    scores = {**classification_metrics([1, 0], [1, 1], ("accuracy", "f1", "matthews_corr")),
              **squad_metrics(["a"], [["a"]], with_negative=True), **rouge(["a b"], ["a c"])}
    assert set(scores) & UNSCALED == {"HasAns_total", "NoAns_total"}  # counts, the rest are scores
    assert all(-1.0 <= v <= 1.0 for k, v in scores.items() if k not in UNSCALED)
