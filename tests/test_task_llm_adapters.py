"""LLM-Adapters instruction tasks: prompts, label masking, scoring (answer extraction: test_metrics.py),
log-likelihood scoring, the full pipeline on tiny models with files in LLM-Adapters' format, and the offline error."""

import json
import random

import pandas as pd
import pytest
import torch

from conftest import compose_config, small_run_overrides
from rocoft.errors import UserError
from rocoft.models import load_tokenizer
from rocoft.tasks import build_task
from rocoft.tasks.data import read_records
from rocoft.tasks.llm_adapters import InstructionTask, build_prompt

NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers."
              "\n\n### Input:\n2 and 3\n\n### Response:\n")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(compose_config(["model=tiny_decoder"]).model)


def test_prompt_templates_are_exact():
    assert build_prompt("Add 2 and 3.") == NO_INPUT
    assert build_prompt("Add 2 and 3.", "") == NO_INPUT and build_prompt("Add 2 and 3.", None) == NO_INPUT
    assert build_prompt("Add the numbers.", "2 and 3") == WITH_INPUT


def test_training_labels_mask_the_prompt_and_keep_response_and_eos(tok):
    task = build_task(compose_config(["task=gsm8k"]).task)
    assert isinstance(task, InstructionTask) and task.kind == "causal_lm"
    df = pd.DataFrame([{"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5. The answer is 5",
                        "answer": "5"}])
    row = task.encode(df, tok, 128, "train").rows[0]
    prompt = tok(NO_INPUT, add_special_tokens=False)["input_ids"]
    response = tok("2 + 3 = 5. The answer is 5", add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id  # the tiny models' BERT tokenizer: [CLS] text ... [SEP] as EOS
    assert row["input_ids"] == [cls] + prompt + response + [sep]
    assert row["labels"] == [-100] * (1 + len(prompt)) + response + [sep]
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    cut = task.encode(df, tok, len(prompt) + 4, "train").rows[0]  # cut-off = data.max_length
    assert cut["input_ids"] == ([cls] + prompt + response)[:len(prompt) + 4]
    assert cut["labels"] == [-100] * (1 + len(prompt)) + response[:3]
    with pytest.raises(UserError, match="data.max_length=256"):  # no response token left to learn from
        task.encode(df, tok, 10, "train")
    # evaluation rows: the prompt only, no labels, nothing of the output
    ev = task.encode(df, tok, 128, "test").rows[0]
    assert ev["input_ids"] == [cls] + prompt and "labels" not in ev and ev["index"] == 0
    batch = task.collate(tok)(task.encode(pd.concat([df, df.assign(instruction="Hi")]), tok, 128, "test").rows)
    assert batch["input_ids"][1, 0] == tok.pad_token_id and batch["attention_mask"][1, 0] == 0  # left padding
    assert batch["input_ids"][0, -1] == batch["input_ids"][1, -1]


def test_json_records_keep_their_types(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"instruction": "q", "output": "o", "answer": "18"},
                                {"instruction": "q", "input": None, "output": "o", "answer": "7"}]))
    df = read_records(path)
    assert df.answer.tolist() == ["18", "7"] and df.input.tolist() == ["", ""]
    lines = tmp_path / "test.jsonl"
    lines.write_text("\n".join(json.dumps({"instruction": "q", "answer": "true"}) for _ in range(2)))
    assert read_records(lines).answer.tolist() == ["true", "true"]


def test_metrics_count_unparseable_as_wrong(tok):
    task = build_task(compose_config(["task=boolq"]).task)
    df = pd.DataFrame([{"instruction": f"Question {i}?", "input": "", "output": "", "answer": a}
                       for i, a in enumerate(["true", "false", "true", "false"])])
    encoded = task.encode(df, tok, 64, "test")
    texts = ["the correct answer is true", "true, not false", "yes it is", "i am not sure"]  # uncased tokenizer
    eos = tok.sep_token_id
    gen = [tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    width = max(map(len, gen))
    outputs = {"index": torch.tensor([2, 0, 3, 1]),
               "generated": torch.tensor([gen[i] + [eos] * (width - len(gen[i])) for i in (2, 0, 3, 1)])}
    metrics, records = task.score(outputs, encoded)
    assert metrics == {"accuracy": 0.25, "unparseable": 2.0, "examples": 4.0}
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["extracted"] for r in records] == ["true", "true", None, None]
    assert [r["correct"] for r in records] == [True, False, False, False]
    assert records[0]["output"] == "the correct answer is true" and records[0]["gold"] == "true"


