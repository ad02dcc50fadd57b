"""eNTK analysis of a prompt-based few-shot task (the paper's Section 5): one run, or a sweep with -m.

    python scripts/ntk.py model=smollm2_135m task=mr_prompt k=16 seed=13 max_test=500
    python scripts/ntk.py sets=[full,rows,cols,lora,groups] solvers=[reference,klr]
    python scripts/ntk.py -m +experiment=table5_ntk                   # a paper table's grid
    python scripts/ntk.py -m +experiment=table4_ntk hydra/launcher=slurm hydra.launcher.partition=cpu

Config: conf/ntk.yaml (the model and task groups of train.py); the run: rocoft/ntk/experiment.py. Writes
``<results_dir>/<task>/<model>/k<k>/seed<seed>/``: metrics.json, status.json, config.yaml and kernels/.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@hydra.main(version_base="1.3", config_path="../conf", config_name="ntk")
def main(cfg: DictConfig):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rocoft.ntk.experiment import execute

    return execute(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    from train import USER_ERROR_EXIT, composition_error

    try:
        main()
    except SystemExit as e:
        if composition_error(e):
            sys.exit(USER_ERROR_EXIT)
        raise
