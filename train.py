"""Fine-tune and evaluate one configuration (or a sweep with -m).

    python train.py                                   # MiniLM + RoCoFT rows r=3 on Rotten Tomatoes (offline)
    python train.py model=tiny_encoder task=imdb method=rocoft_col rank=1 seed=2 train.lr=1e-3
    python train.py -m method=rocoft_row,rocoft_col rank=1,3     # a local sweep
    python train.py -m +experiment=table1 hydra/launcher=slurm   # a paper table on a SLURM cluster
    accelerate launch train.py ...                    # several GPUs / processes
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rocoft.runs import execute

    return execute(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()