class FavoursToken(torch.nn.Module):
    """A stand-in causal LM whose next-token distribution always favours one token."""

    def __init__(self, token, vocab):
        super().__init__()
        self.token, self.vocab = token, vocab

    def forward(self, input_ids, attention_mask=None, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 5.0
        return type("Out", (), {"logits": logits})()


def test_loglik_scoring_picks_the_likeliest_label_word(tok):
    task = build_task(compose_config(["task=piqa", "task.eval_mode=loglik"]).task)
    assert task.main_metric == "loglik_acc"
    df = pd.DataFrame([{"instruction": "How to open a jar?", "input": "", "output": "", "answer": "solution2"},
                       {"instruction": "How to cut bread?", "input": "", "output": "", "answer": "solution1"}])
    encoded = task.encode(df, tok, 64, "test")
    rows = encoded.rows
    one, two = (tok(f"the correct answer is solution{k}", add_special_tokens=False)["input_ids"] for k in (1, 2))
    assert rows[0]["cand_ids"] == [one, two]
    favoured = next(b for a, b in zip(one, two) if a != b)  # the token only "solution2" has
    batch = task.collate(tok)(rows)
    assert batch["ll_ids"].shape[:2] == (2, 2)
    outputs = task.predict_step(FavoursToken(favoured, len(tok)), batch)
    assert outputs["loglik"].shape == (2, 2) and "generated" not in outputs
    assert (outputs["loglik"][:, 1] > outputs["loglik"][:, 0]).all()
    metrics, records = task.score(outputs, encoded)
    assert metrics == {"loglik_acc": 0.5, "loglik_acc_norm": 0.5, "examples": 2.0}
    assert [r["loglik_choice"] for r in records] == ["solution2", "solution2"]
    with pytest.raises(UserError, match="eval_mode"):
        build_task(compose_config(["task=gsm8k", "task.eval_mode=both"]).task)


def _math_record(rng):
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return {"instruction": f"Tom has {a} apples and buys {b} more. How many apples does he have now?", "input": "",
            "output": f"Zqx reasoning: {a} plus {b} makes {a + b} apples. The answer is {a + b}",
            "answer": str(a + b)}


def _boolq_record(rng, i):
    answer = rng.choice(["true", "false"])
    return {"instruction": f"Please answer the following question with true or false, question: is item {i} "
                           f"blue? Answer format: true/false", "input": "",
            "output": f"the correct answer is {answer}", "answer": answer}


def _run(tmp_path, overrides):
    from rocoft.runs import run

    cfg = compose_config(["model=tiny_decoder", *small_run_overrides(tmp_path, steps=2, train=40, evals=8),
                          "train.batch_size=8", "train.eval_batch_size=4", "data.max_length=96",
                          "task.split.validation=4", *overrides])
    return cfg, run(cfg)


def _check_predictions(path, n, test_records):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == n and sorted(r["index"] for r in lines) == list(range(n))
    for r in lines:
        assert set(r) >= {"index", "prompt", "output", "extracted", "gold", "correct"}
        assert r["prompt"].startswith("Below is an instruction") and r["prompt"].endswith("### Response:\n")
        gold_output = test_records[r["index"]]["output"]
        assert r["gold"] == test_records[r["index"]]["answer"]
        assert gold_output not in r["prompt"] and "Zqx" not in r["prompt"]  # never a part of the gold output
        assert "the correct answer" not in r["prompt"]
    return lines


def test_full_pipeline_gsm8k_llm_adapters_layout(tmp_path):
    rng = random.Random(0)
    data = tmp_path / "llm_adapters"
    (data / "ft-training_set").mkdir(parents=True)
    (data / "dataset" / "gsm8k").mkdir(parents=True)
    (data / "ft-training_set" / "math_10k.json").write_text(json.dumps([_math_record(rng) for _ in range(44)]))
    test = [_math_record(rng) for _ in range(5)]
    (data / "dataset" / "gsm8k" / "test.json").write_text(json.dumps(test))
    cfg, metrics = _run(tmp_path, ["task=gsm8k", f"task.data_dir={data}", "task.generation.max_new_tokens=6"])
    out = tmp_path / "gsm8k" / "tiny_decoder" / cfg.method.tag / "seed0"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["examples"] == 5 and saved["validation"]["examples"] == 4
    for split in ("validation", "test"):
        assert {"accuracy", "unparseable"} <= set(saved[split]) and 0 <= saved[split]["accuracy"] <= 1
    lines = _check_predictions(out / "predictions_test.jsonl", 5, test)
    assert saved["test"]["unparseable"] == sum(r["extracted"] is None for r in lines)
    assert saved["test"]["accuracy"] == pytest.approx(sum(r["correct"] for r in lines) / 5)
    assert metrics["train_examples"] == 40 and metrics["main_metric"] == "accuracy"


def test_full_pipeline_boolq_both_eval_modes_with_data_files(tmp_path):
    rng = random.Random(1)
    train, test = tmp_path / "commonsense_170k.json", tmp_path / "boolq_test.json"
    train.write_text(json.dumps([_boolq_record(rng, i) for i in range(44)]))
    test_records = [_boolq_record(rng, 100 + i) for i in range(6)]
    test.write_text(json.dumps(test_records))
    cfg, metrics = _run(tmp_path, ["task=boolq", f"task.data_files.train={train}", f"task.data_files.test={test}",
                                   "task.eval_mode=both", "task.generation.max_new_tokens=4"])
    out = tmp_path / "boolq" / "tiny_decoder" / cfg.method.tag / "seed0"
    saved = json.loads((out / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert {"accuracy", "unparseable", "loglik_acc", "loglik_acc_norm"} <= set(saved[split])
    lines = _check_predictions(out / "predictions_test.jsonl", 6, test_records)
    assert all(r["loglik_choice"] in ("true", "false") for r in lines)
    assert saved["test"]["loglik_acc"] == pytest.approx(sum(r["loglik_correct"] for r in lines) / 6)


def test_missing_files_are_one_clear_error_naming_the_dataset(tmp_path):
    task = build_task(compose_config(["task=gsm8k", f"task.data_dir={tmp_path}"]).task)
    with pytest.raises(UserError) as err:
        task.splits()
    msg = str(err.value)
    assert "'math_10k'" in msg and "'gsm8k'" in msg and str(tmp_path / "ft-training_set" / "math_10k.json") in msg
    assert '"instruction"' in msg and '"answer"' in msg and "task.data_files.train=" in msg
    task = build_task(compose_config(["task=arc_c", f"task.data_dir={tmp_path}", "task.train_set=arc_c"]).task)
    assert task.files() == {"train": tmp_path / "dataset" / "ARC-Challenge" / "train.json",
                                 "test": tmp_path / "dataset" / "ARC-Challenge" / "test.json"}
    with pytest.raises(UserError, match="ARC-Challenge"):
        task.splits()


def test_every_llm_adapters_config_carries_the_paper_settings():
    commonsense = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa", "commonsense_170k"]
    math = ["multiarith", "gsm8k", "addsub", "singleeq", "svamp", "aqua", "math_10k"]
    for name in commonsense + math:
        cfg = compose_config([f"task={name}", "method=rocoft_row"])
        task = build_task(cfg.task)
        hp = cfg.task.hparams
        if name in commonsense:
            epochs = {"arc_c": 4, "obqa": 1}.get(name, 2)
            assert (cfg.train.lr, hp.epochs, hp.batch_size, hp.gradient_accumulation_steps, hp.warmup_steps) == \
                (2e-3, epochs, 3, 3, 100)
            assert task.generation.kwargs()["max_new_tokens"] == 32 and task.answer_type == "label"
        else:
            assert (cfg.train.lr, hp.epochs, hp.batch_size, hp.gradient_accumulation_steps, hp.warmup_steps) == \
                (1e-3, 2, 8, 2, 500)
            assert task.generation.kwargs()["max_new_tokens"] == 256
        assert cfg.task.rocoft.bias == "rocoft_only" and cfg.task.rocoft.selection == "random"
        assert task.generation.kwargs()["num_beams"] == 1
    assert build_task(compose_config(["task=aqua"]).task).answer_type == "letter"
    assert build_task(compose_config(["task=siqa"]).task).label_words == ["answer1", "answer2", "answer3"]
