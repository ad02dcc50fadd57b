"""Summarization (XSum / CNN-DailyMail): labels, generation, the full pipeline offline (ROUGE: test_metrics.py)."""

import json
import random

import pandas as pd
import pytest
import torch

from conftest import compose_config, small_run_overrides
from rocoft.errors import UserError
from rocoft.models import load_tokenizer
from rocoft.tasks import build_task
from rocoft.tasks.summarization import SummarizationTask


def test_labels_are_the_target_with_padding_ignored():
    tok = load_tokenizer(compose_config(["model=tiny_seq2seq"]).model)
    task = build_task(compose_config(["task=xsum", "task.max_target_length=6"]).task)
    assert isinstance(task, SummarizationTask) and task.kind == "seq2seq" and task.eval_splits == ["validation", "test"]
    df = pd.DataFrame({"document": ["A long document about cats and dogs.", "Short one."],
                       "summary": ["cats and dogs and more words than six tokens", "short"]})
    rows = task.encode(df, tok, 32, "train").rows
    assert rows[0]["labels"] == tok(text_target=df.summary[0], truncation=True, max_length=6)["input_ids"]
    assert len(rows[0]["labels"]) == 6 and "index" not in rows[0]
    batch = task.collate(tok)(rows)
    short = len(rows[1]["labels"])
    assert batch["labels"][1, :short].tolist() == rows[1]["labels"]
    assert (batch["labels"][1, short:] == -100).all() and (batch["labels"][0] != -100).all()
    eval_rows = task.encode(df, tok, 32, "test").rows
    assert [r["index"] for r in eval_rows] == [0, 1] and all("labels" not in r for r in eval_rows)
    assert task.generation.kwargs()["max_new_tokens"] == 6 and task.generation.kwargs()["num_beams"] == 6


def test_cnn_dailymail_config():
    cfg = compose_config(["task=cnn_dailymail"]).task
    assert (cfg.source_field, cfg.target_field, cfg.max_target_length) == ("article", "highlights", 142)
    assert cfg.dataset.hub_id == "abisee/cnn_dailymail" and cfg.dataset.hub_config == "3.0.0"
    gen = build_task(cfg).generation.kwargs()
    assert gen["num_beams"] == 4 and gen["no_repeat_ngram_size"] == 3 and gen["max_new_tokens"] == 142


def _xsum_rows(rng, n, start=0):
    words = "the council said storm roads river city police people were home rain flood week".split()
    rows = []
    for i in range(start, start + n):
        doc = ". ".join(" ".join(rng.choice(words) for _ in range(8)).capitalize() for _ in range(3)) + "."
        rows.append({"id": str(30000000 + i), "document": doc,
                     "summary": " ".join(rng.choice(words) for _ in range(6)).capitalize() + "."})
    return rows


def test_full_pipeline_tiny_seq2seq_on_xsum_files(tmp_path):
    from rocoft.runs import run

    rng = random.Random(0)
    pd.DataFrame(_xsum_rows(rng, 32)).to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    pd.DataFrame(_xsum_rows(rng, 4, 100)).to_csv(tmp_path / "validation.csv", index=False)
    test = _xsum_rows(rng, 5, 200)
    pd.DataFrame(test).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    cfg = compose_config(["model=tiny_seq2seq", "task=xsum", *small_run_overrides(tmp_path, steps=2, train=32, evals=8),
                          "data.max_length=128",  # the task's 512 is above the tiny model's 128 positions
                          f"task.data_files.train={tmp_path / 'train.jsonl'}",
                          f"task.data_files.validation={tmp_path / 'validation.csv'}",
                          f"task.data_files.test={tmp_path / 'test.jsonl'}",
                          "task.max_target_length=8", "task.generation.num_beams=2", "train.eval_batch_size=2"])
    metrics = run(cfg)
    out = tmp_path / "xsum" / "tiny_seq2seq" / cfg.method.tag / "seed0"
    saved = json.loads((out / "metrics.json").read_text())
    for split, n in (("validation", 4), ("test", 5)):
        assert set(saved[split]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum"} and saved[split]["examples"] == n
        assert all(0.0 <= saved[split][k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"))
        lines = [json.loads(line) for line in (out / f"predictions_{split}.jsonl").read_text().splitlines()]
        assert len(lines) == n and sorted(r["index"] for r in lines) == list(range(n))
        for r in lines:
            assert set(r) >= {"index", "id", "source", "prediction", "reference", "rouge1", "rouge2", "rougeL"}
            assert len(r["source"]) <= 500 and isinstance(r["prediction"], str)
    by_index = {r["index"]: r for r in lines}
    assert by_index[0]["reference"] == test[0]["summary"] and by_index[0]["id"] == test[0]["id"]
    assert metrics["main_metric"] == "rougeLsum" and metrics["steps"] == 2


def test_predict_step_pads_generations_to_a_fixed_width():
    tok = load_tokenizer(compose_config(["model=tiny_seq2seq"]).model)
    cfg = compose_config(["model=tiny_seq2seq", "task=xsum", "task.max_target_length=5"])
    task = build_task(cfg.task)
    from rocoft.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, task.kind, None, tok).eval()
    df = pd.DataFrame({"document": ["one two three", "a much longer document with many more words"],
                       "summary": ["x", "y"]})
    batch = task.collate(tok)(task.encode(df, tok, 16, "test").rows)
    out = task.predict_step(model, batch)
    assert out["generated"].shape == (2, 6) and out["index"].tolist() == [0, 1]


def test_offline_without_files_names_the_dataset_and_columns():
    task = build_task(compose_config(["task=xsum"]).task)
    with pytest.raises(UserError) as err:
        task.splits()
    msg = str(err.value)
    assert "EdinburghNLP/xsum" in msg and "document" in msg and "summary" in msg and "task.data_files" in msg
