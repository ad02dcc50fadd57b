"""Test-wide settings: never touch the network; small shared helpers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def compose_config(overrides=()):
    """The real config composed exactly as ``python train.py <overrides>`` would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def small_run_overrides(tmp_path, steps=3, train=96, evals=48):
    return [f"results_dir={tmp_path}", f"train.max_steps={steps}", f"data.max_train_samples={train}",
            f"data.max_eval_samples={evals}", "train.batch_size=16", "train.eval_batch_size=32", "device=cpu"]


@pytest.fixture
def compose_cfg():
    return compose_config
