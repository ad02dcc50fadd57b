"""Prompt-based few-shot tasks (rocoft/tasks/prompt.py): LM-BFF's k-shot rule, its 13 templates, the
label-word checks, the label-word loss, and short real runs."""

import csv
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, compose_config, small_run_overrides
from rocoft.errors import UserError
from rocoft.models import build_model, load_tokenizer
from rocoft.tasks import build_task

WORDS = ["gripping", "dull", "fine", "tedious", "moving", "flat", "sharp", "warm", "cold", "bright"]


def prompt_task(name, *overrides, model=None):
    cfg = compose_config([f"task={name}", *overrides] + ([f"model={model}"] if model else []))
    return build_task(cfg.task, cfg.model if model else None), cfg


def sentence(i):
    return f"review {i} was {WORDS[i % len(WORDS)]} , really ."


# ------------------------------------------------------------------------------------------- k-shot splits
def lmbff_csv_rule(train_path, test_path, k, seed):
    """LM-BFF's generate_k_shot_data.py for a CSV task, written out independently of the suite's code."""
    np.random.seed(seed)
    lines = pd.read_csv(train_path, header=None).values.tolist()
    np.random.shuffle(lines)
    by_label = {}
    for line in lines:
        by_label.setdefault(line[0], []).append(line)
    train = [line for label in by_label for line in by_label[label][:k]]
    dev = [line for label in by_label for line in by_label[label][k:2 * k]]
    test = pd.read_csv(test_path, header=None)
    if len(test) > 1000:
        test = test.sample(n=1000, random_state=42)
    return train, dev, test.values.tolist()


def test_kshot_split_of_a_csv_file_matches_the_lmbff_rule(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=230, p=[0.1, 0.3, 0.2, 0.25, 0.15])  # unbalanced, every class >= 2k
    rows = [[int(y), sentence(i)] for i, y in enumerate(labels)]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    test_rows = [[int(i % 5), f"test sentence {i} ."] for i in range(1234)]
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows(test_rows)
    for seed in (13, 87):
        task, _ = prompt_task("sst5_prompt", f"task.original.dir={tmp_path}", "task.k=4", f"seed={seed}")
        splits = task.splits()
        train, dev, test = lmbff_csv_rule(tmp_path / "train.csv", tmp_path / "test.csv", 4, seed)
        for got, want in ((splits["train"], train), (splits["validation"], dev), (splits["test"], test)):
            assert [[int(y), s] for y, s in zip(got["label"], got["sentence1"])] == [[int(y), s] for y, s in want]
        assert len(splits["train"]) == len(splits["validation"]) == 20 and len(splits["test"]) == 1000
    other, _ = prompt_task("sst5_prompt", f"task.original.dir={tmp_path}", "task.k=4", "seed=21")
    assert other.splits()["train"]["sentence1"].tolist() != splits["train"]["sentence1"].tolist()


def test_kshot_split_of_a_glue_tsv_matches_the_lmbff_rule(tmp_path):
    header = "sentence\tlabel\n"
    train_lines = [f"{sentence(i)}\t{(i * 7) % 3 % 2}\n" for i in range(90)]
    test_lines = [f"test {i} .\t{i % 2}\n" for i in range(1100)]
    (tmp_path / "train.tsv").write_text(header + "".join(train_lines))
    (tmp_path / "dev.tsv").write_text(header + "".join(test_lines))
    seed, k = 42, 5
    np.random.seed(seed)  # LM-BFF: the train lines (header split off) shuffled as strings
    shuffled = list(train_lines)
    np.random.shuffle(shuffled)
    by_label = {}
    for line in shuffled:
        by_label.setdefault(line.strip().split("\t")[-1], []).append(line)
    want_train = [line for y in by_label for line in by_label[y][:k]]
    want_dev = [line for y in by_label for line in by_label[y][k:2 * k]]
    np.random.seed(42)
    want_test = list(test_lines)
    np.random.shuffle(want_test)
    task, _ = prompt_task("sst2_prompt", f"task.original.dir={tmp_path}", f"task.k={k}", f"seed={seed}")
    splits = task.splits()
    for got, want in ((splits["train"], want_train), (splits["validation"], want_dev), (splits["test"], want_test[:1000])):
        assert [f"{s}\t{y}\n" for s, y in zip(got["sentence1"], got["label"])] == want


