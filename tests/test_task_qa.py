"""Extractive QA (SQuAD v1.1 / v2.0): post-processing, windowed features, runs (the metric: test_metrics.py)."""

import json

import numpy as np
import pytest

from conftest import compose_config
from rocoft.errors import UserError
from rocoft.models import load_tokenizer
from rocoft.tasks import build_task
from rocoft.tasks.qa_windows import best_answers


# --------------------------------------------------------------------------------- post-processing
def offsets(spans):
    return np.array([s if s is not None else (-1, -1) for s in spans]).reshape(-1, 2)


CONTEXT = "alpha beta gamma delta epsilon"
# two windows over the context (tokens: CLS, question, SEP, context..., SEP)
WIN1 = offsets([None, None, None, (0, 5), (6, 10), (11, 16), None])      # alpha beta gamma
WIN2 = offsets([None, None, None, (11, 16), (17, 22), (23, 30), None])   # gamma delta epsilon


def logits(n, **peaks):
    x = np.full(n, -5.0)
    for i, v in peaks.items():
        x[int(i[1:])] = v
    return x


def test_best_span_can_come_from_the_second_window():
    start = np.stack([logits(7, t0=0.0, t3=2.0), logits(7, t0=0.0, t4=4.0)])
    end = np.stack([logits(7, t0=0.0, t4=2.0), logits(7, t0=0.0, t5=4.0)])
    answers, _ = best_answers([CONTEXT], [0, 0], [WIN1, WIN2], [0, 0], start, end)
    assert answers == ["delta epsilon"]  # 8 in window 2 beats "alpha beta" (4) in window 1
    # non-context tokens (question, CLS) are never part of a span
    start = np.stack([logits(7, t1=9.0, t3=1.0), logits(7)])
    end = np.stack([logits(7, t2=9.0, t3=1.0), logits(7)])
    assert best_answers([CONTEXT], [0, 0], [WIN1, WIN2], [0, 0], start, end)[0] == ["alpha"]


def test_span_longer_than_max_answer_length_is_rejected():
    ctx = offsets([None] + [(2 * i, 2 * i + 1) for i in range(6)])
    text = "a b c d e f"
    start, end = logits(7, t1=5.0, t4=1.0), logits(7, t6=5.0, t5=1.0)
    assert best_answers([text], [0], [ctx], [0], start[None], end[None], max_answer_length=30)[0] == ["a b c d e f"]
    # at most 2 tokens: 1..6 (5 + 5) and 4..6 (1 + 5) are too long; the best left is 4..5 (1 + 1)
    assert best_answers([text], [0], [ctx], [0], start[None], end[None], max_answer_length=2)[0] == ["d e"]
    # n_best=1: the only candidate (tokens 1..6) is too long -> no span at all
    assert best_answers([text], [0], [ctx], [0], start[None], end[None], n_best=1, max_answer_length=2)[0] == [""]


def test_v2_null_score_decides_both_ways():
    start = np.stack([logits(7, t0=3.0, t3=2.0), logits(7, t0=1.0, t4=1.0)])
    end = np.stack([logits(7, t0=3.0, t3=2.0), logits(7, t0=1.0, t4=1.0)])
    args = ([CONTEXT], [0, 0], [WIN1, WIN2], [0, 0], start, end)
    # null = min over windows (6, 2) = 2; best span "alpha" = 4 > 2 -> answer
    answers, diffs = best_answers(*args, with_negative=True)
    assert answers == ["alpha"] and diffs[0] == pytest.approx(-2.0)
    # threshold -3: null 2 > 4 - 3 -> no answer
    assert best_answers(*args, with_negative=True, null_score_diff_threshold=-3.0)[0] == [""]
    # null larger than the span in every window -> no answer; v1 never abstains
    start[1, 0] = end[1, 0] = 5.0
    assert best_answers(*args, with_negative=True)[0] == [""]
    assert best_answers(*args, with_negative=False)[0] == ["alpha"]


# ------------------------------------------------------------------------------------ data + features
LONG = ("The old harbour town sits on a rocky coast. Fishermen leave before dawn and return at noon. "
        "The market opens when the boats arrive, and traders from the hills buy salted fish. "
        "In winter the storms close the port for weeks, and the town waits. Children learn to mend nets "
        "early. At the end of the pier stands a lighthouse painted bright green by the harbour master.")
SHORT = "Marie Curie won the Nobel Prize in Physics in 1903."


def official(v2=True):
    def qa(i, q, ans=None, ctx=LONG):
        item = {"id": f"q{i}", "question": q,
                "answers": [] if ans is None else [{"text": ans, "answer_start": ctx.index(ans)}]}
        if v2:
            item["is_impossible"] = ans is None
            if ans is None:
                item["plausible_answers"] = [{"text": "salted fish", "answer_start": LONG.index("salted fish")}]
        return item

    p1 = [qa(0, "What colour is the lighthouse painted?", "bright green"),
          qa(1, "When do the fishermen return?", "at noon"),
          qa(2, "What do the traders sell?") if v2 else qa(2, "What do the traders buy?", "salted fish")]
    p2 = [qa(3, "In which year did Curie win the prize?", "1903", SHORT)]
    return {"version": "v2.0" if v2 else "1.1",
            "data": [{"title": "Harbour", "paragraphs": [{"context": LONG, "qas": p1}]},
                     {"title": "Curie", "paragraphs": [{"context": SHORT, "qas": p2}]}]}


def write_official(tmp_path, v2=True):
    path = tmp_path / f"squad_{'v2' if v2 else 'v1'}.json"
    path.write_text(json.dumps(official(v2)))
    return str(path)


