"""The nine baselines of Table 1 written in the suite (Adapter^S, MAM, PROPETL x 3, MoSLoRA, LoRA-XS, SFT, Diff
pruning) run as a user runs them, ``python train.py method=<m>``: at RoBERTa-base's shape (random init) with the
parameter counts of each method's formula, and briefly on the offline default (real MiniLM, real Rotten Tomatoes)
beating the majority class. Each part is one Hydra multirun (one process for all nine) to keep the time down."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, compose_config
from test_methods_adapters import METHODS as ADAPTERS, expected_added  # the formulas of the unit tests
from test_methods_sparse_lora import METHODS as SPARSE_LORA, expected_counts

METHODS = ADAPTERS + SPARSE_LORA


def multirun(results, *overrides) -> dict:
    """``python train.py -m method=<all nine> <overrides>``: each method's metrics.json (a failed point of a sweep
    does not stop it: its status.json says why)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "train.py", "-m", f"method={','.join(METHODS)}", f"results_dir={results}", "device=cpu",
           *overrides]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = {}
    for method in METHODS:
        [run_dir] = results.glob(f"rotten_tomatoes/*/{method}_r*/seed0")
        if (run_dir / "metrics.json").is_file():
            metrics[method] = {**json.loads((run_dir / "metrics.json").read_text()), "dir": run_dir}
        else:
            metrics[method] = {"status": json.loads((run_dir / "status.json").read_text())}
    return metrics


# ---- RoBERTa-base shape, random init: the counts each method's formula gives
RANK = 4


@pytest.fixture(scope="module")
def roberta_runs(tmp_path_factory):
    return multirun(tmp_path_factory.mktemp("roberta_base_init"), "model=roberta_base_init", f"rank={RANK}",
                    "train.max_steps=2", "data.max_train_samples=32", "data.max_eval_samples=16",
                    "train.batch_size=8", "data.max_length=32")


@pytest.mark.parametrize("method", METHODS)
def test_train_py_at_roberta_base_shape_reports_the_formula_counts(roberta_runs, method):
    metrics = roberta_runs[method]
    assert "params" in metrics, metrics.get("status")
    d, f, L, vocab, positions = 768, 3072, 12, 50265, 514
    layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # attention, FFN, two LayerNorms
    head = (d * d + d) + (2 * d + 2)  # RobertaClassificationHead: dense + out_proj
    total = (vocab + positions + 1) * d + 2 * d + L * layer + head  # embeddings (+ LayerNorm), layers, head
    if method in ADAPTERS:
        added = expected_added(method, d, L, RANK)
        without_head = added + (2 * L * 2 * d if method == "houlsby_adapter" else 0)  # Houlsby: the LayerNorms
    else:
        without_head, added = expected_counts(method, RANK, d, f, L)
    assert metrics["params"] == {"trainable": without_head + head, "trainable_without_head": without_head,
                                 "total": total, "additional": added,
                                 "trainable_percent": pytest.approx(100 * (without_head + head) / total)}
    assert total == 124_647_170  # RoBERTa-base with a 2-label head, as transformers counts it from the hub
    assert metrics["steps"] == 2 and (metrics["dir"] / "adapter").is_dir()


# ---- the offline default, trained briefly: better than always answering the majority class
STEPS = 100


@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory):
    return multirun(tmp_path_factory.mktemp("minilm"), "rank=8", f"train.max_steps={STEPS}", "train.batch_size=16",
                    "data.max_train_samples=1000", "data.max_eval_samples=200", "save.adapter=false")


def majority_share() -> float:
    """The share of the most frequent label among the 200 validation sentences the runs are scored on."""
    from rocoft.tasks import build_task

    labels = build_task(compose_config([]).task).splits(1000, 200)["validation"].label
    assert len(labels) == 200
    return float(labels.value_counts(normalize=True).max())


@pytest.mark.parametrize("method", METHODS)
def test_short_real_run_beats_the_majority_class(minilm_runs, method):
    """100 steps of batch 16 over 1,000 training sentences, each method at its own YAML's learning rate."""
    metrics = minilm_runs[method]
    assert "validation" in metrics, metrics.get("status")
    accuracy, majority = metrics["validation"]["accuracy"], majority_share()
    print(f"{method}: validation accuracy {accuracy:.3f} (majority class {majority:.3f})")
    assert metrics["steps"] == STEPS and accuracy > majority