def test_offline_hub_task_without_files_names_the_dataset_and_the_override():
    task, _ = prompt_task("sst5_prompt")
    with pytest.raises(UserError, match=r"SetFit/sst5.*task\.original\.dir=data/original"):
        task.splits()
    task, _ = prompt_task("mpqa_prompt")
    with pytest.raises(UserError, match=r"task\.original\.dir"):
        task.splits()


# ------------------------------------------------------------------------------------------- templates
ONE = ["A gripping film."]
PAIR = ["The cat sat on the mat.", "A cat is sitting."]
QUESTION = ["What is the capital of France?", "Paris is the capital of France."]
RENDERED = {  # LM-BFF's manual templates, rendered by hand from their definitions
    "sst2_prompt": (ONE, "A gripping film. It was<mask>."),
    "sst5_prompt": (ONE, "A gripping film. It was<mask>."),
    "mr_prompt": (ONE, "A gripping film. It was<mask>."),
    "cr_prompt": (ONE, "A gripping film. It was<mask>."),
    "mpqa_prompt": (ONE, "A gripping film. It was<mask>."),
    "subj_prompt": (ONE, "A gripping film. This is<mask>."),
    "trec_prompt": (["How far is the moon?"], "<mask>: How far is the moon?"),
    "mnli_prompt": (PAIR, "The cat sat on the mat?<mask>, a cat is sitting."),
    "snli_prompt": (PAIR, "The cat sat on the mat?<mask>, a cat is sitting."),
    "qnli_prompt": (QUESTION, "What is the capital of France?<mask>, paris is the capital of France."),
    "rte_prompt": (PAIR, "The cat sat on the mat?<mask>, a cat is sitting."),
    "mrpc_prompt": (PAIR, "The cat sat on the mat.<mask>, a cat is sitting."),
    "qqp_prompt": (QUESTION, "What is the capital of France?<mask>, paris is the capital of France."),
}
CAUSAL = {  # the prompt a causal LM continues: the template up to the mask, or the task's causal_template
    "sst2_prompt": "A gripping film. It was",
    "subj_prompt": "A gripping film. This is",
    "trec_prompt": "How far is the moon? Answer type:",
    "mnli_prompt": "The cat sat on the mat. Question: A cat is sitting? Answer:",
    "qnli_prompt": "Paris is the capital of France. Question: What is the capital of France? Answer:",
    "mrpc_prompt": 'The cat sat on the mat. Question: does it mean "A cat is sitting"? Answer:',
}
LABEL_WORDS = {"sst5_prompt": ["terrible", "bad", "okay", "good", "great"], "subj_prompt": ["subjective", "objective"],
               "trec_prompt": ["Description", "Entity", "Expression", "Human", "Location", "Number"],
               "mnli_prompt": ["No", "Yes", "Maybe"], "snli_prompt": ["No", "Yes", "Maybe"],
               "qnli_prompt": ["Yes", "No"], "rte_prompt": ["Yes", "No"], "mrpc_prompt": ["No", "Yes"],
               "qqp_prompt": ["No", "Yes"]}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_each_template_renders_the_documented_string(name):
    task, _ = prompt_task(name)
    texts, want = RENDERED[name]
    assert task.template.render(texts, mask="<mask>") == want
    assert task.words == LABEL_WORDS.get(name, ["terrible", "great"])
    if name in CAUSAL:
        assert task.causal_template.render(texts, mask="") == CAUSAL[name]


def test_the_encoded_prompt_is_the_parts_tokenised_one_by_one():
    task, cfg = prompt_task("mnli_prompt", model="tiny_encoder")
    tok = load_tokenizer(cfg.model)
    df = pd.DataFrame({"sentence1": [PAIR[0]], "sentence2": [PAIR[1]], "label": [1]})
    p = task.prompts(df, tok, 64)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    want = [tok.cls_token_id, *enc("The cat sat on the mat"), *enc("?"), tok.mask_token_id, *enc(","),
            *enc(" a cat is sitting."), tok.sep_token_id]
    assert p.input_ids == [want] and p.positions == [want.index(tok.mask_token_id)] and p.labels == [1]
    assert p.label_word_ids == tok.convert_tokens_to_ids(["no", "yes", "maybe"])  # MiniLM's vocabulary is uncased
    short = task.prompts(df, tok, 10)  # truncated: the texts lose tokens, the template and the mask stay
    assert len(short.input_ids[0]) == 10 and tok.mask_token_id in short.input_ids[0]