def qa_cfg(path, task="squad_v2", extra=()):
    return compose_config([f"task={task}", "model=tiny_encoder", f"++task.data_files.train={path}",
                           f"++task.data_files.validation={path}", *extra])


def test_official_json_is_flattened_and_windows_label_the_answer(tmp_path):
    cfg = qa_cfg(write_official(tmp_path), extra=["task.doc_stride=8"])
    task = build_task(cfg.task)
    splits = task.splits()
    assert set(splits) == {"train", "validation"}  # nothing carved
    df = splits["train"]
    assert list(df.id) == ["q0", "q1", "q2", "q3"] and list(df.title) == ["Harbour"] * 3 + ["Curie"]
    assert df.answers[0] == {"text": ["bright green"], "answer_start": [LONG.index("bright green")]}
    assert df.answers[2] == {"text": [], "answer_start": []}  # unanswerable: plausible answers ignored

    tok = load_tokenizer(cfg.model)
    feats = task.encode(df, tok, 32, "train")
    assert all(set(r) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
               for r in feats.rows)
    assert max(len(r["input_ids"]) for r in feats.rows) <= 32
    # re-derive each feature's example and offsets from the eval encoding of the same rows
    encoded = task.encode(df, tok, 32, "validation")
    info = {**encoded.examples, "feature_example": encoded.features["example"], "offsets": encoded.features["offsets"]}
    ex_of = info["feature_example"]
    assert len(ex_of) == len(feats) and list(ex_of) == sorted(ex_of)
    assert (ex_of == 0).sum() >= 3  # the long context spans several windows
    for f, row in enumerate(feats.rows):
        ex, offs = ex_of[f], info["offsets"][f]
        s, e = row["start_positions"], row["end_positions"]
        assert row["input_ids"][0] == tok.cls_token_id
        if ex == 2:
            assert (s, e) == (0, 0)  # unanswerable -> CLS in every window
            continue
        if s == 0:  # answer not (wholly) inside this window
            assert e == 0
            answer = df.answers[ex]["answer_start"][0], df.answers[ex]["answer_start"][0] + len(df.answers[ex]["text"][0])
            ctx = offs[offs[:, 0] >= 0]
            assert not (ctx[0, 0] <= answer[0] and ctx[-1, 1] >= answer[1])
        else:
            assert 0 < s <= e and offs[s, 0] >= 0 and offs[e, 0] >= 0
            assert info["context"][ex][offs[s, 0]:offs[e, 1]] == df.answers[ex]["text"][0]
    labelled = {ex_of[f] for f, r in enumerate(feats.rows) if r["start_positions"] > 0}
    assert labelled == {0, 1, 3}
    out_of_window = [f for f, r in enumerate(feats.rows) if ex_of[f] == 0 and r["start_positions"] == 0]
    assert out_of_window  # windows of the long context that miss the answer point to CLS
    # offsets: only context tokens carry character positions
    first = feats.rows[0]
    qlen = first["token_type_ids"].index(1) if 1 in first["token_type_ids"] else None
    assert qlen and (info["offsets"][0][:qlen] == -1).all()


def test_flat_jsonl_and_csv_files_load_like_the_hub_layout(tmp_path):
    rows = [{"id": "a", "title": "t", "context": SHORT, "question": "Who won?",
             "answers": {"text": ["Marie Curie"], "answer_start": [0]}},
            {"id": "b", "title": "t", "context": SHORT, "question": "Who lost?",
             "answers": {"text": [], "answer_start": []}}]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pandas as pd

    csv = tmp_path / "d.csv"
    pd.DataFrame([{**r, "answers": json.dumps(r["answers"])} for r in rows]).to_csv(csv, index=False)
    for path in (jl, csv):
        df = build_task(qa_cfg(path).task).splits()["validation"]
        assert list(df.id) == ["a", "b"]
        assert df.answers[0] == rows[0]["answers"] and df.answers[1] == rows[1]["answers"]


def test_offline_hub_load_names_the_dataset_and_the_override():
    task = build_task(compose_config(["task=squad"]).task)
    with pytest.raises(UserError) as err:
        task.splits()
    msg = str(err.value)
    assert "rajpurkar/squad" in msg and "task.data_files.train=" in msg and "task.data_files.validation=" in msg


# -------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("task,v2", [("squad_v2", True), ("squad", False)])
def test_short_run_writes_squad_metrics_and_predictions(tmp_path, task, v2):
    from rocoft.runs import run

    path = write_official(tmp_path, v2)
    cfg = qa_cfg(path, task, [f"results_dir={tmp_path}", "method=rocoft_row", "train.max_steps=2",
                              "train.batch_size=4", "train.eval_batch_size=4", "data.max_length=48",
                              "device=cpu", "save.adapter=false"])
    metrics = run(cfg)
    run_dir = tmp_path / task / "tiny_encoder" / "rocoft_row_r3" / "seed0"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["main_metric"] == "f1" and written["eval_splits"] == ["validation"]
    val = written["validation"]
    keys = {"exact_match", "f1"} | ({"HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                                     "HasAns_total", "NoAns_total"} if v2 else set())
    assert set(val) == keys and val == metrics["validation"]
    assert all(0.0 <= val[k] <= 1.0 for k in ("exact_match", "f1"))
    if v2:
        assert val["HasAns_total"] == 3 and val["NoAns_total"] == 1
        assert all(0.0 <= val[k] <= 1.0 for k in keys if not k.endswith("total"))
    records = [json.loads(line) for line in (run_dir / "predictions_validation.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert {"id", "question", "prediction", "answers", "exact", "f1"} <= set(records[0])
    assert np.mean([r["exact"] for r in records]) == pytest.approx(val["exact_match"])
    assert np.mean([r["f1"] for r in records]) == pytest.approx(val["f1"], abs=1e-5)
