"""Model configs: targets and heads exist in the real architectures; offline real models load."""

import json
import os

import pytest
import torch
import transformers

from conftest import CONF, compose_config, small_run_overrides
from rocoft.core import RoCoFTConfig, find_targets, name_matches
from rocoft.errors import UserError
from rocoft.models import build_model, load_tokenizer
from rocoft.runs import run

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
PER_LAYER = {"bert": 6, "roberta": 6, "deberta-v2": 6, "llama": 7, "bloom": 4, "gptj": 6}


@pytest.mark.parametrize("name", MODELS)
def test_targets_and_heads_exist_in_the_architecture(name):
    """Built on the meta device at the family's shape: nothing is allocated or downloaded."""
    cfg = compose_config([f"model={name}"]).model
    config = transformers.AutoConfig.for_model(cfg.family, **(dict(cfg.config) if cfg.get("config") else {}))
    kind = "seq2seq" if cfg.family == "bart" else "classification"
    auto = transformers.AutoModelForSeq2SeqLM if kind == "seq2seq" else transformers.AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto.from_config(config)
    heads = list(cfg.head_modules[kind])
    targets = find_targets(model, RoCoFTConfig(target_modules=list(cfg.target_modules), modules_to_save=heads or None))
    if cfg.family == "bart":  # encoder self-attn + fc1/fc2; decoder self- and cross-attn + fc1/fc2
        assert len(targets) == config.encoder_layers * 6 + config.decoder_layers * 10
    else:
        assert len(targets) == config.num_hidden_layers * PER_LAYER[cfg.family]
    for head in heads:
        assert any(name_matches(n, [head]) for n, _ in model.named_modules()), f"{name}: no head {head}"
    assert not any(name_matches(t, heads) for t in targets)


def test_hub_model_offline_is_a_clear_error():
    cfg = compose_config(["model=roberta_base"]).model
    with pytest.raises(UserError) as err:
        load_tokenizer(cfg)
    assert "FacebookAI/roberta-base" in str(err.value) and "model.path=" in str(err.value)


def test_smollm2_converts_once_and_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCOFT_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(["model=smollm2_135m"]).model
    tok = load_tokenizer(cfg)  # converts the GGUF file into the cache
    folder = tmp_path / "cache" / "smollm2_135m"
    assert (folder / "config.json").is_file() and tok.pad_token is not None
    stamp = os.path.getmtime(folder / "config.json")
    model = build_model(cfg, "causal_lm", tokenizer=tok)
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) > 1.3e8
    assert os.path.getmtime(folder / "config.json") == stamp  # reused, not converted again
    # a few training steps of a commonsense task in LLM-Adapters' format (BoolQ records)
    records = [{"instruction": f"Please answer the following question with true or false. Question: is {w} a "
                               f"colour?\n\nAnswer format: true/false", "input": "",
                "output": f"the correct answer is {a}", "answer": a}
               for w, a in [("red", "true"), ("green", "true"), ("table", "false"), ("blue", "true"),
                            ("river", "false"), ("pink", "true"), ("chair", "false"), ("seven", "false")] * 2]
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    train.write_text(json.dumps(records[:12]))
    test.write_text(json.dumps(records[12:]))
    metrics = run(compose_config(small_run_overrides(tmp_path / "runs", steps=2, train=12, evals=4) + [
        "model=smollm2_135m", "task=boolq", f"task.data_files.train={train}", f"task.data_files.test={test}",
        "task.split.validation=2", "data.max_length=96", "train.batch_size=2", "train.eval_batch_size=2",
        "task.generation.max_new_tokens=6"]))
    assert metrics["steps"] == 2 and 0 <= metrics["test"]["accuracy"] <= 100 and metrics["test"]["examples"] == 4