def test_a_label_word_that_is_not_one_token_is_a_clear_error():
    task, cfg = prompt_task("mr_prompt", "task.label_words.1=superfantastical", model="tiny_encoder")
    tok = load_tokenizer(cfg.model)
    assert len(tok(" superfantastical", add_special_tokens=False)["input_ids"]) > 1
    df = pd.DataFrame({"sentence1": ["a film ."], "label": [0]})
    with pytest.raises(UserError, match=r"label word 'superfantastical'.*not one"):
        task.prompts(df, tok, 32)


# ------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("model_name", ["tiny_encoder", "tiny_decoder"])
def test_training_loss_is_the_cross_entropy_over_label_word_logits(model_name):
    task, cfg = prompt_task("sst5_prompt", model=model_name)
    tok = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = build_model(cfg.model, task.kind, tokenizer=tok).eval()  # eval: no dropout
    df = pd.DataFrame({"sentence1": ["a film .", "a long , slow and quite dull film about nothing much ."],
                       "label": [4, 1]})
    encoded = task.encode(df, tok, 64)
    batch = task.collate(tok)([encoded[i] for i in range(len(encoded))])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # the first row is padded
    loss = task.loss(model, batch)

    words = tok.convert_tokens_to_ids(["terrible", "bad", "okay", "good", "great"])
    losses, hand_logits = [], []
    for i, text in enumerate(df["sentence1"]):  # each example alone, unpadded
        if model_name == "tiny_encoder":
            ids = tok(text + " It was" + tok.mask_token + ".")["input_ids"]
            at = ids.index(tok.mask_token_id)
        else:
            ids = tok(text + " It was")["input_ids"][:-1]  # MiniLM's tokenizer ends with [SEP]: not in a prompt
            at = len(ids) - 1
        assert ids == encoded[i]["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, at].double()
        hand_logits.append(logits[words])
        losses.append(-torch.log_softmax(logits[words], -1)[df["label"][i]])
    assert loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(model(**task.model_inputs(batch)).logits[
        torch.arange(2), batch["predict_at"]], batch["labels"]).item(), rel=1e-3)  # not the full-vocabulary CE
    assert task.predict_step(model, batch)["preds"].tolist() == [int(l.argmax()) for l in hand_logits]


# ------------------------------------------------------------------------------------------- real runs
def test_a_short_prompt_run_through_train_py(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "model=tiny_encoder", "task=mr_prompt", "method=full_ft",
                          "seed=13", *small_run_overrides(tmp_path, steps=3, train=32, evals=40), "train.batch_size=8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "mr_prompt" / "tiny_encoder" / "full_ft" / "seed13" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_examples"] == 32
    assert metrics["validation"]["accuracy"] * 32 == pytest.approx(round(metrics["validation"]["accuracy"] * 32))
    assert metrics["test"]["accuracy"] * 40 == pytest.approx(round(metrics["test"]["accuracy"] * 40))
    log = [json.loads(line) for line in (tmp_path / "mr_prompt" / "tiny_encoder" / "full_ft" / "seed13" /
                                         "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3] and all(r["loss"] > 0 for r in log if "loss" in r)


@pytest.mark.parametrize("model_name,method", [("tiny_decoder", "rocoft_row"), ("tiny_encoder", "lora"),
                                               ("tiny_encoder", "bitfit")])
def test_methods_train_prompt_tasks_in_process(tmp_path, model_name, method):
    from rocoft.runs import run

    cfg = compose_config([f"model={model_name}", "task=mr_prompt", f"method={method}", "rank=2",
                          *small_run_overrides(tmp_path, steps=2, train=32, evals=16), "train.batch_size=8"])
    run(cfg)
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["test"]["accuracy"] <= 1 and metrics["params"]["trainable"] > 0
